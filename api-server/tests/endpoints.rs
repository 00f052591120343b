//! Every endpoint round-trips through the real server and client to the fake
//! VMM and back, and every class of bad input gets the documented answer.

mod common;

use api::{ActionType, ApiRequest, DriveConfig, LogLevel, VmStateRequest};
use common::TestServer;
use serde_json::json;

const DRIVE: &str = r#"{"drive_id": "rootfs", "path_on_host": "/img", "is_root_device": true}"#;
const NET: &str =
    r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:00:00:00:01"}"#;

#[test]
fn preboot_configuration_round_trips() {
    let t = TestServer::start();
    let (status, info) = t.call("GET", "/", None);
    assert_eq!(status, 200);
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["app_name"], "flint");

    let machine = r#"{"vcpu_count": 2, "mem_size_mib": 256, "cpu_template": "T2"}"#;
    assert_eq!(t.call("PUT", "/machine-config", Some(machine)).0, 204);
    assert_eq!(
        t.call("PATCH", "/machine-config", Some(r#"{"mem_size_mib": 512}"#))
            .0,
        204
    );
    let (status, config) = t.call("GET", "/machine-config", None);
    assert_eq!(status, 200);
    assert_eq!(
        config,
        json!({"vcpu_count": 2, "mem_size_mib": 512, "cpu_template": "T2", "emulation_quirks": "auto", "track_dirty_pages": false, "smt": false, "huge_pages": "None"})
    );

    let boot = r#"{"kernel_image_path": "/vmlinux", "boot_args": "console=ttyS0"}"#;
    assert_eq!(t.call("PUT", "/boot-source", Some(boot)).0, 204);
    assert_eq!(t.call("PUT", "/drives/rootfs", Some(DRIVE)).0, 204);
    let patch =
        r#"{"drive_id": "rootfs", "rate_limiter": {"ops": {"size": 10, "refill_time": 100}}}"#;
    assert_eq!(t.call("PATCH", "/drives/rootfs", Some(patch)).0, 204);
    assert_eq!(t.call("PUT", "/network-interfaces/eth0", Some(NET)).0, 204);
    let patch =
        r#"{"iface_id": "eth0", "tx_rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}"#;
    assert_eq!(
        t.call("PATCH", "/network-interfaces/eth0", Some(patch)).0,
        204
    );
    let logger = r#"{"log_path": "/tmp/log", "level": "Debug", "show_log_origin": true}"#;
    assert_eq!(t.call("PUT", "/logger", Some(logger)).0, 204);
    assert_eq!(
        t.call("PUT", "/metrics", Some(r#"{"metrics_path": "/tmp/m"}"#))
            .0,
        204
    );

    let (status, vm) = t.call("GET", "/vm/config", None);
    assert_eq!(status, 200);
    assert_eq!(vm["boot-source"]["kernel_image_path"], "/vmlinux");
    assert_eq!(vm["drives"][0]["rate_limiter"]["ops"]["size"], 10);
    assert_eq!(
        vm["network-interfaces"][0]["guest_mac"],
        "06:00:00:00:00:01"
    );

    let requests = t.requests();
    assert_eq!(requests.len(), 12);
    let expected_drive: DriveConfig = serde_json::from_str(DRIVE).unwrap();
    assert_eq!(requests[5], ApiRequest::PutDrive(expected_drive));
    let ApiRequest::PutLogger(logger) = &requests[9] else {
        panic!("{:?}", requests[9])
    };
    assert_eq!(logger.level, Some(LogLevel::Debug));
}

#[test]
fn lifecycle_actions_round_trip() {
    let t = TestServer::start();
    let start = r#"{"action_type": "InstanceStart"}"#;
    let message = t.fault("PUT", "/actions", Some(start), 400);
    assert!(message.contains("no boot source"), "{message}");
    assert_eq!(
        t.call(
            "PUT",
            "/boot-source",
            Some(r#"{"kernel_image_path": "/k"}"#)
        )
        .0,
        204
    );
    assert_eq!(t.call("PUT", "/actions", Some(start)).0, 204);
    assert_eq!(t.call("GET", "/", None).1["state"], "Running");
    assert_eq!(
        t.call("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
        204
    );
    assert_eq!(t.call("GET", "/", None).1["state"], "Paused");
    assert_eq!(
        t.call("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)).0,
        204
    );
    let flush = r#"{"action_type": "FlushMetrics"}"#;
    assert_eq!(t.call("PUT", "/actions", Some(flush)).0, 204);
    let reboot = r#"{"action_type": "SendCtrlAltDel"}"#;
    assert_eq!(t.call("PUT", "/actions", Some(reboot)).0, 204);
    let requests = t.requests();
    assert!(requests.contains(&ApiRequest::PatchVm(VmStateRequest::Paused)));
    assert!(requests.contains(&ApiRequest::Action(ActionType::SendCtrlAltDel)));
    let message = t.fault("PUT", "/drives/rootfs", Some(DRIVE), 400);
    assert!(message.contains("after the instance started"), "{message}");
}

#[test]
fn version_is_answered_by_the_server() {
    let t = TestServer::start();
    let (status, version) = t.call("GET", "/version", None);
    assert_eq!(status, 200);
    assert_eq!(version["flint_version"], env!("CARGO_PKG_VERSION"));
    assert!(version["firecracker_version"].is_string());
    assert!(t.requests().is_empty());
}

#[test]
fn malformed_bodies_get_400_naming_the_problem() {
    let t = TestServer::start();
    let m = t.fault(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 2, "hyperthreading": true}"#),
        400,
    );
    assert!(m.contains("unknown field `hyperthreading`"), "{m}");
    let m = t.fault(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 2, "smt": true}"#),
        400,
    );
    assert!(m.contains("smt: true is not supported"), "{m}");
    let m = t.fault(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": "two"}"#),
        400,
    );
    assert!(
        m.contains("vcpu_count") && m.contains("invalid type"),
        "{m}"
    );
    let m = t.fault(
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path": "/k""#),
        400,
    );
    assert!(m.contains("EOF"), "{m}");
    let m = t.fault(
        "PUT",
        "/drives/rootfs",
        Some(r#"{"drive_id": "rootfs"}"#),
        400,
    );
    assert!(m.contains("missing field `path_on_host`"), "{m}");
    let bad_mac = r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "nope"}"#;
    let m = t.fault("PUT", "/network-interfaces/eth0", Some(bad_mac), 400);
    assert!(m.contains("guest_mac") && m.contains("invalid MAC"), "{m}");
    let m = t.fault(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "Explode"}"#),
        400,
    );
    assert!(m.contains("action_type") && m.contains("Explode"), "{m}");
    // Nothing reached the VMM.
    assert!(t.requests().is_empty());
}

#[test]
fn missing_body_and_id_mismatch_get_400() {
    let t = TestServer::start();
    let m = t.fault("PUT", "/boot-source", None, 400);
    assert!(m.contains("missing request body"), "{m}");
    let m = t.fault("PATCH", "/vm", Some(""), 400);
    assert!(m.contains("missing request body"), "{m}");
    let other = DRIVE.replace("\"rootfs\"", "\"other\"");
    let m = t.fault("PUT", "/drives/rootfs", Some(&other), 400);
    assert!(m.contains("\"other\"") && m.contains("\"rootfs\""), "{m}");
    let m = t.fault(
        "PATCH",
        "/network-interfaces/eth9",
        Some(r#"{"iface_id": "eth0"}"#),
        400,
    );
    assert!(m.contains("iface_id"), "{m}");
    let m = t.fault("PUT", "/drives/bad%20id", Some(DRIVE), 400);
    assert!(m.contains("in the path"), "{m}");
    // The VMM's own refusals come through with their status.
    let m = t.fault(
        "PATCH",
        "/drives/nope",
        Some(r#"{"drive_id": "nope"}"#),
        404,
    );
    assert!(m.contains("no drive"), "{m}");
}

#[test]
fn oversize_body_gets_413() {
    let t = TestServer::start();
    let big = format!(r#"{{"kernel_image_path": "{}"}}"#, "k".repeat(70 * 1024));
    let m = t.fault("PUT", "/boot-source", Some(&big), 413);
    assert!(m.contains("too large"), "{m}");
    // The server still works afterwards.
    assert_eq!(t.call("GET", "/", None).0, 200);
}

#[test]
fn unknown_paths_get_404_and_wrong_methods_405_with_allow() {
    let t = TestServer::start();
    for path in [
        "/nope",
        "/drives",
        "/drives/",
        "/vm/config/x",
        "/machine-config/",
    ] {
        let m = t.fault("GET", path, None, 404);
        assert!(m.contains(path), "{m}");
    }
    let raw = |method: &str, path: &str| {
        let response = common::raw_request(&t.socket, method, path);
        assert!(response.starts_with("HTTP/1.1 405"), "{response}");
        response
    };
    let response = raw("DELETE", "/drives/rootfs");
    assert!(
        response.to_ascii_lowercase().contains("allow: put, patch"),
        "{response}"
    );
    assert!(response.contains("application/json"), "{response}");
    assert!(
        response.contains("method DELETE not allowed on /drives/rootfs"),
        "{response}"
    );
    let response = raw("POST", "/actions");
    assert!(
        response.to_ascii_lowercase().contains("allow: put\r\n"),
        "{response}"
    );
    let m = t.fault("PUT", "/", Some("{}"), 405);
    assert!(m.contains("allowed: GET"), "{m}");
}

#[test]
fn device_sections_round_trip_into_the_vm_config() {
    let t = TestServer::start();
    let vsock = r#"{"guest_cid": 3, "uds_path": "/tmp/v.sock"}"#;
    assert_eq!(t.call("PUT", "/vsock", Some(vsock)).0, 204);
    let entropy = r#"{"rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}"#;
    assert_eq!(t.call("PUT", "/entropy", Some(entropy)).0, 204);
    assert_eq!(
        t.call("PUT", "/serial", Some(r#"{"serial_out_path": "/tmp/s"}"#))
            .0,
        204
    );
    let balloon = r#"{"amount_mib": 64, "deflate_on_oom": true, "stats_polling_interval_s": 1}"#;
    assert_eq!(t.call("PUT", "/balloon", Some(balloon)).0, 204);
    assert_eq!(
        t.call("PATCH", "/balloon", Some(r#"{"amount_mib": 32}"#)).0,
        204
    );
    let stats = r#"{"stats_polling_interval_s": 5}"#;
    assert_eq!(t.call("PATCH", "/balloon/statistics", Some(stats)).0, 204);
    let (status, got) = t.call("GET", "/balloon", None);
    assert_eq!(status, 200);
    assert_eq!(
        got,
        json!({"amount_mib": 32, "deflate_on_oom": true, "stats_polling_interval_s": 5,
               "free_page_hinting": false, "free_page_reporting": false})
    );
    let (status, vm) = t.call("GET", "/vm/config", None);
    assert_eq!(status, 200);
    assert_eq!(vm["vsock"]["guest_cid"], 3);
    assert_eq!(vm["entropy"]["rate_limiter"]["bandwidth"]["size"], 1000);
    assert_eq!(vm["serial"]["serial_out_path"], "/tmp/s");
    assert_eq!(vm["balloon"]["amount_mib"], 32);
    // The optional hinting body: none, or {"acknowledge_on_stop": ...}.
    t.call("PATCH", "/balloon/hinting/start", None);
    t.call(
        "PATCH",
        "/balloon/hinting/start",
        Some(r#"{"acknowledge_on_stop": true}"#),
    );
    let requests = t.requests();
    assert!(
        requests.contains(&ApiRequest::StartBalloonHinting(api::BalloonHintingStart {
            acknowledge_on_stop: false
        }))
    );
    assert!(
        requests.contains(&ApiRequest::StartBalloonHinting(api::BalloonHintingStart {
            acknowledge_on_stop: true
        }))
    );
    let m = t.fault("PUT", "/vsock", Some(r#"{"guest_cid": 3}"#), 400);
    assert!(m.contains("uds_path"), "{m}");
}
