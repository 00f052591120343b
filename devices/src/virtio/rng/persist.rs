//! Saving and restoring the entropy device ([`Persist`] for [`Rng`]).
//!
//! There is no host resource to re-open: the state is the device's own
//! (features, counters), where it was in its ring, and how much of its rate
//! limit it had left.

use serde::{Deserialize, Serialize};

use super::{Rng, RngError, RngState};
use crate::persist::Persist;
use crate::rate_limiter::{RateLimiter, RateLimiterState};
use crate::virtio::{PendingRestore, QueuePosition, VIRTIO_F_VERSION_1};

/// The entropy device's whole state in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngSnapshotState {
    /// Features, counters, the broken-ring flag.
    pub device: RngState,
    /// The queue's position while the driver runs the device.
    pub queue: Option<QueuePosition>,
    /// The rate limiter's levels.
    pub rate_limiter: Option<RateLimiterState>,
}

/// Why the entropy device could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RngPersistError {
    /// The device could not be created.
    #[error(transparent)]
    Rng(#[from] RngError),
    /// The saved state is not one this device could have produced.
    #[error("entropy device: saved state refused: {0}")]
    Mismatch(String),
}

impl Persist<'_> for Rng {
    type State = RngSnapshotState;
    /// The rate limiter built from the configuration (none: unlimited).
    type ConstructorArgs = Option<RateLimiter>;
    type Error = RngPersistError;

    fn save(&self) -> Result<RngSnapshotState, RngPersistError> {
        Ok(RngSnapshotState {
            device: self.state.clone(),
            queue: self.active.as_ref().map(|a| QueuePosition::of(&a.queue)),
            rate_limiter: self.rate_limiter.as_ref().map(RateLimiter::state),
        })
    }

    fn restore(
        rate_limiter: Option<RateLimiter>,
        state: &RngSnapshotState,
    ) -> Result<Self, RngPersistError> {
        let saved = &state.device;
        if saved.avail_features != VIRTIO_F_VERSION_1 {
            return Err(RngPersistError::Mismatch(format!(
                "saved offered features {:#x}, this device offers {VIRTIO_F_VERSION_1:#x}",
                saved.avail_features
            )));
        }
        if saved.acked_features & !saved.avail_features != 0 {
            return Err(RngPersistError::Mismatch(format!(
                "acked features {:#x} include features never offered",
                saved.acked_features
            )));
        }
        let mut rng = Rng::from_state(saved.clone(), rate_limiter)?;
        if let (Some(limiter), Some(levels)) = (rng.rate_limiter.as_mut(), &state.rate_limiter) {
            limiter.restore_state(levels);
        }
        rng.restored = state.queue.map(|q| PendingRestore {
            positions: vec![q],
            needs_reset: saved.needs_reset,
        });
        Ok(rng)
    }
}
