//! virtio-blk driven the way a (possibly hostile) guest driver would: chains
//! built by hand in mock guest memory, a temporary file as the image.

mod budget;
mod events;
mod hostile;
mod persist;
mod requests;
mod transport;
mod update;

use std::io::Write;
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use tempfile::NamedTempFile;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::{Block, BlockConfig};
use crate::rate_limiter::RateLimiter;
use crate::virtio::{Activation, GuestMemory, IrqKind, IrqTrigger, VirtioDevice};

/// Guest RAM size in the tests.
pub(super) const MEM_SIZE: u64 = 0x10_0000;
/// Where test buffers are allocated (above the rings).
const SCRATCH_START: u64 = 0x1_0000;
/// The used ring. `MockSplitQueue` places its own used ring inside the
/// avail ring for 256-entry queues (it sizes the avail ring in entries, not
/// bytes), so the tests put the used ring here instead.
const USED_RING: u64 = 0x2000;

/// One descriptor as the test describes it.
#[derive(Debug, Clone, Copy)]
pub(super) struct D {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

/// A device-readable descriptor.
pub(super) fn r(addr: u64, len: u32) -> D {
    D {
        addr,
        len,
        writable: false,
    }
}

/// A device-writable descriptor.
pub(super) fn w(addr: u64, len: u32) -> D {
    D {
        addr,
        len,
        writable: true,
    }
}

/// A request's addresses, to look at the result.
#[derive(Debug, Clone, Copy)]
pub(super) struct Req {
    pub head: u16,
    pub status: u64,
}

/// The guest side: memory, rings, buffers.
pub(super) struct Guest {
    pub mem: &'static GuestMemory,
    pub vq: MockSplitQueue<'static, GuestMemory>,
    next_desc: u16,
    bump: u64,
    used_seen: u16,
}

/// A guest with one drive (derefs to its [`Guest`]).
pub(super) struct T {
    pub g: Guest,
    pub blk: Block,
    pub image: NamedTempFile,
    pub irq: Arc<IrqTrigger>,
}

/// The used ring's index (how many requests the device returned).
pub(super) fn used_idx(mem: &GuestMemory) -> u16 {
    mem.read_obj(GuestAddress(USED_RING + 2)).unwrap()
}

/// Guest memory that lives for the whole test (the mock queue borrows it).
pub(super) fn leaked_mem() -> &'static GuestMemory {
    Box::leak(Box::new(
        GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap(),
    ))
}

/// A writable image of `size` bytes, each sector filled with its number.
pub(super) fn image(size: u64) -> NamedTempFile {
    let mut f = NamedTempFile::new().unwrap();
    let mut buf = vec![0u8; size as usize];
    for (i, chunk) in buf.chunks_mut(512).enumerate() {
        chunk.fill(i as u8);
    }
    f.write_all(&buf).unwrap();
    f.flush().unwrap();
    f
}

impl Guest {
    /// Fresh guest memory with an empty queue.
    pub fn new() -> Self {
        let mem = leaked_mem();
        Self {
            mem,
            vq: MockSplitQueue::new(mem, 256),
            next_desc: 0,
            bump: SCRATCH_START,
            used_seen: 0,
        }
    }

    /// The queue as the transport would hand it over: the mock's descriptor
    /// table and avail ring, our used ring (emptied).
    pub fn queue(&self) -> Queue {
        self.mem
            .write_slice(&[0; 4], GuestAddress(USED_RING))
            .unwrap();
        let mut q = Queue::new(256).unwrap();
        q.try_set_desc_table_address(self.vq.desc_table_addr())
            .unwrap();
        q.try_set_avail_ring_address(self.vq.avail_addr()).unwrap();
        q.try_set_used_ring_address(GuestAddress(USED_RING))
            .unwrap();
        q.set_ready(true);
        assert!(q.is_valid(self.mem));
        q
    }

    /// Guest buffer space (never reused within a test).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let addr = self.bump;
        self.bump += len.next_multiple_of(16);
        assert!(self.bump <= MEM_SIZE, "test ran out of guest memory");
        addr
    }

    /// Writes descriptors (linked in order) and makes the chain available.
    pub fn chain(&mut self, descs: &[D]) -> u16 {
        let n = descs.len() as u16;
        if self.next_desc + n > 256 {
            self.next_desc = 0;
        }
        let head = self.next_desc;
        for (i, d) in descs.iter().enumerate() {
            let index = head + i as u16;
            let last = i + 1 == descs.len();
            let mut flags = if d.writable { VRING_DESC_F_WRITE } else { 0 } as u16;
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.store_desc(index, d.addr, d.len, flags, index + 1);
        }
        self.next_desc += n;
        self.make_available(head);
        head
    }

    /// Writes one raw descriptor (any flags, any next).
    pub fn store_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let desc = SplitDescriptor::new(addr, len, flags, next);
        self.vq
            .desc_table()
            .store(index, RawDescriptor::from(desc))
            .unwrap();
    }

    /// Puts `head` in the available ring and bumps its index.
    pub fn make_available(&self, head: u16) {
        let idx = self.vq.avail().idx().load();
        self.vq
            .avail()
            .ring()
            .ref_at(usize::from(idx % 256))
            .unwrap()
            .store(head);
        self.vq.avail().idx().store(idx.wrapping_add(1));
    }

    /// A header in its own descriptor.
    pub fn header(&mut self, kind: u32, sector: u64) -> D {
        let addr = self.alloc(16);
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(addr)).unwrap();
        r(addr, 16)
    }

    /// A status descriptor, pre-filled with 0xff so a write is visible.
    pub fn status_desc(&mut self) -> D {
        let addr = self.alloc(1);
        self.mem.write_obj(0xffu8, GuestAddress(addr)).unwrap();
        w(addr, 1)
    }

    /// header + `data` + status, made available.
    pub fn request(&mut self, kind: u32, sector: u64, data: &[D]) -> Req {
        let header = self.header(kind, sector);
        let status = self.status_desc();
        let mut descs = vec![header];
        descs.extend_from_slice(data);
        descs.push(status);
        Req {
            head: self.chain(&descs),
            status: status.addr,
        }
    }

    /// Used-ring entries added since the last call: (head, len).
    pub fn used(&mut self) -> Vec<(u16, u32)> {
        let idx = used_idx(self.mem);
        let mut out = Vec::new();
        while self.used_seen != idx {
            let elem = USED_RING + 4 + 8 * u64::from(self.used_seen % 256);
            let id: u32 = self.mem.read_obj(GuestAddress(elem)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(elem + 4)).unwrap();
            out.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
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

impl T {
    /// A 64-sector writable drive, activated with every offered feature.
    pub fn new() -> Self {
        Self::build(64 * 512, false, None, "flint-disk0")
    }

    /// A drive over a fresh image of `size` bytes, activated.
    pub fn build(size: u64, read_only: bool, limiter: Option<RateLimiter>, id: &str) -> Self {
        let image = image(size);
        let blk = Block::new(BlockConfig {
            drive_id: id.into(),
            path: image.path().into(),
            read_only,
            rate_limiter: limiter,
        })
        .unwrap();
        let mut t = Self::unactivated(blk, image);
        let features = t.blk.avail_features();
        t.activate(features);
        t
    }

    /// A drive that has not been activated yet.
    pub fn unactivated(blk: Block, image: NamedTempFile) -> Self {
        Self {
            g: Guest::new(),
            blk,
            image,
            irq: Arc::new(IrqTrigger::new().unwrap()),
        }
    }

    /// Activates the device with its queue on the mock rings.
    pub fn activate(&mut self, acked_features: u64) {
        self.blk
            .activate(Activation {
                mem: self.mem.clone(),
                queues: vec![self.queue()],
                interrupt: self.irq.clone(),
                acked_features,
            })
            .unwrap();
        // Activation kicks the queue eventfd; tests drive the queue directly.
        let _ = self.blk.queue_events()[0].read();
    }

    /// The driver resets the device and sets it up again from scratch.
    pub fn restart(&mut self, acked_features: u64) {
        self.blk.reset();
        self.g = Guest::new();
        self.activate(acked_features);
    }

    /// Runs the queue; returns how many requests completed.
    pub fn run(&mut self) -> usize {
        self.blk.process_queue()
    }

    /// Runs the queue and expects exactly `req` back with used length `len`;
    /// returns its status byte.
    pub fn complete(&mut self, req: Req, len: u32) -> u8 {
        assert_eq!(self.run(), 1);
        assert_eq!(self.used(), vec![(req.head, len)]);
        self.mem.read_obj(GuestAddress(req.status)).unwrap()
    }

    /// Image contents.
    pub fn disk(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.image.as_file().read_exact_at(&mut v, offset).unwrap();
        v
    }

    /// The whole image.
    pub fn whole_disk(&self) -> Vec<u8> {
        std::fs::read(self.image.path()).unwrap()
    }

    /// Proves the device still serves a normal write + read after whatever
    /// the test threw at it.
    pub fn assert_still_works(&mut self) {
        let _ = self.used();
        let buf = self.alloc(512);
        self.fill(buf, &[0x5a; 512]);
        let req = self.request(VIRTIO_BLK_T_OUT, 7, &[r(buf, 512)]);
        assert_eq!(self.complete(req, 1), VIRTIO_BLK_S_OK as u8);
        assert_eq!(self.disk(7 * 512, 512), vec![0x5a; 512]);
        let back = self.alloc(512);
        let req = self.request(VIRTIO_BLK_T_IN, 7, &[w(back, 512)]);
        assert_eq!(self.complete(req, 513), VIRTIO_BLK_S_OK as u8);
        assert_eq!(self.read_mem(back, 512), vec![0x5a; 512]);
        assert!(!self.blk.needs_reset());
    }

    /// Whether the guest got a used-buffer interrupt (and acks it).
    pub fn take_vring_irq(&self) -> bool {
        let hit = self.irq.status() & IrqKind::Vring as u32 != 0;
        self.irq.ack(IrqKind::Vring as u32);
        hit
    }
}

impl Deref for T {
    type Target = Guest;
    fn deref(&self) -> &Guest {
        &self.g
    }
}

impl DerefMut for T {
    fn deref_mut(&mut self) -> &mut Guest {
        &mut self.g
    }
}
