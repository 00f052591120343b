//! The virtio-mmio register protocol, driven the way a (possibly hostile)
//! guest driver would, against a recording device.

use std::sync::{Arc, Mutex};

use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::persist::Persist;
use crate::virtio::{ActivateError, TYPE_BLOCK};

struct Recorder {
    queue_evts: Vec<EventFd>,
    activations: Vec<u64>,
    positions: Vec<(u16, u16)>,
    resets: usize,
    config: Vec<u8>,
}

impl VirtioDevice for Recorder {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | 0b101
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        assert_eq!(a.queues.len(), 1);
        self.activations.push(a.acked_features);
        self.positions = a
            .queues
            .iter()
            .map(|q| (q.next_avail(), q.next_used()))
            .collect();
        Ok(())
    }
    fn reset(&mut self) {
        self.resets += 1;
    }
}

fn setup() -> (MmioTransport, Arc<Mutex<Recorder>>) {
    let dev = Arc::new(Mutex::new(Recorder {
        queue_evts: vec![EventFd::new(EFD_NONBLOCK).unwrap()],
        activations: vec![],
        positions: vec![],
        resets: 0,
        config: vec![1, 2, 3, 4, 5, 6, 7, 8],
    }));
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let t = MmioTransport::new(dev.clone(), mem, Arc::new(IrqTrigger::new().unwrap())).unwrap();
    (t, dev)
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(0, off, &mut b);
    u32::from_le_bytes(b)
}

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(0, off, &v.to_le_bytes());
}

/// Negotiates features (accepting `features`) and returns the status.
fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
    w(t, 0x70, status::ACKNOWLEDGE);
    w(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    w(t, 0x24, 0);
    w(t, 0x20, features as u32);
    w(t, 0x24, 1);
    w(t, 0x20, (features >> 32) as u32);
    w(
        t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    r(t, 0x70)
}

fn setup_queue(t: &mut MmioTransport, size: u32, desc: u64, avail: u64, used: u64) {
    w(t, 0x30, 0);
    w(t, 0x38, size);
    w(t, 0x80, desc as u32);
    w(t, 0x84, (desc >> 32) as u32);
    w(t, 0x90, avail as u32);
    w(t, 0x94, (avail >> 32) as u32);
    w(t, 0xa0, used as u32);
    w(t, 0xa4, (used >> 32) as u32);
    w(t, 0x44, 1);
}

const ALL_OK: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

#[test]
fn identity_registers() {
    let (mut t, _) = setup();
    assert_eq!(r(&mut t, 0x00), 0x7472_6976);
    assert_eq!(r(&mut t, 0x04), 2);
    assert_eq!(r(&mut t, 0x08), TYPE_BLOCK);
    w(&mut t, 0x30, 5);
    assert_eq!(
        r(&mut t, 0x34),
        0,
        "QueueNumMax needs a selected queue that exists"
    );
    w(&mut t, 0x30, 0);
    assert_eq!(r(&mut t, 0x34), 16);
    w(&mut t, 0x14, 1);
    assert_eq!(r(&mut t, 0x10), 1, "VERSION_1 is bit 32");
    w(&mut t, 0x14, 0);
    assert_eq!(r(&mut t, 0x10), 0b101);
    w(&mut t, 0x14, 7);
    assert_eq!(r(&mut t, 0x10), 0);
}

#[test]
fn good_setup_activates_with_the_accepted_features() {
    let (mut t, dev) = setup();
    // 0b010 was never offered: it must be dropped.
    let s = negotiate(&mut t, VIRTIO_F_VERSION_1 | 0b111);
    assert_ne!(s & status::FEATURES_OK, 0);
    setup_queue(&mut t, 16, 0x1000, 0x2000, 0x3000);
    w(&mut t, 0x70, ALL_OK);
    assert_eq!(r(&mut t, 0x70), ALL_OK);
    assert_eq!(
        dev.lock().unwrap().activations,
        vec![VIRTIO_F_VERSION_1 | 0b101]
    );
}

#[test]
fn legacy_driver_without_version_1_is_refused() {
    let (mut t, dev) = setup();
    let s = negotiate(&mut t, 0b1);
    assert_eq!(s & status::FEATURES_OK, 0);
    w(&mut t, 0x70, s | status::DRIVER_OK);
    assert_eq!(r(&mut t, 0x70) & status::DRIVER_OK, 0);
    assert!(dev.lock().unwrap().activations.is_empty());
}

#[test]
fn bad_queues_set_needs_reset_and_raise_a_config_interrupt() {
    for (size, desc, avail, used) in [
        (3, 0x1000, 0x2000, 0x3000),          // not a power of two
        (16, 0x1001, 0x2000, 0x3000),         // misaligned descriptor table
        (16, 0xffff_f000, 0x2000, 0x3000),    // outside guest memory
        (16, 0x1000, 0x2000, u64::MAX - 0xf), // wraps the address space
        (32, 0x1000, 0x2000, 0x3000),         // larger than QueueNumMax
        (0, 0x1000, 0x2000, 0x3000),          // empty
    ] {
        let (mut t, dev) = setup();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, size, desc, avail, used);
        w(&mut t, 0x70, ALL_OK);
        let s = r(&mut t, 0x70);
        assert_ne!(
            s & status::DEVICE_NEEDS_RESET,
            0,
            "size {size} desc {desc:#x}"
        );
        assert!(dev.lock().unwrap().activations.is_empty());
        assert_eq!(
            r(&mut t, 0x60) & IrqKind::Config as u32,
            IrqKind::Config as u32
        );
        // The driver resets: everything is back to square one.
        w(&mut t, 0x70, 0);
        assert_eq!(r(&mut t, 0x70), 0);
        assert_eq!(r(&mut t, 0x60), 0);
    }
}

#[test]
fn queue_not_ready_is_refused() {
    let (mut t, dev) = setup();
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 16, 0x1000, 0x2000, 0x3000);
    w(&mut t, 0x44, 0);
    w(&mut t, 0x70, ALL_OK);
    assert_ne!(r(&mut t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
    assert!(dev.lock().unwrap().activations.is_empty());
}

#[test]
fn out_of_order_status_and_queue_writes_are_ignored() {
    let (mut t, dev) = setup();
    // DRIVER_OK without negotiation.
    w(
        &mut t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    assert_eq!(r(&mut t, 0x70) & status::DRIVER_OK, 0);
    // Queue registers before FEATURES_OK do nothing.
    w(&mut t, 0x30, 0);
    w(&mut t, 0x44, 1);
    assert_eq!(r(&mut t, 0x44), 0);
    // Clearing bits without a reset is ignored.
    let (mut t2, _) = setup();
    negotiate(&mut t2, VIRTIO_F_VERSION_1);
    w(&mut t2, 0x70, status::ACKNOWLEDGE);
    assert_ne!(r(&mut t2, 0x70) & status::FEATURES_OK, 0);
    // After DRIVER_OK the queue cannot be moved under the device's feet.
    setup_queue(&mut t2, 16, 0x1000, 0x2000, 0x3000);
    w(&mut t2, 0x70, ALL_OK);
    w(&mut t2, 0x80, 0x8000);
    assert_eq!(t2.queue_registers()[0].desc_table, 0x1000);
    assert!(dev.lock().unwrap().activations.is_empty());
}

#[test]
fn reset_after_activation_reaches_the_device() {
    let (mut t, dev) = setup();
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 16, 0x1000, 0x2000, 0x3000);
    w(&mut t, 0x70, ALL_OK);
    w(&mut t, 0x70, 0);
    assert_eq!(dev.lock().unwrap().resets, 1);
    assert_eq!(r(&mut t, 0x70), 0);
    w(&mut t, 0x30, 0);
    assert_eq!(r(&mut t, 0x44), 0, "queue is no longer ready");
}

#[test]
fn odd_accesses_and_notifies_do_not_panic() {
    let (mut t, dev) = setup();
    let mut two = [0xffu8; 2];
    t.read(0, 0x00, &mut two);
    assert_eq!(two, [0, 0], "a 16-bit register read returns nothing");
    let mut word = [0u8; 4];
    t.read(0, 0x02, &mut word);
    t.write(0, 0x70, &[1]);
    assert_eq!(r(&mut t, 0x70), 0);
    t.write(0, 0x71, &[1, 0, 0, 0]);
    w(&mut t, 0x50, 7); // nonexistent queue
    w(&mut t, 0x30, u32::MAX);
    w(&mut t, 0x38, 8);
    assert_eq!(r(&mut t, 0x34), 0);
    // A notify written through the bus reaches the queue's eventfd.
    w(&mut t, 0x50, 0);
    assert_eq!(dev.lock().unwrap().queue_evts[0].read().unwrap(), 1);
}

#[test]
fn config_space_reads_and_interrupt_ack() {
    let (mut t, _) = setup();
    let mut b = [0u8; 4];
    t.read(0, 0x104, &mut b);
    assert_eq!(b, [5, 6, 7, 8]);
    t.read(0, 0x106, &mut b);
    assert_eq!(b, [7, 8, 0, 0]);
    t.read(0, 0xfff, &mut b);
    assert_eq!(b, [0; 4]);
    t.interrupt().trigger(IrqKind::Vring).unwrap();
    t.interrupt().trigger(IrqKind::Config).unwrap();
    assert_eq!(r(&mut t, 0x60), 3);
    w(&mut t, 0x64, 1);
    assert_eq!(r(&mut t, 0x60), 2);
}

fn restore(
    saved: &MmioTransportState,
) -> (
    Result<MmioTransport, TransportStateError>,
    Arc<Mutex<Recorder>>,
) {
    let (t, dev) = setup();
    let args = MmioTransportArgs {
        device: dev.clone(),
        mem: t.mem.clone(),
        interrupt: Arc::new(IrqTrigger::new().unwrap()),
    };
    (MmioTransport::restore(args, saved), dev)
}

#[test]
fn save_and_restore_reactivate_a_running_device() {
    let (mut t, _) = setup();
    negotiate(&mut t, VIRTIO_F_VERSION_1 | 0b1);
    setup_queue(&mut t, 16, 0x1000, 0x2000, 0x3000);
    w(&mut t, 0x70, ALL_OK);
    t.interrupt().trigger(IrqKind::Vring).unwrap();
    let saved = t.save().unwrap();
    assert!(saved.activated);
    assert_eq!(saved.interrupt_status, 1);

    let (fresh, dev) = restore(&saved);
    let mut fresh = fresh.unwrap();
    assert_eq!(fresh.save().unwrap(), saved, "round trip");
    assert_eq!(r(&mut fresh, 0x70), ALL_OK);
    let d = dev.lock().unwrap();
    assert_eq!(d.activations, vec![VIRTIO_F_VERSION_1 | 0b1]);
    assert_eq!(d.positions, vec![(0, 0)]);
    drop(d);
    assert_eq!(
        r(&mut fresh, 0x60),
        1,
        "the pending interrupt is raised again"
    );
    assert!(fresh.interrupt().eventfd().read().is_ok());
}

#[test]
fn restore_refuses_states_this_device_could_not_have() {
    let (mut t, _) = setup();
    negotiate(&mut t, VIRTIO_F_VERSION_1 | 0b1);
    setup_queue(&mut t, 16, 0x1000, 0x2000, 0x3000);
    w(&mut t, 0x70, ALL_OK);
    let saved = t.save().unwrap();

    let mut more_queues = saved.clone();
    more_queues.queues.push(more_queues.queues[0].clone());
    let mut unoffered = saved.clone();
    unoffered.regs.acked_features |= 1 << 40;
    let mut not_running = saved.clone();
    not_running.regs.device_status = status::ACKNOWLEDGE;
    let mut bad_irq = saved.clone();
    bad_irq.interrupt_status = 0x80;
    for (state, expected) in [
        (more_queues, "queues"),
        (unoffered, "acked features"),
        (not_running, "running device"),
        (bad_irq, "interrupt status"),
    ] {
        let err = restore(&state).0.err().expect(expected).to_string();
        assert!(err.contains(expected), "{err}");
    }
}

#[test]
fn a_flood_of_bad_accesses_logs_a_bounded_number_of_lines() {
    let (mut t, _dev) = setup();
    let before = crate::log_limit::tests::lines_of_this_thread().len();
    for i in 0..5000u32 {
        // Notify of a nonexistent queue, a 1-byte write, a 2-byte read:
        // each would be one warning per access without the limit.
        w(&mut t, 0x50, 7 + i);
        t.write(0, 0x70, &[1]);
        let mut half = [0u8; 2];
        t.read(0, 0x70, &mut half);
    }
    let logged = crate::log_limit::tests::lines_of_this_thread().len() - before;
    // 15 000 bad accesses from 3 call sites: each logs its budget per
    // one-second window (plus one "suppressed" line); a generous bound.
    assert!(logged >= 3, "{logged}");
    assert!(logged <= 600, "{logged} lines for 15 000 bad accesses");
}
