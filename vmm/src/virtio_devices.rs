//! Turning the config's `drives` and `network-interfaces` into virtio devices.

use api::{DriveConfig, NetConfig, RateLimiterConfig, TokenBucketConfig};
use devices::rate_limiter::{BucketConfig, Limits, RateLimiter};
use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::net::{self, Net};

use crate::device_manager::{DeviceError, DeviceManager};
use crate::memory::GuestMemory;
use crate::vstate::vm::Vm;

/// Why a configured device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VirtioConfigError {
    /// The drive's image could not be opened.
    #[error("drives[{drive_id}]: {message}")]
    Drive {
        /// Which drive.
        drive_id: String,
        /// What went wrong.
        message: String,
    },
    /// The tap could not be opened.
    #[error("network-interfaces[{iface_id}]: {message}")]
    Net {
        /// Which interface.
        iface_id: String,
        /// What went wrong.
        message: String,
    },
    /// Wiring the device into the VM failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// Where restored devices must go: device name → (MMIO base, GSI).
pub type Placements = std::collections::HashMap<String, (u64, u32)>;

/// The device name of a drive.
pub fn drive_name(drive_id: &str) -> String {
    format!("drive {drive_id}")
}

/// The device name of a network interface.
pub fn net_name(iface_id: &str) -> String {
    format!("net {iface_id}")
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

/// Creates and attaches every drive, the root drive first so it is
/// `/dev/vda`. Returns the `root=` boot arguments when a drive is the root.
pub fn attach_drives(
    dm: &mut DeviceManager,
    vm: &Vm,
    mem: &GuestMemory,
    drives: &[DriveConfig],
    placements: &Placements,
) -> Result<Option<String>, VirtioConfigError> {
    let root = drives.iter().filter(|d| d.is_root_device);
    let others = drives.iter().filter(|d| !d.is_root_device);
    let mut root_args = None;
    for drive in root.chain(others) {
        let err = |message: String| VirtioConfigError::Drive {
            drive_id: drive.drive_id.clone(),
            message,
        };
        let limiter =
            rate_limiter(&drive.rate_limiter).map_err(|e| err(format!("rate limiter: {e}")))?;
        let block = Block::new(BlockConfig {
            drive_id: drive.drive_id.clone(),
            path: drive.path_on_host.clone(),
            read_only: drive.is_read_only,
            rate_limiter: limiter,
        })
        .map_err(|e| err(e.to_string()))?;
        let name = drive_name(&drive.drive_id);
        let placement = placements.get(&name).copied();
        let block = dm.attach_virtio(vm, mem, &name, block, placement)?;
        dm.blocks.push((drive.drive_id.clone(), block));
        if drive.is_root_device {
            let mode = if drive.is_read_only { "ro" } else { "rw" };
            root_args = Some(match &drive.partuuid {
                Some(partuuid) => format!("root=PARTUUID={partuuid} {mode}"),
                None => format!("root=/dev/vda {mode}"),
            });
        }
    }
    Ok(root_args)
}

/// Creates and attaches every network interface (opening its tap).
pub fn attach_nets(
    dm: &mut DeviceManager,
    vm: &Vm,
    mem: &GuestMemory,
    nets: &[NetConfig],
    placements: &Placements,
) -> Result<(), VirtioConfigError> {
    for iface in nets {
        let err = |message: String| VirtioConfigError::Net {
            iface_id: iface.iface_id.clone(),
            message,
        };
        let device = Net::new(net::NetConfig {
            iface_id: iface.iface_id.clone(),
            tap_name: iface.host_dev_name.clone(),
            mac: iface.guest_mac.map(|m| m.0),
            rx_rate_limiter: rate_limiter(&iface.rx_rate_limiter)
                .map_err(|e| err(format!("rx rate limiter: {e}")))?,
            tx_rate_limiter: rate_limiter(&iface.tx_rate_limiter)
                .map_err(|e| err(format!("tx rate limiter: {e}")))?,
        })
        .map_err(|e| err(e.to_string()))?;
        let name = net_name(&iface.iface_id);
        let placement = placements.get(&name).copied();
        let device = dm.attach_virtio(vm, mem, &name, device, placement)?;
        dm.nets.push((iface.iface_id.clone(), device));
    }
    Ok(())
}
