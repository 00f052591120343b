//! The chain walk against hostile descriptor tables, and the per-turn
//! budget end to end: three devices with rings full of worst-case chains on
//! a real `EventManager`, next to an eventfd standing for SIGTERM.

use std::cell::Cell;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::virtio::block::{Block, BlockConfig};
use crate::virtio::net::{Net, NetBackend, NetConfig};
use crate::virtio::rng::Rng;
use crate::virtio::{Activation, IrqTrigger, VirtioDevice};

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
const QSIZE: u16 = 256;
/// The largest indirect table a descriptor can describe (65535 entries).
const BIG_TABLE_ENTRIES: u32 = u16::MAX as u32;
/// Where the big indirect table lives (1 MiB of descriptors).
const BIG_TABLE: u64 = 0x10_0000;
/// A data buffer every descriptor points at.
const BUF: u64 = 0x8000;
const MEM_SIZE: usize = 0x20_0000;

fn mem() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn store(mem: &GuestMemory, table: u64, index: u16, len: u32, flags: u16, next: u16) {
    store_at(mem, table, index, BUF, len, flags, next);
}

fn store_at(mem: &GuestMemory, table: u64, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
    mem.write_obj(d, GuestAddress(table + u64::from(index) * 16))
        .unwrap();
}

/// A big indirect table whose every entry chains to the next, the last
/// one looping back to the first: followed blindly, it never ends.
fn big_table(mem: &GuestMemory) {
    let entries: Vec<RawDescriptor> = (0..BIG_TABLE_ENTRIES)
        .map(|i| {
            let next = ((i + 1) % BIG_TABLE_ENTRIES) as u16;
            RawDescriptor::from(SplitDescriptor::new(BUF, 16, NEXT | WRITE, next))
        })
        .collect();
    for (i, d) in entries.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(BIG_TABLE + i as u64 * 16))
            .unwrap();
    }
}

fn walk(mem: &GuestMemory, table: u64, head: u16, indirect_ok: bool) -> (Vec<u16>, Walk<'_>) {
    let mut w = Walk::from_table(mem, GuestAddress(table), QSIZE, head, indirect_ok);
    let flags = (&mut w).map(|d| d.flags()).collect();
    (flags, w)
}

#[test]
fn a_plain_chain_is_walked_once() {
    let m = mem();
    store(&m, 0, 0, 16, NEXT, 5);
    store(&m, 0, 5, 512, NEXT | WRITE, 7);
    store(&m, 0, 7, 1, WRITE, 0);
    let (flags, w) = walk(&m, 0, 0, false);
    assert_eq!(flags, vec![NEXT, NEXT | WRITE, WRITE]);
    assert_eq!(w.error(), None);
    assert_eq!(w.reads(), 3);
    assert_eq!(w.head_index(), 0);
}

#[test]
fn an_indirect_table_is_refused_unfollowed_unless_negotiated() {
    let m = mem();
    big_table(&m);
    // As the head: nothing at all comes out, one descriptor was read.
    store_at(&m, 0, 0, BIG_TABLE, BIG_TABLE_ENTRIES * 16, INDIRECT, 0);
    let (flags, w) = walk(&m, 0, 0, false);
    assert!(flags.is_empty());
    assert_eq!(w.error(), Some(&ChainError::IndirectNotNegotiated(0)));
    assert_eq!(w.reads(), 1);
    // After a direct descriptor: the walk ends on one that still has NEXT
    // set, which every parser refuses.
    store(&m, 0, 1, 16, NEXT, 2);
    store_at(&m, 0, 2, BIG_TABLE, BIG_TABLE_ENTRIES * 16, INDIRECT, 0);
    let (flags, w) = walk(&m, 0, 1, false);
    assert_eq!(flags, vec![NEXT]);
    assert_eq!(w.error(), Some(&ChainError::IndirectNotNegotiated(2)));
    assert_eq!(w.reads(), 2);
}

#[test]
fn a_negotiated_65535_entry_table_is_cut_at_the_queue_size() {
    let m = mem();
    big_table(&m);
    store_at(&m, 0, 0, BIG_TABLE, BIG_TABLE_ENTRIES * 16, INDIRECT, 0);
    let (flags, w) = walk(&m, 0, 0, true);
    assert_eq!(flags.len(), usize::from(QSIZE));
    assert_eq!(w.error(), Some(&ChainError::TooLong(QSIZE)));
    // The indirect descriptor plus one queue's worth of the table.
    assert_eq!(w.reads(), u32::from(QSIZE) + 1);
    // A short, well-formed table is followed.
    store(&m, 0x4000, 0, 16, NEXT, 1);
    store(&m, 0x4000, 1, 1, WRITE, 0);
    store_at(&m, 0, 3, 0x4000, 32, INDIRECT, 0);
    let (flags, w) = walk(&m, 0, 3, true);
    assert_eq!(flags, vec![NEXT, WRITE]);
    assert_eq!(w.error(), None);
}

#[test]
fn malformed_indirect_descriptors_are_refused() {
    let m = mem();
    let cases = [
        (INDIRECT | NEXT, 32, ChainError::IndirectWithNext(0)),
        (INDIRECT, 0, ChainError::BadIndirectTable(0)),
        (INDIRECT, 17, ChainError::BadIndirectTable(17)),
    ];
    for (flags, len, want) in cases {
        store_at(&m, 0, 0, 0x4000, len, flags, 1);
        let (got, w) = walk(&m, 0, 0, true);
        assert!(got.is_empty());
        assert_eq!(w.error(), Some(&want));
    }
    // An indirect descriptor inside the table.
    store_at(&m, 0x4000, 0, 0x5000, 32, INDIRECT, 0);
    store_at(&m, 0, 0, 0x4000, 32, INDIRECT, 0);
    let (got, w) = walk(&m, 0, 0, true);
    assert!(got.is_empty());
    assert_eq!(w.error(), Some(&ChainError::NestedIndirect));
}

#[test]
fn loops_and_bad_indexes_stop_within_the_queue_size() {
    let m = mem();
    store(&m, 0, 9, 16, NEXT, 9);
    let (flags, w) = walk(&m, 0, 9, false);
    assert_eq!(flags.len(), usize::from(QSIZE));
    assert_eq!(w.error(), Some(&ChainError::TooLong(QSIZE)));
    assert_eq!(w.reads(), u32::from(QSIZE));
    store(&m, 0, 10, 16, NEXT, QSIZE);
    let (flags, w) = walk(&m, 0, 10, false);
    assert_eq!(flags.len(), 1);
    assert_eq!(w.error(), Some(&ChainError::BadIndex(QSIZE, QSIZE)));
    // A head outside the table, and a table outside guest memory.
    let (flags, w) = walk(&m, 0, QSIZE + 1, false);
    assert!(flags.is_empty());
    assert_eq!(w.error(), Some(&ChainError::BadIndex(QSIZE + 1, QSIZE)));
    let (flags, w) = walk(&m, MEM_SIZE as u64, 0, false);
    assert!(flags.is_empty());
    assert_eq!(w.error(), Some(&ChainError::Unreadable(MEM_SIZE as u64)));
}

#[test]
fn a_chain_of_exactly_the_queue_size_is_fine() {
    let m = mem();
    for i in 0..QSIZE - 1 {
        store(&m, 0, i, 16, NEXT, i + 1);
    }
    store(&m, 0, QSIZE - 1, 1, WRITE, 0);
    let (flags, w) = walk(&m, 0, 0, false);
    assert_eq!(flags.len(), usize::from(QSIZE));
    assert_eq!(w.error(), None);
}

#[test]
fn the_feature_bit_controls_indirect_tables() {
    let m = mem();
    let mut q = Queue::new(QSIZE).unwrap();
    q.try_set_desc_table_address(GuestAddress(0)).unwrap();
    store_at(&m, 0, 0, 0x4000, 16, INDIRECT, 0);
    store(&m, 0x4000, 0, 1, WRITE, 0);
    assert_eq!(Walk::new(&m, &q, 0, 0).count(), 0);
    let acked = 1u64 << VIRTIO_RING_F_INDIRECT_DESC;
    assert_eq!(Walk::new(&m, &q, 0, acked).count(), 1);
}

#[test]
fn the_budget_runs_out_and_rearm_wakes_the_queue() {
    let mut b = Budget::new(2);
    assert!(b.take() && b.take());
    assert!(b.spent());
    assert!(!b.take());
    assert_eq!(Budget::per_turn(), Budget::new(CHAINS_PER_TURN));
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    rearm(&evt, &"test");
    assert_eq!(evt.read().unwrap(), 1);
}

/// A split ring laid out at `base`: descriptor table, avail ring, used ring.
#[derive(Clone, Copy)]
struct Ring {
    base: u64,
}

impl Ring {
    fn desc(self) -> u64 {
        self.base
    }
    fn avail(self) -> u64 {
        self.base + 0x1000
    }
    fn used(self) -> u64 {
        self.base + 0x2000
    }

    /// A ring full of worst-case chains: even heads loop on themselves
    /// (walked to the queue-size limit), odd heads point at the 65535-entry
    /// indirect table (never negotiated). `flags` is the direction the
    /// device wants, so nothing is refused before the walk's own limit.
    fn fill_hostile(self, mem: &GuestMemory, flags: u16) {
        for i in 0..QSIZE {
            if i % 2 == 0 {
                store(mem, self.desc(), i, 1, flags | NEXT, i);
            } else {
                let len = BIG_TABLE_ENTRIES * 16;
                store_at(mem, self.desc(), i, BIG_TABLE, len, INDIRECT, 0);
            }
            let slot = GuestAddress(self.avail() + 4 + 2 * u64::from(i));
            mem.write_obj(i, slot).unwrap();
        }
        mem.write_obj(QSIZE, GuestAddress(self.avail() + 2))
            .unwrap();
    }

    fn queue(self) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.try_set_desc_table_address(GuestAddress(self.desc()))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.avail()))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(self.used()))
            .unwrap();
        q.set_ready(true);
        q
    }

    fn used_idx(self, mem: &GuestMemory) -> u16 {
        mem.read_obj(GuestAddress(self.used() + 2)).unwrap()
    }
}

fn activation(mem: &GuestMemory, queues: Vec<Queue>, acked_features: u64) -> Activation {
    Activation {
        mem: mem.clone(),
        queues,
        interrupt: Arc::new(IrqTrigger::new().unwrap()),
        acked_features,
    }
}

/// A tap that never has a frame and swallows every one it is given.
struct NullTap(EventFd);

impl NetBackend for NullTap {
    fn read_frame(&mut self, _buf: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        Ok(frame.len())
    }
    fn set_offload(&mut self, _flags: u32) -> std::io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for NullTap {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// The turn a signal was served in, and each device's used index then.
type Served = Rc<Cell<Option<(usize, [u16; 3])>>>;

/// Stands for the VMM's SIGTERM self-pipe: records the turn it was served
/// in and how many chains each device had completed by then.
struct Signal {
    evt: EventFd,
    turn: Rc<Cell<usize>>,
    seen: Served,
    mem: GuestMemory,
    rings: [Ring; 3],
}

impl MutEventSubscriber for Signal {
    fn init(&mut self, ops: &mut EventOps) {
        ops.add(Events::new(&self.evt, EventSet::IN)).unwrap();
    }
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        let used = self.rings.map(|r| r.used_idx(&self.mem));
        if self.seen.get().is_none() {
            self.seen.set(Some((self.turn.get(), used)));
        }
    }
}

#[test]
fn a_signal_is_served_between_batches_of_hostile_chains() {
    let m = mem();
    big_table(&m);
    let rings = [
        Ring { base: 0x1_0000 },
        Ring { base: 0x2_0000 },
        Ring { base: 0x3_0000 },
    ];
    let rx = Ring { base: 0x4_0000 };
    let [blk_ring, tx_ring, rng_ring] = rings;
    blk_ring.fill_hostile(&m, 0);
    tx_ring.fill_hostile(&m, 0);
    rng_ring.fill_hostile(&m, WRITE);

    let image = tempfile::NamedTempFile::new().unwrap();
    image.as_file().set_len(64 * 512).unwrap();
    let mut blk = Block::new(BlockConfig {
        drive_id: "hostile".into(),
        path: image.path().into(),
        read_only: false,
        rate_limiter: None,
    })
    .unwrap();
    let features = blk.avail_features();
    blk.activate(activation(&m, vec![blk_ring.queue()], features))
        .unwrap();
    let config = NetConfig {
        iface_id: "hostile".into(),
        tap_name: String::new(),
        mac: None,
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    };
    let tap = NullTap(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut net = Net::with_backend(config, Box::new(tap)).unwrap();
    let features = net.avail_features();
    net.activate(activation(&m, vec![rx.queue(), tx_ring.queue()], features))
        .unwrap();
    let mut rng = Rng::new(None).unwrap();
    let features = rng.avail_features();
    rng.activate(activation(&m, vec![rng_ring.queue()], features))
        .unwrap();
    // What the guest's notifications would write (activation may have
    // kicked some already).
    let kicks: Vec<EventFd> = [
        &blk.queue_events()[0],
        &net.queue_events()[1],
        &rng.queue_events()[0],
    ]
    .iter()
    .map(|e| e.try_clone().unwrap())
    .collect();

    let turn = Rc::new(Cell::new(0));
    let seen = Rc::new(Cell::new(None));
    let sigterm = EventFd::new(EFD_NONBLOCK).unwrap();
    let signal = Signal {
        evt: sigterm.try_clone().unwrap(),
        turn: turn.clone(),
        seen: seen.clone(),
        mem: m.clone(),
        rings,
    };
    let mut em: EventManager<Box<dyn MutEventSubscriber>> = EventManager::new().unwrap();
    em.add_subscriber(Box::new(blk));
    em.add_subscriber(Box::new(net));
    em.add_subscriber(Box::new(rng));
    em.add_subscriber(Box::new(signal));

    for k in &kicks {
        k.write(1).unwrap();
    }
    sigterm.write(1).unwrap();
    let per_turn = CHAINS_PER_TURN as u16;
    let mut last = [0u16; 3];
    // Every turn serves at most one batch per device; the rings drain in
    // QSIZE / CHAINS_PER_TURN turns (plus one that finds them empty).
    let max_turns = usize::from(QSIZE / per_turn) + 2;
    for n in 1..=max_turns {
        turn.set(n);
        em.run_with_timeout(0).unwrap();
        let now = rings.map(|r| r.used_idx(&m));
        for (before, after) in last.iter().zip(now) {
            assert!(
                after - before <= per_turn,
                "{before} -> {after} in turn {n}"
            );
        }
        last = now;
        if now == [QSIZE; 3] {
            break;
        }
    }
    assert_eq!(last, [QSIZE; 3], "every hostile chain was returned");
    let (served, used) = seen.get().expect("the signal was served");
    assert_eq!(served, 1, "the signal waited for no more than one batch");
    assert!(used.iter().all(|&u| u <= per_turn), "{used:?}");
}
