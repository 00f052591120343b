//! Balloon: the `balloon` config section as a virtio-balloon device, and
//! its run-time requests (`PATCH /balloon`, `/balloon/statistics`,
//! `/balloon/hinting/*`).

use api::{BalloonConfig, VmConfig};
use devices::virtio::balloon::{self, Balloon};

use super::DeviceKind;

/// The id of the (only) balloon device: its name is `balloon balloon`.
pub const BALLOON_ID: &str = "balloon";

/// The `balloon` registration (at most one device).
pub struct BalloonKind;

/// A run-time change of the balloon (`PATCH /balloon` and `PATCH
/// /balloon/statistics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalloonPatch {
    /// A new target in MiB (the caller checks it against guest memory).
    Target(u32),
    /// A new statistics polling interval in seconds.
    StatsInterval(u16),
}

impl DeviceKind for BalloonKind {
    type Device = Balloon;
    type Config = BalloonConfig;
    type Patch = BalloonPatch;

    const KIND: &'static str = "balloon";
    const SECTION: &'static str = "balloon";

    fn configs(config: &VmConfig) -> Vec<&BalloonConfig> {
        config.balloon.iter().collect()
    }

    fn id(_config: &BalloonConfig) -> &str {
        BALLOON_ID
    }

    fn args(config: &BalloonConfig) -> Result<balloon::BalloonConfig, String> {
        Ok(balloon::BalloonConfig {
            amount_mib: config.amount_mib,
            deflate_on_oom: config.deflate_on_oom,
            stats_polling_interval_s: config.stats_polling_interval_s,
            free_page_hinting: config.free_page_hinting,
            free_page_reporting: config.free_page_reporting,
        })
    }

    fn create(args: balloon::BalloonConfig) -> Result<Balloon, String> {
        Balloon::new(args).map_err(|e| e.to_string())
    }

    fn patch_id(_patch: &BalloonPatch) -> &str {
        BALLOON_ID
    }

    /// The device raises its own config interrupt for a new target, so
    /// this always answers `false`.
    fn update(balloon: &mut Balloon, patch: &BalloonPatch) -> Result<bool, String> {
        match *patch {
            BalloonPatch::Target(mib) => balloon.set_target_mib(mib),
            BalloonPatch::StatsInterval(secs) => balloon.update_stats_interval(secs),
        }
        .map_err(|e| e.to_string())?;
        Ok(false)
    }

    fn update_config(config: &mut VmConfig, patch: &BalloonPatch) {
        if let Some(b) = config.balloon.as_mut() {
            match *patch {
                BalloonPatch::Target(mib) => b.amount_mib = mib,
                BalloonPatch::StatsInterval(secs) => b.stats_polling_interval_s = secs,
            }
        }
    }
}

/// The device's options as the API shows them (`GET /balloon`), with the
/// current target.
pub fn api_config(balloon: &Balloon) -> BalloonConfig {
    let c = balloon.config();
    BalloonConfig {
        amount_mib: c.amount_mib,
        deflate_on_oom: c.deflate_on_oom,
        stats_polling_interval_s: c.stats_polling_interval_s,
        free_page_hinting: c.free_page_hinting,
        free_page_reporting: c.free_page_reporting,
    }
}

/// The device's statistics as the API shows them (`GET
/// /balloon/statistics`).
pub fn api_stats(balloon: &Balloon) -> Result<api::BalloonStats, String> {
    let s = balloon.latest_stats().map_err(|e| e.to_string())?;
    Ok(api::BalloonStats {
        target_pages: s.target_pages,
        actual_pages: s.actual_pages,
        target_mib: s.target_mib,
        actual_mib: s.actual_mib,
        swap_in: s.swap_in,
        swap_out: s.swap_out,
        major_faults: s.major_faults,
        minor_faults: s.minor_faults,
        free_memory: s.free_memory,
        total_memory: s.total_memory,
        available_memory: s.available_memory,
        disk_caches: s.disk_caches,
        hugetlb_allocations: s.hugetlb_allocations,
        hugetlb_failures: s.hugetlb_failures,
        oom_kill: s.oom_kill,
        alloc_stall: s.alloc_stall,
        async_scan: s.async_scan,
        direct_scan: s.direct_scan,
        async_reclaim: s.async_reclaim,
        direct_reclaim: s.direct_reclaim,
    })
}
