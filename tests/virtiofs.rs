//! virtio-fs end to end: two real `virtiofsd` daemons (one `--readonly`),
//! one boot of the shared guest with both as `fs` devices. The guest mounts
//! them, reads the host's file, writes one the host then finds, sees a file
//! the host creates while it is mounted, and fails to write to the
//! read-only share. A snapshot of the VM is refused with the device's tag.
//! One 1-vCPU boot.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{cannot_run, guest_file, wait_for_socket, Flint, BOOT_LOCK, BOOT_TIMEOUT};

/// The virtiofsd binary (scripts/install-virtiofsd installs it).
fn virtiofsd() -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH").into_iter().flat_map(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("virtiofsd"))
            .collect::<Vec<_>>()
    });
    std::env::var_os("FLINT_VIRTIOFSD")
        .map(PathBuf::from)
        .into_iter()
        .chain(from_path)
        .chain(std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/virtiofsd")))
        .find(|c| c.is_file())
}

/// A virtiofsd serving `dir` on `socket`; killed when dropped.
struct Daemon(Child);

impl Daemon {
    fn start(bin: &Path, dir: &Path, socket: &Path, readonly: bool) -> Self {
        let mut cmd = Command::new(bin);
        cmd.arg("--socket-path")
            .arg(socket)
            .arg("--shared-dir")
            .arg(dir)
            .args(["--sandbox", "none", "--log-level", "error"]);
        if readonly {
            cmd.arg("--readonly");
        }
        let child = cmd.spawn().expect("spawn virtiofsd");
        let started = Instant::now();
        while !socket.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "virtiofsd did not create {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn guest_shares_a_live_directory_with_the_host() {
    let Some(bin) = virtiofsd() else {
        cannot_run("virtiofsd is not installed (scripts/install-virtiofsd)");
        return;
    };
    let _one_vcpu = BOOT_LOCK.read().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let rw = dir.path().join("rw");
    let ro = dir.path().join("ro");
    std::fs::create_dir(&rw).unwrap();
    std::fs::create_dir(&ro).unwrap();
    std::fs::write(rw.join("hello"), "VFS-HOST-FILE-7f3a\n").unwrap();
    std::fs::write(ro.join("ro-file"), "VFS-RO-CONTENT-91c2\n").unwrap();
    let rw_sock = dir.path().join("rw.sock");
    let ro_sock = dir.path().join("ro.sock");
    let _rw_daemon = Daemon::start(&bin, &rw, &rw_sock, false);
    let _ro_daemon = Daemon::start(&bin, &ro, &ro_sock, true);

    // Single quotes only: the command sits in double quotes on the kernel
    // command line. busybox applets are called by name.
    let script = [
        "busybox mkdir -p /mnt /ro",
        "busybox mount -t virtiofs vol0 /mnt && echo VFS-MOUNTED",
        "busybox cat /mnt/hello",
        "echo VFS-GUEST-WROTE-5d1e > /mnt/from-guest && busybox sync && echo VFS-WROTE",
        "while [ ! -e /mnt/b ]; do busybox sleep 1; done",
        "busybox cat /mnt/b",
        "busybox mount -t virtiofs vol1 /ro && echo VFS-RO-MOUNTED",
        "busybox cat /ro/ro-file",
        "if echo x 2>/dev/null > /ro/new; then echo VFS-RO-WRITE-SUCCEEDED; else echo VFS-RO-WRITE-FAILED; fi",
    ]
    .join("; ");
    let config = serde_json::json!({
        "boot-source": {
            "kernel_image_path": guest_file("vmlinux"),
            "initrd_path": guest_file("initramfs.cpio"),
            "boot_args": format!(
                "console=ttyS0 reboot=k panic=-1 guest_end=halt guest_cmd=\"{script}\""
            ),
        },
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "fs": [
            {"tag": "vol0", "socket": rw_sock, "num_request_queues": 1, "queue_size": 1024},
            {"tag": "vol1", "socket": ro_sock},
        ],
    });
    let vm_dir = tempfile::tempdir().unwrap();
    let config_path = vm_dir.path().join("vm.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let api = vm_dir.path().join("api.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flint"));
    cmd.args(["run", "--config"])
        .arg(&config_path)
        .arg("--api-sock")
        .arg(&api);
    let mut vm = Flint::spawn(cmd, vm_dir);

    vm.wait_for("VFS-MOUNTED", BOOT_TIMEOUT).unwrap();
    // The host's file, read through virtiofsd.
    vm.wait_for("VFS-HOST-FILE-7f3a", BOOT_TIMEOUT).unwrap();
    // The guest's write reaches the host directory.
    vm.wait_for("VFS-WROTE", BOOT_TIMEOUT).unwrap();
    assert_eq!(
        std::fs::read_to_string(rw.join("from-guest")).unwrap(),
        "VFS-GUEST-WROTE-5d1e\n"
    );
    // A file the host creates while the share is mounted is seen (the
    // guest polls for it).
    std::fs::write(rw.join("b.tmp"), "VFS-HOST-B-c0de\n").unwrap();
    std::fs::rename(rw.join("b.tmp"), rw.join("b")).unwrap();
    vm.wait_for("VFS-HOST-B-c0de", BOOT_TIMEOUT).unwrap();
    // The read-only share reads, and refuses writes (virtiofsd enforces it).
    vm.wait_for("VFS-RO-MOUNTED", BOOT_TIMEOUT).unwrap();
    vm.wait_for("VFS-RO-CONTENT-91c2", BOOT_TIMEOUT).unwrap();
    let verdict = vm.wait_for("VFS-RO-WRITE-", BOOT_TIMEOUT).unwrap();
    assert_eq!(verdict.trim(), "VFS-RO-WRITE-FAILED");
    assert!(!ro.join("new").exists());

    // A snapshot is refused with a clear 400 naming the device.
    wait_for_socket(&api);
    let call = |method: &str, path: &str, body: &str| {
        api_server::client::request(&api, method, path, Some(body))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    };
    let (status, text) = call("PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(status, 204, "{text}");
    let snap = dir.path().join("snap");
    let body = serde_json::json!({
        "snapshot_path": snap.join("state"),
        "mem_file_path": snap.join("mem"),
    });
    let (status, text) = call("PUT", "/snapshot/create", &body.to_string());
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("virtio-fs device vol0 cannot be snapshotted: its state lives in virtiofsd"),
        "{text}"
    );
    assert!(!snap.join("state").exists());
}
