//! `flint run` failing fast and clearly: bad configs and fatal guest exits.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{config_json, Flint};

fn flint_run(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.json");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flint"))
        .args(["run", "--no-console-input", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_kernel_is_reported_with_the_field_name() {
    let config = config_json(std::path::Path::new("/nonexistent/vmlinux"), None, 1, "");
    let (code, stderr) = flint_run(&config);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("boot-source.kernel_image_path"), "{stderr}");
    assert!(stderr.contains("/nonexistent/vmlinux"), "{stderr}");
}

#[test]
fn zero_vcpus_and_unknown_keys_are_refused_before_start() {
    let kernel = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(kernel.path(), b"\x7fELF\x02\x01\x01").unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&config_json(kernel.path(), None, 0, "")).unwrap();
    let (code, stderr) = flint_run(&config.to_string());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("machine-config.vcpu_count"), "{stderr}");

    config["machine-config"] = serde_json::json!({"vcpu_count": 1, "mem_size_mb": 128});
    let (code, stderr) = flint_run(&config.to_string());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("mem_size_mb"), "{stderr}");
}

#[test]
fn a_file_that_is_not_a_kernel_is_refused() {
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), vec![0x42u8; 8192]).unwrap();
    let (code, stderr) = flint_run(&config_json(junk.path(), None, 1, ""));
    // A config error (exit 2) naming the field, before anything is created.
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("boot-source.kernel_image_path"), "{stderr}");
    assert!(
        stderr.contains("neither an ELF vmlinux nor a bzImage"),
        "{stderr}"
    );
}

/// A minimal ELF64 "kernel" whose first instruction is `ud2`. With the empty
/// boot IDT the #UD escalates to a triple fault (or, on hosts that emulate
/// guest code, possibly an emulation failure): either way a fatal exit that
/// flint must report with registers instead of hanging.
fn faulting_kernel() -> Vec<u8> {
    const ENTRY: u64 = 0x100_0000;
    let mut elf = vec![0u8; 0x1010];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little endian
    elf[6] = 1; // ELF version
    let put16 =
        |e: &mut Vec<u8>, at: usize, v: u16| e[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put32 =
        |e: &mut Vec<u8>, at: usize, v: u32| e[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put64 =
        |e: &mut Vec<u8>, at: usize, v: u64| e[at..at + 8].copy_from_slice(&v.to_le_bytes());
    put16(&mut elf, 16, 2); // ET_EXEC
    put16(&mut elf, 18, 0x3e); // x86-64
    put32(&mut elf, 20, 1);
    put64(&mut elf, 24, ENTRY);
    put64(&mut elf, 32, 64); // program headers right after the ELF header
    put16(&mut elf, 52, 64);
    put16(&mut elf, 54, 56);
    put16(&mut elf, 56, 1);
    // PT_LOAD, R+X, file offset 0x1000 -> physical ENTRY, 16 bytes.
    let ph = 64;
    put32(&mut elf, ph, 1);
    put32(&mut elf, ph + 4, 5);
    put64(&mut elf, ph + 8, 0x1000);
    put64(&mut elf, ph + 16, ENTRY);
    put64(&mut elf, ph + 24, ENTRY);
    put64(&mut elf, ph + 32, 16);
    put64(&mut elf, ph + 40, 16);
    put64(&mut elf, ph + 48, 0x1000);
    elf[0x1000..0x1002].copy_from_slice(&[0x0f, 0x0b]); // ud2
    elf
}

#[test]
fn fatal_guest_exit_prints_registers_and_fails() {
    let kernel = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(kernel.path(), faulting_kernel()).unwrap();
    let mut vm = Flint::start(&config_json(kernel.path(), None, 1, ""));
    let status = vm.wait_exit(Duration::from_secs(60)).unwrap();
    let stderr = vm.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("flint: error: vCPU 0:"), "{stderr}");
    assert!(stderr.contains("rip=0x"), "{stderr}");
    assert!(
        stderr.contains("triple fault") || stderr.contains("KVM_EXIT_INTERNAL_ERROR"),
        "{stderr}"
    );
}

#[test]
fn sigterm_ends_a_flint_waiting_for_a_migration() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("incoming.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flint"));
    cmd.args(["run", "--migrate-listen"])
        .arg(format!("unix:{}", sock.display()));
    let mut waiting = Flint::spawn(cmd, tempfile::tempdir().unwrap());
    common::wait_for_socket(&sock);
    waiting.signal(libc::SIGTERM);
    let status = waiting.wait_exit(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(0), "{}", waiting.stderr());
    assert!(!sock.exists(), "the listening socket was left behind");
}
