//! Saving and restoring a network card ([`Persist`] for [`Net`]).
//!
//! The tap is not part of the state: restoring opens the tap the (possibly
//! overridden) configuration names. RX buffers the device had taken from
//! the ring for a frame that has not arrived are saved as not taken (the
//! saved RX position is rewound past them), so the restored device takes
//! them again.

use serde::{Deserialize, Serialize};

use super::{Net, NetBackend, NetConfig, NetError};
use crate::persist::Persist;
use crate::rate_limiter::RateLimiterState;
use crate::virtio::{PendingRestore, QueuePosition};

/// A network card's whole state in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSnapshotState {
    /// The card's id (must match the configuration it is restored with).
    pub iface_id: String,
    /// The MAC address in config space, if one was configured.
    pub mac: Option<[u8; 6]>,
    /// Features offered to the driver.
    pub avail_features: u64,
    /// Features the driver accepted (0 before activation).
    pub acked_features: u64,
    /// Whether the driver broke a ring and must reset the device.
    pub needs_reset: bool,
    /// RX and TX ring positions while the driver runs the device (else empty).
    pub queues: Vec<QueuePosition>,
    /// The RX limiter's levels.
    pub rx_rate_limiter: Option<RateLimiterState>,
    /// The TX limiter's levels.
    pub tx_rate_limiter: Option<RateLimiterState>,
}

/// What restoring a card needs besides its state.
pub struct NetConstructorArgs {
    /// The card as configured.
    pub config: NetConfig,
    /// The backend to use; `None` opens the tap named in `config`.
    pub backend: Option<Box<dyn NetBackend>>,
}

/// Why a card could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum NetPersistError {
    /// The tap or eventfds could not be set up.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The saved state does not fit the configured card.
    #[error("net {iface_id}: saved state refused: {reason}")]
    Mismatch {
        /// The card.
        iface_id: String,
        /// What does not match.
        reason: String,
    },
}

impl Persist<'_> for Net {
    type State = NetSnapshotState;
    type ConstructorArgs = NetConstructorArgs;
    type Error = NetPersistError;

    fn save(&self) -> Result<NetSnapshotState, NetPersistError> {
        let queues = match &self.active {
            Some(active) => {
                let mut rx = QueuePosition::of(&active.rx);
                rx.next_avail = rx.next_avail.wrapping_sub(self.rx.held_count() as u16);
                vec![rx, QueuePosition::of(&active.tx)]
            }
            None => Vec::new(),
        };
        Ok(NetSnapshotState {
            iface_id: self.iface_id.clone(),
            mac: self.state.mac,
            avail_features: self.state.avail_features,
            acked_features: self.state.acked_features,
            needs_reset: self.state.needs_reset,
            queues,
            rx_rate_limiter: self.rx_limiter.as_ref().map(|l| l.state()),
            tx_rate_limiter: self.tx_limiter.as_ref().map(|l| l.state()),
        })
    }

    fn restore(
        args: NetConstructorArgs,
        state: &NetSnapshotState,
    ) -> Result<Self, NetPersistError> {
        let mut net = match args.backend {
            Some(backend) => Net::with_backend(args.config, backend)?,
            None => Net::new(args.config)?,
        };
        let refuse = |reason: String| NetPersistError::Mismatch {
            iface_id: net.iface_id.clone(),
            reason,
        };
        if state.iface_id != net.iface_id {
            return Err(refuse(format!("it is the state of {:?}", state.iface_id)));
        }
        if state.mac != net.state.mac {
            return Err(refuse(
                "the saved MAC address differs from the configured one".into(),
            ));
        }
        if state.avail_features != net.state.avail_features {
            return Err(refuse(format!(
                "saved offered features {:#x}, this device offers {:#x}",
                state.avail_features, net.state.avail_features
            )));
        }
        if state.acked_features & !net.state.avail_features != 0 {
            return Err(refuse(format!(
                "acked features {:#x} include features never offered ({:#x})",
                state.acked_features, net.state.avail_features
            )));
        }
        if !state.queues.is_empty() && state.queues.len() != super::QUEUE_SIZES.len() {
            return Err(refuse(format!(
                "{} saved queue positions for {} queues",
                state.queues.len(),
                super::QUEUE_SIZES.len()
            )));
        }
        for (limiter, saved) in [
            (net.rx_limiter.as_mut(), &state.rx_rate_limiter),
            (net.tx_limiter.as_mut(), &state.tx_rate_limiter),
        ] {
            if let (Some(limiter), Some(saved)) = (limiter, saved) {
                limiter.restore_state(saved);
            }
        }
        net.state.acked_features = state.acked_features;
        net.state.needs_reset = state.needs_reset;
        if !state.queues.is_empty() {
            net.restored = Some(PendingRestore {
                positions: state.queues.clone(),
                needs_reset: state.needs_reset,
            });
        }
        Ok(net)
    }
}
