//! Snapshot state ([`Persist`] for [`Vsock`]): what a restored device needs,
//! as plain data.
//!
//! Host connections cannot be saved (the host programs are gone), so none
//! are: a restored device starts with an empty table and owes the driver a
//! `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`, sent once the driver is running
//! again, so the guest drops its stale sockets (as Linux's driver expects).
//! New connections work as soon as it has. The rings continue where they
//! were (the guest's buffers in them stay posted).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Vsock, VsockConfig, VsockError, CONNECT_TIMEOUT, QUEUE_SIZES};
use crate::persist::Persist;
use crate::virtio::{PendingRestore, QueuePosition, VIRTIO_F_VERSION_1};

/// The vsock device's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    /// The guest's CID (config space).
    pub guest_cid: u64,
    /// The host listener's path when saved (informative: a restore listens
    /// where its configuration says).
    pub uds_path: PathBuf,
    /// Features the driver accepted (0 if it never activated the device).
    pub acked_features: u64,
    /// RX, TX and event queue positions while the driver runs the device.
    pub queues: Vec<QueuePosition>,
    /// Whether the device stopped on a corrupted queue.
    pub needs_reset: bool,
}

/// Why a vsock device could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum VsockPersistError {
    /// The device could not be created.
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// The saved state is not one this device could have produced.
    #[error("vsock: saved state refused: {0}")]
    Mismatch(String),
}

impl Persist<'_> for Vsock {
    type State = VsockState;
    /// The configured CID and listener path.
    type ConstructorArgs = VsockConfig;
    type Error = VsockPersistError;

    fn save(&self) -> Result<VsockState, VsockPersistError> {
        Ok(VsockState {
            guest_cid: self.guest_cid,
            uds_path: self.muxer.uds_path().to_path_buf(),
            acked_features: self.acked_features,
            queues: self
                .active
                .iter()
                .flat_map(|a| [&a.rx, &a.tx, &a.evq])
                .map(QueuePosition::of)
                .collect(),
            needs_reset: self.needs_reset,
        })
    }

    fn restore(config: VsockConfig, state: &VsockState) -> Result<Self, VsockPersistError> {
        Self::restore_with_connect_timeout(config, state, CONNECT_TIMEOUT)
    }
}

impl Vsock {
    /// [`Persist::restore`] with another connect timeout: listens at the
    /// configured `uds_path` again (a stale socket there is replaced) and
    /// owes the driver a TRANSPORT_RESET.
    pub fn restore_with_connect_timeout(
        config: VsockConfig,
        state: &VsockState,
        timeout: Duration,
    ) -> Result<Self, VsockPersistError> {
        let refuse = |why: String| Err(VsockPersistError::Mismatch(why));
        if state.guest_cid != config.guest_cid {
            return refuse(format!(
                "saved guest CID {}, configured {} (the guest keeps its CID)",
                state.guest_cid, config.guest_cid
            ));
        }
        if state.acked_features & !VIRTIO_F_VERSION_1 != 0 {
            return refuse(format!(
                "acked features {:#x} include features never offered",
                state.acked_features
            ));
        }
        if !state.queues.is_empty() && state.queues.len() != QUEUE_SIZES.len() {
            return refuse(format!("{} queue positions saved", state.queues.len()));
        }
        let mut dev = Self::with_connect_timeout(config, timeout)?;
        dev.acked_features = state.acked_features;
        dev.reset_event_pending = true;
        dev.restored = (!state.queues.is_empty()).then(|| PendingRestore {
            positions: state.queues.clone(),
            needs_reset: state.needs_reset,
        });
        Ok(dev)
    }
}
