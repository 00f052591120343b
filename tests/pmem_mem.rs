//! virtio-pmem and virtio-mem against the real guest, configured and driven
//! through the HTTP API: the guest reads a marker the host wrote into the
//! pmem file, its write + fsync reaches the host file, and after `PATCH
//! /hotplug/memory` its MemTotal grows and `GET /hotplug/memory` reports
//! the plugged memory. One 1-vCPU boot.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{guest_file, wait_for_socket, Flint, BOOT_LOCK, BOOT_TIMEOUT};

const MARKER: &[u8; 16] = b"FLINT-PMEM-MARK!";
const GUEST_WROTE: &[u8; 16] = b"GUEST-WROTE-PMEM";

fn call(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    api_server::client::request(sock, method, path, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn put(sock: &Path, path: &str, body: &serde_json::Value) {
    let (status, text) = call(sock, "PUT", path, Some(&body.to_string()));
    assert_eq!(status, 204, "PUT {path}: {text}");
}

/// The number after `word` on a console line (`MEM-BEFORE 123456`).
fn number_after(line: &str, word: &str) -> u64 {
    line.trim_start_matches(word)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no number in {line:?}"))
}

#[test]
fn pmem_is_the_host_file_and_hotplugged_memory_reaches_the_guest() {
    let _one_vcpu = BOOT_LOCK.read().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("pmem.img");
    let mut bytes = vec![0u8; 64 << 10];
    bytes[..16].copy_from_slice(MARKER);
    std::fs::write(&image, &bytes).unwrap();

    let sock = dir.path().join("api.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flint"));
    cmd.args(["run", "--id", "pmem-mem", "--api-sock"])
        .arg(&sock);
    let mut vm = Flint::spawn(cmd, tempfile::tempdir().unwrap());
    wait_for_socket(&sock);

    // Single quotes only: the command sits in double quotes on the kernel
    // command line. busybox applets are called by name (the initramfs has
    // few links).
    let total = "busybox awk '/MemTotal/{print $2}' /proc/meminfo";
    let script = [
        // nvdimm devices may register asynchronously.
        "while [ ! -b /dev/pmem0 ]; do sleep 1; done".to_string(),
        "busybox dd if=/dev/pmem0 bs=16 count=1 2>/dev/null; echo".into(),
        "echo -n GUEST-WROTE-PMEM | busybox dd of=/dev/pmem0 bs=16 seek=2 conv=notrunc,fsync 2>/dev/null".into(),
        "busybox sync; echo PMEM-SYNCED".into(),
        format!("a=$({total}); echo MEM-BEFORE $a"),
        format!("while [ $({total}) -le $a ]; do sleep 1; done"),
        format!("echo MEM-GREW $({total})"),
    ]
    .join("; ");
    let boot = serde_json::json!({
        "kernel_image_path": guest_file("vmlinux"),
        "initrd_path": guest_file("initramfs.cpio"),
        // Hotplugged memory is onlined by the kernel (this guest's default
        // is to leave it offline).
        "boot_args": format!(
            "console=ttyS0 reboot=k panic=-1 memhp_default_state=online guest_end=halt guest_cmd=\"{script}\""
        ),
    });
    put(&sock, "/boot-source", &boot);
    put(
        &sock,
        "/machine-config",
        &serde_json::json!({"vcpu_count": 1, "mem_size_mib": 128}),
    );
    put(
        &sock,
        "/pmem/pm0",
        &serde_json::json!({"id": "pm0", "path_on_host": image}),
    );
    put(
        &sock,
        "/hotplug/memory",
        &serde_json::json!({"total_size_mib": 128, "block_size_mib": 2, "slot_size_mib": 128}),
    );
    // A PUT whose id differs from the path is refused.
    let bad = serde_json::json!({"id": "other", "path_on_host": image});
    assert_eq!(
        call(&sock, "PUT", "/pmem/pm0", Some(&bad.to_string())).0,
        400
    );
    let (status, text) = call(&sock, "GET", "/hotplug/memory", None);
    assert_eq!(status, 200, "{text}");
    let status_before: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status_before["total_size_mib"], 128);
    assert_eq!(status_before["plugged_size_mib"], 0);

    let start = r#"{"action_type": "InstanceStart"}"#;
    let (status, text) = call(&sock, "PUT", "/actions", Some(start));
    assert_eq!(status, 204, "{text}");

    // The guest reads the host's marker through /dev/pmem0.
    vm.wait_for("FLINT-PMEM-MARK!", BOOT_TIMEOUT).unwrap();
    // Its write and fsync reach the host file.
    vm.wait_for("PMEM-SYNCED", BOOT_TIMEOUT).unwrap();
    let on_host = std::fs::read(&image).unwrap();
    assert_eq!(&on_host[32..48], GUEST_WROTE);
    assert_eq!(&on_host[..16], MARKER);

    // virtio-mem: ask for 8 MiB; the guest plugs and onlines it.
    let before = vm.wait_for("MEM-BEFORE", BOOT_TIMEOUT).unwrap();
    let before = number_after(&before, "MEM-BEFORE");
    let (status, text) = call(
        &sock,
        "PATCH",
        "/hotplug/memory",
        Some(r#"{"requested_size_mib": 8}"#),
    );
    assert_eq!(status, 204, "{text}");
    let after = vm.wait_for("MEM-GREW", BOOT_TIMEOUT).unwrap();
    let after = number_after(&after, "MEM-GREW");
    assert!(after > before, "MemTotal {before} kB -> {after} kB");
    // The driver may still be plugging the last blocks: poll the status.
    let mut plugged = serde_json::Value::Null;
    for _ in 0..600 {
        let (status, text) = call(&sock, "GET", "/hotplug/memory", None);
        assert_eq!(status, 200, "{text}");
        let s: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(s["requested_size_mib"], 8);
        plugged = s["plugged_size_mib"].clone();
        if plugged == 8 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(plugged, 8, "console:\n{}", vm.console());
    assert!(
        after - before <= 8 << 10,
        "MemTotal grew by more than was plugged: {before} kB -> {after} kB"
    );
}
