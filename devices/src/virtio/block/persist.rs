//! Saving and restoring a drive ([`Persist`] for [`Block`]).
//!
//! The image itself is not part of the state: restoring re-opens the image
//! the (possibly overridden) configuration names. Everything the guest can
//! observe about the device is: what it offered and negotiated, whether it
//! stopped on a broken ring, where it was in the ring, and how much of its
//! rate limit it had left.

use serde::{Deserialize, Serialize};

use super::{Block, BlockConfig, BlockError};
use crate::persist::Persist;
use crate::rate_limiter::RateLimiterState;
use crate::virtio::{PendingRestore, QueuePosition};

/// A drive's whole state in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSnapshotState {
    /// The drive's id (must match the configuration it is restored with).
    pub drive_id: String,
    /// Whether the drive was read-only.
    pub read_only: bool,
    /// The disk size the guest saw, in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Features offered to the driver.
    pub avail_features: u64,
    /// Features the driver accepted (0 before activation).
    pub acked_features: u64,
    /// Whether the device stopped on a corrupted queue and waits for a reset.
    pub needs_reset: bool,
    /// The queue's position while the driver runs the device.
    pub queue: Option<QueuePosition>,
    /// The rate limiter's levels.
    pub rate_limiter: Option<RateLimiterState>,
}

/// Why a drive could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum BlockPersistError {
    /// The image could not be opened.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The saved state does not fit the configured drive.
    #[error("drive {drive_id}: saved state refused: {reason}")]
    Mismatch {
        /// The drive.
        drive_id: String,
        /// What does not match.
        reason: String,
    },
}

impl Persist<'_> for Block {
    type State = BlockSnapshotState;
    type ConstructorArgs = BlockConfig;
    type Error = BlockPersistError;

    fn save(&self) -> Result<BlockSnapshotState, BlockPersistError> {
        Ok(BlockSnapshotState {
            drive_id: self.state.drive_id.clone(),
            read_only: self.state.read_only,
            capacity_sectors: self.state.capacity_sectors,
            avail_features: self.state.avail_features,
            acked_features: self.state.acked_features,
            needs_reset: self.state.needs_reset,
            queue: self.active.as_ref().map(|a| QueuePosition::of(&a.queue)),
            rate_limiter: self.rate_limiter.as_ref().map(|l| l.state()),
        })
    }

    fn restore(args: BlockConfig, state: &BlockSnapshotState) -> Result<Self, BlockPersistError> {
        let mut block = Block::new(args)?;
        let refuse = |reason: String| BlockPersistError::Mismatch {
            drive_id: block.state.drive_id.clone(),
            reason,
        };
        if state.drive_id != block.state.drive_id {
            return Err(refuse(format!(
                "it is the state of drive {:?}",
                state.drive_id
            )));
        }
        if state.read_only != block.state.read_only {
            return Err(refuse(format!(
                "saved read_only={}, configured read_only={}",
                state.read_only, block.state.read_only
            )));
        }
        if state.avail_features != block.state.avail_features {
            return Err(refuse(format!(
                "saved offered features {:#x}, this device offers {:#x}",
                state.avail_features, block.state.avail_features
            )));
        }
        if state.acked_features & !block.state.avail_features != 0 {
            return Err(refuse(format!(
                "acked features {:#x} include features never offered ({:#x})",
                state.acked_features, block.state.avail_features
            )));
        }
        if state.capacity_sectors != block.state.capacity_sectors {
            log::warn!(
                "drive {}: the image now has {} sectors, the guest saw {}",
                block.state.drive_id,
                block.state.capacity_sectors,
                state.capacity_sectors
            );
        }
        if let (Some(limiter), Some(saved)) = (block.rate_limiter.as_mut(), &state.rate_limiter) {
            limiter.restore_state(saved);
        }
        block.state.acked_features = state.acked_features;
        block.state.needs_reset = state.needs_reset;
        block.restored = state.queue.map(|q| PendingRestore {
            positions: vec![q],
            needs_reset: state.needs_reset,
        });
        Ok(block)
    }
}
