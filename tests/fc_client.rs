//! A Firecracker client's whole session against flint, unchanged: spawn
//! `firecracker` (a link to flint) with Firecracker's flags, configure every
//! device with the request bodies of Firecracker's swagger, boot, read MMDS
//! from the guest (V1 without a token, then with a V2 session token), write
//! to a data drive, pause, take a Full snapshot, load it in a **new**
//! process with `mem_backend: File` and `resume_vm`, and check the guest
//! goes on; metrics are flushed and read for Firecracker's keys on the way;
//! `SendCtrlAltDel` is pressed on the i8042 (the shared guest kernel has no
//! keyboard driver to act on it, so the client then stops flint).
//! Two boots' worth of guest time (one boot, one restore).
//!
//! Run under the shared lock, one guest at a time:
//! `FLINT_GUEST_DIR=/work/shared/guest flock /tmp/flint-e2e.lock cargo test --test fc_client`

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use common::{
    cannot_run, guest_file, is_root, wait_for_socket, Flint, NetNs, BOOT_LOCK, BOOT_TIMEOUT,
};

const TAP: &str = "flintfcc0";
const HOST_IP: &str = "172.29.0.1";

/// What the guest runs (no double quotes: it sits in `guest_cmd="..."`).
/// Each `$(...)` is retried up to 3 times (a guest pipeline now and then
/// prints nothing on the emulating host). busybox wget cannot `PUT`, so
/// the V2 token request is raw HTTP through nc, from and to files.
const SCRIPT: &str = "ip route add 169.254.169.254 dev eth0; \
for n in 1 2 3; do V=$(wget -q -O - http://169.254.169.254/latest/meta-data/placement/availability-zone); [ ${#V} -gt 0 ] && break; done; echo MMDS-V1=$V; \
printf 'PUT /latest/api/token HTTP/1.0\\r\\nX-metadata-token-ttl-seconds: 300\\r\\n\\r\\n' > /rq; \
for n in 1 2 3; do nc 169.254.169.254 80 < /rq > /rs; T=$(tail -n 1 /rs); [ ${#T} -gt 8 ] && break; done; \
for n in 1 2 3; do V=$(wget -q -O - --header X-metadata-token:$T http://169.254.169.254/latest/meta-data/hostname); [ ${#V} -gt 0 ] && break; done; echo MMDS-V2=$V; \
printf Z | dd of=/dev/vdb bs=1 count=1 conv=notrunc 2>/dev/null; sync; echo DATA-WRITTEN; \
i=0; while true; do i=$((i+1)); echo TICK $i; sleep 1; done";

fn call(sock: &Path, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let body = body.map(Value::to_string);
    api_server::client::request(sock, method, path, body.as_deref())
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// A request Firecracker answers with 204.
fn ok(sock: &Path, method: &str, path: &str, body: Value) {
    let (status, answer) = call(sock, method, path, Some(&body));
    assert_eq!(status, 204, "{method} {path} {body}: {answer}");
}

/// `firecracker` with Firecracker's flags, inside the test's namespace.
fn spawn_firecracker(ns: &NetNs, link: &Path, dir: &Path, id: &str) -> (Flint, PathBuf) {
    let sock = dir.join(format!("{id}.sock"));
    let log = dir.join(format!("{id}.log"));
    // Firecracker clients create the log file (a FIFO or a file) first.
    std::fs::write(&log, b"").unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .arg(link)
        .arg("--api-sock")
        .arg(&sock)
        .args([
            "--id",
            id,
            "--level",
            "Info",
            "--show-level",
            "--show-log-origin",
        ])
        .arg("--log-path")
        .arg(&log)
        .arg("--metrics-path")
        .arg(dir.join(format!("{id}.metrics")));
    let vm = Flint::spawn(cmd, tempfile::tempdir().unwrap());
    wait_for_socket(&sock);
    (vm, sock)
}

/// Flushes metrics and returns every line of the file so far.
fn flush_metrics(sock: &Path, path: &Path) -> Vec<Value> {
    ok(
        sock,
        "PUT",
        "/actions",
        json!({"action_type": "FlushMetrics"}),
    );
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The sum of a Firecracker counter over all lines (they are per-flush deltas).
fn total(lines: &[Value], group: &str, key: &str) -> u64 {
    lines
        .iter()
        .map(|l| {
            l[group][key]
                .as_u64()
                .unwrap_or_else(|| panic!("no {group}.{key} in {l}"))
        })
        .sum()
}

/// The highest `TICK n` on a console.
fn last_tick(console: &str) -> u64 {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("TICK "))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

#[test]
fn a_firecracker_client_boots_snapshots_and_restores_flint() {
    if !is_root() {
        return cannot_run("needs root for the network namespace and tap");
    }
    let _one_vcpu = BOOT_LOCK.read().unwrap_or_else(|p| p.into_inner());
    let Some(ns) = NetNs::new(TAP, HOST_IP) else {
        return cannot_run("cannot create a network namespace here");
    };
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let link = dir.join("firecracker");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_flint"), &link).unwrap();
    let rootfs = dir.join("rootfs.ext4");
    std::fs::copy(guest_file("rootfs.ext4"), &rootfs).unwrap();
    let data = dir.join("data.img");
    std::fs::write(&data, vec![0u8; 1 << 20]).unwrap();
    let vsock_uds = dir.join("v.sock");

    // --- The source VM, configured as a Firecracker client does. ---
    let (mut vm, sock) = spawn_firecracker(&ns, &link, dir, "fc-client-src");
    let (status, answer) = call(&sock, "GET", "/", None);
    assert_eq!(status, 200, "{answer}");
    let info: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(info["id"], "fc-client-src");
    assert_eq!(info["state"], "Not started");
    let (status, answer) = call(&sock, "GET", "/version", None);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("firecracker_version"), "{answer}");

    let log = dir.join("fc-client-src.log");
    let metrics = dir.join("fc-client-src.metrics");
    ok(
        &sock,
        "PUT",
        "/logger",
        json!({"log_path": log, "level": "Info", "show_level": true, "show_log_origin": false}),
    );
    ok(
        &sock,
        "PUT",
        "/metrics",
        json!({"metrics_path": metrics, "emit_id": true}),
    );
    let boot_args = format!(
        "console=ttyS0 reboot=k panic=-1 pci=off quiet ip=172.29.0.2::{HOST_IP}:255.255.255.0::eth0:off guest_net=1 guest_cmd=\"{SCRIPT}\""
    );
    ok(
        &sock,
        "PUT",
        "/boot-source",
        json!({"kernel_image_path": guest_file("vmlinux"), "boot_args": boot_args}),
    );
    ok(
        &sock,
        "PUT",
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 128, "smt": false, "track_dirty_pages": true,
               "huge_pages": "None"}),
    );
    let (status, answer) = call(&sock, "GET", "/machine-config", None);
    assert_eq!(status, 200, "{answer}");
    let machine: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(machine["smt"], false, "{answer}");
    assert_eq!(machine["track_dirty_pages"], true, "{answer}");
    // A custom template with an MSR (SYSENTER_CS bit 0 cleared: harmless,
    // the guest kernel sets it itself).
    ok(
        &sock,
        "PUT",
        "/cpu-config",
        json!({"msr_modifiers": [{"addr": "0x174", "bitmap": "0bxxxxxxx0"}]}),
    );
    ok(
        &sock,
        "PUT",
        "/drives/rootfs",
        json!({"drive_id": "rootfs", "path_on_host": rootfs, "is_root_device": true,
               "is_read_only": false, "cache_type": "Unsafe", "io_engine": "Sync"}),
    );
    ok(
        &sock,
        "PUT",
        "/drives/data",
        json!({"drive_id": "data", "path_on_host": data, "is_root_device": false,
               "is_read_only": false}),
    );
    ok(
        &sock,
        "PUT",
        "/network-interfaces/eth0",
        json!({"iface_id": "eth0", "host_dev_name": TAP, "guest_mac": "06:00:AC:1D:00:02"}),
    );
    ok(
        &sock,
        "PUT",
        "/vsock",
        json!({"guest_cid": 3, "uds_path": vsock_uds}),
    );
    ok(
        &sock,
        "PUT",
        "/mmds/config",
        json!({"version": "V1", "network_interfaces": ["eth0"]}),
    );
    ok(
        &sock,
        "PUT",
        "/mmds",
        json!({"latest": {"meta-data": {"hostname": "fc-client-guest",
               "placement": {"availability-zone": "flint-az-9"}}}}),
    );
    ok(
        &sock,
        "PUT",
        "/balloon",
        json!({"amount_mib": 0, "deflate_on_oom": true, "stats_polling_interval_s": 1}),
    );
    ok(&sock, "PUT", "/entropy", json!({}));
    ok(
        &sock,
        "PUT",
        "/actions",
        json!({"action_type": "InstanceStart"}),
    );

    vm.wait_for("GUEST-READY", BOOT_TIMEOUT).unwrap();
    let v1 = vm.wait_for("MMDS-V1=", BOOT_TIMEOUT).unwrap();
    assert_eq!(v1.trim(), "MMDS-V1=flint-az-9", "MMDS V1 without a token");
    let v2 = vm.wait_for("MMDS-V2=", BOOT_TIMEOUT).unwrap();
    assert_eq!(
        v2.trim(),
        "MMDS-V2=fc-client-guest",
        "MMDS with a V2 session token"
    );
    vm.wait_for("DATA-WRITTEN", BOOT_TIMEOUT).unwrap();
    vm.wait_for("TICK 2", BOOT_TIMEOUT).unwrap();
    let (status, answer) = call(&sock, "GET", "/balloon", None);
    assert_eq!(status, 200, "{answer}");

    // Metrics: Firecracker's groups, per-flush deltas that sum to totals.
    let lines = flush_metrics(&sock, &metrics);
    let last = lines.last().expect("a metrics line");
    for group in [
        "api_server",
        "balloon",
        "block",
        "deprecated_api",
        "entropy",
        "get_api_requests",
        "i8042",
        "latencies_us",
        "logger",
        "mmds",
        "net",
        "patch_api_requests",
        "put_api_requests",
        "rtc",
        "seccomp",
        "signals",
        "uart",
        "vcpu",
        "vmm",
        "vsock",
    ] {
        assert!(last[group].is_object(), "no {group} in {last}");
    }
    assert_eq!(last["id"], "fc-client-src", "emit_id: {last}");
    assert!(last["block_data"].is_object(), "{last}");
    assert!(last["net_eth0"].is_object(), "{last}");
    assert!(total(&lines, "block", "write_count") >= 1);
    assert!(total(&lines, "block_data", "write_bytes") >= 1);
    assert!(total(&lines, "mmds", "rx_accepted") >= 1);
    assert!(total(&lines, "uart", "write_count") >= 1);
    assert!(total(&lines, "vcpu", "exit_io_out") >= 1);
    assert!(total(&lines, "put_api_requests", "drive_count") >= 2);
    assert!(total(&lines, "put_api_requests", "actions_count") >= 1);

    // Pause, snapshot (Full), and the client's data is on the drive.
    ok(&sock, "PATCH", "/vm", json!({"state": "Paused"}));
    std::thread::sleep(Duration::from_millis(300));
    let tick = last_tick(&vm.console());
    assert!(tick >= 2);
    let snapshot = dir.join("snapshot");
    let memory = dir.join("memory");
    ok(
        &sock,
        "PUT",
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": snapshot, "mem_file_path": memory}),
    );
    assert_eq!(std::fs::read(&data).unwrap()[0], b'Z', "the guest's write");
    let lines = flush_metrics(&sock, &metrics);
    let last = lines.last().unwrap();
    assert!(last["latencies_us"]["pause_vm"].is_u64(), "{last}");
    assert!(
        last["latencies_us"]["full_create_snapshot"].as_u64() > Some(0),
        "{last}"
    );
    // SendCtrlAltDel reaches the i8042 (its keys wait for a paused guest);
    // the client then ends the source as Firecracker clients do: killing it.
    ok(
        &sock,
        "PUT",
        "/actions",
        json!({"action_type": "SendCtrlAltDel"}),
    );
    vm.signal(libc::SIGKILL);
    vm.wait_exit(Duration::from_secs(30)).unwrap();

    // --- A new process loads the snapshot and the guest goes on. ---
    let _ = std::fs::remove_file(&vsock_uds);
    let (mut restored, sock) = spawn_firecracker(&ns, &link, dir, "fc-client-dst");
    ok(
        &sock,
        "PUT",
        "/snapshot/load",
        json!({"snapshot_path": snapshot,
               "mem_backend": {"backend_type": "File", "backend_path": memory},
               "track_dirty_pages": false, "resume_vm": true}),
    );
    restored
        .wait_for(&format!("TICK {}", tick + 1), BOOT_TIMEOUT)
        .unwrap();
    restored
        .wait_for(&format!("TICK {}", tick + 2), BOOT_TIMEOUT)
        .unwrap();
    let console = restored.console();
    assert!(
        !console.lines().any(|l| l.trim() == "TICK 1"),
        "the restored guest started over:\n{console}"
    );
    let (status, answer) = call(&sock, "GET", "/", None);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("Running"), "{answer}");
    let lines = flush_metrics(&sock, &dir.join("fc-client-dst.metrics"));
    let last = lines.last().unwrap();
    assert!(
        last["latencies_us"]["load_snapshot"].as_u64() > Some(0),
        "{last}"
    );
    assert!(total(&lines, "uart", "write_count") >= 1, "{last}");

    // The end: Ctrl+Alt+Del is pressed on the guest's keyboard (the guest
    // would read it with a keyboard driver). The shared test kernel has no
    // i8042/atkbd driver, so nothing reboots it: the client stops flint.
    ok(
        &sock,
        "PUT",
        "/actions",
        json!({"action_type": "SendCtrlAltDel"}),
    );
    ok(&sock, "PUT", "/actions", json!({"action_type": "Stop"}));
    let exit = restored.wait_exit(Duration::from_secs(120)).unwrap();
    assert_eq!(exit.code(), Some(0), "{}", restored.stderr());
}
