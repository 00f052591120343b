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
        .arg(format!("unix:{}", sock.display()))
        .arg("--migrate-key")
        .arg(key_file(dir.path()));
    let mut waiting = Flint::spawn(cmd, tempfile::tempdir().unwrap());
    common::wait_for_socket(&sock);
    waiting.signal(libc::SIGTERM);
    let status = waiting.wait_exit(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(0), "{}", waiting.stderr());
    assert!(!sock.exists(), "the listening socket was left behind");
}

#[test]
fn a_migration_peer_with_the_wrong_key_is_refused_and_the_wait_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("incoming.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flint"));
    cmd.args(["run", "--migrate-listen"])
        .arg(format!("unix:{}", sock.display()))
        .arg("--migrate-key")
        .arg(key_file(dir.path()));
    let mut waiting = Flint::spawn(cmd, tempfile::tempdir().unwrap());
    common::wait_for_socket(&sock);
    let wrong = vmm::migration::MigrationKey::from_bytes(&[b'x'; 32]).unwrap();
    let stream = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let err = vmm::migration::Channel::connect(stream, &wrong, 1 << 20)
        .err()
        .unwrap();
    assert!(err.to_string().contains("does not hold"), "{err}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !waiting.stderr().contains("refused migration peer") {
        assert!(std::time::Instant::now() < deadline, "{}", waiting.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Nothing was accepted, no memory set up: the flint just waits on.
    assert!(
        !waiting.stderr().contains("authenticated"),
        "{}",
        waiting.stderr()
    );
    assert!(sock.exists(), "the listener must still be there");
    waiting.signal(libc::SIGTERM);
    let status = waiting.wait_exit(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(0), "{}", waiting.stderr());
}

/// Runs `flint run ARGS` with stdio captured, its address space capped at
/// 1 GiB (so a flint that reads without bound fails instead of exhausting
/// the host) and killed if it has not exited after `limit`: a hang guard,
/// not a timing check. Returns its exit code (None if killed) and stderr.
fn flint_run_args(args: &[&std::ffi::OsStr], limit: Duration) -> (Option<i32>, String) {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flint"));
    cmd.arg("run")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            let cap = libc::rlimit {
                rlim_cur: 1 << 30,
                rlim_max: 1 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &cap) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    use std::io::Read;
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    let code = status.and_then(|s| s.code());
    assert!(status.is_some(), "flint hung (killed); stderr:\n{stderr}");
    (code, stderr)
}

#[test]
fn config_must_be_a_small_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("config.fifo");
    let c_fifo = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string path.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
    let big = dir.path().join("big.json");
    std::fs::write(&big, vec![b' '; (1 << 20) + 1]).unwrap();
    let cases: [(&std::path::Path, &str); 4] = [
        (std::path::Path::new("/dev/zero"), "not a regular file"),
        (std::path::Path::new("/dev/urandom"), "not a regular file"),
        (&fifo, "not a regular file"),
        (&big, "larger than 1048576 bytes"),
    ];
    for (path, needle) in cases {
        let (code, stderr) = flint_run_args(
            &[
                "--no-console-input".as_ref(),
                "--config".as_ref(),
                path.as_os_str(),
            ],
            Duration::from_secs(60),
        );
        assert_eq!(code, Some(2), "{}: {stderr}", path.display());
        assert!(stderr.contains("invalid config"), "{stderr}");
        assert!(stderr.contains(needle), "{}: {stderr}", path.display());
    }
}

/// A migration key file in `dir`.
fn key_file(dir: &std::path::Path) -> std::path::PathBuf {
    let key = dir.join("migrate.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
    key
}

#[test]
fn migrate_listen_needs_a_usable_key() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("unix:{}", dir.path().join("m.sock").display());
    let (code, stderr) = flint_run_args(
        &["--migrate-listen".as_ref(), addr.as_ref()],
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--migrate-key"), "{stderr}");
    let short = dir.path().join("short.key");
    std::fs::write(&short, "hunter2\n").unwrap();
    let (code, stderr) = flint_run_args(
        &[
            "--migrate-listen".as_ref(),
            addr.as_ref(),
            "--migrate-key".as_ref(),
            short.as_os_str(),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("at least 32"), "{stderr}");
}

#[test]
fn migrate_listen_replaces_only_a_stale_socket() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    // A regular file at the path is refused and left alone.
    let file = dir.path().join("precious.txt");
    std::fs::write(&file, b"keep me").unwrap();
    let addr = format!("unix:{}", file.display());
    let (code, stderr) = flint_run_args(
        &[
            "--migrate-listen".as_ref(),
            addr.as_ref(),
            "--migrate-key".as_ref(),
            key.as_os_str(),
        ],
        Duration::from_secs(60),
    );
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("not a socket"), "{stderr}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

    // A socket another process serves is refused too, and kept.
    let live = dir.path().join("live.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let addr = format!("unix:{}", live.display());
    let (code, stderr) = flint_run_args(
        &[
            "--migrate-listen".as_ref(),
            addr.as_ref(),
            "--migrate-key".as_ref(),
            key.as_os_str(),
        ],
        Duration::from_secs(60),
    );
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("another process is listening"), "{stderr}");
    assert!(live.exists());
}

#[test]
fn migrate_addresses_must_be_ip_literals() {
    // A host name would need DNS, whose syscalls seccomp kills flint for.
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let (code, stderr) = flint_run_args(
        &[
            "--migrate-listen".as_ref(),
            "tcp:localhost:4444".as_ref(),
            "--migrate-key".as_ref(),
            key.as_os_str(),
        ],
        Duration::from_secs(60),
    );
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("IP literal"), "{stderr}");
}
