//! virtio-fs: a host directory the guest mounts (`mount -t virtiofs TAG
//! DIR`), with the FUSE data path served by an external vhost-user daemon
//! (`virtiofsd`), as Cloud Hypervisor and Kata do.
//!
//! flint keeps only the control path: the device's identity, features and
//! config space (`tag[36]`, `num_request_queues`), the virtio-mmio
//! transport, and the vhost-user conversation ([`frontend`]). When the
//! driver sets DRIVER_OK, the daemon gets guest memory (a shared memfd, see
//! `vmm::memory::MemoryBacking`), the queues' addresses, each queue's kick
//! eventfd (the KVM ioeventfd on the notify register, so the guest's kicks
//! reach the daemon without flint) and a call eventfd per queue. flint
//! watches the call eventfds on its event loop and turns each into the
//! transport's interrupt (status bit set, then the irqfd), since the Linux
//! virtio-mmio driver ignores an interrupt whose status is 0. A driver
//! reset stops the daemon's rings. A daemon that goes away is logged
//! (rate-limited), the device shows DEVICE_NEEDS_RESET, and its socket
//! leaves the event loop: no panic, no busy loop.
//!
//! The device's state lives in the daemon, so it cannot be snapshotted or
//! migrated: [`Persist::save`](crate::persist::Persist) refuses.
//!
//! Split by concern: `frontend` (vhost-user), `device` (the
//! [`VirtioDevice`](super::VirtioDevice) side), `event_handler` (the event
//! loop side), `persist` (the refusal).

pub mod frontend;

mod device;
mod event_handler;
mod persist;
mod watchdog;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::IrqTrigger;
use frontend::Backend;

pub use persist::FsSnapshotState;

/// virtio device type of a file system device.
pub const TYPE_FS: u32 = 26;
/// Size of the config space's tag field.
pub const TAG_LEN: usize = 36;
/// Size of the whole config space (tag, then le32 num_request_queues).
pub const CONFIG_SPACE_SIZE: usize = TAG_LEN + 4;

/// Why a virtio-fs device could not be set up or run.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The daemon's socket could not be reached.
    #[error("connecting to the vhost-user backend at {0}: {1}")]
    Connect(String, #[source] std::io::Error),
    /// A vhost-user request failed (refused, timed out, bad reply, closed).
    #[error("vhost-user {0}: {1}")]
    Protocol(&'static str, String),
    /// The backend cannot serve this device.
    #[error("vhost-user backend: {0}")]
    Backend(String),
    /// An eventfd could not be created.
    #[error("creating an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// A bad device configuration (tag length, queue count).
    #[error("{0}")]
    Config(String),
    /// The device's state lives in the daemon.
    #[error("virtio-fs device {0} cannot be snapshotted: its state lives in virtiofsd")]
    Snapshot(String),
}

/// What building a virtio-fs device needs.
#[derive(Debug, Clone)]
pub struct FsArgs {
    /// The mount tag (1..=36 bytes).
    pub tag: String,
    /// The daemon's vhost-user socket.
    pub socket: PathBuf,
    /// Request queues (the high-priority queue comes on top).
    pub num_request_queues: u16,
    /// Size of every queue.
    pub queue_size: u16,
    /// Runs first on the connection's watchdog thread (flint installs the
    /// thread's seccomp filter there).
    pub thread_init: Option<fn()>,
}

/// Cumulative counters, reported through `VirtioDevice::counters`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsCounters {
    /// Interrupts relayed from the daemon to the guest.
    pub interrupts: u64,
    /// Activations (the driver's DRIVER_OK) the daemon accepted.
    pub activations: u64,
    /// Times the daemon went away or failed a request.
    pub backend_errors: u64,
}

/// A virtio-fs device backed by a vhost-user daemon.
pub struct Fs {
    tag: String,
    config_space: [u8; CONFIG_SPACE_SIZE],
    queue_sizes: Vec<u16>,
    /// Kick eventfds: the queues' KVM ioeventfds, handed to the daemon.
    kicks: Vec<EventFd>,
    /// Call eventfds: the daemon signals used buffers on them.
    calls: Vec<EventFd>,
    /// The connection; `None` once the daemon went away.
    backend: Option<Backend>,
    avail_features: u64,
    acked_features: u64,
    /// The interrupt line while the driver runs the device.
    interrupt: Option<Arc<IrqTrigger>>,
    needs_reset: bool,
    counters: FsCounters,
}

impl Fs {
    /// Connects to the daemon at `args.socket` (it must be listening) and
    /// negotiates with it; the device is then ready for the driver.
    pub fn new(args: FsArgs) -> Result<Self, FsError> {
        if args.tag.is_empty() || args.tag.len() > TAG_LEN {
            return Err(FsError::Config(format!(
                "tag {:?} must be 1..={TAG_LEN} bytes",
                args.tag
            )));
        }
        if args.num_request_queues == 0 {
            return Err(FsError::Config("at least one request queue".into()));
        }
        let queues = usize::from(args.num_request_queues) + 1;
        let backend = Backend::connect(
            &args.socket,
            queues,
            frontend::REPLY_TIMEOUT,
            args.thread_init,
        )?;
        Self::with_backend(args, backend)
    }

    /// A device over an already negotiated connection.
    pub fn with_backend(args: FsArgs, backend: Backend) -> Result<Self, FsError> {
        let queues = usize::from(args.num_request_queues) + 1;
        let mut config_space = [0u8; CONFIG_SPACE_SIZE];
        let tag = args.tag.as_bytes();
        config_space[..tag.len()].copy_from_slice(tag);
        config_space[TAG_LEN..].copy_from_slice(&u32::from(args.num_request_queues).to_le_bytes());
        let eventfds = |n| {
            (0..n)
                .map(|_| EventFd::new(EFD_NONBLOCK).map_err(FsError::EventFd))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            tag: args.tag,
            config_space,
            queue_sizes: vec![args.queue_size; queues],
            kicks: eventfds(queues)?,
            calls: eventfds(queues)?,
            avail_features: backend.device_features(),
            backend: Some(backend),
            acked_features: 0,
            interrupt: None,
            needs_reset: false,
            counters: FsCounters::default(),
        })
    }

    /// The mount tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Whether the daemon is still connected.
    pub fn is_connected(&self) -> bool {
        self.backend.is_some()
    }

    /// Whether the driver runs the device (activated, not reset since).
    pub fn is_activated(&self) -> bool {
        self.interrupt.is_some()
    }

    /// The counters so far.
    pub fn counters_snapshot(&self) -> FsCounters {
        self.counters.clone()
    }
}
