//! virtio-balloon: the host asks the guest to give memory back.
//!
//! The host sets a target (`num_pages`, 4 KiB pages); the guest allocates
//! that many pages inside itself and sends their PFNs on the inflate queue;
//! the device drops the host memory behind them ([`pages::discard`]).
//! Pages the guest takes back come on the deflate queue (accounting only:
//! touching them again faults in fresh memory). The guest writes how many
//! pages it holds in `actual`.
//!
//! Optional, as Firecracker's `PUT /balloon` options: a statistics queue
//! (the device holds the guest's buffer and gives it back every
//! `stats_polling_interval_s` so the guest refills it), deflate-on-OOM,
//! free page hinting (the host starts a hinting run by writing a new
//! `free_page_hint_cmd_id`; the guest hints free pages, which are dropped,
//! and reuses them only after the host says `DONE`) and free page
//! reporting (the guest reports free ranges, which are dropped).
//!
//! Nothing the guest sends is trusted: every PFN and range is checked
//! against guest RAM, PFN arrays and statistics buffers are capped in
//! length, and a corrupted ring stops the device until a reset.
//!
//! Split by concern: [`config`] (features, config space, queue layout),
//! [`pages`] (dropping pages, PFN arrays), [`stats`] (statistics),
//! `device` (the [`VirtioDevice`](super::VirtioDevice) side and queue
//! processing), `handlers` (what each queue's buffers mean), `api`
//! (the run-time methods the VMM's API calls), `event_handler` (the VMM
//! event loop side).

mod api;
pub mod config;
mod device;
mod event_handler;
mod handlers;
pub mod pages;
mod persist;
pub mod stats;

#[cfg(test)]
pub(crate) mod tests;

use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use self::config::{avail_features, ConfigSpace, QueueLayout, PAGES_PER_MIB, QUEUE_SIZE};
use super::{GuestMemory, IrqTrigger};

pub use self::api::HintingStatus;
pub use self::persist::{BalloonPersistError, BalloonSnapshotState};
pub use self::stats::BalloonStats;

/// virtio device type of a memory balloon.
pub const TYPE_BALLOON: u32 = 5;

/// The balloon's options, as Firecracker's `PUT /balloon` body gives them
/// (and `GET /balloon` returns them, with the current target).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalloonConfig {
    /// Target balloon size in MiB.
    pub amount_mib: u32,
    /// Let the guest deflate the balloon when it is out of memory.
    pub deflate_on_oom: bool,
    /// Seconds between statistics updates; 0: no statistics queue.
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    /// Offer free page hinting.
    #[serde(default)]
    pub free_page_hinting: bool,
    /// Offer free page reporting.
    #[serde(default)]
    pub free_page_reporting: bool,
}

/// Why a balloon operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    /// An eventfd or the statistics timer could not be created or armed.
    #[error("balloon: {what}: {source}")]
    Os {
        /// What was being done.
        what: &'static str,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The target is larger than guest memory (or than 4 GiB pages).
    #[error("balloon: target {0} MiB is larger than guest memory")]
    TargetTooLarge(u32),
    /// Statistics were not enabled when the device was created.
    #[error("balloon: statistics are not enabled")]
    StatsDisabled,
    /// Statistics cannot be turned on or off after the device was created
    /// (the statistics queue exists or not from boot).
    #[error("balloon: statistics cannot be turned on or off after boot")]
    StatsStateChange,
    /// Free page hinting was not enabled when the device was created.
    #[error("balloon: free page hinting is not enabled")]
    HintingDisabled,
    /// The guest driver has not started the device.
    #[error("balloon: the device is not activated")]
    NotActivated,
}

/// The device's own state as plain data: what a snapshot saves besides the
/// transport's registers and the queue positions.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalloonState {
    /// The options (`amount_mib` follows the current target).
    pub config: BalloonConfig,
    /// Features offered to the driver.
    pub avail_features: u64,
    /// Features the driver accepted (0 until activation).
    pub acked_features: u64,
    /// Target in pages (`num_pages`).
    pub num_pages: u32,
    /// Pages the guest says it holds (`actual`).
    pub actual_pages: u32,
    /// The host's hinting command (`free_page_hint_cmd_id`).
    pub hint_cmd_id: u32,
    /// The id of the latest hinting run (0: none yet). Each run gets a
    /// new one: the guest ignores a command id it has already served.
    pub hint_run_id: u32,
    /// The last command id the guest sent on the hint queue.
    pub guest_hint_cmd_id: Option<u32>,
    /// Answer the guest's STOP with DONE by itself.
    pub hint_ack_on_stop: bool,
    /// The guest's latest statistics.
    pub stats: BalloonStats,
    /// Whether the device stopped on a corrupted queue and waits for a reset.
    pub needs_reset: bool,
    /// The counters, so metrics stay cumulative across a restore.
    pub counters: BalloonCounters,
}

/// Cumulative counters, reported through `VirtioDevice::counters`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalloonCounters {
    /// Valid PFNs received on the inflate queue.
    pub inflated_pages: u64,
    /// Valid PFNs received on the deflate queue.
    pub deflated_pages: u64,
    /// Bytes dropped for inflated pages.
    pub inflated_bytes: u64,
    /// Bytes dropped for free page hints.
    pub hinted_bytes: u64,
    /// Bytes dropped for free page reports.
    pub reported_bytes: u64,
    /// Statistics buffers received.
    pub stats_updates: u64,
    /// Refused buffers, PFNs and ranges; host failures.
    pub errors: u64,
}

impl BalloonCounters {
    /// All bytes given back to the host (inflate, hints, reports).
    pub fn returned_bytes(&self) -> u64 {
        self.inflated_bytes + self.hinted_bytes + self.reported_bytes
    }
}

/// What the device holds between activation and reset.
struct Active {
    mem: GuestMemory,
    queues: Vec<Queue>,
    layout: QueueLayout,
    interrupt: Arc<IrqTrigger>,
    /// The statistics buffer held until the next poll (its head index).
    stats_desc: Option<u16>,
}

/// A virtio-balloon device.
pub struct Balloon {
    state: BalloonState,
    queue_evts: Vec<EventFd>,
    queue_sizes: Vec<u16>,
    stats_timer: TimerFd,
    active: Option<Active>,
    /// What a restored device applies at its next activation.
    restored: Option<persist::RestoredBalloon>,
}

impl Balloon {
    /// A new, not yet activated balloon with these options.
    pub fn new(config: BalloonConfig) -> Result<Self, BalloonError> {
        Self::from_state(new_state(config)?)
    }

    /// Back to what [`Balloon::new`] with the current options makes,
    /// keeping the eventfds and the timer. A device reset (the driver's
    /// status 0) keeps the config space, the guest's statistics and the
    /// hinting state on purpose; the fuzzer, which reuses one device for
    /// millions of inputs, needs those gone too.
    pub fn reset_to_new(&mut self) -> Result<(), BalloonError> {
        let state = new_state(self.state.config.clone())?;
        super::VirtioDevice::reset(self);
        self.state = state;
        Ok(())
    }

    /// Rebuilds the device from saved state (a restore); the transport then
    /// activates it again with the saved queues.
    pub fn from_state(state: BalloonState) -> Result<Self, BalloonError> {
        let count = QueueLayout::new(state.avail_features).count;
        let queue_evts = (0..count)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| BalloonError::Os {
                what: "creating the queue eventfds",
                source,
            })?;
        let stats_timer = TimerFd::new().map_err(|e| BalloonError::Os {
            what: "creating the statistics timer",
            source: e.into(),
        })?;
        set_nonblocking(&stats_timer).map_err(|source| BalloonError::Os {
            what: "making the statistics timer non-blocking",
            source,
        })?;
        Ok(Self {
            state,
            queue_evts,
            queue_sizes: vec![QUEUE_SIZE; count],
            stats_timer,
            active: None,
            restored: None,
        })
    }

    /// A copy of the device's state, for snapshots and inspection.
    pub fn state(&self) -> BalloonState {
        self.state.clone()
    }

    /// Whether the driver has started the device (and not reset it since).
    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// The queue layout for the offered features (queue index → purpose).
    pub fn layout(&self) -> QueueLayout {
        QueueLayout::new(self.state.avail_features)
    }

    /// The config space as the guest sees it.
    fn config_space(&self) -> ConfigSpace {
        ConfigSpace {
            num_pages: self.state.num_pages,
            actual: self.state.actual_pages,
            free_page_hint_cmd_id: self.state.hint_cmd_id,
            poison_val: 0,
        }
    }
}

/// Makes reads of `fd` fail with `WouldBlock` instead of sleeping, so a
/// spurious or early wake-up never stalls the event loop.
fn set_nonblocking(fd: &impl AsRawFd) -> std::io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The state of a new device with these options.
fn new_state(config: BalloonConfig) -> Result<BalloonState, BalloonError> {
    let num_pages = target_pages(config.amount_mib)?;
    Ok(BalloonState {
        avail_features: avail_features(
            config.deflate_on_oom,
            config.stats_polling_interval_s > 0,
            config.free_page_hinting,
            config.free_page_reporting,
        ),
        config,
        num_pages,
        hint_ack_on_stop: true,
        ..Default::default()
    })
}

/// `mib` in 4 KiB pages, if that fits `num_pages`.
fn target_pages(mib: u32) -> Result<u32, BalloonError> {
    mib.checked_mul(PAGES_PER_MIB)
        .ok_or(BalloonError::TargetTooLarge(mib))
}
