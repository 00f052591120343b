//! The run-time methods the VMM calls for the balloon API (Firecracker's
//! `PUT`/`PATCH`/`GET /balloon`, `/balloon/statistics` and
//! `/balloon/hinting/{start,status,stop}`), on the event-loop thread.

use std::time::Duration;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::config::{
    has, PAGES_PER_MIB, VIRTIO_BALLOON_CMD_ID_DONE, VIRTIO_BALLOON_F_FREE_PAGE_HINT,
    VIRTIO_BALLOON_F_STATS_VQ,
};
use super::{target_pages, Balloon, BalloonConfig, BalloonCounters, BalloonError, BalloonStats};
use crate::virtio::IrqKind;

/// First command id of a hinting run (0 and 1 are STOP and DONE).
const FIRST_HINT_CMD_ID: u32 = 2;

/// Where free page hinting stands (`GET /balloon/hinting/status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HintingStatus {
    /// The host's command: a run's id (2 and up), or STOP (0) / DONE (1).
    pub host_cmd: u32,
    /// The last command id the guest sent back: the run it is hinting
    /// for, or STOP (0) once it has hinted everything; none yet.
    pub guest_cmd: Option<u32>,
}

impl Balloon {
    /// Sets the balloon's target (`PATCH /balloon`): updates `num_pages`
    /// and, once the driver runs, raises a config-change interrupt so the
    /// guest inflates or deflates. Refused if larger than guest memory.
    pub fn set_target_mib(&mut self, mib: u32) -> Result<(), BalloonError> {
        let pages = target_pages(mib)?;
        if let Some(active) = &self.active {
            let ram: u64 = active.mem.iter().map(|r| r.len()).sum();
            if u64::from(mib) << 20 > ram {
                return Err(BalloonError::TargetTooLarge(mib));
            }
        }
        self.state.num_pages = pages;
        self.state.config.amount_mib = mib;
        self.config_changed();
        Ok(())
    }

    /// How much memory the guest says the balloon holds, in MiB.
    pub fn actual_mib(&self) -> u32 {
        self.state.actual_pages / PAGES_PER_MIB
    }

    /// The options with the current target (`GET /balloon`).
    pub fn config(&self) -> BalloonConfig {
        self.state.config.clone()
    }

    /// Changes how often statistics are polled (`PATCH
    /// /balloon/statistics`); the first update is asked for right away.
    /// Statistics cannot be switched on or off after creation: the
    /// statistics queue exists or not from boot.
    pub fn update_stats_interval(&mut self, secs: u16) -> Result<(), BalloonError> {
        if !has(self.state.avail_features, VIRTIO_BALLOON_F_STATS_VQ) {
            return Err(BalloonError::StatsDisabled);
        }
        if secs == 0 {
            return Err(BalloonError::StatsStateChange);
        }
        self.state.config.stats_polling_interval_s = secs;
        self.arm_stats_timer()?;
        self.return_stats_buffer();
        Ok(())
    }

    /// The guest's latest statistics with the balloon's figures (`GET
    /// /balloon/statistics`).
    pub fn latest_stats(&self) -> Result<BalloonStats, BalloonError> {
        if !has(self.state.avail_features, VIRTIO_BALLOON_F_STATS_VQ) {
            return Err(BalloonError::StatsDisabled);
        }
        Ok(BalloonStats {
            target_pages: self.state.num_pages,
            actual_pages: self.state.actual_pages,
            target_mib: self.state.num_pages / PAGES_PER_MIB,
            actual_mib: self.actual_mib(),
            ..self.state.stats.clone()
        })
    }

    /// Starts a free page hinting run (`/balloon/hinting/start`): a new
    /// command id in config space and a config interrupt. The guest then
    /// hints its free pages, which are dropped; when it says it is done
    /// (STOP) the device answers DONE by itself, so the guest reuses them.
    /// Returns the run's command id.
    pub fn start_hinting(&mut self) -> Result<u32, BalloonError> {
        self.start_hinting_with(true)
    }

    /// [`Self::start_hinting`], choosing whether the guest's STOP is
    /// answered with DONE automatically (`acknowledge_on_stop`); without it
    /// the guest keeps the hinted pages until [`Self::stop_hinting`].
    pub fn start_hinting_with(&mut self, acknowledge_on_stop: bool) -> Result<u32, BalloonError> {
        self.check_hinting()?;
        let id = match self.state.hint_run_id {
            id if (FIRST_HINT_CMD_ID..u32::MAX).contains(&id) => id + 1,
            _ => FIRST_HINT_CMD_ID,
        };
        self.state.hint_run_id = id;
        self.state.hint_cmd_id = id;
        self.state.hint_ack_on_stop = acknowledge_on_stop;
        self.config_changed();
        Ok(id)
    }

    /// Ends the hinting run (`/balloon/hinting/stop`): the command becomes
    /// DONE, so the guest takes the hinted pages back. Hints that arrive
    /// after this are not acted on (the guest may be reusing those pages).
    pub fn stop_hinting(&mut self) -> Result<(), BalloonError> {
        self.check_hinting()?;
        self.state.hint_cmd_id = VIRTIO_BALLOON_CMD_ID_DONE;
        self.config_changed();
        Ok(())
    }

    /// Where free page hinting stands (`/balloon/hinting/status`).
    pub fn hinting_status(&self) -> Result<HintingStatus, BalloonError> {
        if !has(self.state.avail_features, VIRTIO_BALLOON_F_FREE_PAGE_HINT) {
            return Err(BalloonError::HintingDisabled);
        }
        Ok(HintingStatus {
            host_cmd: self.state.hint_cmd_id,
            guest_cmd: self.state.guest_hint_cmd_id,
        })
    }

    /// The cumulative counters.
    pub fn balloon_counters(&self) -> BalloonCounters {
        self.state.counters.clone()
    }

    fn check_hinting(&self) -> Result<(), BalloonError> {
        if !has(self.state.avail_features, VIRTIO_BALLOON_F_FREE_PAGE_HINT) {
            return Err(BalloonError::HintingDisabled);
        }
        match &self.active {
            Some(a) if a.layout.hint.is_some() => Ok(()),
            _ => Err(BalloonError::NotActivated),
        }
    }

    /// Tells a running driver the config space changed.
    pub(super) fn config_changed(&self) {
        if let Some(active) = &self.active {
            if let Err(e) = active.interrupt.trigger(IrqKind::Config) {
                log::error!("balloon: raising the config interrupt: {e}");
            }
        }
    }

    /// Arms (or disarms) the statistics timer for the current interval.
    pub(super) fn arm_stats_timer(&mut self) -> Result<(), BalloonError> {
        let secs = self.state.config.stats_polling_interval_s;
        let running = self
            .active
            .as_ref()
            .is_some_and(|a| a.layout.stats.is_some());
        let result = if running && secs > 0 {
            let period = Duration::from_secs(u64::from(secs));
            self.stats_timer.reset(period, Some(period))
        } else {
            self.stats_timer.clear()
        };
        result.map_err(|e| BalloonError::Os {
            what: "arming the statistics timer",
            source: e.into(),
        })
    }
}
