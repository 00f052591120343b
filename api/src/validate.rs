//! Checks a parsed config against itself and the host before anything is
//! started, so mistakes surface as one clear message naming the field rather
//! than as a failure halfway through building the VM.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::{
    ConfigError, DriveConfig, HugePages, IoEngine, RateLimiterConfig, TokenBucketConfig, VmConfig,
};

/// Most vCPUs a VM may have: bounded by the MP table / ACPI tables and IRQ
/// routing flint sets up, and more than a microVM needs.
pub const MAX_VCPUS: u8 = 32;

/// Least guest RAM in MiB: below this the kernel and early allocations do not
/// fit and the guest dies with an unhelpful panic.
pub const MIN_MEM_MIB: u64 = 16;

/// Longest `boot_args` in bytes. The x86 kernel keeps at most 2048 bytes of
/// command line (`COMMAND_LINE_SIZE`, including its NUL) and silently cuts the
/// rest, and flint appends words of its own: a `virtio_mmio.device=...` of at
/// most 36 bytes per device ([`MAX_VIRTIO_DEVICES`] of them, 684 bytes),
/// `root=/dev/vda ro` and the emulation quirks (under 300 bytes together).
/// 1024 + 684 + 300 stays below 2047.
pub const MAX_BOOT_ARGS_LEN: usize = 1024;

/// Most virtio devices (drives, network interfaces, vsock, entropy, balloon)
/// a VM may have: each needs its own interrupt line, and the IOAPIC pins
/// left for devices are GSIs 5..=23 (`arch::layout::IRQ_DEVICES_START..=
/// IRQ_DEVICES_END`; a test checks the two agree).
pub const MAX_VIRTIO_DEVICES: usize = 19;

/// Longest Unix socket path: `sun_path` is 108 bytes including the NUL.
pub const MAX_UNIX_PATH_LEN: usize = 107;

/// Least guest context id: 0, 1 and 2 are the hypervisor, local and host.
pub const MIN_GUEST_CID: u32 = 3;

/// Longest drive_id / iface_id: they appear in logs and API URLs, so keep them
/// short.
pub const MAX_ID_LEN: usize = 64;

/// Longest host interface name: Linux IFNAMSIZ (16) less the NUL.
pub const MAX_HOST_DEV_NAME_LEN: usize = 15;

/// Firecracker's answer when `PUT /mmds/config` names an interface that does
/// not exist.
pub const MMDS_UNKNOWN_IFACE: &str = "The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.";

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

impl VmConfig {
    /// Checks everything that can be checked before the VM is built: files
    /// exist and are readable, sizes are in range, ids and names are unique
    /// and well-formed. Returns the first problem found, in file order.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_with_host_mem(host_mem_mib())
    }

    /// [`VmConfig::validate`] with the host's memory size given, so the check
    /// does not depend on the machine the tests run on.
    pub(crate) fn validate_with_host_mem(&self, host_mib: Option<u64>) -> Result<(), ConfigError> {
        self.validate_boot_source()?;
        self.validate_machine_config_with(host_mib)?;
        self.validate_drives()?;
        self.validate_network()?;
        self.validate_vsock()?;
        self.validate_entropy()?;
        self.validate_balloon()?;
        check_huge_pages_combinations(self)?;
        self.validate_serial()?;
        self.validate_devmem()?;
        self.validate_fs()?;
        self.validate_mmds()
    }

    /// Checks the `mmds-config` section alone: Firecracker's rules (at least
    /// one interface, a link-local address) and that every listed interface
    /// is configured, so MMDS is never attached to nothing.
    pub fn validate_mmds(&self) -> Result<(), ConfigError> {
        let Some(mmds) = &self.mmds_config else {
            return Ok(());
        };
        mmds.validate()
            .map_err(|e| invalid("mmds-config", e.to_string()))?;
        if let Some(unknown) = self.unknown_mmds_interface(mmds) {
            return Err(invalid(
                "mmds-config.network_interfaces",
                format!("{MMDS_UNKNOWN_IFACE} (no interface {unknown:?})"),
            ));
        }
        Ok(())
    }

    /// The first interface `mmds` lists that this config does not have.
    pub fn unknown_mmds_interface<'a>(&self, mmds: &'a crate::MmdsConfig) -> Option<&'a str> {
        mmds.network_interfaces
            .iter()
            .find(|id| !self.network_interfaces.iter().any(|n| &n.iface_id == *id))
            .map(String::as_str)
    }

    /// Checks that every virtio device gets an interrupt line (at most
    /// [`MAX_VIRTIO_DEVICES`] devices), before anything is created. Part of
    /// each device section's check, so the API refuses the device that
    /// does not fit when it is PUT.
    pub fn validate_device_count(&self) -> Result<(), ConfigError> {
        let count = self.drives.len()
            + self.network_interfaces.len()
            + usize::from(self.vsock.is_some())
            + usize::from(self.entropy.is_some())
            + usize::from(self.balloon.is_some())
            + self.pmem.len()
            + usize::from(self.memory_hotplug.is_some())
            + self.fs.len();
        if count > MAX_VIRTIO_DEVICES {
            let field = if self.drives.len() > self.network_interfaces.len() {
                "drives"
            } else {
                "network-interfaces"
            };
            return Err(invalid(
                field,
                format!(
                    "{count} virtio devices configured (drives, network interfaces, vsock, \
                     entropy, balloon together); at most {MAX_VIRTIO_DEVICES} fit, one per \
                     interrupt line"
                ),
            ));
        }
        Ok(())
    }

    /// Checks the `vsock` section alone.
    pub fn validate_vsock(&self) -> Result<(), ConfigError> {
        let Some(vsock) = &self.vsock else {
            return Ok(());
        };
        if vsock.guest_cid < MIN_GUEST_CID || vsock.guest_cid == u32::MAX {
            return Err(invalid(
                "vsock.guest_cid",
                format!(
                    "{} is reserved; use {MIN_GUEST_CID}..={}",
                    vsock.guest_cid,
                    u32::MAX - 1
                ),
            ));
        }
        check_socket_path("vsock.uds_path", &vsock.uds_path)?;
        if let Some(id) = &vsock.vsock_id {
            check_id("vsock.vsock_id", id)?;
        }
        self.validate_device_count()
    }

    /// Checks the `entropy` section alone.
    pub fn validate_entropy(&self) -> Result<(), ConfigError> {
        let Some(entropy) = &self.entropy else {
            return Ok(());
        };
        check_rate_limiter("entropy.rate_limiter", &entropy.rate_limiter)?;
        self.validate_device_count()
    }

    /// Checks the `balloon` section alone (against the machine's memory).
    pub fn validate_balloon(&self) -> Result<(), ConfigError> {
        let Some(balloon) = &self.balloon else {
            return Ok(());
        };
        check_balloon_size(balloon.amount_mib, self.machine_config.mem_size_mib)?;
        self.validate_device_count()
    }

    /// Checks the `serial` section alone.
    pub fn validate_serial(&self) -> Result<(), ConfigError> {
        if self
            .serial
            .as_ref()
            .is_some_and(|s| s.rate_limiter.is_some())
        {
            return Err(invalid(
                "serial.rate_limiter",
                "not supported yet (the serial output is not rate-limited)",
            ));
        }
        let Some(path) = self
            .serial
            .as_ref()
            .and_then(|s| s.serial_out_path.as_ref())
        else {
            return Ok(());
        };
        check_new_file_path("serial.serial_out_path", path)
    }

    /// Checks the `boot-source` section alone (the API validates each section
    /// as it is PUT, before the whole config exists).
    pub fn validate_boot_source(&self) -> Result<(), ConfigError> {
        let boot = &self.boot_source;
        check_file("boot-source.kernel_image_path", &boot.kernel_image_path)?;
        check_kernel_magic("boot-source.kernel_image_path", &boot.kernel_image_path)?;
        if let Some(initrd) = &boot.initrd_path {
            let field = "boot-source.initrd_path";
            check_file(field, initrd)?;
            let size = std::fs::metadata(initrd).map(|m| m.len()).unwrap_or(0);
            if size == 0 {
                return Err(invalid(field, format!("{}: is empty", initrd.display())));
            }
            let mem = self.machine_config.mem_size_mib.saturating_mul(1 << 20);
            if size >= mem {
                return Err(invalid(
                    field,
                    format!(
                        "{}: {size} bytes do not fit in the guest's {} MiB of memory",
                        initrd.display(),
                        self.machine_config.mem_size_mib
                    ),
                ));
            }
        }
        if let Some(args) = &boot.boot_args {
            check_boot_args(args)?;
        }
        Ok(())
    }

    /// Checks the `machine-config` section alone.
    pub fn validate_machine_config(&self) -> Result<(), ConfigError> {
        self.validate_machine_config_with(host_mem_mib())
    }

    fn validate_machine_config_with(&self, host_mib: Option<u64>) -> Result<(), ConfigError> {
        let machine = &self.machine_config;
        if !(1..=MAX_VCPUS).contains(&machine.vcpu_count) {
            return Err(invalid(
                "machine-config.vcpu_count",
                format!("{} is out of range 1..={MAX_VCPUS}", machine.vcpu_count),
            ));
        }
        check_mem(machine.mem_size_mib, host_mib)?;
        check_huge_pages(machine.huge_pages, machine.mem_size_mib)
    }

    /// Checks the `drives` section (and that its devices fit).
    pub fn validate_drives(&self) -> Result<(), ConfigError> {
        let mut ids: HashMap<&str, usize> = HashMap::new();
        let mut root: Option<usize> = None;
        for (i, drive) in self.drives.iter().enumerate() {
            let at = format!("drives[{i}]");
            check_id(&format!("{at}.drive_id"), &drive.drive_id)?;
            if let Some(first) = ids.insert(&drive.drive_id, i) {
                return Err(invalid(
                    format!("{at}.drive_id"),
                    format!("duplicate {:?} (also drives[{first}])", drive.drive_id),
                ));
            }
            check_file(&format!("{at}.path_on_host"), &drive.path_on_host)?;
            if drive.is_root_device {
                if let Some(first) = root {
                    return Err(invalid(
                        format!("{at}.is_root_device"),
                        format!("only one root device allowed (drives[{first}] is one)"),
                    ));
                }
                root = Some(i);
            }
            check_rate_limiter(&format!("{at}.rate_limiter"), &drive.rate_limiter)?;
            check_drive_compat(&at, drive)?;
        }
        self.validate_device_count()
    }

    /// Checks the `network-interfaces` section (and that its devices fit).
    pub fn validate_network(&self) -> Result<(), ConfigError> {
        let mut ids: HashMap<&str, usize> = HashMap::new();
        let mut taps: HashMap<&str, usize> = HashMap::new();
        let mut macs = HashMap::new();
        for (i, net) in self.network_interfaces.iter().enumerate() {
            let at = format!("network-interfaces[{i}]");
            check_id(&format!("{at}.iface_id"), &net.iface_id)?;
            if let Some(first) = ids.insert(&net.iface_id, i) {
                return Err(invalid(
                    format!("{at}.iface_id"),
                    format!(
                        "duplicate {:?} (also network-interfaces[{first}])",
                        net.iface_id
                    ),
                ));
            }
            check_host_dev_name(&format!("{at}.host_dev_name"), &net.host_dev_name)?;
            if let Some(first) = taps.insert(&net.host_dev_name, i) {
                return Err(invalid(
                    format!("{at}.host_dev_name"),
                    format!(
                        "duplicate {:?} (also network-interfaces[{first}])",
                        net.host_dev_name
                    ),
                ));
            }
            if let Some(mac) = net.guest_mac {
                let field = format!("{at}.guest_mac");
                if mac.is_multicast() {
                    return Err(invalid(
                        field,
                        format!("{mac} is a multicast address (lowest bit of first byte set)"),
                    ));
                }
                if mac.bytes() == [0; 6] {
                    return Err(invalid(field, "00:00:00:00:00:00 is not a valid address"));
                }
                if let Some(first) = macs.insert(mac, i) {
                    return Err(invalid(
                        field,
                        format!("duplicate {mac} (also network-interfaces[{first}])"),
                    ));
                }
            }
            check_rate_limiter(&format!("{at}.rx_rate_limiter"), &net.rx_rate_limiter)?;
            check_rate_limiter(&format!("{at}.tx_rate_limiter"), &net.tx_rate_limiter)?;
            if let Some(mtu) = net.mtu {
                return Err(invalid(
                    format!("{at}.mtu"),
                    format!("{mtu}: advertising an MTU (VIRTIO_NET_F_MTU) is not supported yet (omit mtu)"),
                ));
            }
        }
        self.validate_device_count()
    }
}

/// `io::Error`'s Display ends in " (os error N)", noise for a user.
fn io_message(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

fn check_file(field: &str, path: &Path) -> Result<(), ConfigError> {
    let fail = |message: String| invalid(field, format!("{}: {message}", path.display()));
    // Look before opening: opening a FIFO for reading would block.
    let meta = std::fs::metadata(path).map_err(|e| fail(io_message(&e)))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".to_owned()));
    }
    File::open(path).map_err(|e| fail(io_message(&e)))?;
    Ok(())
}

/// The kernel must be an ELF (`vmlinux`) or a bzImage (`HdrS` at 0x202 of
/// the setup header); anything else would fail deep in the loader, or load
/// as garbage.
fn check_kernel_magic(field: &str, path: &Path) -> Result<(), ConfigError> {
    let fail = |message: String| invalid(field, format!("{}: {message}", path.display()));
    let mut head = Vec::with_capacity(0x206);
    File::open(path)
        .and_then(|f| f.take(0x206).read_to_end(&mut head))
        .map_err(|e| fail(io_message(&e)))?;
    let elf = head.starts_with(b"\x7fELF");
    let bzimage = head.get(0x202..0x206) == Some(b"HdrS".as_slice());
    if !elf && !bzimage {
        return Err(fail(
            "not a kernel: neither an ELF vmlinux nor a bzImage".to_owned(),
        ));
    }
    Ok(())
}

/// Boot arguments must fit the kernel's command line with what flint adds,
/// and be plain ASCII without NUL (the kernel parses bytes; a NUL would end
/// the line early).
fn check_boot_args(args: &str) -> Result<(), ConfigError> {
    let field = "boot-source.boot_args";
    if args.as_bytes().contains(&0) {
        return Err(invalid(field, "contains a NUL byte"));
    }
    if let Some(c) = args.chars().find(|c| !c.is_ascii()) {
        return Err(invalid(
            field,
            format!("contains {c:?}: only ASCII is allowed on the kernel command line"),
        ));
    }
    if args.len() > MAX_BOOT_ARGS_LEN {
        return Err(invalid(
            field,
            format!(
                "{} bytes long; at most {MAX_BOOT_ARGS_LEN} allowed (the kernel keeps 2048 bytes \
                 and flint appends its own words)",
                args.len()
            ),
        ));
    }
    Ok(())
}

/// A balloon larger than the guest's memory can never be inflated.
pub(crate) fn check_balloon_size(amount_mib: u32, mem_mib: u64) -> Result<(), ConfigError> {
    if u64::from(amount_mib) > mem_mib {
        return Err(invalid(
            "balloon.amount_mib",
            format!("{amount_mib} MiB is more than the guest's {mem_mib} MiB of memory"),
        ));
    }
    Ok(())
}

/// A Unix socket flint will create: short enough for `sun_path`, in an
/// existing directory.
fn check_socket_path(field: &str, path: &Path) -> Result<(), ConfigError> {
    let len = path.as_os_str().len();
    if len > MAX_UNIX_PATH_LEN {
        return Err(invalid(
            field,
            format!(
                "{}: {len} bytes long; a Unix socket path may have at most {MAX_UNIX_PATH_LEN}",
                path.display()
            ),
        ));
    }
    check_new_file_path(field, path)
}

/// A file flint will create or open for writing: a non-empty path whose
/// directory exists.
fn check_new_file_path(field: &str, path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if path.file_name().is_none() {
        return Err(invalid(
            field,
            format!("{}: does not name a file", path.display()),
        ));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(invalid(
            field,
            format!(
                "{}: directory {} does not exist",
                path.display(),
                dir.display()
            ),
        ));
    }
    Ok(())
}

fn check_mem(mib: u64, host_mib: Option<u64>) -> Result<(), ConfigError> {
    let field = "machine-config.mem_size_mib";
    if mib < MIN_MEM_MIB {
        return Err(invalid(
            field,
            format!("{mib} MiB is too small; at least {MIN_MEM_MIB} MiB needed"),
        ));
    }
    if let Some(host) = host_mib {
        if mib > host {
            return Err(invalid(
                field,
                format!("{mib} MiB does not fit: host has {host} MiB"),
            ));
        }
    }
    if mib.checked_mul(1 << 20).is_none() {
        return Err(invalid(field, format!("{mib} MiB is too large")));
    }
    Ok(())
}

/// The host's physical memory in MiB, from /proc/meminfo; `None` if it cannot
/// be read, in which case the check is skipped rather than failing the start.
fn host_mem_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total_mib(&text)
}

pub(crate) fn parse_mem_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(kib / 1024),
        Some(_) => None,
    }
}

fn check_id(field: &str, id: &str) -> Result<(), ConfigError> {
    if id.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(invalid(
            field,
            format!("{} characters long; at most {MAX_ID_LEN} allowed", id.len()),
        ));
    }
    if !id
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    {
        return Err(invalid(
            field,
            format!("{id:?} may contain only ASCII letters, digits, '_' and '-'"),
        ));
    }
    Ok(())
}

fn check_host_dev_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if name.len() > MAX_HOST_DEV_NAME_LEN {
        return Err(invalid(
            field,
            format!(
                "{name:?} is {} bytes long; Linux allows at most {MAX_HOST_DEV_NAME_LEN}",
                name.len()
            ),
        ));
    }
    // The kernel's own rules for interface names (dev_valid_name).
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        return Err(invalid(
            field,
            format!("{name:?} is not a valid interface name"),
        ));
    }
    Ok(())
}

/// Checks a rate limiter's buckets (boot-time config and run-time updates
/// alike), naming the field as `field.bandwidth.refill_time` etc.
pub fn check_rate_limiter(
    field: &str,
    limiter: &Option<RateLimiterConfig>,
) -> Result<(), ConfigError> {
    let Some(limiter) = limiter else {
        return Ok(());
    };
    if let Some(bucket) = &limiter.bandwidth {
        check_bucket(&format!("{field}.bandwidth"), bucket)?;
    }
    if let Some(bucket) = &limiter.ops {
        check_bucket(&format!("{field}.ops"), bucket)?;
    }
    Ok(())
}

fn check_bucket(field: &str, bucket: &TokenBucketConfig) -> Result<(), ConfigError> {
    let burst = bucket.one_time_burst.unwrap_or(0);
    if bucket.size == 0 {
        if burst != 0 {
            return Err(invalid(
                format!("{field}.one_time_burst"),
                "must be 0 when size is 0 (an unlimited bucket)",
            ));
        }
        return Ok(());
    }
    if bucket.refill_time == 0 {
        return Err(invalid(
            format!("{field}.refill_time"),
            "must be greater than 0 when size is not 0",
        ));
    }
    Ok(())
}

impl crate::DrivePatch {
    /// Checks a run-time drive update as strictly as the boot-time config
    /// (a patch reaches a running device, so it must not be laxer).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let at = format!("drives[{}]", self.drive_id);
        check_id(&format!("{at}.drive_id"), &self.drive_id)?;
        if let Some(path) = &self.path_on_host {
            if path.as_os_str().is_empty() {
                return Err(invalid(format!("{at}.path_on_host"), "must not be empty"));
            }
        }
        check_rate_limiter(&format!("{at}.rate_limiter"), &self.rate_limiter)
    }
}

impl crate::NetPatch {
    /// Checks a run-time interface update as strictly as the boot-time
    /// config.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let at = format!("network-interfaces[{}]", self.iface_id);
        check_id(&format!("{at}.iface_id"), &self.iface_id)?;
        check_rate_limiter(&format!("{at}.rx_rate_limiter"), &self.rx_rate_limiter)?;
        check_rate_limiter(&format!("{at}.tx_rate_limiter"), &self.tx_rate_limiter)
    }
}

/// Checks `machine-config.huge_pages`: `2M` (hugetlbfs pages, as
/// Firecracker) needs a RAM size in whole 2 MiB pages and, so a boot does
/// not fail late, enough free 2 MiB pages on the host now (the mapping
/// reserves them at boot; that is checked again there). `Transparent` is
/// refused.
fn check_huge_pages(huge_pages: HugePages, mem_size_mib: u64) -> Result<(), ConfigError> {
    let field = "machine-config.huge_pages";
    match huge_pages {
        HugePages::None => Ok(()),
        HugePages::Transparent => Err(invalid(
            field,
            "\"Transparent\" is not supported yet (use \"None\" or \"2M\")",
        )),
        HugePages::Hugetlbfs2M => {
            if !mem_size_mib.is_multiple_of(2) {
                return Err(invalid(
                    field,
                    format!("\"2M\": mem_size_mib {mem_size_mib} is not a multiple of 2 (whole 2 MiB pages)"),
                ));
            }
            let free =
                std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(0);
            let needed = mem_size_mib / 2;
            if free < needed {
                return Err(invalid(
                    field,
                    format!(
                        "\"2M\": the host has {free} free 2 MiB huge pages, the guest needs {needed} (reserve them in /proc/sys/vm/nr_hugepages), or use \"None\""
                    ),
                ));
            }
            Ok(())
        }
    }
}

/// What `huge_pages: "2M"` cannot go with: a balloon (Firecracker's rule: it
/// cannot give hugetlbfs pages back to the host) and virtio-fs (its memory
/// must be a shared memfd).
pub(crate) fn check_huge_pages_combinations(config: &VmConfig) -> Result<(), ConfigError> {
    if config.machine_config.huge_pages == HugePages::Hugetlbfs2M && config.balloon.is_some() {
        return Err(invalid(
            "balloon",
            "not supported with machine-config.huge_pages \"2M\" (a balloon cannot return hugetlbfs pages to the host)",
        ));
    }
    if config.machine_config.huge_pages == HugePages::Hugetlbfs2M && !config.fs.is_empty() {
        return Err(invalid(
            "fs",
            "not supported with machine-config.huge_pages \"2M\" (virtio-fs needs guest memory in a shared memfd)",
        ));
    }
    Ok(())
}

/// Checks a drive's Firecracker fields: `io_engine` `Async` and vhost-user
/// `socket` are refused, `partuuid` needs `is_root_device`.
fn check_drive_compat(at: &str, drive: &DriveConfig) -> Result<(), ConfigError> {
    if drive.io_engine == Some(IoEngine::Async) {
        return Err(invalid(
            format!("{at}.io_engine"),
            "\"Async\" is not supported (flint does synchronous I/O; use \"Sync\")",
        ));
    }
    if drive.socket.is_some() {
        return Err(invalid(
            format!("{at}.socket"),
            "vhost-user-block is not supported (give path_on_host instead)",
        ));
    }
    if let Some(partuuid) = &drive.partuuid {
        if !drive.is_root_device {
            return Err(invalid(
                format!("{at}.partuuid"),
                "only meaningful on the root device (is_root_device: true)",
            ));
        }
        if partuuid.is_empty()
            || !partuuid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(invalid(
                format!("{at}.partuuid"),
                format!("{partuuid:?} is not a partition UUID (hex digits and '-')"),
            ));
        }
    }
    Ok(())
}
