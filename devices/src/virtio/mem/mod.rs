//! virtio-mem: memory the guest plugs and unplugs at run time, block by
//! block, inside a hotplug region the VMM set aside above RAM.
//!
//! The VMM maps the whole region as part of guest memory before boot (one
//! anonymous `MAP_NORESERVE` mapping, one KVM slot: see
//! `vmm::memory::hotplug_region`), so it costs the host nothing until the
//! guest touches it. The device only keeps the books: which blocks are
//! plugged (a bitmap), how much the host wants plugged (`requested_size`,
//! changed at run time with a config-change interrupt), and it gives the
//! memory of unplugged blocks back to the host (`madvise(MADV_DONTNEED)`).
//!
//! Requests (PLUG, UNPLUG, UNPLUG_ALL, STATE) come on one queue and are
//! checked before anything changes: a range that is empty, misaligned or
//! outside the region is answered ERROR, plugging a plugged block or
//! unplugging an unplugged one is ERROR, plugging beyond `requested_size`
//! is NACK (virtio 1.2, 5.15.6). Hostile chains are refused by
//! [`crate::virtio::reqresp`]; a broken ring stops the device until reset.
//!
//! `VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE` is not offered: unplugged blocks
//! stay mapped (Linux on x86-64 supports this "legacy" mode), so a guest
//! that touches them gets zero pages, bounded by the region's size.

mod persist;
#[cfg(test)]
mod tests;

use std::io;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    read_config_bytes, reqresp, ActivateError, Activation, GuestMemory, IrqTrigger, PendingRestore,
    VirtioDevice, VIRTIO_F_VERSION_1,
};
pub use persist::{MemPersistError, MemState};

/// virtio device type of a memory device.
pub const TYPE_MEM: u32 = 24;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 128;
/// Request types.
pub const REQ_PLUG: u16 = 0;
/// Unplug a range of blocks.
pub const REQ_UNPLUG: u16 = 1;
/// Unplug every block.
pub const REQ_UNPLUG_ALL: u16 = 2;
/// Ask whether a range is plugged.
pub const REQ_STATE: u16 = 3;
/// Response: done.
pub const RESP_ACK: u16 = 0;
/// Response: refused for now (e.g. more than requested).
pub const RESP_NACK: u16 = 1;
/// Response: the request is invalid.
pub const RESP_ERROR: u16 = 3;
/// STATE answer: every block plugged.
pub const STATE_PLUGGED: u16 = 0;
/// STATE answer: no block plugged.
pub const STATE_UNPLUGGED: u16 = 1;
/// STATE answer: some of each.
pub const STATE_MIXED: u16 = 2;
/// Smallest block size accepted (2 MiB, the x86 page-block size).
pub const MIN_BLOCK_SIZE: u64 = 2 << 20;

const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];
/// Size of `struct virtio_mem_req`.
const REQ_LEN: usize = 24;
/// Size of `struct virtio_mem_resp`.
const RESP_LEN: usize = 10;

/// Why a memory device could not be created or changed.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// The geometry does not hold together.
    #[error("virtio-mem: {0}")]
    Geometry(String),
    /// A requested size the region cannot satisfy.
    #[error("virtio-mem: requested size {requested:#x} must be a multiple of the block size {block:#x} and at most the region size {region:#x}")]
    Requested {
        /// What was asked.
        requested: u64,
        /// The block size.
        block: u64,
        /// The region size.
        region: u64,
    },
    /// The queue eventfd could not be created.
    #[error("virtio-mem: creating the queue eventfd: {0}")]
    EventFd(io::Error),
}

/// Where the hotplug region is and how it is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemArgs {
    /// Guest-physical start of the region.
    pub addr: u64,
    /// Its size in bytes.
    pub region_size: u64,
    /// Plug granularity in bytes (a power of two, at least 2 MiB).
    pub block_size: u64,
    /// KVM slot granularity in bytes (reported only; see the module docs).
    pub slot_size: u64,
}

/// Cumulative counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemCounters {
    /// Successful plug requests.
    pub plugs: u64,
    /// Successful unplug requests (UNPLUG_ALL included).
    pub unplugs: u64,
    /// Requests answered ERROR or NACK, and malformed chains.
    pub refused: u64,
}

struct Active {
    mem: GuestMemory,
    queue: Queue,
    interrupt: Arc<IrqTrigger>,
}

/// A virtio-mem device.
pub struct Mem {
    args: MemArgs,
    requested_size: u64,
    /// One bit per block, set while the block is plugged.
    plugged: Vec<u64>,
    avail_features: u64,
    acked_features: u64,
    needs_reset: bool,
    counters: MemCounters,
    queue_evts: [EventFd; 1],
    active: Option<Active>,
    restored: Option<PendingRestore>,
}

impl Mem {
    /// A device with nothing plugged and nothing requested.
    pub fn new(args: MemArgs) -> Result<Self, MemError> {
        let bad = |m: String| Err(MemError::Geometry(m));
        if args.block_size < MIN_BLOCK_SIZE || !args.block_size.is_power_of_two() {
            return bad(format!(
                "block size {:#x} must be a power of two ≥ 2 MiB",
                args.block_size
            ));
        }
        if args.region_size == 0 || !args.region_size.is_multiple_of(args.block_size) {
            return bad(format!(
                "region size {:#x} must be a non-zero multiple of the block size",
                args.region_size
            ));
        }
        if !args.addr.is_multiple_of(args.block_size)
            || args.addr.checked_add(args.region_size).is_none()
        {
            return bad(format!(
                "region start {:#x} is not block aligned",
                args.addr
            ));
        }
        let blocks = args.region_size / args.block_size;
        let evt = EventFd::new(EFD_NONBLOCK).map_err(MemError::EventFd)?;
        Ok(Self {
            args,
            requested_size: 0,
            plugged: vec![0; blocks.div_ceil(64) as usize],
            avail_features: VIRTIO_F_VERSION_1,
            acked_features: 0,
            needs_reset: false,
            counters: MemCounters::default(),
            queue_evts: [evt],
            active: None,
            restored: None,
        })
    }

    /// The region's geometry.
    pub fn args(&self) -> MemArgs {
        self.args
    }

    /// Bytes currently plugged.
    pub fn plugged_size(&self) -> u64 {
        let blocks: u64 = self.plugged.iter().map(|w| u64::from(w.count_ones())).sum();
        blocks * self.args.block_size
    }

    /// Bytes the host wants plugged.
    pub fn requested_size(&self) -> u64 {
        self.requested_size
    }

    /// Asks the guest to plug (or unplug down to) `size` bytes; the caller
    /// then raises the config-change interrupt.
    pub fn set_requested_size(&mut self, size: u64) -> Result<(), MemError> {
        if !size.is_multiple_of(self.args.block_size) || size > self.args.region_size {
            return Err(MemError::Requested {
                requested: size,
                block: self.args.block_size,
                region: self.args.region_size,
            });
        }
        self.requested_size = size;
        Ok(())
    }

    /// Whether block `i` is plugged.
    pub fn is_plugged(&self, i: u64) -> bool {
        self.plugged[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    fn set_block(&mut self, i: u64, on: bool) {
        let word = &mut self.plugged[(i / 64) as usize];
        if on {
            *word |= 1 << (i % 64);
        } else {
            *word &= !(1 << (i % 64));
        }
    }

    fn config_bytes(&self) -> [u8; 56] {
        let mut c = [0u8; 56];
        c[0..8].copy_from_slice(&self.args.block_size.to_le_bytes());
        // node_id (8..10) 0, padding (10..16).
        c[16..24].copy_from_slice(&self.args.addr.to_le_bytes());
        c[24..32].copy_from_slice(&self.args.region_size.to_le_bytes());
        c[32..40].copy_from_slice(&self.args.region_size.to_le_bytes());
        c[40..48].copy_from_slice(&self.plugged_size().to_le_bytes());
        c[48..56].copy_from_slice(&self.requested_size.to_le_bytes());
        c
    }

    /// The blocks `[first, first + count)` a request names, or `None` if
    /// the range is empty, misaligned or outside the region.
    fn blocks(&self, addr: u64, nb_blocks: u16) -> Option<(u64, u64)> {
        let a = &self.args;
        let count = u64::from(nb_blocks);
        let offset = addr.checked_sub(a.addr)?;
        if count == 0 || !offset.is_multiple_of(a.block_size) {
            return None;
        }
        let first = offset / a.block_size;
        let end = first.checked_add(count)?;
        (end <= a.region_size / a.block_size).then_some((first, count))
    }

    /// Gives the host memory behind blocks `[first, first + count)` back.
    fn discard(&self, mem: Option<&GuestMemory>, first: u64, count: u64) {
        let Some(mem) = mem else {
            return;
        };
        let gpa = self.args.addr + first * self.args.block_size;
        let len = (count * self.args.block_size) as usize;
        let Ok(host) = mem.get_host_address(GuestAddress(gpa)) else {
            crate::guest_error!("virtio-mem: block at {gpa:#x} is not in guest memory");
            return;
        };
        if !mem.check_range(GuestAddress(gpa), len) {
            crate::guest_error!("virtio-mem: blocks at {gpa:#x}+{len:#x} are not in guest memory");
            return;
        }
        // SAFETY: [host, host + len) lies in one guest memory region (just
        // checked), a private anonymous mapping; MADV_DONTNEED only drops
        // its pages, which read as zeros afterwards (what an unplugged
        // block holds).
        if unsafe { libc::madvise(host.cast(), len, libc::MADV_DONTNEED) } != 0 {
            log::error!(
                "virtio-mem: releasing {gpa:#x}+{len:#x}: {}",
                io::Error::last_os_error()
            );
        }
    }

    /// Carries out one request (24 bytes, `None` if shorter) and returns
    /// the 10-byte response. Public for tests and fuzzing.
    pub fn handle_request(
        &mut self,
        mem: Option<&GuestMemory>,
        req: Option<[u8; REQ_LEN]>,
    ) -> [u8; RESP_LEN] {
        let (resp, state) = self.answer(mem, req);
        if resp != RESP_ACK {
            self.counters.refused += 1;
        }
        let mut out = [0u8; RESP_LEN];
        out[0..2].copy_from_slice(&resp.to_le_bytes());
        out[8..10].copy_from_slice(&state.to_le_bytes());
        out
    }

    fn answer(&mut self, mem: Option<&GuestMemory>, req: Option<[u8; REQ_LEN]>) -> (u16, u16) {
        let Some(req) = req else {
            return (RESP_ERROR, 0);
        };
        let kind = u16::from_le_bytes([req[0], req[1]]);
        let addr = u64::from_le_bytes(req[8..16].try_into().unwrap_or_default());
        let nb_blocks = u16::from_le_bytes([req[16], req[17]]);
        match kind {
            REQ_PLUG => {
                let Some((first, count)) = self.blocks(addr, nb_blocks) else {
                    return (RESP_ERROR, 0);
                };
                if (first..first + count).any(|i| self.is_plugged(i)) {
                    return (RESP_ERROR, 0);
                }
                if self.plugged_size() + count * self.args.block_size > self.requested_size {
                    return (RESP_NACK, 0);
                }
                (first..first + count).for_each(|i| self.set_block(i, true));
                self.counters.plugs += 1;
                (RESP_ACK, 0)
            }
            REQ_UNPLUG => {
                let Some((first, count)) = self.blocks(addr, nb_blocks) else {
                    return (RESP_ERROR, 0);
                };
                if (first..first + count).any(|i| !self.is_plugged(i)) {
                    return (RESP_ERROR, 0);
                }
                self.discard(mem, first, count);
                (first..first + count).for_each(|i| self.set_block(i, false));
                self.counters.unplugs += 1;
                (RESP_ACK, 0)
            }
            REQ_UNPLUG_ALL => {
                let blocks = self.args.region_size / self.args.block_size;
                let mut i = 0;
                while i < blocks {
                    if !self.is_plugged(i) {
                        i += 1;
                        continue;
                    }
                    let start = i;
                    while i < blocks && self.is_plugged(i) {
                        i += 1;
                    }
                    self.discard(mem, start, i - start);
                }
                self.plugged.fill(0);
                self.counters.unplugs += 1;
                (RESP_ACK, 0)
            }
            REQ_STATE => {
                let Some((first, count)) = self.blocks(addr, nb_blocks) else {
                    return (RESP_ERROR, 0);
                };
                let plugged = (first..first + count)
                    .filter(|&i| self.is_plugged(i))
                    .count() as u64;
                let state = match plugged {
                    0 => STATE_UNPLUGGED,
                    n if n == count => STATE_PLUGGED,
                    _ => STATE_MIXED,
                };
                (RESP_ACK, state)
            }
            _ => (RESP_ERROR, 0),
        }
    }

    /// Serves the requests waiting on the queue; returns how many.
    pub fn process_queue(&mut self) -> usize {
        let Some(mut active) = self.active.take() else {
            return 0;
        };
        if self.needs_reset {
            self.active = Some(active);
            return 0;
        }
        let evt = self.queue_evts[0].try_clone();
        let served = match &evt {
            Ok(evt) => reqresp::serve::<REQ_LEN, RESP_LEN>(
                &mut active.queue,
                &active.mem.clone(),
                self.acked_features,
                evt,
                &"virtio-mem",
                |req| self.handle_request(Some(&active.mem), req),
            ),
            Err(e) => {
                log::error!("virtio-mem: cloning the queue eventfd: {e}");
                self.active = Some(active);
                return 0;
            }
        };
        self.counters.refused += served.malformed as u64;
        if served.finish(
            &mut active.queue,
            &active.mem,
            &active.interrupt,
            "virtio-mem",
        ) {
            self.needs_reset = true;
        }
        self.active = Some(active);
        served.completed
    }
}

impl VirtioDevice for Mem {
    fn device_type(&self) -> u32 {
        TYPE_MEM
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        crate::virtio::ignore_config_write(&"virtio-mem", offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation {
            mem,
            queues,
            interrupt,
            acked_features,
        } = activation;
        let count = queues.len();
        let Ok([mut queue]) = <[_; 1]>::try_from(queues) else {
            return Err(ActivateError::BadQueue(count.min(1)));
        };
        self.acked_features = acked_features;
        self.needs_reset = false;
        if let Some(restored) = self.restored.take() {
            if let Some(position) = restored.positions.first() {
                position.apply(&mut queue);
            }
            self.needs_reset = restored.needs_reset;
        }
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        if let Err(e) = self.queue_evts[0].write(1) {
            log::error!("virtio-mem: kicking the queue: {e}");
        }
        Ok(())
    }

    /// The plugged blocks stay plugged: a rebooted driver finds them
    /// through `plugged_size` and unplugs them (UNPLUG_ALL) itself.
    fn reset(&mut self) {
        self.active = None;
        self.restored = None;
        self.acked_features = 0;
        self.needs_reset = false;
    }

    fn needs_reset(&self) -> bool {
        self.needs_reset
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("plugs", self.counters.plugs),
            ("unplugs", self.counters.unplugs),
            ("refused", self.counters.refused),
            ("plugged_bytes", self.plugged_size()),
        ]
    }
}

impl event_manager::MutEventSubscriber for Mem {
    fn init(&mut self, ops: &mut event_manager::EventOps) {
        let queue =
            event_manager::Events::with_data(&self.queue_evts[0], 0, event_manager::EventSet::IN);
        if let Err(e) = ops.add(queue) {
            log::error!("virtio-mem: watching the queue eventfd: {e}");
        }
    }

    fn process(&mut self, _events: event_manager::Events, _ops: &mut event_manager::EventOps) {
        match self.queue_evts[0].read() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => log::error!("virtio-mem: reading the queue eventfd: {e}"),
        }
        self.process_queue();
    }
}
