//! flint's external interface as data: the VM configuration that
//! `flint run --config` reads and the HTTP API accepts, its validation, and
//! the request/response types the API server and the VMM exchange.
//!
//! Kept in its own crate, free of KVM and of HTTP (the server is in
//! `api-server`), so the config format can be parsed, checked and tested
//! without a VM, and the VMM receives only checked input, as plain
//! [`ApiRequest`] values on a channel, without building hyper or tokio.

#![deny(missing_docs)]

mod compat;
mod config;
mod cpu_config;
mod devmem;
mod fields;
mod fs;
mod mac;
pub mod request;
mod validate;
mod wire;

#[cfg(test)]
mod config_tests;
#[cfg(test)]
mod validate_tests;

use std::path::PathBuf;

pub use config::{
    BalloonConfig, BootSourceConfig, CacheType, CpuTemplate, DriveConfig, EmulationQuirks,
    EntropyConfig, HugePages, IoEngine, MachineConfig, NetConfig, RateLimiterConfig, SerialConfig,
    TokenBucketConfig, VmConfig, VsockConfig,
};
pub use cpu_config::{
    parse_bitmap, BitmapFilter, CpuConfig, CpuidLeafModifier, CpuidRegisterName, MsrModifier,
    MAX_CPU_MODIFIERS,
};
pub use devmem::{
    MemoryHotplugConfig, MemoryHotplugSizeUpdate, MemoryHotplugStatus, PmemConfig, MAX_HOTPLUG_MIB,
};
pub use fields::serde_field_names;
pub use fs::{FsConfig, MAX_FS_QUEUE_SIZE, MAX_FS_REQUEST_QUEUES, MAX_FS_TAG_LEN};
pub use mac::{MacAddr, MacParseError};
pub use mmds::{MmdsConfig, MmdsVersion};
pub use request::{
    ActionType, ApiError, ApiMessage, ApiRequest, ApiResponse, BalloonHintingStart,
    BalloonHintingStatus, BalloonStats, BalloonStatsUpdate, BalloonUpdate, DriveOverride,
    DrivePatch, InstanceInfo, InstanceState, LogLevel, LoggerConfig, MachineConfigPatch,
    MemBackend, MemBackendType, MetricsConfig, MigrateParams, NetOverride, NetPatch,
    SnapshotCreateParams, SnapshotHugePages, SnapshotLoadBody, SnapshotLoadParams, SnapshotType,
    VersionInfo, VmStateRequest, VsockOverride, FIRECRACKER_API_VERSION,
};
pub use validate::{
    check_rate_limiter, MAX_BOOT_ARGS_LEN, MAX_HOST_DEV_NAME_LEN, MAX_ID_LEN, MAX_UNIX_PATH_LEN,
    MAX_VCPUS, MAX_VIRTIO_DEVICES, MIN_GUEST_CID, MIN_MEM_MIB, MMDS_UNKNOWN_IFACE,
};

/// Why a config could not be loaded; every variant names where the problem is
/// (a file, a JSON path or a dotted field) so the user can fix it directly.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file itself could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The text is not valid JSON or does not have the config's shape.
    #[error("{path}: {message}")]
    Parse {
        /// JSON path of the bad field, e.g. `machine-config.vcpu_count`, or
        /// `.` for the top level.
        path: String,
        /// serde_json's description, with line and column.
        message: String,
    },
    /// The config is well-formed but a value is unusable on this host.
    #[error("{field}: {message}")]
    Invalid {
        /// Dotted path of the field, in the same style as `Parse::path`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}
