//! Parsing tests: shape, defaults, error paths, round-trip.

use std::path::PathBuf;

use crate::*;

pub(crate) const FULL: &str = r#"{
  "boot-source": { "kernel_image_path": "vmlinux", "initrd_path": "initramfs.cpio",
                   "boot_args": "console=ttyS0 reboot=k panic=-1" },
  "machine-config": { "vcpu_count": 2, "mem_size_mib": 256, "cpu_template": "T2",
                      "emulation_quirks": "on" },
  "drives": [ { "drive_id": "rootfs", "path_on_host": "rootfs.ext4", "is_root_device": true,
                "is_read_only": false,
                "rate_limiter": { "bandwidth": {"size": 1048576, "one_time_burst": 0, "refill_time": 100},
                                  "ops": {"size": 100, "refill_time": 1000} } } ],
  "network-interfaces": [ { "iface_id": "eth0", "host_dev_name": "tap0",
                "guest_mac": "06:00:AC:10:00:02",
                "rx_rate_limiter": { "ops": {"size": 10, "refill_time": 10} },
                "tx_rate_limiter": { "bandwidth": {"size": 10, "refill_time": 10} } } ],
  "vsock": { "guest_cid": 3, "uds_path": "vsock.sock" },
  "entropy": { "rate_limiter": { "bandwidth": {"size": 1000, "refill_time": 100} } },
  "balloon": { "amount_mib": 8, "deflate_on_oom": true, "stats_polling_interval_s": 1 },
  "serial": { "serial_out_path": "serial.log" }
}"#;

fn parse_err(text: &str) -> (String, String) {
    match VmConfig::from_json(text) {
        Err(ConfigError::Parse { path, message }) => (path, message),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn full_example_parses() {
    let c = VmConfig::from_json(FULL).unwrap();
    assert_eq!(c.boot_source.kernel_image_path, PathBuf::from("vmlinux"));
    assert_eq!(
        c.boot_source.initrd_path,
        Some(PathBuf::from("initramfs.cpio"))
    );
    assert_eq!(
        c.boot_source.boot_args.as_deref(),
        Some("console=ttyS0 reboot=k panic=-1")
    );
    assert_eq!(
        c.machine_config,
        MachineConfig {
            vcpu_count: 2,
            mem_size_mib: 256,
            cpu_template: CpuTemplate::T2,
            emulation_quirks: EmulationQuirks::On,
            track_dirty_pages: false,
            ..MachineConfig::default()
        }
    );
    let d = &c.drives[0];
    assert_eq!(d.drive_id, "rootfs");
    assert!(d.is_root_device && !d.is_read_only);
    let rl = d.rate_limiter.as_ref().unwrap();
    assert_eq!(
        rl.bandwidth,
        Some(TokenBucketConfig {
            size: 1048576,
            one_time_burst: Some(0),
            refill_time: 100
        })
    );
    assert_eq!(rl.ops.unwrap().one_time_burst, None);
    let n = &c.network_interfaces[0];
    assert_eq!(n.host_dev_name, "tap0");
    assert_eq!(n.guest_mac, Some(MacAddr([6, 0, 0xac, 0x10, 0, 2])));
    assert!(n.rx_rate_limiter.as_ref().unwrap().bandwidth.is_none());
}

#[test]
fn minimal_config_gets_defaults() {
    let c = VmConfig::from_json(r#"{"boot-source": {"kernel_image_path": "/k"}}"#).unwrap();
    assert_eq!(c.boot_source.initrd_path, None);
    assert_eq!(c.boot_source.boot_args, None);
    assert_eq!(c.machine_config.vcpu_count, 1);
    assert_eq!(c.machine_config.mem_size_mib, 128);
    assert_eq!(c.machine_config.cpu_template, CpuTemplate::None);
    assert_eq!(c.machine_config.emulation_quirks, EmulationQuirks::Auto);
    assert!(c.drives.is_empty() && c.network_interfaces.is_empty());

    // A partial machine-config keeps the defaults of the fields it omits.
    let c = VmConfig::from_json(
        r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 4}}"#,
    )
    .unwrap();
    assert_eq!(c.machine_config.vcpu_count, 4);
    assert_eq!(c.machine_config.mem_size_mib, 128);

    let c = VmConfig::from_json(
        r#"{"boot-source": {"kernel_image_path": "/k"},
            "drives": [{"drive_id": "d", "path_on_host": "/d", "is_root_device": false}]}"#,
    )
    .unwrap();
    assert!(!c.drives[0].is_read_only);
}

#[test]
fn missing_boot_source_is_an_error() {
    let (path, message) = parse_err("{}");
    assert_eq!(path, ".");
    assert!(message.contains("boot-source"), "{message}");
}

#[test]
fn unknown_top_level_key_is_named() {
    let err = VmConfig::from_json(r#"{"boot-source": {"kernel_image_path": "/k"}, "logger": {}}"#)
        .unwrap_err();
    assert!(err.to_string().contains("unknown field `logger`"), "{err}");
}

#[test]
fn unknown_machine_config_key_is_named() {
    let text = r#"{"boot-source": {"kernel_image_path": "/k"},
                   "machine-config": {"vcpu_count": 1, "hyperthreads": true}}"#;
    let (path, message) = parse_err(text);
    assert!(path.starts_with("machine-config"), "{path}");
    assert!(
        message.contains("unknown field `hyperthreads`"),
        "{message}"
    );
}

#[test]
fn firecracker_machine_config_fields() {
    let text = r#"{"boot-source": {"kernel_image_path": "/k"},
                   "machine-config": {"vcpu_count": 1, "smt": false, "huge_pages": "2M"}}"#;
    let c = VmConfig::from_json(text).unwrap();
    assert!(!c.machine_config.smt);
    assert_eq!(c.machine_config.huge_pages, crate::HugePages::Hugetlbfs2M);
    let text = r#"{"boot-source": {"kernel_image_path": "/k"},
                   "machine-config": {"vcpu_count": 1, "smt": true}}"#;
    let (path, message) = parse_err(text);
    assert!(path.starts_with("machine-config.smt"), "{path}");
    assert!(message.contains("true is not supported"), "{message}");
}

#[test]
fn firecracker_drive_and_net_fields_parse() {
    let text = r#"{"boot-source": {"kernel_image_path": "/k"},
                   "drives": [{"drive_id": "root", "path_on_host": "/r", "is_root_device": true,
                               "partuuid": "abcd-01", "cache_type": "Writeback", "io_engine": "Sync"}],
                   "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 1500}]}"#;
    let c = VmConfig::from_json(text).unwrap();
    assert_eq!(c.drives[0].partuuid.as_deref(), Some("abcd-01"));
    assert_eq!(c.drives[0].cache_type, Some(crate::CacheType::Writeback));
    assert_eq!(c.network_interfaces[0].mtu, Some(1500));
}

#[test]
fn wrong_type_names_the_path() {
    let text = "{\n  \"boot-source\": {\"kernel_image_path\": \"/k\"},\n  \"machine-config\": { \"vcpu_count\": \"2\" }\n}";
    let err = VmConfig::from_json(text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "machine-config.vcpu_count: invalid type: string \"2\", expected u8 at line 3 column 39"
    );

    let text = r#"{"boot-source": {"kernel_image_path": "/k"},
        "drives": [{"drive_id": "a", "path_on_host": "/a", "is_root_device": true},
                   {"drive_id": "b", "path_on_host": "/b", "is_root_device": "yes"}]}"#;
    let (path, _) = parse_err(text);
    assert_eq!(path, "drives[1].is_root_device");
}

#[test]
fn bad_enum_and_mac_values_name_the_path() {
    let (path, message) = parse_err(
        r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"emulation_quirks": "maybe"}}"#,
    );
    assert_eq!(path, "machine-config.emulation_quirks");
    assert!(message.contains("maybe"), "{message}");

    let (path, message) = parse_err(
        r#"{"boot-source": {"kernel_image_path": "/k"},
            "network-interfaces": [{"iface_id": "e", "host_dev_name": "t", "guest_mac": "06:00:ac:10:00"}]}"#,
    );
    assert_eq!(path, "network-interfaces[0].guest_mac");
    assert!(message.contains("invalid MAC address"), "{message}");
}

#[test]
fn syntax_error_and_trailing_garbage_are_errors() {
    parse_err("{\"boot-source\": ");
    let (path, message) = parse_err(r#"{"boot-source": {"kernel_image_path": "/k"}} x"#);
    assert_eq!(path, ".");
    assert!(message.contains("trailing"), "{message}");
}

#[test]
fn serialize_round_trip() {
    for text in [FULL, r#"{"boot-source": {"kernel_image_path": "/k"}}"#] {
        let c = VmConfig::from_json(text).unwrap();
        let json = serde_json::to_string_pretty(&c).unwrap();
        assert_eq!(VmConfig::from_json(&json).unwrap(), c, "{json}");
    }
    let json = serde_json::to_string(&VmConfig::from_json(FULL).unwrap()).unwrap();
    assert!(
        json.contains(r#""guest_mac":"06:00:ac:10:00:02""#),
        "{json}"
    );
    assert!(json.contains(r#""cpu_template":"T2""#), "{json}");
    assert!(json.contains(r#""emulation_quirks":"on""#), "{json}");
}

#[test]
fn mmds_config_round_trips_as_a_section() {
    // A snapshot stores the VM config as JSON: MMDS's config survives it.
    let text = r#"{"boot-source": {"kernel_image_path": "/k"},
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}],
        "mmds-config": {"version": "V2", "network_interfaces": ["eth0"],
                        "ipv4_address": "169.254.170.2", "imds_compat": true}}"#;
    let config = VmConfig::from_json(text).unwrap();
    let mmds = config.mmds_config.clone().unwrap();
    assert_eq!(mmds.version, crate::MmdsVersion::V2);
    assert_eq!(mmds.ipv4().to_string(), "169.254.170.2");
    assert!(mmds.imds_compat);
    let again = VmConfig::from_json(&serde_json::to_string(&config).unwrap()).unwrap();
    assert_eq!(again, config);
    let none = VmConfig::from_json(r#"{"boot-source": {"kernel_image_path": "/k"}}"#).unwrap();
    assert!(!serde_json::to_string(&none).unwrap().contains("mmds"));
}
