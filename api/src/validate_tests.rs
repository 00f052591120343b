//! Validation and file-loading tests, against real files in a temp dir.

use std::path::Path;

use tempfile::TempDir;

use crate::validate::parse_mem_total_mib;
use crate::*;

/// A temp dir holding the files a config refers to.
fn host_files() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["initramfs.cpio", "rootfs.ext4", "data.ext4"] {
        std::fs::write(dir.path().join(name), b"x").unwrap();
    }
    std::fs::write(dir.path().join("vmlinux"), b"\x7fELF\x02\x01\x01").unwrap();
    dir
}

/// A valid config with absolute paths into `dir`.
fn good_config(dir: &Path) -> VmConfig {
    let mut c = VmConfig::from_json(crate::config_tests::FULL).unwrap();
    c.resolve_relative_paths(dir);
    c
}

fn field_of(result: Result<(), ConfigError>) -> (String, String) {
    match result {
        Err(ConfigError::Invalid { field, message }) => (field, message),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn add_drive(c: &mut VmConfig, dir: &Path, id: &str, root: bool) {
    c.drives.push(DriveConfig {
        drive_id: id.to_owned(),
        path_on_host: dir.join("data.ext4"),
        is_root_device: root,
        is_read_only: true,
        rate_limiter: None,
        partuuid: None,
        cache_type: None,
        io_engine: None,
        socket: None,
    });
}

fn add_nic(c: &mut VmConfig, id: &str, tap: &str, mac: Option<&str>) {
    c.network_interfaces.push(NetConfig {
        iface_id: id.to_owned(),
        host_dev_name: tap.to_owned(),
        guest_mac: mac.map(|m| m.parse().unwrap()),
        rx_rate_limiter: None,
        tx_rate_limiter: None,
        mtu: None,
    });
}

#[test]
fn good_config_validates() {
    let dir = host_files();
    let mut c = good_config(dir.path());
    c.machine_config.mem_size_mib = MIN_MEM_MIB;
    c.validate().unwrap();
}

#[test]
fn from_file_resolves_relative_paths_against_config_dir() {
    let dir = host_files();
    let file = dir.path().join("vm.json");
    std::fs::write(&file, crate::config_tests::FULL.replace("256", "16")).unwrap();
    let c = VmConfig::from_file(&file).unwrap();
    assert_eq!(c.boot_source.kernel_image_path, dir.path().join("vmlinux"));
    assert_eq!(
        c.boot_source.initrd_path,
        Some(dir.path().join("initramfs.cpio"))
    );
    assert_eq!(c.drives[0].path_on_host, dir.path().join("rootfs.ext4"));

    // Absolute paths stay as they are.
    let abs = dir.path().join("vmlinux");
    let mut c = VmConfig::from_json(&format!(
        r#"{{"boot-source": {{"kernel_image_path": {abs:?}}}}}"#
    ))
    .unwrap();
    c.resolve_relative_paths(Path::new("/elsewhere"));
    assert_eq!(c.boot_source.kernel_image_path, abs);
}

#[test]
fn from_file_names_unreadable_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("missing.json");
    let err = VmConfig::from_file(&file).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }));
    assert!(
        err.to_string().starts_with(&file.display().to_string()),
        "{err}"
    );
}

#[test]
fn from_file_validates() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vm.json");
    std::fs::write(
        &file,
        r#"{"boot-source": {"kernel_image_path": "vmlinux"}}"#,
    )
    .unwrap();
    let err = VmConfig::from_file(&file).unwrap_err();
    let expected = format!(
        "boot-source.kernel_image_path: {}: No such file or directory",
        dir.path().join("vmlinux").display()
    );
    assert_eq!(err.to_string(), expected);
}

#[test]
fn missing_or_irregular_files_are_named() {
    let dir = host_files();
    let mut c = good_config(dir.path());
    c.boot_source.kernel_image_path = dir.path().join("nope");
    let (field, message) = field_of(c.validate());
    assert_eq!(field, "boot-source.kernel_image_path");
    assert!(message.ends_with("No such file or directory"), "{message}");

    let mut c = good_config(dir.path());
    c.boot_source.initrd_path = Some(dir.path().to_owned());
    let (field, message) = field_of(c.validate());
    assert_eq!(field, "boot-source.initrd_path");
    assert!(message.ends_with("not a regular file"), "{message}");

    let mut c = good_config(dir.path());
    c.drives[0].path_on_host = dir.path().join("gone.ext4");
    assert_eq!(field_of(c.validate()).0, "drives[0].path_on_host");
}

#[test]
fn vcpu_count_range() {
    let dir = host_files();
    for n in [0, MAX_VCPUS + 1] {
        let mut c = good_config(dir.path());
        c.machine_config.vcpu_count = n;
        let (field, message) = field_of(c.validate());
        assert_eq!(field, "machine-config.vcpu_count");
        assert!(message.contains("out of range 1..=32"), "{message}");
    }
    let mut c = good_config(dir.path());
    c.machine_config.vcpu_count = MAX_VCPUS;
    c.validate_with_host_mem(None).unwrap();
}

#[test]
fn memory_limits() {
    let dir = host_files();
    let mut c = good_config(dir.path());
    // (An initrd is checked against the memory size first.)
    c.boot_source.initrd_path = None;
    c.machine_config.mem_size_mib = 0;
    let (field, message) = field_of(c.validate());
    assert_eq!(field, "machine-config.mem_size_mib");
    assert!(message.contains("too small"), "{message}");

    c.machine_config.mem_size_mib = 4096;
    let err = c.validate_with_host_mem(Some(1024)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "machine-config.mem_size_mib: 4096 MiB does not fit: host has 1024 MiB"
    );
    c.validate_with_host_mem(Some(4096)).unwrap();

    // Against the real host: nobody has this much memory; and even when
    // /proc/meminfo is unreadable it overflows a byte count.
    c.machine_config.mem_size_mib = u64::MAX / 2;
    let (field, message) = field_of(c.validate());
    assert_eq!(field, "machine-config.mem_size_mib");
    assert!(message.contains("does not fit") || message.contains("too large"));
    let (_, message) = field_of(c.validate_with_host_mem(None));
    assert!(message.contains("too large"), "{message}");
}

#[test]
fn meminfo_parsing() {
    let text = "MemFree:  1 kB\nMemTotal:       16384000 kB\n";
    assert_eq!(parse_mem_total_mib(text), Some(16000));
    assert_eq!(parse_mem_total_mib("MemFree: 1 kB\n"), None);
    assert_eq!(parse_mem_total_mib("MemTotal: lots kB\n"), None);
}

#[test]
fn boot_args_limits() {
    let dir = host_files();
    let mut c = good_config(dir.path());
    c.boot_source.boot_args = Some("console=ttyS0\0".to_owned());
    let (field, message) = field_of(c.validate());
    assert_eq!(field, "boot-source.boot_args");
    assert!(message.contains("NUL"));

    c.boot_source.boot_args = Some("x".repeat(MAX_BOOT_ARGS_LEN + 1));
    assert_eq!(field_of(c.validate()).0, "boot-source.boot_args");
    c.boot_source.boot_args = Some("x".repeat(MAX_BOOT_ARGS_LEN));
    c.validate_with_host_mem(None).unwrap();
}

#[test]
fn drive_ids_must_be_unique_and_well_formed() {
    let dir = host_files();
    let mut c = good_config(dir.path());
    add_drive(&mut c, dir.path(), "rootfs", false);
    let (field, message) = field_of(c.validate());
    assert_eq!(field, "drives[1].drive_id");
    assert!(
        message.contains("duplicate \"rootfs\" (also drives[0])"),
        "{message}"
    );

    for bad in ["", "has space", "dot.ext4", &"a".repeat(MAX_ID_LEN + 1)] {
        let mut c = good_config(dir.path());
        c.drives[0].drive_id = bad.to_owned();
        assert_eq!(field_of(c.validate()).0, "drives[0].drive_id", "{bad:?}");
    }
    let mut c = good_config(dir.path());
    c.drives[0].drive_id = "A_b-9".repeat(12);
    c.validate_with_host_mem(None).unwrap();
}

#[test]
fn at_most_one_root_drive() {
    let dir = host_files();
    let mut c = good_config(dir.path());
    add_drive(&mut c, dir.path(), "data", false);
    c.validate_with_host_mem(None).unwrap();
    add_drive(&mut c, dir.path(), "other", true);
    let (field, message) = field_of(c.validate_with_host_mem(None));
    assert_eq!(field, "drives[2].is_root_device");
    assert!(message.contains("drives[0]"), "{message}");
}

#[test]
fn network_names_and_macs() {
    let dir = host_files();

    let mut c = good_config(dir.path());
    add_nic(&mut c, "eth0", "tap1", None);
    assert_eq!(
        field_of(c.validate_with_host_mem(None)).0,
        "network-interfaces[1].iface_id"
    );

    let mut c = good_config(dir.path());
    add_nic(&mut c, "eth1", "tap0", None);
    assert_eq!(
        field_of(c.validate_with_host_mem(None)).0,
        "network-interfaces[1].host_dev_name"
    );

    for bad in ["", "tap-name-too-long", "a/b", "a b"] {
        let mut c = good_config(dir.path());
        c.network_interfaces[0].host_dev_name = bad.to_owned();
        let (field, _) = field_of(c.validate_with_host_mem(None));
        assert_eq!(field, "network-interfaces[0].host_dev_name", "{bad:?}");
    }
    let mut c = good_config(dir.path());
    c.network_interfaces[0].host_dev_name = "a".repeat(MAX_HOST_DEV_NAME_LEN);
    c.validate_with_host_mem(None).unwrap();

    let mut c = good_config(dir.path());
    add_nic(&mut c, "eth1", "tap1", Some("06:00:ac:10:00:02"));
    let (field, message) = field_of(c.validate_with_host_mem(None));
    assert_eq!(field, "network-interfaces[1].guest_mac");
    assert!(message.contains("duplicate"), "{message}");

    for bad in [
        "01:00:5e:00:00:01",
        "ff:ff:ff:ff:ff:ff",
        "00:00:00:00:00:00",
    ] {
        let mut c = good_config(dir.path());
        c.network_interfaces[0].guest_mac = Some(bad.parse().unwrap());
        let (field, _) = field_of(c.validate_with_host_mem(None));
        assert_eq!(field, "network-interfaces[0].guest_mac", "{bad}");
    }
}

#[test]
fn bad_mac_in_file_names_the_field() {
    let text = crate::config_tests::FULL.replace("06:00:AC:10:00:02", "06:00:AC:10:00:ZZ");
    let err = VmConfig::from_json(&text).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("network-interfaces[0].guest_mac: invalid MAC address"),
        "{text}"
    );
}

#[test]
fn token_bucket_rules() {
    let dir = host_files();
    let bucket = |size, burst, refill| TokenBucketConfig {
        size,
        one_time_burst: burst,
        refill_time: refill,
    };

    let mut c = good_config(dir.path());
    c.drives[0].rate_limiter.as_mut().unwrap().bandwidth = Some(bucket(1000, None, 0));
    let (field, _) = field_of(c.validate_with_host_mem(None));
    assert_eq!(field, "drives[0].rate_limiter.bandwidth.refill_time");

    let mut c = good_config(dir.path());
    c.network_interfaces[0].tx_rate_limiter = Some(RateLimiterConfig {
        bandwidth: None,
        ops: Some(bucket(0, Some(5), 100)),
    });
    let (field, _) = field_of(c.validate_with_host_mem(None));
    assert_eq!(
        field,
        "network-interfaces[0].tx_rate_limiter.ops.one_time_burst"
    );

    // size 0 with no burst means unlimited, whatever refill_time says.
    let mut c = good_config(dir.path());
    c.network_interfaces[0].rx_rate_limiter = Some(RateLimiterConfig {
        bandwidth: Some(bucket(0, Some(0), 0)),
        ops: Some(bucket(0, None, 0)),
    });
    c.validate_with_host_mem(None).unwrap();
}

#[test]
fn kernel_must_be_elf_or_bzimage() {
    let dir = host_files();
    let mut c = good_config(dir.path());
    c.boot_source.kernel_image_path = dir.path().join("rootfs.ext4");
    let (field, message) = field_of(c.validate_with_host_mem(None));
    assert_eq!(field, "boot-source.kernel_image_path");
    assert!(message.contains("not a kernel"), "{message}");
    // A bzImage carries "HdrS" at 0x202.
    let mut bz = vec![0u8; 0x300];
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(dir.path().join("bzImage"), &bz).unwrap();
    c.boot_source.kernel_image_path = dir.path().join("bzImage");
    c.validate_with_host_mem(None).unwrap();
}

#[test]
fn initrd_must_be_non_empty_and_fit_in_memory() {
    let dir = host_files();
    let mut c = good_config(dir.path());
    std::fs::write(dir.path().join("empty.cpio"), b"").unwrap();
    c.boot_source.initrd_path = Some(dir.path().join("empty.cpio"));
    let (field, message) = field_of(c.validate_with_host_mem(None));
    assert_eq!(field, "boot-source.initrd_path");
    assert!(message.contains("empty"), "{message}");

    let big = std::fs::File::create(dir.path().join("big.cpio")).unwrap();
    big.set_len(17 << 20).unwrap();
    c.boot_source.initrd_path = Some(dir.path().join("big.cpio"));
    c.machine_config.mem_size_mib = 16;
    let (field, message) = field_of(c.validate_with_host_mem(None));
    assert_eq!(field, "boot-source.initrd_path");
    assert!(message.contains("do not fit"), "{message}");
    c.machine_config.mem_size_mib = 64;
    c.validate_with_host_mem(None).unwrap();
}

#[test]
fn boot_args_must_be_ascii() {
    let dir = host_files();
    let mut c = good_config(dir.path());
    c.boot_source.boot_args = Some("console=ttyS0 init=/sbin/ïnit".to_owned());
    let (field, message) = field_of(c.validate_with_host_mem(None));
    assert_eq!(field, "boot-source.boot_args");
    assert!(message.contains("ASCII"), "{message}");
}

#[test]
fn no_more_devices_than_interrupt_lines() {
    let dir = host_files();
    let mut c = good_config(dir.path());
    // FULL has 1 drive, 1 interface, vsock, entropy and balloon: 5 devices.
    for i in 0..MAX_VIRTIO_DEVICES - 5 {
        add_drive(&mut c, dir.path(), &format!("d{i}"), false);
    }
    c.validate_with_host_mem(None).unwrap();
    add_drive(&mut c, dir.path(), "one-too-many", false);
    let (field, message) = field_of(c.validate_with_host_mem(None));
    assert_eq!(field, "drives");
    assert!(message.contains("at most 19"), "{message}");
    // Each device section's own check (what the API runs on a PUT) sees it.
    assert_eq!(field_of(c.validate_drives()).0, "drives");
    assert_eq!(field_of(c.validate_network()).0, "drives");
    assert_eq!(field_of(c.validate_vsock()).0, "drives");
    assert_eq!(field_of(c.validate_entropy()).0, "drives");
    assert_eq!(field_of(c.validate_balloon()).0, "drives");
}

#[test]
fn device_limit_matches_the_interrupt_lines_of_the_layout() {
    let gsis = arch::layout::IRQ_DEVICES_END - arch::layout::IRQ_DEVICES_START + 1;
    assert_eq!(MAX_VIRTIO_DEVICES, gsis as usize);
}

#[test]
fn new_device_sections_are_checked() {
    let dir = host_files();
    let mut c = good_config(dir.path());
    c.vsock.as_mut().unwrap().guest_cid = 2;
    assert_eq!(
        field_of(c.validate_with_host_mem(None)).0,
        "vsock.guest_cid"
    );

    let mut c = good_config(dir.path());
    c.vsock.as_mut().unwrap().uds_path = dir.path().join("x".repeat(MAX_UNIX_PATH_LEN));
    assert_eq!(field_of(c.validate_with_host_mem(None)).0, "vsock.uds_path");
    c.vsock.as_mut().unwrap().uds_path = dir.path().join("no/such/dir/v.sock");
    let (field, message) = field_of(c.validate_with_host_mem(None));
    assert_eq!(field, "vsock.uds_path");
    assert!(message.contains("does not exist"), "{message}");

    let mut c = good_config(dir.path());
    c.entropy.as_mut().unwrap().rate_limiter = Some(RateLimiterConfig {
        bandwidth: Some(TokenBucketConfig {
            size: 10,
            one_time_burst: None,
            refill_time: 0,
        }),
        ops: None,
    });
    let (field, _) = field_of(c.validate_with_host_mem(None));
    assert_eq!(field, "entropy.rate_limiter.bandwidth.refill_time");

    let mut c = good_config(dir.path());
    c.balloon.as_mut().unwrap().amount_mib = 1 << 20;
    assert_eq!(
        field_of(c.validate_with_host_mem(None)).0,
        "balloon.amount_mib"
    );

    let mut c = good_config(dir.path());
    c.serial.as_mut().unwrap().serial_out_path = Some(dir.path().join("nope/serial.log"));
    assert_eq!(
        field_of(c.validate_with_host_mem(None)).0,
        "serial.serial_out_path"
    );
}

#[test]
fn runtime_patches_are_checked_like_the_config() {
    let patch: DrivePatch = serde_json::from_str(
        r#"{"drive_id": "rootfs", "rate_limiter": {"ops": {"size": 10, "refill_time": 0}}}"#,
    )
    .unwrap();
    let (field, _) = field_of(patch.validate());
    assert_eq!(field, "drives[rootfs].rate_limiter.ops.refill_time");
    let patch: NetPatch = serde_json::from_str(
        r#"{"iface_id": "eth0", "rx_rate_limiter": {"bandwidth": {"size": 0, "one_time_burst": 1, "refill_time": 1}}}"#,
    )
    .unwrap();
    let (field, _) = field_of(patch.validate());
    assert_eq!(
        field,
        "network-interfaces[eth0].rx_rate_limiter.bandwidth.one_time_burst"
    );
}

#[test]
fn firecracker_fields_flint_cannot_honour_are_refused() {
    let dir = host_files();
    let mut c = good_config(dir.path());
    c.machine_config.huge_pages = crate::HugePages::Transparent;
    assert_refused(c.validate(), "machine-config.huge_pages", "not supported");
    c.machine_config.huge_pages = crate::HugePages::Hugetlbfs2M;
    c.machine_config.mem_size_mib = 129;
    assert_refused(c.validate(), "machine-config.huge_pages", "multiple of 2");
    c.machine_config.mem_size_mib = 1 << 30;
    assert_refused(
        c.validate_with_host_mem(None),
        "machine-config.huge_pages",
        "free 2 MiB huge pages",
    );
    c.machine_config.mem_size_mib = 128;
    c.balloon =
        Some(serde_json::from_str(r#"{"amount_mib": 0, "deflate_on_oom": false}"#).unwrap());
    assert_refused(
        crate::validate::check_huge_pages_combinations(&c),
        "balloon",
        "huge_pages",
    );
    c.balloon = None;
    c.fs = serde_json::from_str(r#"[{"tag": "vol0", "socket": "/run/fs.sock"}]"#).unwrap();
    assert_refused(
        crate::validate::check_huge_pages_combinations(&c),
        "fs",
        "shared memfd",
    );
    c.machine_config.huge_pages = crate::HugePages::None;
    crate::validate::check_huge_pages_combinations(&c).unwrap();
    c.fs.clear();
    c.validate().unwrap();

    add_drive(&mut c, dir.path(), "d", false);
    let last = c.drives.len() - 1;
    c.drives[last].io_engine = Some(crate::IoEngine::Async);
    assert_refused(c.validate(), "io_engine", "Async");
    c.drives[last].io_engine = Some(crate::IoEngine::Sync);
    c.drives[last].socket = Some("/s".into());
    assert_refused(c.validate(), "socket", "vhost-user");
    c.drives[last].socket = None;
    c.drives[last].partuuid = Some("abcd-01".into());
    assert_refused(c.validate(), "partuuid", "root device");
    c.drives[last].partuuid = None;
    c.drives[last].cache_type = Some(crate::CacheType::Writeback);
    c.validate().unwrap();

    add_nic(&mut c, "eth9", "tap9", None);
    let last = c.network_interfaces.len() - 1;
    c.network_interfaces[last].mtu = Some(1500);
    assert_refused(c.validate(), "mtu", "not supported");
}

/// Asserts `result` is an `Invalid` whose field contains `field` and whose
/// message contains `text`.
fn assert_refused(result: Result<(), ConfigError>, field: &str, text: &str) {
    let (f, m) = field_of(result);
    assert!(f.contains(field), "{f}: {m}");
    assert!(m.contains(text), "{f}: {m}");
}

#[test]
fn mmds_config_needs_existing_interfaces_and_a_link_local_address() {
    let dir = host_files();
    let mut c = good_config(dir.path());
    let iface = c.network_interfaces[0].iface_id.clone();
    let mmds = |ifaces: &[&str], ip: Option<&str>| -> crate::MmdsConfig {
        serde_json::from_value(serde_json::json!({
            "network_interfaces": ifaces,
            "ipv4_address": ip,
        }))
        .unwrap()
    };
    c.mmds_config = Some(mmds(&[&iface], None));
    c.validate_mmds().unwrap();
    c.mmds_config = Some(mmds(&["nope"], None));
    let (field, message) = field_of(c.validate_mmds());
    assert_eq!(field, "mmds-config.network_interfaces");
    assert!(message.starts_with(crate::MMDS_UNKNOWN_IFACE), "{message}");
    c.mmds_config = Some(mmds(&[&iface], Some("10.0.0.1")));
    let (field, message) = field_of(c.validate_mmds());
    assert_eq!(field, "mmds-config");
    assert!(message.contains("not link local"), "{message}");
    let parsed = VmConfig::from_json(
        r#"{"boot-source": {"kernel_image_path": "/k"},
            "mmds-config": {"version": "V2", "network_interfaces": ["eth0"]}}"#,
    )
    .unwrap();
    assert_eq!(
        parsed.mmds_config.map(|m| m.version),
        Some(crate::MmdsVersion::V2)
    );
}
