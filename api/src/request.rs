//! What the API server and the VMM say to each other: one parsed request in,
//! one response out. Kept free of HTTP so the VMM never sees hyper types and
//! can be driven by tests without a socket.

use std::path::PathBuf;
use std::sync::mpsc::Sender;

use serde::{Deserialize, Serialize};

use crate::{
    BalloonConfig, BootSourceConfig, ConfigError, CpuTemplate, DriveConfig, EmulationQuirks,
    EntropyConfig, HugePages, MachineConfig, NetConfig, RateLimiterConfig, SerialConfig, VmConfig,
    VsockConfig,
};

/// One API call, parsed and checked as far as possible without the VMM's
/// state, for the VMM to carry out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ApiRequest {
    /// `GET /`: who and in what state the instance is.
    GetInstanceInfo,
    /// `GET /machine-config`.
    GetMachineConfig,
    /// `PUT /machine-config`: replace the whole machine config (omitted
    /// fields take their defaults).
    PutMachineConfig(MachineConfig),
    /// `PUT /cpu-config`: a custom CPU template (Firecracker's), applied
    /// to every vCPU's CPUID at boot; replaces an earlier one.
    PutCpuConfig(crate::CpuConfig),
    /// `PATCH /machine-config`: change only the given fields.
    PatchMachineConfig(MachineConfigPatch),
    /// `PUT /boot-source`.
    PutBootSource(BootSourceConfig),
    /// `PUT /drives/{drive_id}`: add or replace a drive (pre-boot).
    PutDrive(DriveConfig),
    /// `PATCH /drives/{drive_id}`: swap the backing file or the rate limiter.
    PatchDrive(DrivePatch),
    /// `PUT /network-interfaces/{iface_id}`: add or replace one (pre-boot).
    PutNetworkInterface(NetConfig),
    /// `PATCH /network-interfaces/{iface_id}`: change its rate limiters.
    PatchNetworkInterface(NetPatch),
    /// `PUT /actions`.
    Action(ActionType),
    /// `PATCH /vm`: pause or resume.
    PatchVm(VmStateRequest),
    /// `GET /vm/config`: the full current configuration.
    GetVmConfig,
    /// `PUT /logger`.
    PutLogger(LoggerConfig),
    /// `PUT /metrics`.
    PutMetrics(MetricsConfig),
    /// `PUT /snapshot/create`: save a paused VM.
    CreateSnapshot(SnapshotCreateParams),
    /// `PUT /snapshot/load`: restore a VM into this (not started) flint.
    LoadSnapshot(SnapshotLoadParams),
    /// `PUT /migrate`: live-migrate the running VM to another flint.
    Migrate(MigrateParams),
    /// `PUT /vsock`: add or replace the vsock device (pre-boot).
    PutVsock(VsockConfig),
    /// `PUT /entropy`: add or replace the entropy device (pre-boot).
    PutEntropy(EntropyConfig),
    /// `PUT /serial`: where the serial console's output goes (pre-boot).
    PutSerial(SerialConfig),
    /// `PUT /pmem/{id}`: add or replace a virtio-pmem device (pre-boot).
    PutPmem(crate::PmemConfig),
    /// `PUT /fs/{tag}`: add or replace a virtio-fs device (pre-boot; a
    /// flint extra).
    PutFs(crate::FsConfig),
    /// `PUT /hotplug/memory`: configure the virtio-mem region (pre-boot).
    PutMemoryHotplug(crate::MemoryHotplugConfig),
    /// `PATCH /hotplug/memory`: ask the guest to plug this much (run time).
    PatchMemoryHotplug(crate::MemoryHotplugSizeUpdate),
    /// `GET /hotplug/memory`: the region's configuration and plugged size.
    GetMemoryHotplug,
    /// `PUT /balloon`: add or replace the balloon device (pre-boot).
    PutBalloon(BalloonConfig),
    /// `GET /balloon`: the balloon's configuration, with its current target.
    GetBalloon,
    /// `PATCH /balloon`: a new target size (before or after boot).
    PatchBalloon(BalloonUpdate),
    /// `GET /balloon/statistics`: the guest's latest memory statistics.
    GetBalloonStatistics,
    /// `PATCH /balloon/statistics`: a new statistics polling interval.
    PatchBalloonStatistics(BalloonStatsUpdate),
    /// `PATCH /balloon/hinting/start`: start a free page hinting run.
    StartBalloonHinting(BalloonHintingStart),
    /// `PATCH /balloon/hinting/stop`: stop the free page hinting run.
    StopBalloonHinting,
    /// `GET /balloon/hinting/status`: where the hinting run stands.
    GetBalloonHintingStatus,
    /// `PUT /mmds`: replace the metadata (any JSON value, before or after boot).
    PutMmds(serde_json::Value),
    /// `PATCH /mmds`: an RFC 7396 merge patch on the metadata.
    PatchMmds(serde_json::Value),
    /// `GET /mmds`: the metadata as stored.
    GetMmds,
    /// `PUT /mmds/config`: version, address and interfaces (pre-boot).
    PutMmdsConfig(crate::MmdsConfig),
}

/// Body of `PATCH /balloon` (Firecracker's `BalloonUpdate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    /// New target balloon size in MiB.
    pub amount_mib: u32,
}

/// Body of `PATCH /balloon/statistics` (Firecracker's `BalloonStatsUpdate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    /// New interval in seconds between statistics refreshes; statistics
    /// cannot be turned on or off after boot, so 0 and non-0 cannot swap.
    pub stats_polling_interval_s: u16,
}

/// Body of `PATCH /balloon/hinting/start` (Firecracker's `BalloonStartCmd`);
/// the body is optional, as in Firecracker, and defaults to this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonHintingStart {
    /// Whether flint acknowledges the guest's "done" by itself, ending the
    /// run without a `PATCH /balloon/hinting/stop`.
    #[serde(default)]
    pub acknowledge_on_stop: bool,
}

/// Answer to `GET /balloon/statistics` (Firecracker's `BalloonStats`): the
/// balloon's size and whatever memory statistics the guest reported (absent
/// ones it did not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStats {
    /// Pages the balloon aims to hold.
    pub target_pages: u32,
    /// Pages the balloon holds.
    pub actual_pages: u32,
    /// `target_pages` in MiB.
    pub target_mib: u32,
    /// `actual_pages` in MiB.
    pub actual_mib: u32,
    /// Bytes swapped in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    /// Bytes swapped out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    /// Major page faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    /// Minor page faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    /// Bytes of memory not used for anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    /// Bytes of memory the guest has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    /// Bytes available to new applications without swapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    /// Bytes of disk cache that can be reclaimed without I/O.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    /// Successful hugetlb page allocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    /// Failed hugetlb page allocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
    /// OOM killer invocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<u64>,
    /// Allocations that took the slow path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc_stall: Option<u64>,
    /// Memory scanned asynchronously.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_scan: Option<u64>,
    /// Memory scanned directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_scan: Option<u64>,
    /// Memory reclaimed asynchronously.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_reclaim: Option<u64>,
    /// Memory reclaimed directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_reclaim: Option<u64>,
}

/// Answer to `GET /balloon/hinting/status` (Firecracker's
/// `BalloonHintingStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonHintingStatus {
    /// The last command the host issued.
    pub host_cmd: u32,
    /// The last command the guest sent back, if any yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_cmd: Option<u32>,
}

/// Body of `PATCH /machine-config`: absent fields keep their current value.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigPatch {
    /// New vCPU count, 1..=[`crate::MAX_VCPUS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u8>,
    /// New guest RAM in MiB, at least [`crate::MIN_MEM_MIB`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<u64>,
    /// New CPUID template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    /// New emulation-quirks setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emulation_quirks: Option<EmulationQuirks>,
    /// See [`MachineConfig::track_dirty_pages`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// See [`MachineConfig::smt`]: only `false`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::compat::only_false_opt::<_, crate::config::SmtField>"
    )]
    pub smt: Option<bool>,
    /// See [`MachineConfig::huge_pages`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

/// Body of `PATCH /drives/{drive_id}`: what may change on an existing drive
/// (a new backing file, e.g. after the host swapped the image, or new limits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrivePatch {
    /// The drive to change; must equal the id in the path.
    pub drive_id: String,
    /// New backing file on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// New I/O limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// Body of `PATCH /network-interfaces/{iface_id}`: only the limits may change
/// on an existing interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetPatch {
    /// The interface to change; must equal the id in the path.
    pub iface_id: String,
    /// New limits on guest-bound traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// New limits on host-bound traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// Body of `PUT /actions`, in Firecracker's shape
/// `{"action_type": "InstanceStart"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "crate::wire::ActionBody", into = "crate::wire::ActionBody")]
pub enum ActionType {
    /// Build and boot the VM from the configuration given so far.
    InstanceStart,
    /// Press Ctrl+Alt+Del on the guest's i8042 keyboard (a clean reboot
    /// request the guest acts on).
    SendCtrlAltDel,
    /// Write the metrics file now instead of waiting for the next period.
    FlushMetrics,
    /// flint extension: stop the running VM's vCPUs and end the flint
    /// process cleanly (exit 0), for guests that cannot be asked to reboot.
    Stop,
}

/// Body of `PATCH /vm`, in Firecracker's shape `{"state": "Paused"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "crate::wire::VmStateBody", into = "crate::wire::VmStateBody")]
pub enum VmStateRequest {
    /// Stop running the vCPUs.
    Paused,
    /// Run the vCPUs again.
    Resumed,
}

/// Body of `PUT /logger`, Firecracker's shape; absent fields keep their
/// current value.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    /// File (or FIFO) to write the log to instead of stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// Least severe level to log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// Whether each line names its level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Whether each line names its source file and line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only log records whose module path starts with this (e.g.
    /// `vmm::controller`); an empty string logs every module again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// Log verbosity, spelled as Firecracker spells it (`"Warn"` is accepted too,
/// since users write the `log` crate's name for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    /// Only errors.
    Error,
    /// Errors and warnings.
    #[serde(alias = "Warn")]
    Warning,
    /// Also informational messages (the default).
    Info,
    /// Also debugging detail.
    Debug,
    /// Everything.
    Trace,
    /// Nothing.
    Off,
}

/// Body of `PUT /metrics`: where to write the metrics (JSON lines).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// File (or FIFO) the metrics are appended to.
    pub metrics_path: PathBuf,
    /// Add the instance id (`--id`) as a top-level `"id"` to each line
    /// (Firecracker's field).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub emit_id: bool,
    /// Operator-defined pairs added as a top-level `"properties"` object to
    /// each line (Firecracker's field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<std::collections::BTreeMap<String, String>>,
}

/// The instance's lifecycle state, as `GET /` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Still being configured; no vCPU has run.
    #[serde(rename = "Not started")]
    NotStarted,
    /// vCPUs are running.
    Running,
    /// Started, but vCPUs are stopped by `PATCH /vm`.
    Paused,
}

/// Body of the `GET /` answer, Firecracker's shape, so tools that poll for
/// the instance state work unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceInfo {
    /// The instance id given on the command line (or a default).
    pub id: String,
    /// Where in its lifecycle the instance is.
    pub state: InstanceState,
    /// flint's version.
    pub vmm_version: String,
    /// Always `"flint"`, so a client can tell it from Firecracker.
    pub app_name: String,
}

/// Body of the `GET /version` answer, which the server gives by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionInfo {
    /// The Firecracker API version whose paths and bodies flint follows (a
    /// subset of it), for tools that check it.
    pub firecracker_version: String,
    /// flint's own version.
    pub flint_version: String,
}

/// The Firecracker API version flint's endpoints follow; see [`VersionInfo`].
pub const FIRECRACKER_API_VERSION: &str = "1.7.0";

/// The VMM's answer to one [`ApiRequest`]; the server turns it into HTTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ApiResponse {
    /// Done, nothing to return: `204 No Content`.
    Empty,
    /// `200` with the instance info (answer to `GetInstanceInfo`).
    InstanceInfo(InstanceInfo),
    /// `200` with the machine config (answer to `GetMachineConfig`).
    MachineConfig(MachineConfig),
    /// `200` with the full config (answer to `GetVmConfig`).
    VmConfig(VmConfig),
    /// `200` with the balloon's configuration (answer to `GetBalloon`).
    Balloon(BalloonConfig),
    /// `200` with the balloon statistics (answer to `GetBalloonStatistics`).
    BalloonStatistics(BalloonStats),
    /// `200` with the hinting status (answer to `GetBalloonHintingStatus`).
    BalloonHintingStatus(BalloonHintingStatus),
    /// `200` with the metadata (answer to `GetMmds`).
    Mmds(serde_json::Value),
    /// `200` with the virtio-mem status (answer to `GetMemoryHotplug`).
    MemoryHotplugStatus(crate::MemoryHotplugStatus),
    /// The request was refused; sent as `{"fault_message": ...}`.
    Error(ApiError),
}

/// A refused request: the HTTP status and a message for the user.
///
/// The spec (`api/openapi.yaml`) documents 400 for a request the VMM
/// refuses (bad value, wrong lifecycle state, failure to carry it out) and
/// 404 for a `PATCH` naming a device that does not exist; other statuses
/// would make clients see an undocumented answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{status}: {fault_message}")]
pub struct ApiError {
    /// HTTP status code to answer with.
    pub status: u16,
    /// What went wrong, sent as the body's `fault_message`.
    pub fault_message: String,
}

impl ApiError {
    /// A refusal with any status.
    pub fn new(status: u16, fault_message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            fault_message: fault_message.into(),
        }
    }

    /// `400 Bad Request`: the usual refusal.
    pub fn bad_request(fault_message: impl Into<String>) -> ApiError {
        ApiError::new(400, fault_message)
    }

    /// `404 Not Found`: no such path, or a `PATCH` of a device that does not
    /// exist.
    pub fn not_found(fault_message: impl Into<String>) -> ApiError {
        ApiError::new(404, fault_message)
    }
}

impl From<ConfigError> for ApiError {
    /// A config problem is the client's: 400 with the problem's own message,
    /// which names the field.
    fn from(err: ConfigError) -> ApiError {
        ApiError::bad_request(err.to_string())
    }
}

impl From<ApiError> for ApiResponse {
    fn from(err: ApiError) -> ApiResponse {
        ApiResponse::Error(err)
    }
}

/// What the server hands to the VMM: a request and where to send the answer.
///
/// The VMM must answer every message exactly once (dropping `reply` makes
/// the client see 503); the server gives up waiting after its reply timeout.
/// Sending the answer can fail when the client has gone or the server gave
/// up; the VMM should ignore that.
#[derive(Debug)]
pub struct ApiMessage {
    /// The parsed, pre-checked request.
    pub request: ApiRequest,
    /// Where the answer goes.
    pub reply: Sender<ApiResponse>,
}

/// Whether a snapshot holds all of memory or what changed since the last one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest RAM.
    #[default]
    Full,
    /// Only the pages written since the previous snapshot (needs
    /// `track_dirty_pages`); merge it onto its base before loading.
    Diff,
}

/// Body of `PUT /snapshot/create` (Firecracker's shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    /// Where the state file goes.
    pub snapshot_path: PathBuf,
    /// Where the memory file goes.
    pub mem_file_path: PathBuf,
    /// Full (default) or Diff.
    #[serde(default)]
    pub snapshot_type: SnapshotType,
}

/// A drive to re-open from another path when loading a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveOverride {
    /// Which drive.
    pub drive_id: String,
    /// Its new backing file.
    pub path_on_host: PathBuf,
}

/// A network interface to attach to another tap when loading a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetOverride {
    /// Which interface.
    pub iface_id: String,
    /// Its new tap.
    pub host_dev_name: String,
}

/// Body of `PUT /snapshot/load` (Firecracker's shape plus flint's overrides),
/// as the VMM uses it. Parsed from [`SnapshotLoadBody`], Firecracker's full
/// body, which the conversion checks (one memory source, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SnapshotLoadBody", into = "SnapshotLoadBody")]
pub struct SnapshotLoadParams {
    /// The state file.
    pub snapshot_path: PathBuf,
    /// The (full, or merged) memory file (`mem_backend` of type `File`, or
    /// the deprecated `mem_file_path`); with [`MemBackendType::Uffd`], the
    /// page-fault handler's Unix socket instead (`backend_path`).
    pub mem_file_path: PathBuf,
    /// Where memory comes from: the file, mapped or copied (`File`), or a
    /// page-fault handler serving it through a userfaultfd (`Uffd`).
    pub mem_backend: MemBackendType,
    /// Run the vCPUs once restored (else the VM stays paused).
    pub resume_vm: bool,
    /// Log dirty pages from now on, so the restored VM can take diff
    /// snapshots (`track_dirty_pages`, or the deprecated
    /// `enable_diff_snapshots`).
    pub enable_diff_snapshots: bool,
    /// Copy the memory file into fresh guest RAM instead of mapping it
    /// privately (lazy, copy-on-write).
    pub copy_memory: bool,
    /// Drives to re-open from other paths (a clone gets its own disk).
    pub drive_overrides: Vec<DriveOverride>,
    /// Interfaces to attach to other taps (`network_overrides`, or flint's
    /// older `net_overrides`).
    pub net_overrides: Vec<NetOverride>,
}

/// How a snapshot's memory is loaded (Firecracker's `MemoryBackend`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    /// A memory file, or a UFFD handler's socket.
    pub backend_type: MemBackendType,
    /// The memory file (`File`) or the handler's socket (`Uffd`).
    pub backend_path: PathBuf,
}

/// Where a restored VM's memory comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemBackendType {
    /// A memory file written by `snapshot/create`.
    File,
    /// A userfaultfd page-fault handler listening on a Unix socket
    /// (Firecracker's protocol: it gets the regions as JSON and the
    /// userfaultfd, and fills each page on its first touch).
    Uffd,
}

/// `snapshot/load.huge_pages` (Firecracker's field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotHugePages {
    /// What the snapshot was taken with (the default).
    Snapshot,
    /// Ordinary pages.
    None,
    /// Transparent huge pages; not supported yet.
    Transparent,
    /// hugetlbfs 2 MiB pages; not supported yet.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// Firecracker's `vsock_override` of `snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    /// The new host socket path.
    pub uds_path: PathBuf,
}

/// The body of `PUT /snapshot/load` as sent: every field Firecracker
/// accepts, plus flint's `copy_memory`, `drive_overrides` and
/// `net_overrides`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadBody {
    /// The state file.
    pub snapshot_path: PathBuf,
    /// Deprecated in Firecracker: the memory file (forbidden with
    /// `mem_backend`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<PathBuf>,
    /// Where memory comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemBackend>,
    /// Run the vCPUs once restored.
    #[serde(default)]
    pub resume_vm: bool,
    /// Deprecated name of `track_dirty_pages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_diff_snapshots: Option<bool>,
    /// Log dirty pages from now on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Firecracker's tap overrides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetOverride>,
    /// Firecracker's vsock socket override; not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// Advance kvmclock by the wall-clock time since the snapshot; only
    /// `false` (flint's kvmclock continues from the saved value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_realtime: Option<bool>,
    /// Page size for the restored memory; `Snapshot` or `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<SnapshotHugePages>,
    /// flint: copy the memory file instead of mapping it.
    #[serde(default)]
    pub copy_memory: bool,
    /// flint: drives to re-open from other paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drive_overrides: Vec<DriveOverride>,
    /// flint's older name for `network_overrides`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net_overrides: Vec<NetOverride>,
}

impl TryFrom<SnapshotLoadBody> for SnapshotLoadParams {
    type Error = String;

    fn try_from(body: SnapshotLoadBody) -> Result<Self, String> {
        let (mem_file_path, mem_backend) = match (body.mem_file_path, body.mem_backend) {
            (Some(path), Some(backend))
                if backend.backend_type == MemBackendType::File && backend.backend_path == path =>
            {
                (path, MemBackendType::File)
            }
            (Some(_), Some(_)) => {
                return Err("give either mem_backend or mem_file_path, not both".into())
            }
            (None, None) => return Err("missing mem_backend (or mem_file_path)".into()),
            (Some(path), None) => (path, MemBackendType::File),
            (None, Some(backend)) => (backend.backend_path, backend.backend_type),
        };
        if mem_backend == MemBackendType::Uffd && body.copy_memory {
            return Err(
                "copy_memory applies to a File mem_backend (a Uffd handler fills memory itself)"
                    .into(),
            );
        }
        if body.vsock_override.is_some() {
            return Err("vsock_override: not supported yet".into());
        }
        if body.clock_realtime == Some(true) {
            return Err("clock_realtime: true is not supported (flint's kvmclock continues from the saved value; use false)".into());
        }
        match body.huge_pages {
            None | Some(SnapshotHugePages::Snapshot) | Some(SnapshotHugePages::None) => {}
            Some(other) => {
                return Err(format!(
                    "huge_pages: {other:?} is not supported yet (use Snapshot or None)"
                ))
            }
        }
        if let (Some(a), Some(b)) = (body.enable_diff_snapshots, body.track_dirty_pages) {
            if a != b {
                return Err("enable_diff_snapshots and track_dirty_pages disagree".into());
            }
        }
        if !body.network_overrides.is_empty() && !body.net_overrides.is_empty() {
            return Err("give either network_overrides or net_overrides, not both".into());
        }
        let mut net_overrides = body.network_overrides;
        net_overrides.extend(body.net_overrides);
        Ok(SnapshotLoadParams {
            snapshot_path: body.snapshot_path,
            mem_file_path,
            mem_backend,
            resume_vm: body.resume_vm,
            enable_diff_snapshots: body
                .track_dirty_pages
                .or(body.enable_diff_snapshots)
                .unwrap_or(false),
            copy_memory: body.copy_memory,
            drive_overrides: body.drive_overrides,
            net_overrides,
        })
    }
}

impl From<SnapshotLoadParams> for SnapshotLoadBody {
    fn from(p: SnapshotLoadParams) -> Self {
        SnapshotLoadBody {
            snapshot_path: p.snapshot_path,
            mem_backend: Some(MemBackend {
                backend_type: p.mem_backend,
                backend_path: p.mem_file_path,
            }),
            resume_vm: p.resume_vm,
            track_dirty_pages: Some(p.enable_diff_snapshots),
            copy_memory: p.copy_memory,
            drive_overrides: p.drive_overrides,
            network_overrides: p.net_overrides,
            ..Default::default()
        }
    }
}

/// Body of `PUT /migrate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateParams {
    /// `unix:PATH` or `tcp:HOST:PORT` of a `flint run --migrate-listen`.
    pub destination: String,
    /// The pre-shared key file (the destination's `--migrate-key`): the
    /// two flints authenticate each other and every message with it.
    pub key_path: std::path::PathBuf,
}
