//! Checks a parsed config against itself and the host before anything is
//! started, so mistakes surface as one clear message naming the field rather
//! than as a failure halfway through building the VM.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use crate::{ConfigError, RateLimiterConfig, TokenBucketConfig, VmConfig};

/// Most vCPUs a VM may have: bounded by the MP table / ACPI tables and IRQ
/// routing flint sets up, and more than a microVM needs.
pub const MAX_VCPUS: u8 = 32;

/// Least guest RAM in MiB: below this the kernel and early allocations do not
/// fit and the guest dies with an unhelpful panic.
pub const MIN_MEM_MIB: u64 = 16;

/// `boot_args` must be shorter than this many bytes: the kernel command line
/// buffer is 4096 bytes including its NUL, and flint appends parameters of
/// its own after a separating space.
pub const MAX_BOOT_ARGS_LEN: usize = 4095;

/// Longest drive_id / iface_id: they appear in logs and API URLs, so keep them
/// short.
pub const MAX_ID_LEN: usize = 64;

/// Longest host interface name: Linux IFNAMSIZ (16) less the NUL.
pub const MAX_HOST_DEV_NAME_LEN: usize = 15;

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
        self.validate_network()
    }

    /// Checks the `boot-source` section alone (the API validates each section
    /// as it is PUT, before the whole config exists).
    pub fn validate_boot_source(&self) -> Result<(), ConfigError> {
        let boot = &self.boot_source;
        check_file("boot-source.kernel_image_path", &boot.kernel_image_path)?;
        if let Some(initrd) = &boot.initrd_path {
            check_file("boot-source.initrd_path", initrd)?;
        }
        if let Some(args) = &boot.boot_args {
            if args.as_bytes().contains(&0) {
                return Err(invalid("boot-source.boot_args", "contains a NUL byte"));
            }
            if args.len() >= MAX_BOOT_ARGS_LEN {
                return Err(invalid(
                    "boot-source.boot_args",
                    format!(
                        "{} bytes long; must be shorter than {MAX_BOOT_ARGS_LEN}",
                        args.len()
                    ),
                ));
            }
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
        check_mem(machine.mem_size_mib, host_mib)
    }

    /// Checks the `drives` section alone.
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
        }
        Ok(())
    }

    /// Checks the `network-interfaces` section alone.
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
        }
        Ok(())
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

fn check_rate_limiter(field: &str, limiter: &Option<RateLimiterConfig>) -> Result<(), ConfigError> {
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
