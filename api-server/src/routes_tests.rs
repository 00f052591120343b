//! Routing and body-parsing tests, and the JSON shapes of the API types.

use crate::routes::{match_path, parse, Matched, Parsed, ROUTES};
use api::*;

fn matched(path: &str) -> Matched {
    match_path(path).unwrap_or_else(|| panic!("{path} should route"))
}

fn try_parse(path: &str, method: &str, body: &str) -> Result<Parsed, ApiError> {
    let m = matched(path);
    let route = m
        .route(method)
        .unwrap_or_else(|| panic!("{method} {path} has no route"));
    parse(&m, route, body.as_bytes())
}

fn parse_ok(path: &str, method: &str, body: &str) -> ApiRequest {
    match try_parse(path, method, body) {
        Ok(Parsed::Vmm(request)) => request,
        other => panic!("{method} {path} {body}: {other:?}"),
    }
}

fn parse_err(path: &str, method: &str, body: &str) -> ApiError {
    match try_parse(path, method, body) {
        Err(e) => e,
        other => panic!("{method} {path} {body}: expected an error, got {other:?}"),
    }
}

#[test]
fn paths_route_to_templates() {
    assert_eq!(matched("/").path, "/");
    assert_eq!(matched("/vm").path, "/vm");
    assert_eq!(matched("/vm/config").path, "/vm/config");
    assert_eq!(
        matched("/balloon/hinting/status").path,
        "/balloon/hinting/status"
    );
    let drive = matched("/drives/root%2Dfs");
    assert_eq!(drive.path, "/drives/{drive_id}");
    assert_eq!(drive.param.as_deref(), Some("root-fs"));
    assert_eq!(drive.methods(), ["PUT", "PATCH"]);
    assert_eq!(matched("/balloon").methods(), ["PUT", "GET", "PATCH"]);
    for unknown in [
        "",
        "//",
        "/vm/",
        "/drives",
        "/drives/",
        "/drives/a/b",
        "/nope",
        "/drives/%zz",
        "/balloon/hinting",
    ] {
        assert_eq!(match_path(unknown), None, "{unknown}");
    }
}

#[test]
fn every_route_is_declared_once_and_routes_to_itself() {
    for (i, route) in ROUTES.iter().enumerate() {
        let path = route
            .path
            .replace("{drive_id}", "d")
            .replace("{iface_id}", "i");
        let m = matched(&path);
        assert_eq!(m.path, route.path);
        let found = m.route(route.method).expect("route");
        assert_eq!((found.path, found.method), (route.path, route.method));
        assert!(
            ROUTES[..i]
                .iter()
                .all(|r| (r.path, r.method) != (route.path, route.method)),
            "{route:?} declared twice"
        );
    }
}

#[test]
fn new_device_endpoints_parse() {
    assert_eq!(
        parse_ok(
            "/vsock",
            "PUT",
            r#"{"guest_cid": 3, "uds_path": "/v.sock"}"#
        ),
        ApiRequest::PutVsock(VsockConfig {
            guest_cid: 3,
            uds_path: "/v.sock".into(),
            vsock_id: None,
        })
    );
    assert_eq!(
        parse_ok("/entropy", "PUT", "{}"),
        ApiRequest::PutEntropy(EntropyConfig::default())
    );
    assert_eq!(
        parse_ok("/serial", "PUT", r#"{"serial_out_path": "/s"}"#),
        ApiRequest::PutSerial(SerialConfig {
            serial_out_path: Some("/s".into()),
            rate_limiter: None,
        })
    );
    let ApiRequest::PutBalloon(balloon) = parse_ok(
        "/balloon",
        "PUT",
        r#"{"amount_mib": 64, "deflate_on_oom": true}"#,
    ) else {
        panic!("not a PutBalloon")
    };
    assert_eq!(balloon.stats_polling_interval_s, 0);
    assert!(!balloon.free_page_hinting && !balloon.free_page_reporting);
    let e = parse_err("/balloon", "PUT", r#"{"amount_mib": 64}"#);
    assert!(e.fault_message.contains("deflate_on_oom"), "{e}");
    assert_eq!(parse_ok("/balloon", "GET", ""), ApiRequest::GetBalloon);
    assert_eq!(
        parse_ok("/balloon", "PATCH", r#"{"amount_mib": 1}"#),
        ApiRequest::PatchBalloon(BalloonUpdate { amount_mib: 1 })
    );
    assert_eq!(
        parse_ok(
            "/balloon/statistics",
            "PATCH",
            r#"{"stats_polling_interval_s": 5}"#
        ),
        ApiRequest::PatchBalloonStatistics(BalloonStatsUpdate {
            stats_polling_interval_s: 5
        })
    );
    // The hinting start body is optional, as in Firecracker.
    assert_eq!(
        parse_ok("/balloon/hinting/start", "PATCH", ""),
        ApiRequest::StartBalloonHinting(BalloonHintingStart::default())
    );
    assert_eq!(
        parse_ok(
            "/balloon/hinting/start",
            "PATCH",
            r#"{"acknowledge_on_stop": true}"#
        ),
        ApiRequest::StartBalloonHinting(BalloonHintingStart {
            acknowledge_on_stop: true
        })
    );
    assert_eq!(
        parse_ok("/balloon/hinting/stop", "PATCH", ""),
        ApiRequest::StopBalloonHinting
    );
}

#[test]
fn runtime_patches_are_validated_like_the_config() {
    let e = parse_err(
        "/drives/rootfs",
        "PATCH",
        r#"{"drive_id": "rootfs", "rate_limiter": {"bandwidth": {"size": 100, "refill_time": 0}}}"#,
    );
    assert_eq!(e.status, 400);
    assert!(
        e.fault_message
            .contains("drives[rootfs].rate_limiter.bandwidth.refill_time"),
        "{e}"
    );
    let e = parse_err(
        "/network-interfaces/eth0",
        "PATCH",
        r#"{"iface_id": "eth0", "tx_rate_limiter": {"ops": {"size": 1, "refill_time": 0}}}"#,
    );
    assert!(
        e.fault_message.contains("tx_rate_limiter.ops.refill_time"),
        "{e}"
    );
}

#[test]
fn bodies_parse_into_requests() {
    assert_eq!(parse_ok("/", "GET", ""), ApiRequest::GetInstanceInfo);
    assert_eq!(
        parse_ok("/actions", "PUT", r#"{"action_type": "InstanceStart"}"#),
        ApiRequest::Action(ActionType::InstanceStart)
    );
    assert_eq!(
        parse_ok("/vm", "PATCH", r#"{"state": "Resumed"}"#),
        ApiRequest::PatchVm(VmStateRequest::Resumed)
    );
    assert_eq!(
        parse_ok("/machine-config", "PATCH", r#"{"vcpu_count": 2}"#),
        ApiRequest::PatchMachineConfig(MachineConfigPatch {
            vcpu_count: Some(2),
            ..Default::default()
        })
    );
    assert_eq!(
        parse_ok("/logger", "PUT", r#"{"level": "Warn", "show_level": true}"#),
        ApiRequest::PutLogger(LoggerConfig {
            level: Some(LogLevel::Warning),
            show_level: Some(true),
            ..Default::default()
        })
    );
    let ApiRequest::PutDrive(drive) = parse_ok(
        "/drives/rootfs",
        "PUT",
        r#"{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true}"#,
    ) else {
        panic!("not a PutDrive");
    };
    assert!(drive.is_root_device && !drive.is_read_only);
}

#[test]
fn tagged_enums_reject_extra_fields_and_unknown_variants() {
    let e = parse_err(
        "/actions",
        "PUT",
        r#"{"action_type": "InstanceStart", "x": 1}"#,
    );
    assert!(e.fault_message.contains('x'), "{e}");
    let e = parse_err("/actions", "PUT", r#"{"action_type": "Reboot"}"#);
    assert!(e.fault_message.contains("Reboot"), "{e}");
    let e = parse_err("/vm", "PATCH", r#"{}"#);
    assert!(e.fault_message.contains("state"), "{e}");
}

#[test]
fn parse_errors_name_the_field() {
    let e = parse_err("/machine-config", "PUT", r#"{"vcpu_count": "two"}"#);
    assert_eq!(e.status, 400);
    assert!(e.fault_message.contains("vcpu_count"), "{e}");
    let e = parse_err(
        "/boot-source",
        "PUT",
        r#"{"kernel_image_path": "/k", "colour": 1}"#,
    );
    assert!(e.fault_message.contains("colour"), "{e}");
    let e = parse_err("/metrics", "PUT", r#"{"metrics_path": "/m"} trailing"#);
    assert!(e.fault_message.contains("trailing"), "{e}");
    let e = parse_err("/metrics", "PUT", " \n");
    assert!(e.fault_message.contains("missing request body"), "{e}");
}

#[test]
fn path_ids_must_be_well_formed_and_match_the_body() {
    let body = r#"{"drive_id": "other", "path_on_host": "/r", "is_root_device": false}"#;
    let e = parse_err("/drives/rootfs", "PUT", body);
    assert!(e.fault_message.contains("does not match"), "{e}");
    let e = parse_err("/drives/a%20b", "PUT", body);
    assert!(e.fault_message.contains("in the path"), "{e}");
    let e = parse_err(
        "/network-interfaces/eth0",
        "PATCH",
        r#"{"iface_id": "eth1"}"#,
    );
    assert!(e.fault_message.contains("iface_id"), "{e}");
}

#[test]
fn response_shapes_match_firecracker() {
    let info = InstanceInfo {
        id: "vm0".into(),
        state: InstanceState::NotStarted,
        vmm_version: "0.1.0".into(),
        app_name: "flint".into(),
    };
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(json["state"], "Not started");
    let action = serde_json::to_value(ActionType::FlushMetrics).unwrap();
    assert_eq!(action, serde_json::json!({"action_type": "FlushMetrics"}));
    let state = serde_json::to_value(VmStateRequest::Paused).unwrap();
    assert_eq!(state, serde_json::json!({"state": "Paused"}));
}

#[test]
fn firecracker_snapshot_load_bodies() {
    let ApiRequest::LoadSnapshot(p) = parse_ok(
        "/snapshot/load",
        "PUT",
        r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"},
            "track_dirty_pages": true, "resume_vm": true, "clock_realtime": false, "huge_pages": "None",
            "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap1"}]}"#,
    ) else {
        panic!("not a LoadSnapshot")
    };
    assert_eq!(p.mem_file_path, std::path::PathBuf::from("/m"));
    assert!(p.enable_diff_snapshots && p.resume_vm);
    assert_eq!(p.net_overrides[0].host_dev_name, "tap1");
    // The deprecated spelling still works.
    let ApiRequest::LoadSnapshot(p) = parse_ok(
        "/snapshot/load",
        "PUT",
        r#"{"snapshot_path": "/s", "mem_file_path": "/m", "enable_diff_snapshots": true}"#,
    ) else {
        panic!("not a LoadSnapshot")
    };
    assert_eq!(p.mem_file_path, std::path::PathBuf::from("/m"));
    assert_eq!(p.mem_backend, api::MemBackendType::File);
    assert!(p.enable_diff_snapshots);
    // Uffd: the handler's socket, handed to the VMM.
    let ApiRequest::LoadSnapshot(p) = parse_ok(
        "/snapshot/load",
        "PUT",
        r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"}, "resume_vm": true}"#,
    ) else {
        panic!("not a LoadSnapshot")
    };
    assert_eq!(p.mem_file_path, std::path::PathBuf::from("/u"));
    assert_eq!(p.mem_backend, api::MemBackendType::Uffd);
    for (body, says) in [
        (
            r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"}, "copy_memory": true}"#,
            "copy_memory applies to a File mem_backend",
        ),
        (r#"{"snapshot_path": "/s"}"#, "missing mem_backend"),
        (
            r#"{"snapshot_path": "/s", "mem_file_path": "/a", "mem_backend": {"backend_type": "File", "backend_path": "/b"}}"#,
            "not both",
        ),
        (
            r#"{"snapshot_path": "/s", "mem_file_path": "/m", "clock_realtime": true}"#,
            "clock_realtime",
        ),
        (
            r#"{"snapshot_path": "/s", "mem_file_path": "/m", "huge_pages": "2M"}"#,
            "huge_pages",
        ),
        (
            r#"{"snapshot_path": "/s", "mem_file_path": "/m", "vsock_override": {"uds_path": "/v"}}"#,
            "vsock_override",
        ),
        (
            r#"{"snapshot_path": "/s", "mem_file_path": "/m", "bogus": 1}"#,
            "unknown field `bogus`",
        ),
    ] {
        let e = parse_err("/snapshot/load", "PUT", body);
        assert_eq!(e.status, 400, "{body}");
        assert!(
            e.fault_message.contains(says),
            "{body}: {}",
            e.fault_message
        );
    }
}

#[test]
fn firecracker_logger_metrics_and_snapshot_create_bodies() {
    let ApiRequest::PutLogger(l) = parse_ok(
        "/logger",
        "PUT",
        r#"{"log_path": "/l", "level": "Off", "show_level": true, "show_log_origin": false, "module": "vmm::controller"}"#,
    ) else {
        panic!("not a PutLogger")
    };
    assert_eq!(l.level, Some(LogLevel::Off));
    assert_eq!(l.module.as_deref(), Some("vmm::controller"));
    assert_eq!(
        parse_ok(
            "/metrics",
            "PUT",
            r#"{"metrics_path": "/m", "emit_id": false, "properties": {}}"#
        ),
        ApiRequest::PutMetrics(MetricsConfig {
            metrics_path: "/m".into(),
            emit_id: false,
            properties: Some(Default::default()),
        })
    );
    let ApiRequest::PutMetrics(m) = parse_ok(
        "/metrics",
        "PUT",
        r#"{"metrics_path": "/m", "emit_id": true, "properties": {"team": "a"}}"#,
    ) else {
        panic!("not a PutMetrics")
    };
    assert!(m.emit_id);
    assert_eq!(m.properties.unwrap()["team"], "a");
    let e = parse_err("/metrics", "PUT", r#"{"metrics_path": "/m", "emit_id": 1}"#);
    assert!(e.fault_message.contains("emit_id"), "{}", e.fault_message);
    let ApiRequest::CreateSnapshot(c) = parse_ok(
        "/snapshot/create",
        "PUT",
        r#"{"snapshot_path": "/s", "mem_file_path": "/m", "snapshot_type": "Diff"}"#,
    ) else {
        panic!("not a CreateSnapshot")
    };
    assert_eq!(c.snapshot_type, SnapshotType::Diff);
    let ApiRequest::PatchMachineConfig(m) = parse_ok(
        "/machine-config",
        "PATCH",
        r#"{"smt": false, "huge_pages": "None"}"#,
    ) else {
        panic!("not a PatchMachineConfig")
    };
    assert_eq!(m.smt, Some(false));
    assert_eq!(m.huge_pages, Some(HugePages::None));
}

#[test]
fn mmds_routes_take_any_json_and_the_config_shape() {
    let data = r#"{"latest": {"meta-data": {"ami-id": "x"}}}"#;
    assert_eq!(
        parse_ok("/mmds", "PUT", data),
        ApiRequest::PutMmds(serde_json::from_str(data).unwrap())
    );
    assert!(matches!(
        parse_ok("/mmds", "PATCH", data),
        ApiRequest::PatchMmds(_)
    ));
    assert_eq!(parse_ok("/mmds", "GET", ""), ApiRequest::GetMmds);
    assert_eq!(parse_err("/mmds", "PUT", "").status, 400);
    match parse_ok(
        "/mmds/config",
        "PUT",
        r#"{"version": "V2", "network_interfaces": ["eth0"], "ipv4_address": "169.254.1.1"}"#,
    ) {
        ApiRequest::PutMmdsConfig(c) => {
            assert_eq!(c.version, MmdsVersion::V2);
            assert_eq!(c.ipv4().to_string(), "169.254.1.1");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        parse_err(
            "/mmds/config",
            "PUT",
            r#"{"network_interfaces": [], "x": 1}"#
        )
        .status,
        400
    );
    assert_eq!(
        parse_err(
            "/mmds/config",
            "PUT",
            r#"{"version": "V3", "network_interfaces": []}"#
        )
        .status,
        400
    );
}

#[test]
fn cpu_config_parses_and_bad_bitmaps_are_400s_naming_the_field() {
    let body = r#"{"cpuid_modifiers": [{"leaf": "0x7", "subleaf": "0x0", "flags": 1,
        "modifiers": [{"register": "ebx", "bitmap": "0bxxxxxxxxxxxxxxx0xxxxxxxxxxxxxxxx"}]}]}"#;
    let ApiRequest::PutCpuConfig(c) = parse_ok("/cpu-config", "PUT", body) else {
        panic!("not a PutCpuConfig");
    };
    assert_eq!(
        (c.cpuid_modifiers[0].leaf, c.cpuid_modifiers[0].flags),
        (7, 1)
    );
    assert_eq!(c.cpuid_modifiers[0].modifiers[0].1.mask, 1 << 16);
    let bad = r#"{"cpuid_modifiers": [{"leaf": 1, "modifiers": [{"register": "eax", "bitmap": "0b10z"}]}]}"#;
    let err = parse_err("/cpu-config", "PUT", bad).to_string();
    assert!(
        err.contains("cpuid_modifiers[0].modifiers[0].bitmap"),
        "{err}"
    );
}
