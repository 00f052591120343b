//! The drive behind the real virtio-mmio transport, set up register by
//! register as a guest driver does.

use std::sync::Mutex;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};

use super::*;
use crate::bus::BusDevice;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::status;

fn w32(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(0, off, &v.to_le_bytes());
}

fn r32(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(0, off, &mut b);
    u32::from_le_bytes(b)
}

/// Negotiates every offered feature and starts the queue on the test rings.
fn start(t: &mut MmioTransport, desc: u64, avail: u64) {
    w32(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    for sel in 0..2 {
        w32(t, 0x14, sel);
        let offered = r32(t, 0x10);
        w32(t, 0x24, sel);
        w32(t, 0x20, offered);
    }
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    w32(t, 0x70, s);
    assert_eq!(r32(t, 0x70), s);
    w32(t, 0x30, 0);
    assert_eq!(r32(t, 0x34), 256);
    w32(t, 0x38, 256);
    for (off, addr) in [(0x80, desc), (0x90, avail), (0xa0, USED_RING)] {
        w32(t, off, addr as u32);
        w32(t, off + 4, (addr >> 32) as u32);
    }
    w32(t, 0x44, 1);
    w32(t, 0x70, s | status::DRIVER_OK);
    assert_eq!(r32(t, 0x70), s | status::DRIVER_OK);
}

#[test]
fn a_driver_sets_up_the_drive_and_reads_through_it() {
    let image = image(16 * 512);
    let blk = Block::new(BlockConfig {
        drive_id: "mmio".into(),
        path: image.path().into(),
        read_only: false,
        rate_limiter: None,
    })
    .unwrap();
    let g = &mut Guest::new();
    let dev = Arc::new(Mutex::new(blk));
    let irq = Arc::new(IrqTrigger::new().unwrap());
    let mut t = MmioTransport::new(dev.clone(), g.mem.clone(), irq.clone()).unwrap();
    assert_eq!(r32(&mut t, 0x08), crate::virtio::TYPE_BLOCK);
    let mut cap = [0u8; 8];
    t.read(0, 0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 16);

    g.mem.write_slice(&[0; 4], GuestAddress(USED_RING)).unwrap();
    start(&mut t, g.vq.desc_table_addr().0, g.vq.avail_addr().0);
    assert!(dev.lock().unwrap().is_activated());

    let buf = g.alloc(512);
    let req = g.request(VIRTIO_BLK_T_IN, 11, &[w(buf, 512)]);
    w32(&mut t, 0x50, 0); // QueueNotify (no ioeventfd in tests)
    dev.lock().unwrap().handle_queue_event();
    assert_eq!(g.used(), vec![(req.head, 513)]);
    assert_eq!(g.read_mem(req.status, 1), vec![VIRTIO_BLK_S_OK as u8]);
    assert_eq!(g.read_mem(buf, 512), vec![11; 512]);
    assert_eq!(
        r32(&mut t, 0x60) & IrqKind::Vring as u32,
        IrqKind::Vring as u32
    );

    // A corrupted avail index shows up as DEVICE_NEEDS_RESET.
    let idx = g.vq.avail().idx().load();
    g.vq.avail().idx().store(idx.wrapping_add(500));
    dev.lock().unwrap().handle_queue_event();
    assert_ne!(r32(&mut t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
    assert_ne!(r32(&mut t, 0x60) & IrqKind::Config as u32, 0);
    // The driver resets; the device forgets the queue and the error.
    w32(&mut t, 0x70, 0);
    assert_eq!(r32(&mut t, 0x70), 0);
    assert!(!dev.lock().unwrap().is_activated());
    assert!(!dev.lock().unwrap().needs_reset());
}
