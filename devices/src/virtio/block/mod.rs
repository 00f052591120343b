//! virtio-blk: a raw image file as the guest's disk.
//!
//! The guest puts requests on a single queue: a 16-byte header (type,
//! reserved, sector) in device-readable memory, the data buffers, and a
//! 1-byte device-writable status at the very end of the chain. The device
//! runs them synchronously against the image with positional I/O, straight
//! between the file and guest memory (through vm-memory, never a host
//! bounce buffer sized by the guest).
//!
//! The driver is not trusted: every request is checked (directions, lengths,
//! sector range, guest addresses) before the image is touched. A bad request
//! completes with `VIRTIO_BLK_S_IOERR`/`UNSUPP`; a chain that cannot even
//! carry a status back is returned with length 0; a corrupted ring (an
//! available index or head out of range) stops the device until the driver
//! resets it ([`Block::needs_reset`]).
//!
//! Split by concern: [`config`] (features, config space), [`request`]
//! (descriptor chain parsing), [`io`] (doing a request against the image),
//! [`device`] (the [`VirtioDevice`](super::VirtioDevice) side and queue
//! processing), [`event_handler`] (the VMM event loop side).

mod config;
mod device;
mod event_handler;
mod io;
mod persist;
mod request;

#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::config::{avail_features, ConfigSpace, SECTOR_SHIFT};
use self::request::{Segment, MAX_SEGMENTS};
use super::{GuestMemory, IrqTrigger, PendingRestore};
use crate::rate_limiter::RateLimiter;

pub use self::config::{QUEUE_SIZE, SECTOR_SIZE};
pub use self::persist::{BlockPersistError, BlockSnapshotState};

/// How the VMM describes one drive (built from the VM's configuration).
pub struct BlockConfig {
    /// The drive's name: what `VIRTIO_BLK_T_GET_ID` returns to the guest
    /// (truncated to 20 bytes), and how logs name it.
    pub drive_id: String,
    /// The raw disk image (a regular file or a block device).
    pub path: PathBuf,
    /// Open the image read-only and offer `VIRTIO_BLK_F_RO`, so the guest
    /// can neither write nor discard.
    pub read_only: bool,
    /// Throttles the drive's bandwidth and/or operations.
    pub rate_limiter: Option<RateLimiter>,
}

/// Why a drive could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened.
    #[error("drive {drive_id}: cannot open disk image {} for {access}: {source}", .path.display())]
    Open {
        /// The drive.
        drive_id: String,
        /// The image.
        path: PathBuf,
        /// "reading" or "reading and writing".
        access: &'static str,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The size of the image could not be determined.
    #[error("drive {drive_id}: cannot find the size of disk image {}: {source}", .path.display())]
    Size {
        /// The drive.
        drive_id: String,
        /// The image.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The path is neither a regular file nor a block device.
    #[error("drive {drive_id}: disk image {} is not a regular file or block device", .path.display())]
    NotAnImage {
        /// The drive.
        drive_id: String,
        /// The image.
        path: PathBuf,
    },
    /// The queue notification eventfd could not be created.
    #[error("drive {drive_id}: creating the queue eventfd: {source}")]
    EventFd {
        /// The drive.
        drive_id: String,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// The device's own state as plain data: what a snapshot needs to save
/// besides the transport's registers and the queue's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockState {
    /// The drive's name.
    pub drive_id: String,
    /// The image.
    pub path: PathBuf,
    /// Whether the drive is read-only.
    pub read_only: bool,
    /// Size of the drive in 512-byte sectors (fixed when the image was opened).
    pub capacity_sectors: u64,
    /// Features offered to the driver.
    pub avail_features: u64,
    /// Features the driver accepted (0 until activation).
    pub acked_features: u64,
    /// Whether the device stopped on a corrupted queue and waits for a reset.
    pub needs_reset: bool,
}

/// What the device holds between activation and reset.
struct Active {
    mem: GuestMemory,
    queue: Queue,
    interrupt: Arc<IrqTrigger>,
}

/// A virtio-blk device backed by a raw image file.
pub struct Block {
    state: BlockState,
    file: File,
    config_space: ConfigSpace,
    queue_evts: [EventFd; 1],
    rate_limiter: Option<RateLimiter>,
    active: Option<Active>,
    /// Saved ring positions the next activation starts at (a restore).
    restored: Option<PendingRestore>,
    /// Scratch list of a request's data buffers, allocated once
    /// ([`MAX_SEGMENTS`] entries) and reused for every request.
    segments: Vec<Segment>,
    /// What the device has done, for the metrics file.
    counters: Counters,
    /// An image opened for the next `update_path` ([`Block::preopen`]).
    preopened: Option<(PathBuf, File)>,
}

/// Cumulative counters, reported through `VirtioDevice::counters`.
#[derive(Debug, Clone, Default)]
struct Counters {
    read_bytes: u64,
    write_bytes: u64,
    reads: u64,
    writes: u64,
    flushes: u64,
    /// Requests that failed (also keeps a hostile guest from flooding the log).
    bad_requests: u64,
    /// Times the rate limiter held requests back.
    throttled: u64,
}

/// Opens a drive image the way the device uses it: read-only, or read and
/// write.
pub fn open_image(path: &std::path::Path, read_only: bool) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(!read_only).open(path)
}

impl Block {
    /// Opens the drive's image and prepares the device (not yet activated).
    pub fn new(config: BlockConfig) -> Result<Self, BlockError> {
        let BlockConfig {
            drive_id,
            path,
            read_only,
            rate_limiter,
        } = config;
        let file = open_image(&path, read_only).map_err(|source| BlockError::Open {
            drive_id: drive_id.clone(),
            path: path.clone(),
            access: if read_only {
                "reading"
            } else {
                "reading and writing"
            },
            source,
        })?;
        Self::with_file(
            BlockConfig {
                drive_id,
                path,
                read_only,
                rate_limiter,
            },
            file,
        )
    }

    /// Prepares the device on an image `file` already opened at
    /// `config.path` with [`open_image`] (by a thread allowed to open files).
    pub fn with_file(config: BlockConfig, mut file: File) -> Result<Self, BlockError> {
        let BlockConfig {
            drive_id,
            path,
            read_only,
            rate_limiter,
        } = config;
        let size_error = |source| BlockError::Size {
            drive_id: drive_id.clone(),
            path: path.clone(),
            source,
        };
        let kind = file.metadata().map_err(size_error)?.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(BlockError::NotAnImage { drive_id, path });
        }
        // Seeking to the end also works for block devices, whose metadata
        // length is 0.
        let size = file.seek(SeekFrom::End(0)).map_err(size_error)?;
        if size & (SECTOR_SIZE - 1) != 0 {
            log::warn!(
                "drive {drive_id}: {} is {size} bytes, not a multiple of {SECTOR_SIZE}; \
                 the last {} bytes are not addressable",
                path.display(),
                size & (SECTOR_SIZE - 1)
            );
        }
        let capacity_sectors = size >> SECTOR_SHIFT;
        let evt = EventFd::new(EFD_NONBLOCK).map_err(|source| BlockError::EventFd {
            drive_id: drive_id.clone(),
            source,
        })?;
        Ok(Self {
            state: BlockState {
                drive_id,
                path,
                read_only,
                capacity_sectors,
                avail_features: avail_features(read_only),
                acked_features: 0,
                needs_reset: false,
            },
            file,
            config_space: ConfigSpace::new(capacity_sectors),
            queue_evts: [evt],
            rate_limiter,
            active: None,
            restored: None,
            segments: Vec::with_capacity(MAX_SEGMENTS),
            counters: Counters::default(),
            preopened: None,
        })
    }

    /// Switches the drive to another image (a run-time `PATCH` of
    /// `path_on_host`, e.g. after a host-side resize or a media swap). The
    /// new capacity is visible in config space; the caller tells the guest
    /// (a config-change interrupt). Requests already done went to the old file.
    ///
    /// A file handed over with [`Block::preopen`] for this very path is
    /// used instead of opening it here.
    pub fn update_path(&mut self, path: PathBuf) -> Result<(), BlockError> {
        if let Some((opened, file)) = self.preopened.take() {
            if opened == path {
                return self.update_file(path, file);
            }
        }
        let file = open_image(&path, self.state.read_only).map_err(|source| BlockError::Open {
            drive_id: self.state.drive_id.clone(),
            path: path.clone(),
            access: if self.state.read_only {
                "reading"
            } else {
                "reading and writing"
            },
            source,
        })?;
        self.update_file(path, file)
    }

    /// Hands over the image for the next [`Block::update_path`] to `path`,
    /// opened elsewhere with [`open_image`] (the VMM's device thread may not
    /// open files; its control thread does).
    pub fn preopen(&mut self, path: PathBuf, file: File) {
        self.preopened = Some((path, file));
    }

    /// [`Block::update_path`] with the image already opened at `path` with
    /// [`open_image`] (the device thread may not open files: the VMM's
    /// control thread opens it).
    pub fn update_file(&mut self, path: PathBuf, file: File) -> Result<(), BlockError> {
        let replacement = Block::with_file(
            BlockConfig {
                drive_id: self.state.drive_id.clone(),
                path,
                read_only: self.state.read_only,
                rate_limiter: None,
            },
            file,
        )?;
        self.file = replacement.file;
        self.state.path = replacement.state.path;
        self.state.capacity_sectors = replacement.state.capacity_sectors;
        self.config_space = ConfigSpace::new(self.state.capacity_sectors);
        log::info!(
            "drive {}: now backed by {} ({} sectors)",
            self.state.drive_id,
            self.state.path.display(),
            self.state.capacity_sectors
        );
        Ok(())
    }

    /// Changes the drive's limits at run time. `false` if the drive was
    /// created without a rate limiter (its timer is not on the event loop).
    pub fn update_rate_limiter(
        &mut self,
        bandwidth: Option<crate::rate_limiter::BucketConfig>,
        ops: Option<crate::rate_limiter::BucketConfig>,
    ) -> bool {
        match self.rate_limiter.as_mut() {
            Some(limiter) => {
                limiter.update_buckets(bandwidth, ops);
                true
            }
            None => false,
        }
    }

    /// Size of the drive in 512-byte sectors: what the guest sees as its
    /// disk size (a partial last sector of the image is left out).
    pub fn capacity_sectors(&self) -> u64 {
        self.state.capacity_sectors
    }

    /// The drive's name, for logs and the VMM's bookkeeping.
    pub fn drive_id(&self) -> &str {
        &self.state.drive_id
    }

    /// Whether the driver has started the device (and not reset it since).
    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// A copy of the device's state, for snapshots and inspection.
    pub fn state(&self) -> BlockState {
        self.state.clone()
    }
}
