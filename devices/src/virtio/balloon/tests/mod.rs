//! virtio-balloon driven the way a (possibly hostile) guest driver would,
//! over anonymous (or memfd) guest memory created in the test, so page
//! residency checked with `mincore(2)` is the real effect on the host.

mod api;
pub(crate) mod guest;
mod hint;
mod hostile;
mod inflate;
mod stats;

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use self::guest::{r, Guest};
use super::config::{QueueKind, PAGE_SIZE};
use super::{Balloon, BalloonConfig};
use crate::virtio::{Activation, GuestMemory, IrqKind, IrqTrigger, VirtioDevice};

/// Guest RAM below the area the tests balloon: rings and test buffers.
pub(super) const LOW: u64 = 8 << 20;

/// A guest with an activated balloon.
pub(super) struct T {
    pub g: Guest,
    pub b: Balloon,
    pub irq: Arc<IrqTrigger>,
}

/// Options with every queue offered.
pub(super) fn all_options() -> BalloonConfig {
    BalloonConfig {
        amount_mib: 0,
        deflate_on_oom: true,
        stats_polling_interval_s: 1,
        free_page_hinting: true,
        free_page_reporting: true,
    }
}

impl T {
    /// `LOW` + `extra` bytes of anonymous RAM, every offered feature acked.
    pub fn new(config: BalloonConfig, extra: u64) -> Self {
        let b = Balloon::new(config).unwrap();
        let n = b.layout().count;
        Self::with_guest(b, Guest::new(LOW + extra, n))
    }

    /// An activated balloon over the given guest.
    pub fn with_guest(b: Balloon, g: Guest) -> Self {
        let mut t = Self {
            g,
            b,
            irq: Arc::new(IrqTrigger::new().unwrap()),
        };
        let features = t.b.avail_features();
        t.activate(features);
        t
    }

    pub fn activate(&mut self, features: u64) {
        self.b
            .activate(Activation {
                mem: self.g.mem.clone(),
                queues: self.g.all_queues(),
                interrupt: self.irq.clone(),
                acked_features: features,
            })
            .unwrap();
        for evt in self.b.queue_events() {
            let _ = evt.read();
        }
    }

    /// The index of the queue for `kind` (as negotiated).
    pub fn q(&self, kind: QueueKind) -> usize {
        let layout = self.b.layout();
        (0..layout.count)
            .find(|&i| layout.kind(i) == Some(kind))
            .unwrap()
    }

    /// A counter by name.
    pub fn counter(&self, name: &str) -> u64 {
        self.b
            .counters()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1
    }

    /// Puts `pfns` in a buffer on queue `kind` and runs that queue.
    pub fn send_pfns(&mut self, kind: QueueKind, pfns: &[u32]) -> u16 {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        let buf = self.g.alloc(bytes.len() as u64);
        self.g.fill(buf, &bytes);
        let q = self.q(kind);
        let head = self.g.chain(q, &[r(buf, bytes.len() as u32)]);
        self.b.process_queue(q);
        head
    }

    /// Whether the guest got an interrupt of `kind` (and acks it).
    pub fn take_irq(&self, kind: IrqKind) -> bool {
        let hit = self.irq.status() & kind as u32 != 0;
        self.irq.ack(kind as u32);
        hit
    }

    /// A config space field (u32 at `offset`).
    pub fn config_u32(&self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.b.read_config(offset, &mut b);
        u32::from_le_bytes(b)
    }
}

/// Writes a byte into every page of `[addr, addr + len)` (host RSS grows).
pub(super) fn touch(mem: &GuestMemory, addr: u64, len: u64) {
    for page in (addr..addr + len).step_by(PAGE_SIZE as usize) {
        mem.write_obj(0xa5u8, GuestAddress(page)).unwrap();
    }
}

/// How many pages of `[addr, addr + len)` are resident in host memory.
pub(super) fn resident(mem: &GuestMemory, addr: u64, len: u64) -> usize {
    let mut count = 0;
    let mut at = addr;
    while at < addr + len {
        let region = mem.find_region(GuestAddress(at)).unwrap();
        let off = at - region.start_addr().0;
        let n = (addr + len - at).min(region.len() - off);
        let host = mem.get_host_address(GuestAddress(at)).unwrap();
        let mut vec = vec![0u8; (n / PAGE_SIZE) as usize];
        // SAFETY: `host..host + n` is inside one mapped region of `mem`
        // (page-aligned: regions are mmap'd, `at` is a page multiple);
        // mincore only writes one byte per page into `vec`.
        let rc = unsafe { libc::mincore(host.cast(), n as usize, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        count += vec.iter().filter(|&&v| v & 1 != 0).count();
        at += n;
    }
    count
}

/// The process's resident set in KiB (VmRSS), for the figures printed.
pub(super) fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
