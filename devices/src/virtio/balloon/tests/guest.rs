//! A hand-rolled guest driver for device tests: guest memory created in the
//! test (anonymous mmap, so host RSS is real), several split queues on
//! mock rings, descriptor chains built by hand (including hostile ones).
//! Shared by the balloon and entropy device tests.

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::virtio::GuestMemory;

/// Entries in every test queue.
pub(crate) const QSIZE: u16 = 256;
/// Guest memory each queue's rings take (descriptors, avail, used).
const QUEUE_SPAN: u64 = 0x4000;
/// The used ring's offset inside a queue's span. `MockSplitQueue` sizes
/// its avail ring in entries, not bytes, so its own used ring overlaps it.
const USED_OFFSET: u64 = 0x3000;
/// Where test buffers start (after the rings of up to 8 queues).
const SCRATCH_START: u64 = 8 * QUEUE_SPAN;

/// One descriptor as a test describes it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct D {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

/// A device-readable descriptor.
pub(crate) fn r(addr: u64, len: u32) -> D {
    D {
        addr,
        len,
        writable: false,
    }
}

/// A device-writable descriptor.
pub(crate) fn w(addr: u64, len: u32) -> D {
    D {
        addr,
        len,
        writable: true,
    }
}

/// One queue as the driver sees it.
pub(crate) struct TestQueue {
    vq: MockSplitQueue<'static, GuestMemory>,
    used_ring: u64,
    next_desc: u16,
    used_seen: u16,
}

/// The guest side: memory, rings, buffers.
pub(crate) struct Guest {
    pub mem: &'static GuestMemory,
    queues: Vec<TestQueue>,
    bump: u64,
    scratch_end: u64,
}

impl Guest {
    /// One RAM region of `size` bytes at 0 and `nqueues` empty queues.
    pub fn new(size: u64, nqueues: usize) -> Self {
        Self::with_ranges(&[(0, size)], nqueues)
    }

    /// RAM made of `ranges` (start, size); the first one holds the rings
    /// and the test buffers.
    pub fn with_ranges(ranges: &[(u64, u64)], nqueues: usize) -> Self {
        let regions: Vec<_> = ranges
            .iter()
            .map(|&(start, size)| (GuestAddress(start), size as usize))
            .collect();
        let mem = GuestMemory::from_ranges(&regions).unwrap();
        Self::from_memory(mem, ranges[0].0, ranges[0].1, nqueues)
    }

    /// Queues and test buffers in `[start, start + size)` of `mem` (which
    /// lives for the rest of the test: the mock queues borrow it).
    pub fn from_memory(mem: GuestMemory, start: u64, size: u64, nqueues: usize) -> Self {
        assert!(nqueues <= 8);
        let mem: &'static GuestMemory = Box::leak(Box::new(mem));
        let queues = (0..nqueues as u64)
            .map(|i| {
                let base = start + i * QUEUE_SPAN;
                TestQueue {
                    vq: MockSplitQueue::create(mem, GuestAddress(base), QSIZE),
                    used_ring: base + USED_OFFSET,
                    next_desc: 0,
                    used_seen: 0,
                }
            })
            .collect();
        Self {
            mem,
            queues,
            bump: start + SCRATCH_START,
            scratch_end: start + size,
        }
    }

    /// Queue `i` as the transport would hand it over (used ring emptied).
    pub fn queue(&self, i: usize) -> Queue {
        let tq = &self.queues[i];
        self.mem
            .write_slice(&[0; 4], GuestAddress(tq.used_ring))
            .unwrap();
        let mut q = Queue::new(QSIZE).unwrap();
        q.try_set_desc_table_address(tq.vq.desc_table_addr())
            .unwrap();
        q.try_set_avail_ring_address(tq.vq.avail_addr()).unwrap();
        q.try_set_used_ring_address(GuestAddress(tq.used_ring))
            .unwrap();
        q.set_ready(true);
        assert!(q.is_valid(self.mem));
        q
    }

    /// All queues, in order.
    pub fn all_queues(&self) -> Vec<Queue> {
        (0..self.queues.len()).map(|i| self.queue(i)).collect()
    }

    /// Guest buffer space (never reused within a test).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let addr = self.bump;
        self.bump += len.next_multiple_of(16);
        assert!(
            self.bump <= self.scratch_end,
            "test ran out of guest memory"
        );
        addr
    }

    /// Writes descriptors (linked in order) on queue `q` and makes the
    /// chain available; returns its head.
    pub fn chain(&mut self, q: usize, descs: &[D]) -> u16 {
        let n = descs.len() as u16;
        let tq = &mut self.queues[q];
        if tq.next_desc + n > QSIZE {
            tq.next_desc = 0;
        }
        let head = tq.next_desc;
        tq.next_desc += n;
        for (i, d) in descs.iter().enumerate() {
            let index = head + i as u16;
            let mut flags = if d.writable { VRING_DESC_F_WRITE } else { 0 } as u16;
            if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.store_desc(q, index, d.addr, d.len, flags, index + 1);
        }
        self.make_available(q, head);
        head
    }

    /// Writes one raw descriptor (any flags, any next) on queue `q`.
    pub fn store_desc(&self, q: usize, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let desc = SplitDescriptor::new(addr, len, flags, next);
        self.queues[q]
            .vq
            .desc_table()
            .store(index, RawDescriptor::from(desc))
            .unwrap();
    }

    /// Puts `head` in queue `q`'s available ring and bumps its index.
    pub fn make_available(&self, q: usize, head: u16) {
        let avail = self.queues[q].vq.avail();
        let idx = avail.idx().load();
        avail
            .ring()
            .ref_at(usize::from(idx % QSIZE))
            .unwrap()
            .store(head);
        avail.idx().store(idx.wrapping_add(1));
    }

    /// Sets queue `q`'s available index directly (e.g. far ahead: corrupt).
    pub fn set_avail_idx(&self, q: usize, idx: u16) {
        self.queues[q].vq.avail().idx().store(idx);
    }

    /// Used-ring entries of queue `q` added since the last call: (head, len).
    pub fn used(&mut self, q: usize) -> Vec<(u16, u32)> {
        let tq = &mut self.queues[q];
        let idx: u16 = self.mem.read_obj(GuestAddress(tq.used_ring + 2)).unwrap();
        let mut out = Vec::new();
        while tq.used_seen != idx {
            let elem = tq.used_ring + 4 + 8 * u64::from(tq.used_seen % QSIZE);
            let id: u32 = self.mem.read_obj(GuestAddress(elem)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(elem + 4)).unwrap();
            out.push((id as u16, len));
            tq.used_seen = tq.used_seen.wrapping_add(1);
        }
        out
    }

    /// Guest memory contents.
    pub fn read_mem(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Fills guest memory.
    pub fn fill(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }
}
