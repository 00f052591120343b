//! virtio-rng: host entropy for the guest (`/dev/hwrng`, seeding its pool).
//!
//! One queue. The guest posts device-writable buffers; the device fills
//! each with bytes from the host kernel's CSPRNG (`getrandom(2)` with
//! `GRND_NONBLOCK`, so the event loop never sleeps on entropy) and returns
//! it used with the number of bytes written.
//!
//! The driver is not trusted: a chain with a device-readable descriptor or a
//! buffer outside guest memory is refused (returned with length 0); at most
//! [`MAX_REQUEST_BYTES`] are served per request whatever the chain claims,
//! from one host buffer allocated up front, so a guest can neither make the
//! host allocate nor keep the event loop busy. A corrupted ring stops the
//! device until the driver resets it. An optional [`RateLimiter`] throttles
//! bytes and requests; held-back requests resume on its timer.
//!
//! Split by concern: `device` (the [`VirtioDevice`](super::VirtioDevice)
//! side and queue processing), `event_handler` (the VMM event loop side).

mod device;
mod event_handler;
mod persist;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{GuestMemory, IrqTrigger, PendingRestore, VIRTIO_F_VERSION_1};
use crate::rate_limiter::RateLimiter;

pub use persist::{RngPersistError, RngSnapshotState};

/// virtio device type of an entropy source.
pub const TYPE_RNG: u32 = 4;
/// Maximum size of the queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes served for one request (Linux asks for at most a page or
/// two); larger chains get this many and a used length saying so.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Why the entropy device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// The queue notification eventfd could not be created.
    #[error("entropy device: creating the queue eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// The device's own state as plain data: what a snapshot saves besides the
/// transport's registers, the queue positions and the limiter's levels.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RngState {
    /// Features offered to the driver.
    pub avail_features: u64,
    /// Features the driver accepted (0 until activation).
    pub acked_features: u64,
    /// Whether the device stopped on a corrupted queue and waits for a reset.
    pub needs_reset: bool,
    /// The counters, so metrics stay cumulative across a restore.
    pub counters: RngCounters,
}

/// Cumulative counters, reported through `VirtioDevice::counters`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RngCounters {
    /// Requests served (including refused ones).
    pub requests: u64,
    /// Random bytes handed to the guest.
    pub bytes: u64,
    /// Refused requests and host failures.
    pub errors: u64,
    /// Times the rate limiter held requests back.
    pub throttled: u64,
}

/// What the device holds between activation and reset.
struct Active {
    mem: GuestMemory,
    queue: Queue,
    interrupt: Arc<IrqTrigger>,
}

/// A virtio-rng device.
pub struct Rng {
    state: RngState,
    queue_evts: [EventFd; 1],
    rate_limiter: Option<RateLimiter>,
    active: Option<Active>,
    /// Where a restored device's queue was, applied at its next activation.
    restored: Option<PendingRestore>,
    /// Host-side buffer for one request's random bytes ([`MAX_REQUEST_BYTES`]).
    scratch: Vec<u8>,
}

impl Rng {
    /// A new, not yet activated device, optionally rate limited.
    pub fn new(rate_limiter: Option<RateLimiter>) -> Result<Self, RngError> {
        Self::from_state(
            RngState {
                avail_features: VIRTIO_F_VERSION_1,
                ..Default::default()
            },
            rate_limiter,
        )
    }

    /// Rebuilds the device from saved state (a restore). The transport
    /// activates it again (see [`crate::persist::Persist`] for the whole
    /// restore, queue position and limiter levels included).
    pub fn from_state(
        state: RngState,
        rate_limiter: Option<RateLimiter>,
    ) -> Result<Self, RngError> {
        let evt = EventFd::new(EFD_NONBLOCK).map_err(RngError::EventFd)?;
        Ok(Self {
            state,
            queue_evts: [evt],
            rate_limiter,
            active: None,
            restored: None,
            scratch: vec![0; MAX_REQUEST_BYTES],
        })
    }

    /// A copy of the device's state, for snapshots and inspection.
    pub fn state(&self) -> RngState {
        self.state.clone()
    }

    /// Changes the limits at run time. `false` if the device was created
    /// without a rate limiter (its timer is not on the event loop).
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

    /// Whether the driver has started the device (and not reset it since).
    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}
