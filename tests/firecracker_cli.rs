//! flint started exactly as Firecracker tools start `firecracker`: through a
//! link named `firecracker`, with Firecracker's flags, configured through
//! the API with Firecracker-shaped bodies. The cheap tests check the
//! refusals and the print-and-exit flags without a guest; one test boots
//! the real guest through the API and one starts a `--no-api` boot.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{guest_file, wait_for_socket, Flint, BOOT_LOCK, BOOT_TIMEOUT};

/// A temp dir holding a `firecracker` symlink to the flint binary.
fn firecracker_link() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("firecracker");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_flint"), &link).expect("symlink");
    (dir, link)
}

fn run_firecracker(args: &[&str]) -> Output {
    let (_dir, link) = firecracker_link();
    Command::new(&link)
        .args(args)
        .output()
        .expect("run firecracker link")
}

fn call(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    api_server::client::request(sock, method, path, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn flags_flint_cannot_honour_are_refused_with_one_line() {
    for (args, says) in [
        (
            &["--seccomp-filter", "/tmp/filter.bpf"][..],
            "--seccomp-filter",
        ),
        (&["--enable-pci"][..], "--enable-pci"),
    ] {
        let out = run_firecracker(args);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // The same through `flint` itself with no subcommand.
    let out = Command::new(env!("CARGO_BIN_EXE_flint"))
        .args(["--api-sock", "/tmp/never.sock", "--enable-pci"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("--enable-pci"));
}

#[test]
fn bad_command_lines_get_firecrackers_exit_statuses() {
    // Argument parsing errors: 153; an unknown level: 152; a bad id: 1.
    let out = run_firecracker(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(153), "{}", stderr_of(&out));
    let out = run_firecracker(&["--no-api"]);
    assert_eq!(out.status.code(), Some(153), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("--config-file"));
    let out = run_firecracker(&["--level", "Loud"]);
    assert_eq!(out.status.code(), Some(152), "{}", stderr_of(&out));
    let out = run_firecracker(&["--id", "no/slashes", "--no-seccomp"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("--id"));
}

#[test]
fn version_and_snapshot_flags_print_and_exit() {
    let out = run_firecracker(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("Firecracker v"), "{text}");
    assert!(text.contains("flint"), "{text}");

    let out = run_firecracker(&["--snapshot-version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with('v'));

    let dir = tempfile::tempdir().unwrap();
    let damaged = dir.path().join("vmstate");
    std::fs::write(&damaged, b"this is not a snapshot").unwrap();
    let out = run_firecracker(&["--describe-snapshot", damaged.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("bad magic"), "{}", stderr_of(&out));
    std::fs::write(&damaged, b"FLINTSNP\x01").unwrap();
    let out = run_firecracker(&["--describe-snapshot", damaged.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("truncated"), "{}", stderr_of(&out));
    let missing = dir.path().join("missing");
    let out = run_firecracker(&["--describe-snapshot", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));

    let good = dir.path().join("good");
    let mut header = b"FLINTSNP".to_vec();
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&[0; 16]);
    std::fs::write(&good, header).unwrap();
    let out = run_firecracker(&["--describe-snapshot", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v1");
}

#[test]
fn invalid_config_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vm.json");
    std::fs::write(
        &config,
        r#"{"boot-source": {"kernel_image_path": "/nonexistent/vmlinux"}}"#,
    )
    .unwrap();
    let out = run_firecracker(&["--no-api", "--config-file", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("kernel_image_path"),
        "{}",
        stderr_of(&out)
    );
}

/// The one full boot: Firecracker's flags, Firecracker-shaped bodies.
#[test]
fn boots_like_firecracker_through_the_api() {
    let _one_vcpu = BOOT_LOCK.read().unwrap_or_else(|p| p.into_inner());
    let (link_dir, link) = firecracker_link();
    let dir = link_dir.path();
    let sock = dir.join("fc.sock");
    let log = dir.join("fc.log");
    let metrics = dir.join("fc.metrics");
    let mut cmd = Command::new(&link);
    cmd.arg("--api-sock")
        .arg(&sock)
        .args(["--id", "fc-compat-1", "--level", "Debug", "--show-level"])
        .arg("--log-path")
        .arg(&log)
        .arg("--metrics-path")
        .arg(&metrics);
    let mut vm = Flint::spawn(cmd, tempfile::tempdir().unwrap());
    wait_for_socket(&sock);

    let (status, body) = call(&sock, "GET", "/", None);
    assert_eq!(status, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["id"], "fc-compat-1", "{body}");
    assert_eq!(info["state"], "Not started", "{body}");

    let logger = serde_json::json!({
        "log_path": log, "level": "Info", "show_level": true, "show_log_origin": false
    });
    let (status, body) = call(&sock, "PUT", "/logger", Some(&logger.to_string()));
    assert_eq!(status, 204, "{body}");
    let metrics_body = serde_json::json!({
        "metrics_path": metrics, "emit_id": true, "properties": {"owner": "fc-test"}
    });
    let (status, body) = call(&sock, "PUT", "/metrics", Some(&metrics_body.to_string()));
    assert_eq!(status, 204, "{body}");

    let boot = serde_json::json!({
        "kernel_image_path": guest_file("vmlinux"),
        "initrd_path": guest_file("initramfs.cpio"),
        "boot_args": "console=ttyS0 reboot=k panic=-1 guest_end=halt",
    });
    let (status, body) = call(&sock, "PUT", "/boot-source", Some(&boot.to_string()));
    assert_eq!(status, 204, "{body}");
    let machine = r#"{"vcpu_count": 1, "mem_size_mib": 128, "smt": true}"#;
    let (status, body) = call(&sock, "PUT", "/machine-config", Some(machine));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("smt"), "{body}");
    let machine = r#"{"vcpu_count": 1, "mem_size_mib": 128, "smt": false,
                      "huge_pages": "None", "track_dirty_pages": false, "cpu_template": "None"}"#;
    let (status, body) = call(&sock, "PUT", "/machine-config", Some(machine));
    assert_eq!(status, 204, "{body}");

    let start = r#"{"action_type": "InstanceStart"}"#;
    let (status, body) = call(&sock, "PUT", "/actions", Some(start));
    assert_eq!(status, 204, "{body}");
    vm.wait_for("GUEST-READY", BOOT_TIMEOUT).unwrap();

    let (status, body) = call(&sock, "GET", "/", None);
    assert_eq!(status, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["id"], "fc-compat-1", "{body}");
    assert_eq!(info["state"], "Running", "{body}");

    let flush = r#"{"action_type": "FlushMetrics"}"#;
    let (status, body) = call(&sock, "PUT", "/actions", Some(flush));
    assert_eq!(status, 204, "{body}");
    let text = std::fs::read_to_string(&metrics).unwrap();
    let last: serde_json::Value =
        serde_json::from_str(text.lines().last().expect("a metrics line")).unwrap();
    assert!(last["vm"]["vcpu_exits"].is_object(), "{last}");
    assert_eq!(last["id"], "fc-compat-1", "emit_id: {last}");
    assert_eq!(last["properties"]["owner"], "fc-test", "{last}");

    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.lines().count() > 1, "{logged}");
    assert!(logged.contains("INFO"), "--show-level: {logged}");

    // SendCtrlAltDel reaches the i8042 (this guest kernel has no keyboard
    // driver to act on it); Stop ends flint cleanly.
    let cad = r#"{"action_type": "SendCtrlAltDel"}"#;
    let (status, body) = call(&sock, "PUT", "/actions", Some(cad));
    assert_eq!(status, 204, "{body}");
    let stop = r#"{"action_type": "Stop"}"#;
    let (status, body) = call(&sock, "PUT", "/actions", Some(stop));
    assert_eq!(status, 204, "{body}");
    let exit = vm.wait_exit(Duration::from_secs(120)).unwrap();
    assert_eq!(exit.code(), Some(0), "{}", vm.stderr());
}

/// `--no-api --config-file`: the VM starts at once from the file (with
/// Firecracker's `logger` and `metrics` sections); ended by SIGTERM as
/// soon as the guest kernel prints, so this is not a second full boot.
#[test]
fn no_api_config_file_starts_the_vm() {
    let _one_vcpu = BOOT_LOCK.read().unwrap_or_else(|p| p.into_inner());
    let (link_dir, link) = firecracker_link();
    let dir = link_dir.path();
    let log = dir.join("noapi.log");
    let metrics = dir.join("noapi.metrics");
    let config = dir.join("vm.json");
    let text = serde_json::json!({
        "boot-source": {
            "kernel_image_path": guest_file("vmlinux"),
            "initrd_path": guest_file("initramfs.cpio"),
            "boot_args": "console=ttyS0 reboot=k panic=-1 guest_end=halt",
        },
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "smt": false},
        "drives": [],
        "network-interfaces": [],
        "logger": {"log_path": log, "level": "Info", "show_level": true},
        "metrics": {"metrics_path": metrics},
    });
    std::fs::write(&config, text.to_string()).unwrap();
    let mut cmd = Command::new(&link);
    cmd.args(["--no-api", "--id", "fc-noapi", "--config-file"])
        .arg(&config);
    let mut vm = Flint::spawn(cmd, tempfile::tempdir().unwrap());
    vm.wait_for_text("Linux version", BOOT_TIMEOUT).unwrap();
    vm.signal(libc::SIGTERM);
    let exit = vm.wait_exit(Duration::from_secs(120)).unwrap();
    assert_eq!(exit.code(), Some(0), "{}", vm.stderr());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("INFO"), "{logged}");
    let text = std::fs::read_to_string(&metrics).unwrap();
    let last: serde_json::Value =
        serde_json::from_str(text.lines().last().expect("a metrics line at exit")).unwrap();
    assert!(last["utc_timestamp_ms"].is_u64(), "{last}");
}

/// Firecracker's `snapshot/load` body reaches the VMM's restore (a damaged
/// state file is refused for being damaged, not for the body's shape, with
/// either mem_backend), and `FlushMetrics` without a metrics file is a 204,
/// all without a guest.
#[test]
fn firecracker_bodies_before_boot() {
    let (link_dir, link) = firecracker_link();
    let dir = link_dir.path();
    let sock = dir.join("fc.sock");
    let mut cmd = Command::new(&link);
    cmd.arg("--api-sock").arg(&sock).args(["--id", "fc-bodies"]);
    let mut vm = Flint::spawn(cmd, tempfile::tempdir().unwrap());
    wait_for_socket(&sock);

    let flush = r#"{"action_type": "FlushMetrics"}"#;
    let (status, body) = call(&sock, "PUT", "/actions", Some(flush));
    assert_eq!(status, 204, "{body}");

    let state = dir.join("vmstate");
    let memory = dir.join("memory");
    std::fs::write(&state, b"not a snapshot at all").unwrap();
    std::fs::write(&memory, b"").unwrap();
    let load = serde_json::json!({
        "snapshot_path": state,
        "mem_backend": {"backend_type": "File", "backend_path": memory},
        "track_dirty_pages": false,
        "resume_vm": true,
    });
    let (status, body) = call(&sock, "PUT", "/snapshot/load", Some(&load.to_string()));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad magic"), "{body}");
    let uffd = serde_json::json!({
        "snapshot_path": state,
        "mem_backend": {"backend_type": "Uffd", "backend_path": dir.join("uffd.sock")},
    });
    let (status, body) = call(&sock, "PUT", "/snapshot/load", Some(&uffd.to_string()));
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("bad magic"),
        "the Uffd body is accepted: {body}"
    );

    let (status, body) = call(&sock, "GET", "/", None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Not started"), "{body}");
    vm.signal(libc::SIGTERM);
    let exit = vm.wait_exit(Duration::from_secs(60)).unwrap();
    assert_eq!(exit.code(), Some(0), "{}", vm.stderr());
}
