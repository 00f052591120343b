//! The whole VM lifecycle driven through the HTTP API only, with `flint ctl`
//! and the API client, against the real guest.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{
    cannot_run, guest_file, is_root, run, wait_for_socket, Flint, BOOT_LOCK, BOOT_TIMEOUT,
};

fn call(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    api_server::client::request(sock, method, path, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn ctl(sock: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flint"))
        .arg("ctl")
        .arg("--api-sock")
        .arg(sock)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn state(sock: &Path) -> String {
    let (status, body) = call(sock, "GET", "/", None);
    assert_eq!(status, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    info["state"].as_str().unwrap().to_string()
}

fn start_api_flint(dir: &Path) -> (Flint, PathBuf) {
    let sock = dir.join("api.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flint"));
    cmd.args(["run", "--id", "lifecycle", "--api-sock"])
        .arg(&sock);
    let vm = Flint::spawn(cmd, tempfile::tempdir().unwrap());
    wait_for_socket(&sock);
    (vm, sock)
}

#[test]
fn lifecycle_through_the_api_only() {
    let _one_vcpu = BOOT_LOCK.read().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (mut vm, sock) = start_api_flint(dir.path());
    assert_eq!(state(&sock), "Not started");

    let counter = r#"i=0; while true; do i=$((i+1)); echo TICK $i; sleep 1; done"#;
    let boot = serde_json::json!({
        "kernel_image_path": guest_file("vmlinux"),
        "initrd_path": guest_file("initramfs.cpio"),
        "boot_args": format!("console=ttyS0 reboot=k panic=-1 guest_cmd=\"{counter}\""),
    });
    let (status, body) = call(&sock, "PUT", "/boot-source", Some(&boot.to_string()));
    assert_eq!(status, 204, "{body}");
    let machine = r#"{"vcpu_count": 1, "mem_size_mib": 128}"#;
    assert_eq!(call(&sock, "PUT", "/machine-config", Some(machine)).0, 204);
    // A data drive whose image is swapped once the guest runs.
    let (data, swapped) = (dir.path().join("data.img"), dir.path().join("swapped.img"));
    std::fs::write(&data, vec![0u8; 64 << 10]).unwrap();
    std::fs::write(&swapped, vec![0u8; 128 << 10]).unwrap();
    let drive = serde_json::json!({"drive_id": "data", "path_on_host": data,
        "is_root_device": false, "is_read_only": false});
    let (status, body) = call(&sock, "PUT", "/drives/data", Some(&drive.to_string()));
    assert_eq!(status, 204, "{body}");
    // Invalid in this state / bad values are refused with a reason.
    let (status, body) = call(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#));
    assert_eq!(status, 400);
    assert!(body.contains("not started"), "{body}");
    let (status, body) = call(
        &sock,
        "PATCH",
        "/machine-config",
        Some(r#"{"vcpu_count": 0}"#),
    );
    assert_eq!(status, 400);
    assert!(body.contains("vcpu_count"), "{body}");

    let (ok, _, err) = ctl(&sock, &["boot"]);
    assert!(ok, "flint ctl boot: {err}");
    vm.wait_for("GUEST-READY", BOOT_TIMEOUT).unwrap();
    vm.wait_for("TICK 2", BOOT_TIMEOUT).unwrap();
    assert_eq!(state(&sock), "Running");
    // Every flint thread (VMM, API, vCPU, API helpers) runs under a seccomp
    // filter while the guest runs.
    let tasks = std::fs::read_dir(format!("/proc/{}/task", vm.pid())).unwrap();
    let mut threads = Vec::new();
    for task in tasks {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let mode = status
            .lines()
            .find(|l| l.starts_with("Seccomp:"))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string());
        threads.push((comm.trim().to_string(), mode));
    }
    assert!(
        threads.iter().any(|(c, _)| c.starts_with("flint_vcpu")),
        "{threads:?}"
    );
    assert!(threads.iter().any(|(c, _)| c == "flint_api"), "{threads:?}");
    for (comm, mode) in &threads {
        assert_eq!(
            mode.as_deref(),
            Some("2"),
            "thread {comm} is not filtered: {threads:?}"
        );
    }
    let (status, body) = call(&sock, "PUT", "/machine-config", Some(machine));
    assert_eq!(status, 400, "pre-boot configuration after boot: {body}");

    // Logs and metrics go where the API says.
    let log_file = dir.path().join("flint.log");
    let logger =
        serde_json::json!({"log_path": log_file, "level": "Debug", "show_log_origin": true});
    assert_eq!(
        call(&sock, "PUT", "/logger", Some(&logger.to_string())).0,
        204
    );
    let metrics_file = dir.path().join("metrics.json");
    let metrics = serde_json::json!({"metrics_path": metrics_file});
    assert_eq!(
        call(&sock, "PUT", "/metrics", Some(&metrics.to_string())).0,
        204
    );
    // The drive gets a new image while the guest runs: the device thread
    // may not open files under its filter, the control thread opens it.
    let patch = serde_json::json!({"drive_id": "data", "path_on_host": swapped});
    let (status, body) = call(&sock, "PATCH", "/drives/data", Some(&patch.to_string()));
    assert_eq!(status, 204, "{body}");
    let (_, config) = call(&sock, "GET", "/vm/config", None);
    assert!(config.contains("swapped.img"), "{config}");
    // A path that cannot be opened is refused with the reason.
    let patch = serde_json::json!({"drive_id": "data", "path_on_host": dir.path()});
    let (status, body) = call(&sock, "PATCH", "/drives/data", Some(&patch.to_string()));
    assert_eq!(status, 400, "{body}");
    let flush = r#"{"action_type": "FlushMetrics"}"#;
    assert_eq!(call(&sock, "PUT", "/actions", Some(flush)).0, 204);
    let text = std::fs::read_to_string(&metrics_file).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(
        last["vm"]["vcpu_exits"]["io_out"].as_u64().unwrap() > 0,
        "{last}"
    );
    assert!(last["api"]["requests"].as_u64().unwrap() > 0, "{last}");

    // 200 concurrent GET / from 8 clients while the guest runs.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                (0..25)
                    .filter(|_| call(&sock, "GET", "/", None).0 == 200)
                    .count()
            })
        })
        .collect();
    let answered: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert_eq!(answered, 200);

    // Pause: the guest stops counting; GET / still answers.
    let (ok, _, err) = ctl(&sock, &["pause"]);
    assert!(ok, "flint ctl pause: {err}");
    assert_eq!(state(&sock), "Paused");
    // Let a line the guest wrote just before the pause reach the reader.
    std::thread::sleep(Duration::from_millis(300));
    let ticks_at_pause = vm.console().matches("TICK").count();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(state(&sock), "Paused");
    assert_eq!(
        vm.console().matches("TICK").count(),
        ticks_at_pause,
        "the guest ran while paused"
    );

    // Resume: it counts on from where it was.
    let (ok, _, err) = ctl(&sock, &["resume"]);
    assert!(ok, "flint ctl resume: {err}");
    let next = format!("TICK {}", ticks_at_pause + 1);
    vm.wait_for(&next, BOOT_TIMEOUT).unwrap();
    assert_eq!(state(&sock), "Running");

    // The effective config round-trips into a config file flint accepts.
    let (ok, config, err) = ctl(&sock, &["config"]);
    assert!(ok, "flint ctl config: {err}");
    let parsed = api::VmConfig::from_json(&config).unwrap();
    assert_eq!(parsed.machine_config.mem_size_mib, 128);
    assert_eq!(parsed.boot_source.kernel_image_path, guest_file("vmlinux"));
    let file = dir.path().join("roundtrip.json");
    std::fs::write(&file, &config).unwrap();
    api::VmConfig::from_file(&file).unwrap();

    // The log file got the pause/resume lines, with their origin.
    let log_text = std::fs::read_to_string(&log_file).unwrap();
    assert!(
        log_text.contains("VM paused") && log_text.contains("controller"),
        "{log_text}"
    );

    let (ok, _, err) = ctl(&sock, &["stop"]);
    assert!(ok, "flint ctl stop: {err}");
    let status = vm.wait_exit(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(0), "{}", vm.stderr());
    assert!(!sock.exists(), "the API socket was not removed at exit");
}

#[test]
fn ctl_reports_a_missing_socket_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = ctl(&dir.path().join("nope.sock"), &["info"]);
    assert!(!ok);
    assert!(err.contains("nope.sock"), "{err}");
}

#[test]
fn api_refuses_a_live_socket_and_survives_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (mut first, sock) = start_api_flint(dir.path());
    // A second flint on the same live socket refuses to start.
    let out = Command::new(env!("CARGO_BIN_EXE_flint"))
        .args(["run", "--api-sock"])
        .arg(&sock)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for (method, path, body, expect) in [
        ("PUT", "/machine-config", Some("{not json"), 400),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": "two"}"#),
            400,
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 1, "bogus": 1}"#),
            400,
        ),
        (
            "PUT",
            "/boot-source",
            Some(r#"{"kernel_image_path": "/no/such/vmlinux"}"#),
            400,
        ),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#),
            400,
        ),
        ("GET", "/no/such/path", None, 404),
        ("DELETE", "/", None, 405),
    ] {
        let (status, text) = call(&sock, method, path, body);
        assert_eq!(status, expect, "{method} {path}: {text}");
        let fault: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(
            fault["fault_message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{text}"
        );
    }
    assert_eq!(
        state(&sock),
        "Not started",
        "flint must survive every bad request"
    );
    first.signal(libc::SIGTERM);
    assert_eq!(
        first.wait_exit(Duration::from_secs(30)).unwrap().code(),
        Some(0)
    );
    assert!(!sock.exists());
}

#[test]
fn failed_flush_and_unchecked_updates_are_refused() {
    if !is_root() {
        return cannot_run("a full file system for the metrics file needs root (tmpfs mount)");
    }
    let dir = tempfile::tempdir().unwrap();
    let (_vm, sock) = start_api_flint(dir.path());
    // Writing the metrics fails (a regular file on a full file system): an
    // error, not a 204. (Devices and FIFOs are written best-effort by a
    // writer thread, drops counted in the metrics; a regular file's write
    // is direct, so its failure is the answer.)
    let full = FullFs::new(&dir.path().join("full"));
    let metrics_path = full.0.join("metrics.json");
    let metrics = format!(r#"{{"metrics_path": "{}"}}"#, metrics_path.display());
    let (status, body) = call(&sock, "PUT", "/metrics", Some(&metrics));
    assert_eq!(status, 204, "{body}");
    let flush = r#"{"action_type": "FlushMetrics"}"#;
    let (status, body) = call(&sock, "PUT", "/actions", Some(flush));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("metrics.json"), "{body}");
    // A drive update gets the config's checks whatever the VM's state.
    let patch = r#"{"drive_id": "d", "rate_limiter": {"ops": {"size": 10, "refill_time": 0}}}"#;
    let (status, body) = call(&sock, "PATCH", "/drives/d", Some(patch));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("rate_limiter.ops.refill_time"), "{body}");
    // Device sections are stored before boot and shown in the config.
    let vsock = serde_json::json!({"guest_cid": 3, "uds_path": dir.path().join("v.sock")});
    let (status, body) = call(&sock, "PUT", "/vsock", Some(&vsock.to_string()));
    assert_eq!(status, 204, "{body}");
    let (status, body) = call(
        &sock,
        "PUT",
        "/vsock",
        Some(r#"{"guest_cid": 2, "uds_path": "/tmp/v"}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("vsock.guest_cid"), "{body}");
    let balloon = r#"{"amount_mib": 8, "deflate_on_oom": false}"#;
    assert_eq!(call(&sock, "PUT", "/balloon", Some(balloon)).0, 204);
    let (status, body) = call(&sock, "GET", "/vm/config", None);
    assert_eq!(status, 200, "{body}");
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["vsock"]["guest_cid"], 3, "{body}");
    assert_eq!(config["balloon"]["amount_mib"], 8, "{body}");
    // Statistics come from the running device: before boot, a clear 400.
    let (status, body) = call(&sock, "GET", "/balloon/statistics", None);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not started"), "{body}");
}

/// A tiny tmpfs filled to the last block, unmounted on drop.
struct FullFs(PathBuf);

impl FullFs {
    fn new(path: &Path) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let target = path.to_str().unwrap();
        run(Command::new("mount").args(["-t", "tmpfs", "-o", "size=16k", "tmpfs", target]));
        let fs = Self(path.to_owned());
        // Fill it: writes end with ENOSPC once every block is taken.
        let mut filler = std::fs::File::create(path.join("filler")).unwrap();
        let block = [0u8; 4096];
        while std::io::Write::write_all(&mut filler, &block).is_ok() {}
        fs
    }
}

impl Drop for FullFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
