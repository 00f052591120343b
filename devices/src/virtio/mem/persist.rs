//! Saving and restoring a virtio-mem device ([`Persist`] for [`Mem`]).
//!
//! The plugged blocks' contents are guest memory and travel in the memory
//! file (the hotplug region is a region of guest memory); the state holds
//! the books: geometry, requested size and the plugged bitmap.

use serde::{Deserialize, Serialize};

use super::{Mem, MemArgs, MemCounters, MemError};
use crate::persist::Persist;
use crate::virtio::{PendingRestore, QueuePosition};

/// A virtio-mem device's whole state in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemState {
    /// Region start.
    pub addr: u64,
    /// Region size.
    pub region_size: u64,
    /// Block size.
    pub block_size: u64,
    /// Bytes requested.
    pub requested_size: u64,
    /// One bit per block, set while plugged.
    pub plugged: Vec<u64>,
    /// Features offered.
    pub avail_features: u64,
    /// Features accepted.
    pub acked_features: u64,
    /// Whether the device stopped on a corrupted queue.
    pub needs_reset: bool,
    /// The queue's position while the driver runs the device.
    pub queue: Option<QueuePosition>,
    /// Counters.
    pub counters: MemCounters,
}

/// Why a virtio-mem device could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum MemPersistError {
    /// The configured geometry is invalid.
    #[error(transparent)]
    Mem(#[from] MemError),
    /// The state does not fit the configured region.
    #[error("virtio-mem: saved state refused: {0}")]
    Mismatch(String),
}

impl Persist<'_> for Mem {
    type State = MemState;
    type ConstructorArgs = MemArgs;
    type Error = MemPersistError;

    fn save(&self) -> Result<MemState, MemPersistError> {
        Ok(MemState {
            addr: self.args.addr,
            region_size: self.args.region_size,
            block_size: self.args.block_size,
            requested_size: self.requested_size,
            plugged: self.plugged.clone(),
            avail_features: self.avail_features,
            acked_features: self.acked_features,
            needs_reset: self.needs_reset,
            queue: self.active.as_ref().map(|a| QueuePosition::of(&a.queue)),
            counters: self.counters.clone(),
        })
    }

    fn restore(args: MemArgs, state: &MemState) -> Result<Self, MemPersistError> {
        let mut mem = Mem::new(args)?;
        let refuse = |m: String| Err(MemPersistError::Mismatch(m));
        if (state.addr, state.region_size, state.block_size)
            != (args.addr, args.region_size, args.block_size)
        {
            return refuse(format!(
                "saved region {:#x}+{:#x} in {:#x} blocks, configured {:#x}+{:#x} in {:#x} blocks",
                state.addr,
                state.region_size,
                state.block_size,
                args.addr,
                args.region_size,
                args.block_size
            ));
        }
        if state.plugged.len() != mem.plugged.len() {
            return refuse(format!(
                "bitmap of {} words, expected {}",
                state.plugged.len(),
                mem.plugged.len()
            ));
        }
        let blocks = args.region_size / args.block_size;
        if !blocks.is_multiple_of(64) {
            if let Some(last) = state.plugged.last() {
                if last >> (blocks % 64) != 0 {
                    return refuse("bits set past the last block".into());
                }
            }
        }
        if state.acked_features & !mem.avail_features != 0
            || state.avail_features != mem.avail_features
        {
            return refuse(format!(
                "features offered {:#x} / acked {:#x} do not fit the offered {:#x}",
                state.avail_features, state.acked_features, mem.avail_features
            ));
        }
        mem.set_requested_size(state.requested_size)?;
        mem.plugged = state.plugged.clone();
        mem.acked_features = state.acked_features;
        mem.needs_reset = state.needs_reset;
        mem.counters = state.counters.clone();
        mem.restored = state.queue.map(|q| PendingRestore {
            positions: vec![q],
            needs_reset: state.needs_reset,
        });
        Ok(mem)
    }
}
