//! End-to-end virtio-blk and virtio-net: the real guest reads and writes its
//! disks and talks TCP to the host through a tap.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{cannot_run, guest_file, is_root, run, Flint, NetNs, BOOT_LOCK, BOOT_TIMEOUT};

fn sha256(path: &Path) -> String {
    run(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A copy of the shared ext4 root filesystem the test may scribble on.
fn rootfs_copy(dir: &Path) -> PathBuf {
    let path = dir.join("rootfs.ext4");
    std::fs::copy(guest_file("rootfs.ext4"), &path).unwrap();
    path
}

fn debugfs_cat(image: &Path, file: &str) -> String {
    run(Command::new("debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(image))
}

#[test]
fn virtio_blk_root_persists_synced_writes_and_honours_read_only_and_rate_limits() {
    let _one_vcpu = BOOT_LOCK.read().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let root = rootfs_copy(dir.path());
    // A read-only data disk with a recognizable pattern.
    let ro = dir.path().join("ro.img");
    std::fs::write(&ro, vec![0xabu8; 1 << 20]).unwrap();
    let ro_hash = sha256(&ro);
    // Two 1 MiB disks, one throttled to 128 KiB/s.
    let fast = dir.path().join("fast.img");
    let slow = dir.path().join("slow.img");
    std::fs::write(&fast, vec![1u8; 1 << 20]).unwrap();
    std::fs::write(&slow, vec![2u8; 1 << 20]).unwrap();

    // Device order: the root drive is /dev/vda, then the others in config order.
    let script = [
        "echo flint-data-$((6*7)) > /persist.txt",
        "sync",
        "echo RO-FLAG=$(cat /sys/block/vdb/ro)",
        // Read up to three times: on this host a guest pipeline now and then
        // dies (the host's user-mode quirk), which would show as no data.
        "for i in 1 2 3; do d=$(head -c 4 /dev/vdb | od -An -tx1 | tr -d ' '); test ${#d} -gt 0 && break; done",
        "echo RO-DATA=$d",
        "if echo x | dd of=/dev/vdb bs=512 count=1 conv=fsync 2>/dev/null; then echo RO-WRITE=ok; else echo RO-WRITE=failed; fi",
        "t0=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/vdc of=/dev/null bs=64k 2>/dev/null; t1=$(cut -d' ' -f1 /proc/uptime)",
        "dd if=/dev/vdd of=/dev/null bs=64k 2>/dev/null; t2=$(cut -d' ' -f1 /proc/uptime)",
        "echo TIMES $t0 $t1 $t2",
        "echo SYNCED",
    ]
    .join("; ");
    let config = serde_json::json!({
        "boot-source": {
            "kernel_image_path": guest_file("vmlinux"),
            "boot_args": format!("console=ttyS0 reboot=k panic=-1 guest_cmd=\"{script}\" guest_end=halt"),
        },
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
        "drives": [
            {"drive_id": "ro", "path_on_host": ro, "is_root_device": false, "is_read_only": true},
            {"drive_id": "rootfs", "path_on_host": root, "is_root_device": true},
            {"drive_id": "fast", "path_on_host": fast, "is_root_device": false, "is_read_only": true},
            {"drive_id": "slow", "path_on_host": slow, "is_root_device": false, "is_read_only": true,
             "rate_limiter": {"bandwidth": {"size": 131072, "refill_time": 1000}}},
        ],
    });
    let mut vm = Flint::start(&config.to_string());
    vm.wait_for("GUEST-READY", BOOT_TIMEOUT).unwrap();
    let flag = vm.wait_for("RO-FLAG=", BOOT_TIMEOUT).unwrap();
    assert_eq!(
        flag.trim(),
        "RO-FLAG=1",
        "the guest must see vdb as read-only"
    );
    let data = vm.wait_for("RO-DATA=", BOOT_TIMEOUT).unwrap();
    assert_eq!(data.trim(), "RO-DATA=abababab");
    let write = vm.wait_for("RO-WRITE=", BOOT_TIMEOUT).unwrap();
    assert_eq!(write.trim(), "RO-WRITE=failed");
    let times = vm.wait_for("TIMES", BOOT_TIMEOUT).unwrap();
    vm.wait_for("SYNCED", BOOT_TIMEOUT).unwrap();
    // The guest synced: killing flint outright must lose nothing.
    vm.signal(libc::SIGKILL);
    vm.wait_exit(Duration::from_secs(30)).unwrap();

    assert_eq!(debugfs_cat(&root, "/persist.txt").trim(), "flint-data-42");
    assert_eq!(sha256(&ro), ro_hash, "the read-only image changed");

    let t: Vec<f64> = times
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    let (fast_s, slow_s) = (t[1] - t[0], t[2] - t[1]);
    println!("1 MiB read: unthrottled {fast_s:.2} s, throttled to 128 KiB/s {slow_s:.2} s");
    // 1 MiB at 128 KiB/s, starting with a full 128 KiB bucket, takes at least 7 s.
    assert!(slow_s >= 6.0, "throttled read took only {slow_s} s");
    assert!(
        slow_s > fast_s,
        "throttled {slow_s} s is not slower than unthrottled {fast_s} s"
    );
}

/// Receives one TCP connection's bytes in the namespace and prints their sha256.
const SINK: &str = "import hashlib, socket, sys\n\
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
s.bind(('0.0.0.0', 5555)); s.listen(1); s.settimeout(600)\n\
c, _ = s.accept(); c.settimeout(120); h = hashlib.sha256(); n = 0\n\
while True:\n    b = c.recv(65536)\n    if not b: break\n    h.update(b); n += len(b)\n\
print(n, h.hexdigest(), flush=True)\n";

#[test]
fn virtio_net_ping_and_tcp_transfer_through_a_tap() {
    if !is_root() {
        return cannot_run("needs root for network namespaces and taps");
    }
    let _one_vcpu = BOOT_LOCK.read().unwrap_or_else(|p| p.into_inner());
    let tap = "flinttap0";
    let Some(ns) = NetNs::new(tap, "172.30.0.1") else {
        return cannot_run("cannot create a network namespace here");
    };
    let dir = tempfile::tempdir().unwrap();
    let root = rootfs_copy(dir.path());
    let sink = ns
        .command(&["python3", "-c", SINK])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    let script = [
        "ping -c 3 -W 5 172.30.0.1 >/dev/null && echo PING=ok || echo PING=failed",
        "dd if=/dev/urandom of=/tmp/blob bs=64k count=48 2>/dev/null",
        "echo BLOB=$(sha256sum /tmp/blob | cut -d' ' -f1)",
        "nc 172.30.0.1 5555 < /tmp/blob; echo SENT=$?",
    ]
    .join("; ");
    let config = serde_json::json!({
        "boot-source": {
            "kernel_image_path": guest_file("vmlinux"),
            "boot_args": format!(
                "console=ttyS0 reboot=k panic=-1 ip=172.30.0.2::172.30.0.1:255.255.255.0::eth0:off guest_net=1 guest_cmd=\"{script}\" guest_end=halt"
            ),
        },
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
        "drives": [{"drive_id": "rootfs", "path_on_host": root, "is_root_device": true}],
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": tap, "guest_mac": "06:00:ac:1e:00:02"}],
    });
    // flint opens the tap inside the namespace, as a jailer would run it.
    let mut vm = Flint::start_with(&config.to_string(), |cmd| {
        let mut wrapped = Command::new("ip");
        wrapped
            .args(["netns", "exec", &ns.name])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        wrapped
    });
    vm.wait_for("GUEST-READY", BOOT_TIMEOUT).unwrap();
    let ping = vm.wait_for("PING=", BOOT_TIMEOUT).unwrap();
    assert_eq!(ping.trim(), "PING=ok", "guest -> host ping");
    // And the other way round, while the guest is up.
    ns.exec(&["busybox", "ping", "-c", "2", "-W", "5", "172.30.0.2"]);
    let blob = vm.wait_for("BLOB=", BOOT_TIMEOUT).unwrap();
    let sent = vm.wait_for("SENT=", BOOT_TIMEOUT).unwrap();
    assert_eq!(sent.trim(), "SENT=0", "nc failed in the guest");
    let out = sink.wait_with_output().unwrap();
    let received = String::from_utf8_lossy(&out.stdout);
    let mut fields = received.split_whitespace();
    assert_eq!(fields.next(), Some("3145728"), "bytes received: {received}");
    assert_eq!(
        fields.next(),
        blob.trim().strip_prefix("BLOB="),
        "checksums differ"
    );
}
