//! virtio-mem driven the way a (possibly hostile) guest driver would, with
//! the hotplug region inside the test's guest memory.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::persist::Persist;
use crate::virtio::balloon::tests::guest::{r, w, Guest};

const MIB: u64 = 1 << 20;
/// The hotplug region: 16 MiB at 16 MiB, in 2 MiB blocks (8 blocks).
const ADDR: u64 = 16 * MIB;
const SIZE: u64 = 16 * MIB;
const BLOCK: u64 = 2 * MIB;

fn args() -> MemArgs {
    MemArgs {
        addr: ADDR,
        region_size: SIZE,
        block_size: BLOCK,
        slot_size: SIZE,
    }
}

struct T {
    g: Guest,
    dev: Mem,
    irq: Arc<IrqTrigger>,
}

impl T {
    fn new() -> Self {
        // Guest memory: 1 MiB of ring/buffers plus the region.
        let g = Guest::with_ranges(&[(0, MIB), (ADDR, SIZE)], 1);
        let mut dev = Mem::new(args()).unwrap();
        let irq = Arc::new(IrqTrigger::new().unwrap());
        dev.activate(Activation {
            mem: g.mem.clone(),
            queues: vec![g.queue(0)],
            interrupt: irq.clone(),
            acked_features: VIRTIO_F_VERSION_1,
        })
        .unwrap();
        let _ = dev.queue_events()[0].read();
        Self { g, dev, irq }
    }

    /// Sends one request through the queue; returns (used len, resp, state).
    fn send(&mut self, kind: u16, addr: u64, nb: u16) -> (u32, u16, u16) {
        let mut req = [0u8; 24];
        req[0..2].copy_from_slice(&kind.to_le_bytes());
        req[8..16].copy_from_slice(&addr.to_le_bytes());
        req[16..18].copy_from_slice(&nb.to_le_bytes());
        self.raw(&req, 10)
    }

    fn raw(&mut self, req: &[u8], resp_len: u32) -> (u32, u16, u16) {
        let rq = self.g.alloc(32);
        self.g.fill(rq, req);
        let rs = self.g.alloc(16);
        self.g.fill(rs, &[0xee; 10]);
        let head = self.g.chain(0, &[r(rq, req.len() as u32), w(rs, resp_len)]);
        assert_eq!(self.dev.process_queue(), 1);
        let used = self.g.used(0);
        assert_eq!(used, vec![(head, used[0].1)]);
        let out = self.g.read_mem(rs, 10);
        (
            used[0].1,
            u16::from_le_bytes([out[0], out[1]]),
            u16::from_le_bytes([out[8], out[9]]),
        )
    }

    fn config_u64(&self, offset: u64) -> u64 {
        let mut b = [0u8; 8];
        self.dev.read_config(offset, &mut b);
        u64::from_le_bytes(b)
    }
}

#[test]
fn config_space_describes_the_region() {
    let mut t = T::new();
    assert_eq!(t.dev.device_type(), TYPE_MEM);
    assert_eq!(t.config_u64(0), BLOCK);
    assert_eq!(t.config_u64(16), ADDR);
    assert_eq!(t.config_u64(24), SIZE);
    assert_eq!(t.config_u64(32), SIZE);
    assert_eq!(t.config_u64(40), 0);
    assert_eq!(t.config_u64(48), 0);
    t.dev.set_requested_size(4 * MIB).unwrap();
    assert_eq!(t.config_u64(48), 4 * MIB);
    assert!(t.dev.set_requested_size(3 * MIB).is_err());
    assert!(t.dev.set_requested_size(SIZE + BLOCK).is_err());
    assert!(t.irq.status() == 0);
}

#[test]
fn plug_state_unplug_follow_the_spec() {
    let mut t = T::new();
    // Nothing requested: plugging is NACKed.
    assert_eq!(t.send(REQ_PLUG, ADDR, 1), (10, RESP_NACK, 0));
    t.dev.set_requested_size(4 * MIB).unwrap();
    assert_eq!(t.send(REQ_PLUG, ADDR, 2), (10, RESP_ACK, 0));
    assert_eq!(t.dev.plugged_size(), 4 * MIB);
    assert_eq!(t.config_u64(40), 4 * MIB);
    // Beyond the request: NACK; already plugged: ERROR.
    assert_eq!(t.send(REQ_PLUG, ADDR + 2 * BLOCK, 1), (10, RESP_NACK, 0));
    assert_eq!(t.send(REQ_PLUG, ADDR, 1).1, RESP_ERROR);
    assert_eq!(t.send(REQ_STATE, ADDR, 2), (10, RESP_ACK, STATE_PLUGGED));
    assert_eq!(t.send(REQ_STATE, ADDR, 3), (10, RESP_ACK, STATE_MIXED));
    assert_eq!(
        t.send(REQ_STATE, ADDR + 4 * BLOCK, 4),
        (10, RESP_ACK, STATE_UNPLUGGED)
    );
    // The guest uses the memory; unplugging gives it back (reads zero).
    t.g.mem
        .write_obj(0xfeed_u64, GuestAddress(ADDR + BLOCK))
        .unwrap();
    assert_eq!(t.send(REQ_UNPLUG, ADDR + BLOCK, 1), (10, RESP_ACK, 0));
    assert_eq!(
        t.g.mem.read_obj::<u64>(GuestAddress(ADDR + BLOCK)).unwrap(),
        0
    );
    // Unplugging an unplugged block: ERROR.
    assert_eq!(t.send(REQ_UNPLUG, ADDR + BLOCK, 1).1, RESP_ERROR);
    assert_eq!(t.send(REQ_UNPLUG_ALL, 0, 0), (10, RESP_ACK, 0));
    assert_eq!(t.dev.plugged_size(), 0);
}

#[test]
fn hostile_requests_get_errors_never_panics() {
    let mut t = T::new();
    t.dev.set_requested_size(SIZE).unwrap();
    for (kind, addr, nb) in [
        (REQ_PLUG, ADDR, 0),                   // empty
        (REQ_PLUG, ADDR + 4096, 1),            // misaligned
        (REQ_PLUG, ADDR - BLOCK, 1),           // below the region
        (REQ_PLUG, ADDR + SIZE, 1),            // past it
        (REQ_PLUG, ADDR + SIZE - BLOCK, 2),    // straddling the end
        (REQ_PLUG, ADDR, u16::MAX),            // far too many
        (REQ_PLUG, u64::MAX - 4095, u16::MAX), // overflow
        (REQ_UNPLUG, 0, 1),
        (REQ_STATE, u64::MAX, 1),
        (77, ADDR, 1), // unknown type
    ] {
        assert_eq!(
            t.send(kind, addr, nb),
            (10, RESP_ERROR, 0),
            "{kind} {addr:#x} {nb}"
        );
    }
    assert_eq!(t.dev.plugged_size(), 0);
    // Short request: ERROR; response buffer too small: refused unwritten.
    assert_eq!(t.raw(&[0; 8], 10).1, RESP_ERROR);
    assert_eq!(t.raw(&[0; 24], 4).0, 0);
    assert!(!t.dev.needs_reset());
    // Still works.
    assert_eq!(t.send(REQ_PLUG, ADDR, 8), (10, RESP_ACK, 0));
    assert_eq!(t.dev.plugged_size(), SIZE);
}

#[test]
fn broken_ring_stops_the_device() {
    let mut t = T::new();
    t.g.set_avail_idx(0, 1000);
    t.dev.process_queue();
    assert!(t.dev.needs_reset());
}

#[test]
fn bad_geometry_is_refused() {
    let with = |f: fn(&mut MemArgs)| {
        let mut a = args();
        f(&mut a);
        Mem::new(a).is_err()
    };
    assert!(with(|a| a.block_size = MIB));
    assert!(with(|a| a.block_size = 3 * MIB));
    assert!(with(|a| a.region_size = 0));
    assert!(with(|a| a.region_size = 3 * MIB));
    assert!(with(|a| a.addr = MIB));
    assert!(with(|a| a.addr = u64::MAX - MIB * 2 + 1));
}

#[test]
fn state_keeps_the_bitmap_and_refuses_mismatches() {
    let mut t = T::new();
    t.dev.set_requested_size(6 * MIB).unwrap();
    assert_eq!(t.send(REQ_PLUG, ADDR + 2 * BLOCK, 3).1, RESP_ACK);
    let state = t.dev.save().unwrap();
    let back = Mem::restore(args(), &state).unwrap();
    assert_eq!(back.plugged_size(), 6 * MIB);
    assert!(back.is_plugged(2) && back.is_plugged(4) && !back.is_plugged(5));
    assert_eq!(back.requested_size(), 6 * MIB);
    let mut bad = state.clone();
    bad.plugged[0] |= 1 << 9; // past block 7
    assert!(Mem::restore(args(), &bad).is_err());
    let mut bad = state.clone();
    bad.block_size = 4 * MIB;
    assert!(Mem::restore(args(), &bad).is_err());
    let mut bad = state;
    bad.requested_size = 3 * MIB;
    assert!(Mem::restore(args(), &bad).is_err());
}
