//! End-to-end boots of the real guest kernel with `flint run`.
//!
//! Each test boots `vmlinux` or `bzImage` from the shared guest directory and
//! checks what the guest itself printed: its readiness marker, the output of a
//! command it ran, and that flint exits 0 when the guest reboots.

mod common;

use std::time::Duration;

use common::{config_json, guest_file, Flint, BOOT_LOCK, BOOT_TIMEOUT};

const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn vmlinux_boots_takes_console_input_and_exits_0_on_reboot() {
    let _one_vcpu = BOOT_LOCK.read().unwrap_or_else(|p| p.into_inner());
    let config = config_json(
        &guest_file("vmlinux"),
        Some(&guest_file("initramfs.cpio")),
        1,
        "guest_end=shell",
    );
    let mut vm = Flint::start(&config);
    let ready = vm.wait_for("GUEST-READY", BOOT_TIMEOUT).unwrap();
    println!("{ready}");
    // The guest computes the answer, so seeing it proves input reached the
    // guest's shell and its output came back.
    vm.send("echo flint-$((6*7))-ok\n");
    vm.wait_for("flint-42-ok", BOOT_TIMEOUT).unwrap();
    vm.send("reboot -f\n");
    let status = vm.wait_exit(EXIT_TIMEOUT).unwrap();
    assert_eq!(status.code(), Some(0), "flint stderr:\n{}", vm.stderr());
    let log = vm.stderr();
    assert!(
        log.contains("the guest reset itself through the i8042"),
        "{log}"
    );
}

#[test]
fn bzimage_boots_and_runs_a_command() {
    let _one_vcpu = BOOT_LOCK.read().unwrap_or_else(|p| p.into_inner());
    let config = config_json(
        &guest_file("bzImage"),
        Some(&guest_file("initramfs.cpio")),
        1,
        r#"guest_cmd="uname -r; echo cmd-$((40+2))" guest_end=reboot"#,
    );
    let mut vm = Flint::start(&config);
    vm.wait_for("GUEST-READY", BOOT_TIMEOUT).unwrap();
    vm.wait_for("cmd-42", BOOT_TIMEOUT).unwrap();
    vm.wait_for("GUEST-CMD-EXIT=0", BOOT_TIMEOUT).unwrap();
    let status = vm.wait_exit(EXIT_TIMEOUT).unwrap();
    assert_eq!(status.code(), Some(0), "flint stderr:\n{}", vm.stderr());
}

#[test]
fn smp_guest_brings_up_both_vcpus() {
    // Alone: SMP guests on this host are sensitive to load.
    let _alone = BOOT_LOCK.write().unwrap_or_else(|p| p.into_inner());
    let config = config_json(
        &guest_file("vmlinux"),
        Some(&guest_file("initramfs.cpio")),
        2,
        r#"guest_cmd="echo online=$(cat /sys/devices/system/cpu/online)" guest_end=reboot"#,
    );
    // Known host flake (shared/guest/README.md): with 2 vCPUs, PID 1 sometimes
    // segfaults before GUEST-INIT. Retry once, and say so.
    let mut last_error = String::new();
    for attempt in 1..=2 {
        let mut vm = Flint::start(&config);
        match vm.wait_for("online=", BOOT_TIMEOUT) {
            Ok(line) => {
                assert!(line.contains("online=0-1"), "guest saw {line:?}");
                let status = vm.wait_exit(EXIT_TIMEOUT).unwrap();
                assert_eq!(status.code(), Some(0), "flint stderr:\n{}", vm.stderr());
                return;
            }
            Err(e) => {
                let host_flake = e.contains("segfault") && !e.contains("GUEST-INIT");
                if attempt == 2 || !host_flake {
                    panic!("attempt {attempt}: {e}");
                }
                println!("attempt 1 hit the known SMP host flake (init segfault); retrying once");
                last_error = e;
            }
        }
    }
    panic!("unreachable: {last_error}");
}

#[test]
fn sigterm_stops_a_booting_vm_cleanly() {
    let _one_vcpu = BOOT_LOCK.read().unwrap_or_else(|p| p.into_inner());
    let config = config_json(
        &guest_file("vmlinux"),
        Some(&guest_file("initramfs.cpio")),
        1,
        "guest_end=halt",
    );
    let mut vm = Flint::start(&config);
    // The kernel is running once it prints its banner.
    vm.wait_for_text("Linux version", BOOT_TIMEOUT).unwrap();
    vm.signal(libc::SIGTERM);
    let status = vm.wait_exit(EXIT_TIMEOUT).unwrap();
    assert_eq!(status.code(), Some(0), "flint stderr:\n{}", vm.stderr());
    assert!(
        vm.stderr().contains("stopped by SIGTERM"),
        "{}",
        vm.stderr()
    );
    assert!(!vm.console().contains("GUEST-READY"));
}
