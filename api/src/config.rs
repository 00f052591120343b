//! The VM configuration types: the `--config` JSON file and, later, the
//! HTTP API request bodies, in Firecracker's shape so existing configs and
//! tooling carry over.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{ConfigError, MacAddr};

/// A whole microVM's configuration: what to boot and which devices to give it.
///
/// Parsed from the file given to `flint run --config`, and the same shape the
/// API will accept, so a config can move between the two unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// The kernel and how to start it; the one section with no usable default.
    #[serde(rename = "boot-source")]
    pub boot_source: BootSourceConfig,
    /// vCPUs, memory and CPU features; defaults give a small working VM.
    #[serde(rename = "machine-config", default)]
    pub machine_config: MachineConfig,
    /// Block devices, attached in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drives: Vec<DriveConfig>,
    /// Network devices backed by host TAP interfaces, attached in this order.
    #[serde(
        rename = "network-interfaces",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub network_interfaces: Vec<NetConfig>,
    /// A virtio-vsock device for host<->guest sockets; none means no device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// A virtio-rng device feeding the guest host entropy; none means no
    /// device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyConfig>,
    /// A virtio-balloon device to reclaim guest memory; none means no device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonConfig>,
    /// virtio-pmem devices: host files mapped into the guest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pmem: Vec<crate::PmemConfig>,
    /// A virtio-mem hotplug region; none means no device.
    #[serde(
        rename = "memory-hotplug",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub memory_hotplug: Option<crate::MemoryHotplugConfig>,
    /// virtio-fs devices: host directories served by vhost-user daemons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fs: Vec<crate::FsConfig>,
    /// Where the guest's serial console goes; none keeps flint's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialConfig>,
    /// The metadata service: which interfaces answer it, on which address,
    /// V1 or V2 (Firecracker's `mmds-config`); none means no MMDS. The data
    /// itself is not configuration (`--metadata`, `PUT /mmds`).
    #[serde(
        rename = "mmds-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub mmds_config: Option<crate::MmdsConfig>,
}

/// What to boot: the guest kernel, an optional initramfs and the command line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSourceConfig {
    /// Uncompressed kernel (ELF `vmlinux`) or bzImage on the host.
    pub kernel_image_path: PathBuf,
    /// Initramfs loaded next to the kernel, for guests without a root drive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    /// Kernel command line; flint may append parameters of its own after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// The VM's size and CPU model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MachineConfig {
    /// Number of vCPUs, 1..=[`crate::MAX_VCPUS`].
    pub vcpu_count: u8,
    /// Guest RAM in MiB, at least [`crate::MIN_MEM_MIB`].
    pub mem_size_mib: u64,
    /// CPUID template, to hide host CPU differences from the guest.
    pub cpu_template: CpuTemplate,
    /// Whether to add the kernel parameters a guest needs when the host's KVM
    /// emulates guest code instead of running it on VT-x/AMD-V (see
    /// [`EmulationQuirks`]).
    pub emulation_quirks: EmulationQuirks,
    /// Whether KVM logs the pages the guest writes from boot on, so that diff
    /// snapshots can be taken (Firecracker's name).
    pub track_dirty_pages: bool,
    /// Firecracker's simultaneous multithreading switch: flint shows the
    /// guest one thread per core, so only `false` is accepted.
    #[serde(deserialize_with = "crate::compat::only_false::<_, SmtField>")]
    pub smt: bool,
    /// What backs guest memory (Firecracker's field); see [`HugePages`].
    pub huge_pages: HugePages,
}

/// Names `machine-config.smt` in the refusal of `true`.
pub(crate) struct SmtField;

impl crate::compat::Refusal for SmtField {
    const MESSAGE: &'static str =
        "true is not supported: flint shows the guest one thread per core (use false)";
}

/// Which pages back guest memory (Firecracker's `huge_pages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum HugePages {
    /// Ordinary 4 KiB pages.
    #[default]
    None,
    /// Transparent huge pages (`madvise(MADV_HUGEPAGE)`); not supported yet.
    Transparent,
    /// Explicit 2 MiB hugetlbfs pages; needs the host to have them reserved.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            cpu_template: CpuTemplate::default(),
            emulation_quirks: EmulationQuirks::default(),
            track_dirty_pages: false,
            smt: false,
            huge_pages: HugePages::None,
        }
    }
}

/// CPUID template: which CPU model the guest is shown, so that snapshots and
/// fleets of mixed hosts see one consistent CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum CpuTemplate {
    /// The host's CPUID, filtered only for what KVM cannot virtualize.
    #[default]
    None,
    /// Firecracker's T2 template (an Intel Skylake-like subset).
    T2,
}

/// Whether to add guest kernel parameters for hosts whose KVM *emulates*
/// guest kernel code in software instead of running it on VT-x/AMD-V.
/// There the guest needs extra kernel parameters to boot (steering it away
/// from features the emulation lacks or gets wrong); with hardware
/// virtualization they are unneeded and only cost performance, hence the
/// switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmulationQuirks {
    /// Detect the host's KVM mode at start-up and add the parameters only if
    /// it emulates.
    #[default]
    Auto,
    /// Always add the parameters (for when detection gets it wrong).
    On,
    /// Never add them.
    Off,
}

/// One virtio block device backed by a host file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    /// Name used to refer to the drive (API updates, logs); unique per VM.
    pub drive_id: String,
    /// Backing file (raw disk image) on the host.
    pub path_on_host: PathBuf,
    /// Whether the kernel should mount this drive as `/` (adds `root=` to the
    /// command line); at most one drive may be.
    pub is_root_device: bool,
    /// Expose the drive read-only, and open the host file read-only.
    #[serde(default)]
    pub is_read_only: bool,
    /// I/O throttling for this drive; none means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
    /// Root partition's unique id (Firecracker's field): with
    /// `is_root_device`, the guest mounts `root=PARTUUID=<partuuid>`
    /// instead of the whole `/dev/vda`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Caching strategy (Firecracker's field). flint always honours the
    /// guest's flushes with `fdatasync`, which is `Writeback`; `Unsafe` (the
    /// default) is accepted and gets the same, safer behaviour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    /// I/O engine (Firecracker's field): flint does synchronous I/O, so only
    /// `Sync` is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// A vhost-user-block backend's socket (Firecracker's field); refused,
    /// flint has no vhost-user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

/// A drive's caching strategy (Firecracker's `cache_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum CacheType {
    /// Firecracker does not offer flush; flint still syncs on flush.
    #[default]
    Unsafe,
    /// Flushes reach the disk (what flint always does).
    Writeback,
}

/// A drive's I/O engine (Firecracker's `io_engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum IoEngine {
    /// Blocking reads and writes on the device thread (flint's engine).
    #[default]
    Sync,
    /// io_uring; not supported.
    Async,
}

/// One virtio network device backed by a host TAP interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Name used to refer to the interface (API updates, logs); unique per VM.
    pub iface_id: String,
    /// Name of the host TAP device to attach to.
    pub host_dev_name: String,
    /// MAC the guest sees; none lets the guest driver pick a random one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<MacAddr>,
    /// Throttling of guest-bound traffic; none means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Throttling of host-bound traffic; none means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
    /// MTU advertised with `VIRTIO_NET_F_MTU` (Firecracker's field); not
    /// supported yet, so it must be absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
}

/// The virtio-vsock device (Firecracker's `vsock` section): the guest's
/// context id and the host Unix socket its connections are proxied through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id, at least 3 (0-2 are reserved for the
    /// hypervisor, local and host).
    pub guest_cid: u32,
    /// Host socket flint listens on for host-initiated connections; guest-
    /// initiated ones go to `<uds_path>_<port>`.
    pub uds_path: PathBuf,
    /// Deprecated in Firecracker and ignored; accepted so old configs load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

/// The virtio-rng device (Firecracker's `entropy` section).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyConfig {
    /// Limits on the bytes the guest may draw; none means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// The virtio-balloon device (Firecracker's `balloon` section and the
/// body of `PUT /balloon` and the answer to `GET /balloon`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfig {
    /// Target balloon size in MiB: memory taken from the guest.
    pub amount_mib: u32,
    /// Whether the guest may deflate the balloon when it runs out of memory.
    pub deflate_on_oom: bool,
    /// Seconds between statistics refreshes; 0 (the default) disables
    /// statistics, and they cannot be turned on after boot.
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    /// Whether the free page hinting feature is offered to the guest.
    #[serde(default)]
    pub free_page_hinting: bool,
    /// Whether the free page reporting feature is offered to the guest.
    #[serde(default)]
    pub free_page_reporting: bool,
}

/// The serial console's output (Firecracker's `serial` section).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// File or named pipe on the host the guest's serial output is written
    /// to; none keeps flint's default (its standard output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_out_path: Option<PathBuf>,
    /// Limit on the guest's output bandwidth (Firecracker's field); not
    /// supported yet, so it must be absent. Boxed: it is rare and keeps
    /// the config small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<Box<TokenBucketConfig>>,
}

/// A device's I/O limits, so one VM cannot starve its neighbours; both
/// buckets apply at once.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    /// Limit in operations (requests or packets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

/// A token bucket: up to `size` tokens, refilled completely every
/// `refill_time` ms, plus a one-off allowance at start so boot is not slowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Bucket capacity in tokens; 0 means unlimited.
    pub size: u64,
    /// Extra tokens available once, before the steady-state limit applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Time in milliseconds to refill an empty bucket to `size`.
    pub refill_time: u64,
}

/// The largest config file `--config` reads; real configs are a few KiB.
const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

/// Reads a config file that must be a regular file of at most
/// [`MAX_CONFIG_FILE_BYTES`]. It is opened `O_NONBLOCK` and checked with
/// `fstat` before any read, so a FIFO cannot block flint and a device like
/// `/dev/zero` cannot make it allocate without bound.
fn read_config_file(path: &Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "not a regular file (a config must be a plain JSON file)",
        ));
    }
    let too_big = || {
        Error::new(
            ErrorKind::InvalidInput,
            format!("larger than {MAX_CONFIG_FILE_BYTES} bytes"),
        )
    };
    if meta.len() > MAX_CONFIG_FILE_BYTES {
        return Err(too_big());
    }
    let mut text = String::new();
    file.take(MAX_CONFIG_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(too_big());
    }
    Ok(text)
}

impl VmConfig {
    /// Parses a config from JSON text, without checking it against the host.
    ///
    /// Errors carry the JSON path of the offending field (via
    /// `serde_path_to_error`) so a user can find it in a long file.
    pub fn from_json(text: &str) -> Result<VmConfig, ConfigError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let config: VmConfig =
            serde_path_to_error::deserialize(&mut de).map_err(|e| ConfigError::Parse {
                path: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        // Reject trailing garbage after the object, like serde_json::from_str.
        de.end().map_err(|e| ConfigError::Parse {
            path: ".".to_owned(),
            message: e.to_string(),
        })?;
        Ok(config)
    }

    /// Reads, parses, resolves and validates a config file: everything
    /// `flint run --config` needs before it starts building the VM.
    ///
    /// Relative paths inside the file are taken relative to the file's own
    /// directory, so example configs work from any working directory.
    pub fn from_file(path: &Path) -> Result<VmConfig, ConfigError> {
        let text = read_config_file(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut config = VmConfig::from_json(&text)?;
        let base = path.parent().unwrap_or_else(|| Path::new(""));
        config.resolve_relative_paths(base);
        config.validate()?;
        Ok(config)
    }

    /// Makes every relative host path (kernel, initrd, drive backing files,
    /// vsock socket, serial output)
    /// relative to `base_dir` instead of the process's working directory;
    /// absolute paths are left alone.
    pub fn resolve_relative_paths(&mut self, base_dir: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base_dir.join(&*p);
            }
        };
        resolve(&mut self.boot_source.kernel_image_path);
        if let Some(initrd) = self.boot_source.initrd_path.as_mut() {
            resolve(initrd);
        }
        for drive in &mut self.drives {
            resolve(&mut drive.path_on_host);
        }
        if let Some(vsock) = self.vsock.as_mut() {
            resolve(&mut vsock.uds_path);
        }
        for fs in &mut self.fs {
            resolve(&mut fs.socket);
        }
        if let Some(out) = self
            .serial
            .as_mut()
            .and_then(|s| s.serial_out_path.as_mut())
        {
            resolve(out);
        }
    }
}
