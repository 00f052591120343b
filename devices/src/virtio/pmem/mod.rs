//! virtio-pmem: a host file mapped straight into guest-physical memory,
//! which the guest sees as a persistent-memory disk (`/dev/pmem0`) it reads
//! and writes with plain loads and stores (DAX), no queue round trip.
//!
//! The file is mapped shared (read-only with `read_only`) over an anonymous
//! reservation rounded up to 2 MiB, so the guest region is 2 MiB aligned
//! and sized (what the guest's memory-hotplug code wants) and the tail past
//! the end of the file reads zeros instead of faulting. The VMM places the
//! region above RAM and registers the mapping as a KVM memory slot; the
//! device only tells the guest where it is (config space `start`, `size`).
//!
//! One queue carries FLUSH requests: the guest asks for its stores to reach
//! stable storage, and the device `msync`s the mapping and `fsync`s the
//! file, answering 0 (done) or 1 (failed). Anything else is answered 1.
//! Requests are handled by [`crate::virtio::reqresp`] (hostile chains are
//! refused, a broken ring stops the device until reset).

mod persist;
#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    read_config_bytes, reqresp, ActivateError, Activation, GuestMemory, IrqTrigger, PendingRestore,
    VirtioDevice, VIRTIO_F_VERSION_1,
};
pub use persist::{PmemPersistError, PmemState};

/// virtio device type of a persistent-memory device.
pub const TYPE_PMEM: u32 = 27;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Guest regions are aligned and sized to this (2 MiB).
pub const PMEM_ALIGN: u64 = 2 << 20;
/// `virtio_pmem_req.type` of a flush.
pub const REQ_FLUSH: u32 = 0;
/// `virtio_pmem_resp.ret` of a successful request.
pub const RESP_OK: u32 = 0;
/// `virtio_pmem_resp.ret` of a failed one.
pub const RESP_ERR: u32 = 1;

const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];

/// Why a pmem device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum PmemError {
    /// The backing file could not be opened or measured.
    #[error("pmem {id}: {path}: {source}")]
    File {
        /// Device id.
        id: String,
        /// The file.
        path: String,
        /// What the host said.
        source: io::Error,
    },
    /// The file is empty (nothing to map).
    #[error("pmem {0}: the backing file is empty")]
    Empty(String),
    /// mmap failed.
    #[error("pmem {0}: mapping the file: {1}")]
    Map(String, io::Error),
    /// The queue eventfd could not be created.
    #[error("pmem: creating the queue eventfd: {0}")]
    EventFd(io::Error),
}

/// What building a pmem device needs.
#[derive(Debug, Clone)]
pub struct PmemArgs {
    /// Device id.
    pub id: String,
    /// The host file.
    pub path: PathBuf,
    /// Whether the guest may only read it.
    pub read_only: bool,
}

/// The host mapping of the file: an anonymous reservation of the aligned
/// size with the file mapped shared over its start. Unmapped on drop.
#[derive(Debug)]
pub struct PmemMapping {
    addr: *mut libc::c_void,
    len: usize,
    file_len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; nothing in it is
// tied to a thread, and access through the raw pointer is the guest's (via
// KVM) or msync's, neither of which needs `&mut`.
unsafe impl Send for PmemMapping {}

impl PmemMapping {
    fn new(file: &File, file_len: u64, read_only: bool) -> io::Result<Self> {
        let len = file_len
            .checked_next_multiple_of(PMEM_ALIGN)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or_else(|| io::Error::other("file too large"))?;
        let file_len = file_len as usize; // <= len, which fits usize
        let prot = if read_only {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        // SAFETY: a fresh anonymous private mapping at an address the kernel
        // picks; the result is checked.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mapping = Self {
            addr,
            len,
            file_len,
        };
        // SAFETY: MAP_FIXED replaces the start of the reservation made just
        // above (owned by `mapping`, of `len` >= `file_len` bytes) with the
        // file; nothing else uses that range yet.
        let file_addr = unsafe {
            libc::mmap(
                addr,
                file_len,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                file.as_raw_fd(),
                0,
            )
        };
        if file_addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(mapping)
    }

    /// The host address of the region.
    pub fn host_addr(&self) -> u64 {
        self.addr as u64
    }

    /// The region's size (the file's, rounded up to [`PMEM_ALIGN`]).
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Whether the region is empty (never: empty files are refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The mapped file's size.
    pub fn file_len(&self) -> u64 {
        self.file_len as u64
    }

    fn msync(&self) -> io::Result<()> {
        // SAFETY: [addr, addr + file_len) is the live file mapping.
        if unsafe { libc::msync(self.addr, self.file_len, libc::MS_SYNC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for PmemMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range this value owns; the VMM removes
        // (or has destroyed) the KVM slot pointing at it before the device
        // is dropped.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// Cumulative counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PmemCounters {
    /// Flushes done.
    pub flushes: u64,
    /// Failed flushes, unknown requests and malformed chains.
    pub errors: u64,
}

struct Active {
    mem: GuestMemory,
    queue: Queue,
    interrupt: Arc<IrqTrigger>,
}

/// A virtio-pmem device.
pub struct Pmem {
    id: String,
    read_only: bool,
    file: File,
    mapping: PmemMapping,
    /// Guest-physical address of the region (set by the VMM before boot).
    start: u64,
    avail_features: u64,
    acked_features: u64,
    needs_reset: bool,
    counters: PmemCounters,
    queue_evts: [EventFd; 1],
    active: Option<Active>,
    restored: Option<PendingRestore>,
}

impl Pmem {
    /// Opens and maps the file (not yet placed in the guest).
    pub fn new(args: PmemArgs) -> Result<Self, PmemError> {
        let file_err = |source| PmemError::File {
            id: args.id.clone(),
            path: args.path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!args.read_only)
            .open(&args.path)
            .map_err(file_err)?;
        let file_len = file.metadata().map_err(file_err)?.len();
        if file_len == 0 {
            return Err(PmemError::Empty(args.id));
        }
        let mapping = PmemMapping::new(&file, file_len, args.read_only)
            .map_err(|e| PmemError::Map(args.id.clone(), e))?;
        let evt = EventFd::new(EFD_NONBLOCK).map_err(PmemError::EventFd)?;
        Ok(Self {
            id: args.id,
            read_only: args.read_only,
            file,
            mapping,
            start: 0,
            avail_features: VIRTIO_F_VERSION_1,
            acked_features: 0,
            needs_reset: false,
            counters: PmemCounters::default(),
            queue_evts: [evt],
            active: None,
            restored: None,
        })
    }

    /// The host mapping the VMM registers with KVM.
    pub fn mapping(&self) -> &PmemMapping {
        &self.mapping
    }

    /// Whether the guest may only read the region.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Where the region sits in guest-physical memory.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Places the region at `start` (2 MiB aligned, above RAM): what the
    /// guest reads from the config space.
    pub fn set_start(&mut self, start: u64) {
        self.start = start;
    }

    fn config_bytes(&self) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..8].copy_from_slice(&self.start.to_le_bytes());
        c[8..].copy_from_slice(&self.mapping.len().to_le_bytes());
        c
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.mapping.msync()?;
        self.file.sync_all()
    }

    /// Serves the flush requests waiting on the queue; returns how many.
    /// Public so tests can drive the device synchronously.
    pub fn process_queue(&mut self) -> usize {
        let Some(mut active) = self.active.take() else {
            return 0;
        };
        if self.needs_reset {
            self.active = Some(active);
            return 0;
        }
        let what = format!("pmem {}", self.id);
        let mut flushes = 0;
        let mut errors = 0;
        let served = reqresp::serve::<4, 4>(
            &mut active.queue,
            &active.mem,
            self.acked_features,
            &self.queue_evts[0],
            &what,
            |req| {
                let ret = match req.map(u32::from_le_bytes) {
                    Some(REQ_FLUSH) => match self.flush() {
                        Ok(()) => {
                            flushes += 1;
                            RESP_OK
                        }
                        Err(e) => {
                            log::error!("{what}: flush: {e}");
                            errors += 1;
                            RESP_ERR
                        }
                    },
                    _ => {
                        errors += 1;
                        RESP_ERR
                    }
                };
                ret.to_le_bytes()
            },
        );
        self.counters.flushes += flushes;
        self.counters.errors += errors + served.malformed as u64;
        if served.finish(&mut active.queue, &active.mem, &active.interrupt, &what) {
            self.needs_reset = true;
        }
        self.active = Some(active);
        served.completed
    }
}

impl VirtioDevice for Pmem {
    fn device_type(&self) -> u32 {
        TYPE_PMEM
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
        crate::virtio::ignore_config_write(&format_args!("pmem {}", self.id), offset, data);
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
            log::error!("pmem {}: kicking the queue: {e}", self.id);
        }
        Ok(())
    }

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
            ("flushes", self.counters.flushes),
            ("errors", self.counters.errors),
        ]
    }
}

impl event_manager::MutEventSubscriber for Pmem {
    fn init(&mut self, ops: &mut event_manager::EventOps) {
        let queue =
            event_manager::Events::with_data(&self.queue_evts[0], 0, event_manager::EventSet::IN);
        if let Err(e) = ops.add(queue) {
            log::error!("pmem {}: watching the queue eventfd: {e}", self.id);
        }
    }

    fn process(&mut self, _events: event_manager::Events, _ops: &mut event_manager::EventOps) {
        match self.queue_evts[0].read() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => log::error!("pmem {}: reading the queue eventfd: {e}", self.id),
        }
        self.process_queue();
    }
}
