//! Snapshots and live migration of a real guest: a counter that must go on
//! from where it stopped, in a new flint process, never from 1.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{cannot_run, guest_file, wait_for_socket, Flint, NetNs, BOOT_LOCK, BOOT_TIMEOUT};

const COUNTER: &str = r#"i=0; while true; do i=$((i+1)); echo TICK $i; sleep 1; done"#;

fn flint() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flint"))
}

fn ctl(sock: &Path, args: &[&str]) {
    let out = flint()
        .arg("ctl")
        .arg("--api-sock")
        .arg(sock)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "flint ctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts `flint run` with `args` plus an API socket in `dir`.
fn start(dir: &Path, name: &str, args: &[&str]) -> (Flint, PathBuf) {
    start_in(None, dir, name, args)
}

/// Like [`start`], inside a network namespace if one is given.
fn start_in(ns: Option<&NetNs>, dir: &Path, name: &str, args: &[&str]) -> (Flint, PathBuf) {
    let sock = dir.join(format!("{name}.sock"));
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_flint")]);
            c
        }
        None => flint(),
    };
    cmd.arg("run").args(args).arg("--api-sock").arg(&sock);
    let vm = Flint::spawn(cmd, tempfile::tempdir().unwrap());
    wait_for_socket(&sock);
    (vm, sock)
}

const TAP: &str = "flintsnap0";

fn counter_config(dir: &Path, vcpus: u8, with_disk: bool) -> PathBuf {
    counter_config_net(dir, vcpus, with_disk, false)
}

fn counter_config_net(dir: &Path, vcpus: u8, with_disk: bool, with_net: bool) -> PathBuf {
    let mut boot = serde_json::json!({"kernel_image_path": guest_file("vmlinux")});
    let mut config = serde_json::json!({
        "machine-config": {"vcpu_count": vcpus, "mem_size_mib": 128, "track_dirty_pages": true},
    });
    if with_disk {
        // The counter also lives on the disk: the restored guest must keep
        // reading and writing its virtio-blk root.
        let root = dir.join("rootfs.ext4");
        std::fs::copy(guest_file("rootfs.ext4"), &root).unwrap();
        // With a network, each tick also pings the host through virtio-net.
        let net = if with_net {
            "; if ping -c 1 -W 3 172.30.9.1 >/dev/null; then echo NET-OK $i; else echo NET-FAIL $i; fi"
        } else {
            ""
        };
        let script = format!(
            r#"i=$(cat /count 2>/dev/null || echo 0); while true; do i=$((i+1)); echo $i > /count; sync; echo TICK $(cat /count){net}; sleep 1; done"#
        );
        let ip = if with_net {
            " ip=172.30.9.2::172.30.9.1:255.255.255.0::eth0:off guest_net=1"
        } else {
            ""
        };
        boot["boot_args"] =
            format!("console=ttyS0 reboot=k panic=-1{ip} guest_cmd=\"{script}\"").into();
        config["drives"] = serde_json::json!([{"drive_id": "rootfs", "path_on_host": root, "is_root_device": true}]);
        if with_net {
            config["network-interfaces"] =
                serde_json::json!([{"iface_id": "eth0", "host_dev_name": TAP}]);
        }
    } else {
        boot["initrd_path"] = guest_file("initramfs.cpio").to_str().unwrap().into();
        boot["boot_args"] =
            format!("console=ttyS0 reboot=k panic=-1 guest_cmd=\"{COUNTER}\"").into();
    }
    config["boot-source"] = boot;
    let path = dir.join("vm.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

/// The highest `TICK n` printed so far.
fn last_tick(console: &str) -> u64 {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("TICK "))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

/// Pauses, snapshots into `snap`, kills the flint, and returns the last tick.
fn snapshot_and_kill(vm: &mut Flint, sock: &Path, snap: &Path) -> u64 {
    ctl(sock, &["pause"]);
    // Let any console line in flight arrive before reading the last tick.
    std::thread::sleep(Duration::from_millis(300));
    let tick = last_tick(&vm.console());
    ctl(sock, &["snapshot", "create", snap.to_str().unwrap()]);
    vm.signal(libc::SIGKILL);
    vm.wait_exit(Duration::from_secs(30)).unwrap();
    tick
}

/// Restores `snap` in a new flint and checks the counter goes on from `tick`.
fn restore_and_check(dir: &Path, snap: &Path, tick: u64) -> (Flint, PathBuf) {
    restore_and_check_in(None, dir, snap, tick)
}

fn restore_and_check_in(
    ns: Option<&NetNs>,
    dir: &Path,
    snap: &Path,
    tick: u64,
) -> (Flint, PathBuf) {
    let (mut vm, sock) = start_in(ns, dir, "restored", &["--restore", snap.to_str().unwrap()]);
    let next = format!("TICK {}", tick + 1);
    vm.wait_for(&next, BOOT_TIMEOUT).unwrap();
    vm.wait_for(&format!("TICK {}", tick + 2), BOOT_TIMEOUT)
        .unwrap();
    let console = vm.console();
    assert!(
        !console.lines().any(|l| l.trim() == "TICK 1"),
        "the restored guest started over:\n{console}"
    );
    (vm, sock)
}

fn snapshot_restore_cycle(vcpus: u8, with_disk: bool) {
    // The disk test also gets a network where namespaces can be made (root).
    let ns = if with_disk {
        NetNs::new(TAP, "172.30.9.1")
    } else {
        None
    };
    if with_disk && ns.is_none() {
        cannot_run("the network part needs a network namespace (root)");
    }
    let dir = tempfile::tempdir().unwrap();
    let config = counter_config_net(dir.path(), vcpus, with_disk, ns.is_some());
    let boot = || {
        start_in(
            ns.as_ref(),
            dir.path(),
            "original",
            &["--config", config.to_str().unwrap()],
        )
    };
    let (mut vm, mut sock) = boot();
    if let Err(e) = vm.wait_for("TICK 3", BOOT_TIMEOUT) {
        // Known host flake (shared/guest/README.md): with 2 vCPUs, PID 1
        // sometimes segfaults before GUEST-INIT. Retry once, and say so.
        let host_flake = vcpus > 1 && e.contains("segfault") && !e.contains("GUEST-INIT");
        assert!(host_flake, "{e}");
        println!("the first SMP boot hit the known host flake (init segfault); retrying once");
        drop(vm);
        let _ = std::fs::remove_file(&sock);
        (vm, sock) = boot();
        vm.wait_for("TICK 3", BOOT_TIMEOUT).unwrap();
    }
    if ns.is_some() {
        vm.wait_for("NET-OK", BOOT_TIMEOUT).unwrap();
    }
    let snap = dir.path().join("snap");
    let tick = snapshot_and_kill(&mut vm, &sock, &snap);
    assert!(tick >= 3);
    let (mut restored, sock) = restore_and_check_in(ns.as_ref(), dir.path(), &snap, tick);
    if ns.is_some() {
        // The restored virtio-net still reaches the host: a tick after the
        // restore reports a successful ping.
        let deadline = std::time::Instant::now() + BOOT_TIMEOUT;
        loop {
            let line = restored.wait_for("NET-", BOOT_TIMEOUT).unwrap();
            let n: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if n > tick && line.trim().starts_with("NET-OK") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no successful ping after restore:\n{}",
                restored.console()
            );
        }
    }
    ctl(&sock, &["stop"]);
    assert_eq!(
        restored.wait_exit(Duration::from_secs(30)).unwrap().code(),
        Some(0)
    );
    if with_disk {
        let count = Command::new("debugfs")
            .args(["-R", "cat /count"])
            .arg(dir.path().join("rootfs.ext4"))
            .output()
            .unwrap();
        let on_disk: u64 = String::from_utf8_lossy(&count.stdout)
            .trim()
            .parse()
            .unwrap();
        assert!(
            on_disk > tick,
            "the restored guest did not write its disk ({on_disk} <= {tick})"
        );
    }
}

#[test]
fn snapshot_restore_with_a_virtio_blk_root_continues_counting() {
    let _one_vcpu = BOOT_LOCK.read().unwrap_or_else(|p| p.into_inner());
    snapshot_restore_cycle(1, true);
}

#[test]
fn snapshot_restore_with_two_vcpus_continues_counting() {
    let _alone = BOOT_LOCK.write().unwrap_or_else(|p| p.into_inner());
    snapshot_restore_cycle(2, false);
}

#[test]
fn diff_snapshot_merged_onto_its_base_restores_the_later_state() {
    let _one_vcpu = BOOT_LOCK.read().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let config = counter_config(dir.path(), 1, false);
    let (mut vm, sock) = start(
        dir.path(),
        "original",
        &["--config", config.to_str().unwrap()],
    );
    vm.wait_for("TICK 2", BOOT_TIMEOUT).unwrap();
    let base = dir.path().join("base");
    ctl(&sock, &["pause"]);
    let base_tick = last_tick(&vm.console());
    ctl(&sock, &["snapshot", "create", base.to_str().unwrap()]);
    ctl(&sock, &["resume"]);
    // The guest changes its memory (the counter) for a few seconds.
    vm.wait_for(&format!("TICK {}", base_tick + 3), BOOT_TIMEOUT)
        .unwrap();
    let diff = dir.path().join("diff");
    let diff_tick = snapshot_and_kill_diff(&mut vm, &sock, &diff);
    assert!(diff_tick >= base_tick + 3);
    let full = std::fs::metadata(base.join("memory")).unwrap().len();
    let diff_size = std::fs::metadata(diff.join("memory")).unwrap().len();
    assert_eq!(
        full, diff_size,
        "a diff memory file has the guest's full size (sparse)"
    );

    // base memory + diff = the memory at the diff; with the diff's state the
    // counter goes on from the diff's tick.
    let merged = dir.path().join("merged");
    std::fs::create_dir(&merged).unwrap();
    std::fs::copy(base.join("memory"), merged.join("memory")).unwrap();
    std::fs::copy(diff.join("vmstate"), merged.join("vmstate")).unwrap();
    let out = flint()
        .args(["snapshot", "merge"])
        .arg(merged.join("memory"))
        .arg(diff.join("memory"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut restored, sock) = restore_and_check(dir.path(), &merged, diff_tick);
    ctl(&sock, &["stop"]);
    assert_eq!(
        restored.wait_exit(Duration::from_secs(30)).unwrap().code(),
        Some(0)
    );
}

fn snapshot_and_kill_diff(vm: &mut Flint, sock: &Path, snap: &Path) -> u64 {
    ctl(sock, &["pause"]);
    std::thread::sleep(Duration::from_millis(300));
    let tick = last_tick(&vm.console());
    ctl(
        sock,
        &["snapshot", "create", snap.to_str().unwrap(), "--diff"],
    );
    vm.signal(libc::SIGKILL);
    vm.wait_exit(Duration::from_secs(30)).unwrap();
    tick
}

/// Waits until a `--migrate-listen` flint listens (its API socket comes up
/// first, before the VMM binds the migration address).
fn wait_for_listener(vm: &Flint) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !vm.stderr().contains("waiting for an incoming migration") {
        assert!(
            std::time::Instant::now() < deadline,
            "the destination never listened:\n{}",
            vm.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn live_migration_over_unix_then_tcp_keeps_the_guest_counting() {
    let _one_vcpu = BOOT_LOCK.read().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let config = counter_config(dir.path(), 1, false);
    let (mut source, sock) = start(
        dir.path(),
        "source",
        &["--config", config.to_str().unwrap()],
    );
    source.wait_for("TICK 3", BOOT_TIMEOUT).unwrap();
    let key = dir.path().join("migrate.key");
    std::fs::write(&key, "flint-test-key-0123456789abcdef-0123\n").unwrap();
    let key = key.to_str().unwrap();

    // Hop 0: the destination restores the state and dies before READY
    // (as if killed; dying just after READY races with the source's COMMIT
    // and is checked deterministically in the hand-off's unit tests): the
    // source must get its guest back and keep counting.
    let doomed_addr = format!("unix:{}", dir.path().join("doomed.sock").display());
    let doomed_sock = dir.path().join("doomed-api.sock");
    let mut cmd = flint();
    cmd.env("FLINT_MIGRATION_FAULT", "dest-before-ready:exit")
        .args([
            "run",
            "--migrate-listen",
            &doomed_addr,
            "--migrate-key",
            key,
        ])
        .arg("--api-sock")
        .arg(&doomed_sock);
    let mut doomed = Flint::spawn(cmd, tempfile::tempdir().unwrap());
    wait_for_socket(&doomed_sock);
    wait_for_listener(&doomed);
    let out = flint()
        .args(["ctl", "--api-sock"])
        .arg(&sock)
        .args(["migrate", "--to", &doomed_addr, "--key", key])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the failed migration must be reported"
    );
    assert_eq!(
        doomed.wait_exit(Duration::from_secs(60)).unwrap().code(),
        Some(137),
        "{}",
        doomed.stderr()
    );
    let kept_at = last_tick(&source.console());
    source
        .wait_for(&format!("TICK {}", kept_at + 2), BOOT_TIMEOUT)
        .unwrap();

    // Hop 1: over a Unix socket.
    let unix_addr = format!("unix:{}", dir.path().join("migrate.sock").display());
    let (mut middle, middle_sock) = start(
        dir.path(),
        "middle",
        &["--migrate-listen", &unix_addr, "--migrate-key", key],
    );
    wait_for_listener(&middle);
    ctl(&sock, &["migrate", "--to", &unix_addr, "--key", key]);
    assert_eq!(
        source.wait_exit(Duration::from_secs(60)).unwrap().code(),
        Some(0)
    );
    let log = source.stderr();
    assert!(
        log.contains("downtime"),
        "the source must report the downtime:\n{log}"
    );
    let left_at = last_tick(&source.console());
    middle
        .wait_for(&format!("TICK {}", left_at + 2), BOOT_TIMEOUT)
        .unwrap();
    assert!(!middle.console().lines().any(|l| l.trim() == "TICK 1"));

    // Hop 2: over TCP on loopback.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let tcp_addr = format!("tcp:127.0.0.1:{port}");
    let (mut last, last_sock) = start(
        dir.path(),
        "last",
        &["--migrate-listen", &tcp_addr, "--migrate-key", key],
    );
    wait_for_listener(&last);
    ctl(&middle_sock, &["migrate", "--to", &tcp_addr, "--key", key]);
    assert_eq!(
        middle.wait_exit(Duration::from_secs(60)).unwrap().code(),
        Some(0)
    );
    let left_at = last_tick(&middle.console());
    last.wait_for(&format!("TICK {}", left_at + 2), BOOT_TIMEOUT)
        .unwrap();
    ctl(&last_sock, &["stop"]);
    assert_eq!(
        last.wait_exit(Duration::from_secs(30)).unwrap().code(),
        Some(0)
    );
}

#[test]
fn damaged_snapshots_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    std::fs::create_dir(&snap).unwrap();
    std::fs::write(snap.join("memory"), vec![0u8; 4096]).unwrap();
    for (content, expect) in [
        (b"not a snapshot at all".to_vec(), "bad magic"),
        (
            [b"FLINTSNP".as_slice(), &7u32.to_le_bytes(), &[0u8; 8]].concat(),
            "version 7",
        ),
        (
            [
                b"FLINTSNP".as_slice(),
                &1u32.to_le_bytes(),
                &100u64.to_le_bytes(),
                b"short",
            ]
            .concat(),
            "truncated",
        ),
        (
            [
                b"FLINTSNP".as_slice(),
                &1u32.to_le_bytes(),
                &1u64.to_le_bytes(),
                b"x",
                &[0u8; 8],
            ]
            .concat(),
            "checksum",
        ),
    ] {
        std::fs::write(snap.join("vmstate"), &content).unwrap();
        let out = flint()
            .args(["run", "--no-console-input", "--restore"])
            .arg(&snap)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expect), "expected {expect:?} in: {stderr}");
    }
}
