//! Snapshot restore with `mem_backend` `Uffd`: a new flint, started with
//! Firecracker's flags, gets its guest memory from the example page-fault
//! handler (`resources/uffd-handler`, here on a thread of the test: another
//! process than flint, as in real use) and the guest goes on with the
//! memory it had.

mod common;

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::{guest_file, wait_for_socket, Flint, BOOT_LOCK, BOOT_TIMEOUT};

/// Fills a file in the guest's RAM-backed root with random bytes, prints
/// its checksum, then counts, printing the checksum again with every tick:
/// after the restore, both the counter and the file come from the handler.
const GUEST_CMD: &str = "dd if=/dev/urandom of=/pattern bs=4096 count=64 2>/dev/null; i=0; while true; do i=$((i+1)); echo TICK $i; md5sum /pattern; sleep 1; done";

fn call(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let body = (!body.is_empty()).then_some(body);
    api_server::client::request(sock, method, path, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn ok(sock: &Path, method: &str, path: &str, body: &str) {
    let (status, answer) = call(sock, method, path, body);
    assert!(status / 100 == 2, "{method} {path}: {status} {answer}");
}

/// The checksum the guest printed for /pattern (a line `HASH  /pattern`).
fn checksum(console: &str) -> Option<String> {
    console.lines().find_map(|l| {
        let (hash, file) = l.trim().split_once("  ")?;
        (file == "/pattern" && hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| hash.to_string())
    })
}

fn last_tick(console: &str) -> u64 {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("TICK "))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

#[test]
fn uffd_restore_in_a_new_flint_keeps_the_guests_memory() {
    let _one_vcpu = BOOT_LOCK.read().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "boot-source": {
            "kernel_image_path": guest_file("vmlinux"),
            "initrd_path": guest_file("initramfs.cpio"),
            "boot_args": format!("console=ttyS0 reboot=k panic=-1 guest_cmd=\"{GUEST_CMD}\""),
        },
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
    });
    let config_path = dir.path().join("vm.json");
    std::fs::write(&config_path, config.to_string()).unwrap();

    // 1. Boot, let it count, pause, take a full snapshot, kill that flint.
    let sock = dir.path().join("original.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flint"));
    cmd.arg("run")
        .arg("--config")
        .arg(&config_path)
        .arg("--api-sock")
        .arg(&sock);
    let mut original = Flint::spawn(cmd, tempfile::tempdir().unwrap());
    wait_for_socket(&sock);
    original.wait_for("TICK 2", BOOT_TIMEOUT).unwrap();
    ok(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    std::thread::sleep(Duration::from_millis(300));
    let console = original.console();
    let tick = last_tick(&console);
    let hash = checksum(&console).unwrap_or_else(|| panic!("no checksum printed:\n{console}"));
    let state = dir.path().join("vmstate");
    let memory = dir.path().join("memory");
    let create = serde_json::json!({
        "snapshot_type": "Full", "snapshot_path": state, "mem_file_path": memory,
    });
    ok(&sock, "PUT", "/snapshot/create", &create.to_string());
    original.signal(libc::SIGKILL);
    original.wait_exit(Duration::from_secs(30)).unwrap();

    // 2. A new flint, as a Firecracker client starts one.
    let sock = dir.path().join("restored.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flint"));
    cmd.arg("--api-sock")
        .arg(&sock)
        .args(["--id", "uffd-restored"]);
    let mut restored = Flint::spawn(cmd, tempfile::tempdir().unwrap());
    wait_for_socket(&sock);

    // Nobody listens on the handler's socket yet: a clear 400, and the
    // flint can still load.
    let handler_sock = dir.path().join("uffd.sock");
    let load = serde_json::json!({
        "snapshot_path": state,
        "mem_backend": {"backend_type": "Uffd", "backend_path": handler_sock},
        "resume_vm": false,
    });
    let (status, body) = call(&sock, "PUT", "/snapshot/load", &load.to_string());
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("no page-fault handler listens on this socket"),
        "{body}"
    );

    // 3. The example handler on the memory file.
    let listener = UnixListener::bind(&handler_sock).unwrap();
    let (done_tx, done) = mpsc::channel();
    let memory_path = memory.clone();
    std::thread::spawn(move || {
        let served = (|| {
            let file = std::fs::File::open(&memory_path).map_err(|e| e.to_string())?;
            let backing = uffd_handler::Backing::map(&file).map_err(|e| e.to_string())?;
            let (mut peer, _) = listener.accept().map_err(|e| e.to_string())?;
            let (regions, uffd) =
                uffd_handler::receive(&mut peer, backing.len()).map_err(|e| e.to_string())?;
            let mut handler = uffd_handler::Handler::new(uffd, regions, &backing);
            handler.run(&peer).map_err(|e| e.to_string())?;
            Ok::<u64, String>(handler.copied)
        })();
        let _ = done_tx.send(served);
    });

    // 4. Load (paused), resume when asked, and the guest goes on.
    ok(&sock, "PUT", "/snapshot/load", &load.to_string());
    let (status, body) = call(&sock, "GET", "/", "");
    assert!(status == 200 && body.contains("Paused"), "{status} {body}");
    ok(&sock, "PATCH", "/vm", r#"{"state": "Resumed"}"#);
    restored
        .wait_for(&format!("TICK {}", tick + 1), BOOT_TIMEOUT)
        .unwrap();
    // The file written before the snapshot reads back the same.
    let line = restored.wait_for(&hash, BOOT_TIMEOUT).unwrap();
    assert!(line.ends_with("/pattern"), "{line}");
    restored
        .wait_for(&format!("TICK {}", tick + 2), BOOT_TIMEOUT)
        .unwrap();
    let console = restored.console();
    assert!(
        !console.lines().any(|l| l.trim() == "TICK 1"),
        "the restored guest started over:\n{console}"
    );

    // 5. flint exits; the handler sees its connection close and stops.
    restored.signal(libc::SIGTERM);
    restored.wait_exit(Duration::from_secs(60)).unwrap();
    let copied = done
        .recv_timeout(Duration::from_secs(60))
        .expect("the handler did not stop when flint exited")
        .unwrap();
    // At least the pattern file's 64 pages came through the handler.
    assert!(copied >= 64, "only {copied} pages were copied");
}
