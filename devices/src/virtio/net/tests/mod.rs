//! virtio-net against mock guest rings and an in-memory tap, driven the way
//! a (possibly hostile) driver would.

mod device;
mod mmds;
mod persist;
mod rx;
mod tap;
mod tx;

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::virtio::{Activation, GuestMemory, IrqTrigger, QueuePosition, VirtioDevice};

/// What crossed the fake tap.
#[derive(Default)]
struct Wire {
    /// Frames the host side will deliver to the guest.
    to_guest: VecDeque<Vec<u8>>,
    /// Frames the guest sent.
    from_guest: Vec<Vec<u8>>,
    /// The last offload flags set.
    offload: Option<u32>,
}

struct FakeTap {
    wire: Arc<Mutex<Wire>>,
    evt: EventFd,
}

impl NetBackend for FakeTap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let frame = self.wire.lock().unwrap().to_guest.pop_front();
        let frame = frame.ok_or(io::ErrorKind::WouldBlock)?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(n)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.wire.lock().unwrap().from_guest.push(frame.to_vec());
        Ok(frame.len())
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        self.wire.lock().unwrap().offload = Some(flags);
        Ok(())
    }
}

impl AsRawFd for FakeTap {
    fn as_raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

const MEM_SIZE: usize = 0x40000;
const RXQ: u64 = 0x0;
const TXQ: u64 = 0x1000;
/// Where test buffers live.
const BUF: u64 = 0x10000;
const QSIZE: u16 = 16;

fn mem() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn queues(
    mem: &GuestMemory,
) -> (
    MockSplitQueue<'_, GuestMemory>,
    MockSplitQueue<'_, GuestMemory>,
) {
    (
        MockSplitQueue::create(mem, GuestAddress(RXQ), QSIZE),
        MockSplitQueue::create(mem, GuestAddress(TXQ), QSIZE),
    )
}

fn config(mac: Option<[u8; 6]>) -> NetConfig {
    NetConfig {
        iface_id: "eth0".into(),
        tap_name: "fake0".into(),
        mac,
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    }
}

fn fake_net(config: NetConfig) -> (Net, Arc<Mutex<Wire>>, EventFd) {
    let wire = Arc::new(Mutex::new(Wire::default()));
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let tap = FakeTap {
        wire: wire.clone(),
        evt: evt.try_clone().unwrap(),
    };
    (Net::with_backend(config, Box::new(tap)).unwrap(), wire, evt)
}

fn activate(
    net: &mut Net,
    mem: &GuestMemory,
    rxq: &MockSplitQueue<GuestMemory>,
    txq: &MockSplitQueue<GuestMemory>,
    features: u64,
) -> Arc<IrqTrigger> {
    let interrupt = Arc::new(IrqTrigger::new().unwrap());
    net.activate(Activation {
        mem: mem.clone(),
        queues: vec![
            rxq.create_queue::<Queue>().unwrap(),
            txq.create_queue::<Queue>().unwrap(),
        ],
        interrupt: interrupt.clone(),
        acked_features: features,
    })
    .unwrap();
    interrupt
}

/// An activated device (with the given extra features) and its fake tap.
fn active_net(
    mem: &GuestMemory,
    rxq: &MockSplitQueue<GuestMemory>,
    txq: &MockSplitQueue<GuestMemory>,
    features: u64,
) -> (Net, Arc<Mutex<Wire>>, Arc<IrqTrigger>) {
    let (mut net, wire, _evt) = fake_net(config(None));
    let irq = activate(&mut net, mem, rxq, txq, VIRTIO_F_VERSION_1 | features);
    (net, wire, irq)
}

/// Adds one chain at descriptor index `first`: (addr, len, device-writable).
fn add_chain(q: &MockSplitQueue<GuestMemory>, first: u16, descs: &[(u64, u32, bool)]) {
    let raw: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, write))| {
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = first + i as u16 + 1;
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
        })
        .collect();
    q.add_desc_chains(&raw, first).unwrap();
}

/// The used ring: (head, len) of every entry so far.
fn used(q: &MockSplitQueue<GuestMemory>) -> Vec<(u32, u32)> {
    let n = q.used().idx().load();
    (0..n)
        .map(|i| {
            let e = q
                .used()
                .ring()
                .ref_at(usize::from(i % QSIZE))
                .unwrap()
                .load();
            (e.id(), e.len())
        })
        .collect()
}

/// A frame: vnet header (`flags`, `gso`) then `payload_len` patterned bytes.
fn frame(flags: u8, gso: u8, payload_len: usize) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f[0] = flags;
    f[1] = gso;
    f.extend((0..payload_len).map(|i| (i * 7 + 3) as u8));
    f
}

fn vring_irq(irq: &IrqTrigger) -> bool {
    irq.status() & IrqKind::Vring as u32 != 0
}

fn config_irq(irq: &IrqTrigger) -> bool {
    irq.status() & IrqKind::Config as u32 != 0
}

fn feature(b: u32) -> u64 {
    1 << b
}
