//! Routing and body-parsing tests, and the JSON shapes of the API types.

use crate::routes::{match_path, parse, Matched, Parsed, Route};
use api::*;

fn matched(path: &str) -> Matched {
    match_path(path).unwrap_or_else(|| panic!("{path} should route"))
}

fn parse_ok(path: &str, method: &str, body: &str) -> ApiRequest {
    match parse(&matched(path), method, body.as_bytes()) {
        Ok(Parsed::Vmm(request)) => request,
        other => panic!("{method} {path} {body}: {other:?}"),
    }
}

fn parse_err(path: &str, method: &str, body: &str) -> ApiError {
    match parse(&matched(path), method, body.as_bytes()) {
        Err(e) => e,
        other => panic!("{method} {path} {body}: expected an error, got {other:?}"),
    }
}

#[test]
fn paths_route_to_templates() {
    assert_eq!(matched("/").route, Route::Root);
    assert_eq!(matched("/vm").route, Route::Vm);
    assert_eq!(matched("/vm/config").route, Route::VmConfig);
    let drive = matched("/drives/root%2Dfs");
    assert_eq!(drive.route, Route::Drive);
    assert_eq!(drive.param.as_deref(), Some("root-fs"));
    for unknown in [
        "",
        "//",
        "/vm/",
        "/drives",
        "/drives/",
        "/drives/a/b",
        "/nope",
        "/drives/%zz",
    ] {
        assert_eq!(match_path(unknown), None, "{unknown}");
    }
}

#[test]
fn every_route_template_routes_to_itself() {
    for route in Route::ALL {
        let path = route
            .template()
            .replace("{drive_id}", "d")
            .replace("{iface_id}", "i");
        assert_eq!(matched(&path).route, route);
        assert!(!route.methods().is_empty());
    }
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
