//! Saving and restoring a pmem device ([`Persist`] for [`Pmem`]).
//!
//! The file's contents are not part of the state (they live in the file);
//! restoring re-maps the file the configuration names, and the VMM places
//! it at the same guest address (placement is deterministic, and checked).

use serde::{Deserialize, Serialize};

use super::{Pmem, PmemArgs, PmemCounters, PmemError};
use crate::persist::Persist;
use crate::virtio::{PendingRestore, QueuePosition};

/// A pmem device's whole state in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PmemState {
    /// Device id.
    pub id: String,
    /// Whether it was read-only.
    pub read_only: bool,
    /// Guest-physical address of the region.
    pub start: u64,
    /// Size of the region the guest saw.
    pub size: u64,
    /// Features offered.
    pub avail_features: u64,
    /// Features accepted (0 before activation).
    pub acked_features: u64,
    /// Whether the device stopped on a corrupted queue.
    pub needs_reset: bool,
    /// The queue's position while the driver runs the device.
    pub queue: Option<QueuePosition>,
    /// Counters, so metrics stay cumulative.
    pub counters: PmemCounters,
}

/// Why a pmem device could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum PmemPersistError {
    /// The file could not be mapped.
    #[error(transparent)]
    Pmem(#[from] PmemError),
    /// The state does not fit the configured device.
    #[error("pmem {id}: saved state refused: {reason}")]
    Mismatch {
        /// Device id.
        id: String,
        /// What does not match.
        reason: String,
    },
}

impl Persist<'_> for Pmem {
    type State = PmemState;
    type ConstructorArgs = PmemArgs;
    type Error = PmemPersistError;

    fn save(&self) -> Result<PmemState, PmemPersistError> {
        Ok(PmemState {
            id: self.id.clone(),
            read_only: self.read_only,
            start: self.start,
            size: self.mapping.len(),
            avail_features: self.avail_features,
            acked_features: self.acked_features,
            needs_reset: self.needs_reset,
            queue: self.active.as_ref().map(|a| QueuePosition::of(&a.queue)),
            counters: self.counters.clone(),
        })
    }

    fn restore(args: PmemArgs, state: &PmemState) -> Result<Self, PmemPersistError> {
        let mut pmem = Pmem::new(args)?;
        let refuse = |reason: String| PmemPersistError::Mismatch {
            id: pmem.id.clone(),
            reason,
        };
        if state.id != pmem.id {
            return Err(refuse(format!("it is the state of pmem {:?}", state.id)));
        }
        if state.read_only != pmem.read_only {
            return Err(refuse(format!(
                "saved read_only={}, configured read_only={}",
                state.read_only, pmem.read_only
            )));
        }
        if state.size != pmem.mapping.len() {
            return Err(refuse(format!(
                "the guest saw a {}-byte region, the file now maps {} bytes",
                state.size,
                pmem.mapping.len()
            )));
        }
        if state.acked_features & !pmem.avail_features != 0
            || state.avail_features != pmem.avail_features
        {
            return Err(refuse(format!(
                "features offered {:#x} / acked {:#x} do not fit the offered {:#x}",
                state.avail_features, state.acked_features, pmem.avail_features
            )));
        }
        pmem.start = state.start;
        pmem.acked_features = state.acked_features;
        pmem.needs_reset = state.needs_reset;
        pmem.counters = state.counters.clone();
        pmem.restored = state.queue.map(|q| PendingRestore {
            positions: vec![q],
            needs_reset: state.needs_reset,
        });
        Ok(pmem)
    }
}
