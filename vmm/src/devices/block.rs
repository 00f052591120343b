//! Drives: the `drives` config section as virtio-blk devices.

use api::{DriveConfig, DrivePatch, RateLimiterConfig, TokenBucketConfig, VmConfig};
use devices::rate_limiter::{BucketConfig, Limits, RateLimiter};
use devices::virtio::block::{Block, BlockConfig};

use super::DeviceKind;

/// The `drives` registration.
pub struct BlockKind;

impl DeviceKind for BlockKind {
    type Device = Block;
    type Config = DriveConfig;
    type Patch = DrivePatch;

    const KIND: &'static str = "drive";
    const SECTION: &'static str = "drives";

    /// The root drive first, so it is `/dev/vda`.
    fn configs(config: &VmConfig) -> Vec<&DriveConfig> {
        let root = config.drives.iter().filter(|d| d.is_root_device);
        let others = config.drives.iter().filter(|d| !d.is_root_device);
        root.chain(others).collect()
    }

    fn id(config: &DriveConfig) -> &str {
        &config.drive_id
    }

    fn args(drive: &DriveConfig) -> Result<BlockConfig, String> {
        let limiter =
            rate_limiter(&drive.rate_limiter).map_err(|e| format!("rate limiter: {e}"))?;
        Ok(BlockConfig {
            drive_id: drive.drive_id.clone(),
            path: drive.path_on_host.clone(),
            read_only: drive.is_read_only,
            rate_limiter: limiter,
        })
    }

    fn create(args: BlockConfig) -> Result<Block, String> {
        Block::new(args).map_err(|e| e.to_string())
    }

    fn boot_args(drive: &DriveConfig) -> Option<String> {
        drive.is_root_device.then(|| {
            let mode = if drive.is_read_only { "ro" } else { "rw" };
            match &drive.partuuid {
                Some(partuuid) => format!("root=PARTUUID={partuuid} {mode}"),
                None => format!("root=/dev/vda {mode}"),
            }
        })
    }

    fn patch_id(patch: &DrivePatch) -> &str {
        &patch.drive_id
    }

    /// A new backing file (the guest is told its disk changed) and/or new
    /// rate limits.
    fn update(block: &mut Block, patch: &DrivePatch) -> Result<bool, String> {
        if patch.rate_limiter.is_some() {
            let (bandwidth, ops) = limits(&patch.rate_limiter);
            if !block.update_rate_limiter(bandwidth, ops) {
                return Err("this drive has no rate limiter to update".into());
            }
        }
        match &patch.path_on_host {
            Some(path) => {
                block.update_path(path.clone()).map_err(|e| e.to_string())?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn update_config(config: &mut VmConfig, patch: &DrivePatch) {
        if let Some(drive) = config
            .drives
            .iter_mut()
            .find(|d| d.drive_id == patch.drive_id)
        {
            if let Some(path) = &patch.path_on_host {
                drive.path_on_host = path.clone();
            }
            if patch.rate_limiter.is_some() {
                drive.rate_limiter = patch.rate_limiter.clone();
            }
        }
    }
}

fn bucket(config: &Option<TokenBucketConfig>) -> Option<BucketConfig> {
    config.as_ref().map(|b| BucketConfig {
        size: b.size,
        one_time_burst: b.one_time_burst.unwrap_or(0),
        refill_time_ms: b.refill_time,
    })
}

/// The buckets a config asks for (none: unlimited).
pub fn limits(config: &Option<RateLimiterConfig>) -> Limits {
    match config {
        Some(c) => (bucket(&c.bandwidth), bucket(&c.ops)),
        None => (None, None),
    }
}

/// The rate limiter for a config. Every device gets one, unlimited when the
/// config has none, so that limits can be set at run time (`PATCH`) on a
/// timer already registered with the event loop.
pub fn rate_limiter(config: &Option<RateLimiterConfig>) -> std::io::Result<Option<RateLimiter>> {
    let (bandwidth, ops) = limits(config);
    RateLimiter::new(bandwidth, ops).map(Some)
}
