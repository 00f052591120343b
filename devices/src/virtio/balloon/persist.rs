//! Saving and restoring the balloon ([`Persist`] for [`Balloon`]).
//!
//! The state is the device's own (options, target, `actual`, hinting run,
//! latest statistics, counters), where each running queue was, and the
//! statistics buffer the device was holding: the guest posted it and waits
//! for it back, so a restored device holds it again and returns it at the
//! next poll (otherwise statistics would stop for good).

use serde::{Deserialize, Serialize};

use super::config::{avail_features, QUEUE_SIZE};
use super::{Balloon, BalloonConfig, BalloonError, BalloonState};
use crate::persist::Persist;
use crate::virtio::{PendingRestore, QueuePosition};

/// The balloon's whole state in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonSnapshotState {
    /// Options, target, `actual`, hinting, statistics, counters, as JSON:
    /// the statistics leave their absent figures out when serialized, which
    /// a non-self-describing snapshot encoding (postcard) cannot read back.
    pub device_json: String,
    /// Each running queue's position (empty if the driver never started
    /// the device).
    pub queues: Vec<QueuePosition>,
    /// The head of the statistics buffer the device held.
    pub stats_desc: Option<u16>,
}

/// Why the balloon could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum BalloonPersistError {
    /// The device could not be created.
    #[error(transparent)]
    Balloon(#[from] BalloonError),
    /// The saved state is not one this device could have produced.
    #[error("balloon: saved state refused: {0}")]
    Mismatch(String),
}

impl Persist<'_> for Balloon {
    type State = BalloonSnapshotState;
    /// The options from the configuration (they decide the features).
    type ConstructorArgs = BalloonConfig;
    type Error = BalloonPersistError;

    fn save(&self) -> Result<BalloonSnapshotState, BalloonPersistError> {
        let active = self.active.as_ref();
        let device_json = serde_json::to_string(&self.state)
            .map_err(|e| BalloonPersistError::Mismatch(format!("encoding: {e}")))?;
        Ok(BalloonSnapshotState {
            device_json,
            queues: active
                .map(|a| a.queues.iter().map(QueuePosition::of).collect())
                .unwrap_or_default(),
            stats_desc: active.and_then(|a| a.stats_desc),
        })
    }

    fn restore(
        config: BalloonConfig,
        state: &BalloonSnapshotState,
    ) -> Result<Self, BalloonPersistError> {
        let saved: BalloonState = serde_json::from_str(&state.device_json)
            .map_err(|e| BalloonPersistError::Mismatch(format!("decoding: {e}")))?;
        let saved = &saved;
        let refuse = |why: String| Err(BalloonPersistError::Mismatch(why));
        let offered = avail_features(
            config.deflate_on_oom,
            config.stats_polling_interval_s > 0,
            config.free_page_hinting,
            config.free_page_reporting,
        );
        if saved.avail_features != offered {
            return refuse(format!(
                "saved offered features {:#x}, this configuration offers {offered:#x}",
                saved.avail_features
            ));
        }
        if saved.acked_features & !offered != 0 {
            return refuse(format!(
                "acked features {:#x} include features never offered",
                saved.acked_features
            ));
        }
        if state.queues.len() > super::config::QueueLayout::new(offered).count {
            return refuse(format!("{} queue positions saved", state.queues.len()));
        }
        if state.stats_desc.is_some_and(|head| head >= QUEUE_SIZE) {
            return refuse("the held statistics buffer is outside the queue".into());
        }
        if super::target_pages(saved.config.amount_mib)? != saved.num_pages {
            return refuse("the target in pages does not match the target in MiB".into());
        }
        let mut balloon = Balloon::from_state(saved.clone())?;
        balloon.restored = (!state.queues.is_empty()).then(|| RestoredBalloon {
            pending: PendingRestore {
                positions: state.queues.clone(),
                needs_reset: saved.needs_reset,
            },
            stats_desc: state.stats_desc,
        });
        Ok(balloon)
    }
}

/// What a restored balloon applies at its next activation.
#[derive(Debug, Clone)]
pub(super) struct RestoredBalloon {
    /// The queue positions and broken-ring flag.
    pub pending: PendingRestore,
    /// The statistics buffer to hold again.
    pub stats_desc: Option<u16>,
}
