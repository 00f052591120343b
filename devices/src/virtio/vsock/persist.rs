//! Snapshot state: what a restored device needs, as plain data.
//!
//! Host connections cannot be saved (the host programs are gone), so none
//! are: a restored device starts with an empty table and owes the driver a
//! `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`, sent once the driver is running
//! again, so the guest drops its stale sockets (as Linux's driver expects).
//! New connections work as soon as it has.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Vsock, VsockConfig, VsockError, CONNECT_TIMEOUT};

/// The vsock device's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    /// The guest's CID (config space).
    pub guest_cid: u64,
    /// The host listener's path.
    pub uds_path: PathBuf,
    /// Features the driver accepted (0 if it never activated the device).
    pub acked_features: u64,
}

impl Vsock {
    /// The device's state for a snapshot.
    pub fn save(&self) -> VsockState {
        VsockState {
            guest_cid: self.guest_cid,
            uds_path: self.muxer.uds_path().to_path_buf(),
            acked_features: self.acked_features,
        }
    }

    /// A device from saved state: listens at `uds_path` again (a stale
    /// socket there is replaced) and owes the driver a TRANSPORT_RESET.
    pub fn restore(state: &VsockState) -> Result<Self, VsockError> {
        Self::restore_with_connect_timeout(state, CONNECT_TIMEOUT)
    }

    /// [`Vsock::restore`] with another connect timeout.
    pub fn restore_with_connect_timeout(
        state: &VsockState,
        timeout: Duration,
    ) -> Result<Self, VsockError> {
        let config = VsockConfig {
            guest_cid: state.guest_cid,
            uds_path: state.uds_path.clone(),
        };
        let mut dev = Self::with_connect_timeout(config, timeout)?;
        dev.acked_features = state.acked_features;
        dev.reset_event_pending = true;
        Ok(dev)
    }
}
