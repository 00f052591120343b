//! flint's outputs never block it: a console whose reader stalls, and log and
//! metrics files that are FIFOs nobody reads.

mod common;

use std::io::{BufRead, BufReader};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use common::{config_json, guest_file, wait_for_socket, Flint, BOOT_LOCK, BOOT_TIMEOUT};

const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// A pipe whose write end becomes flint's stdout and whose read end is kept
/// open but never read: the console's host reader has stalled. The pipe is
/// shrunk to one page so that the kernel's boot messages alone fill it.
fn stalled_pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 just returned these two open descriptors; each is owned once.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_SETPIPE_SZ on a pipe we own.
    unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 4096) };
    (read, write)
}

#[test]
fn a_stalled_console_reader_does_not_stop_the_guest_or_sigterm() {
    let _one_vcpu = BOOT_LOCK.read().unwrap_or_else(|p| p.into_inner());
    // ~100 KiB of console output: more than the pipe (4 KiB) and flint's
    // console buffer (64 KiB) hold, so flint must drop some of it.
    let line = "x".repeat(72);
    let printer =
        format!(r#"i=0; while [ $i -lt 1400 ]; do echo $i-{line}; i=$((i+1)); done; echo PRINTED"#);
    let config = config_json(
        &guest_file("vmlinux"),
        Some(&guest_file("initramfs.cpio")),
        1,
        &format!(r#"guest_cmd="{printer}" guest_end=halt"#),
    );
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("vm.json");
    std::fs::write(&config_path, config).unwrap();
    let (_reader, writer) = stalled_pipe();
    let mut child = Command::new(env!("CARGO_BIN_EXE_flint"))
        .args(["run", "--no-console-input", "--config"])
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    let mut wait_for = |text: &str, timeout: Duration, child: &mut std::process::Child| {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    log.push_str(&line);
                    log.push('\n');
                    if line.contains(text) {
                        return log.clone();
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("no {text:?} from flint; its stderr:\n{log}");
                }
            }
        }
    };
    // The warning proves the guest went on printing long after the pipe
    // filled (a blocking console froze it there, with the vCPU in write()).
    wait_for("dropping output", BOOT_TIMEOUT * 2, &mut child);
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("flint did not stop on SIGTERM with a stalled console");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = wait_for("stopped by SIGTERM", EXIT_TIMEOUT, &mut child);
    assert_eq!(status.code(), Some(0), "{log}");
}

fn call(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    api_server::client::request(sock, method, path, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

#[test]
fn log_and_metrics_fifos_without_reader_do_not_block_flint() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flint"));
    cmd.args(["run", "--api-sock"]).arg(&sock);
    let mut vm = Flint::spawn(cmd, tempfile::tempdir().unwrap());
    wait_for_socket(&sock);

    let log_fifo = dir.path().join("log.fifo");
    let metrics_fifo = dir.path().join("metrics.fifo");
    mkfifo(&log_fifo);
    mkfifo(&metrics_fifo);
    // Opening them must not wait for a reader (a blocking open hangs here).
    let logger = serde_json::json!({"log_path": log_fifo, "level": "Debug"});
    let (status, body) = call(&sock, "PUT", "/logger", Some(&logger.to_string()));
    assert_eq!(status, 204, "{body}");
    let metrics = serde_json::json!({"metrics_path": metrics_fifo});
    let (status, body) = call(&sock, "PUT", "/metrics", Some(&metrics.to_string()));
    assert_eq!(status, 204, "{body}");
    // Far more metrics (and debug log lines) than the pipes and flint's
    // buffers hold: every request is still answered.
    let flush = r#"{"action_type": "FlushMetrics"}"#;
    for _ in 0..2000 {
        let (status, body) = call(&sock, "PUT", "/actions", Some(flush));
        assert_eq!(status, 204, "{body}");
    }
    assert_eq!(call(&sock, "GET", "/", None).0, 200);
    // A reader that comes later finds whole metrics lines waiting.
    let mut reader = BufReader::new(std::fs::File::open(&metrics_fifo).unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    let value: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert!(value["metrics"]["missed_flushes"].is_u64(), "{value}");

    vm.signal(libc::SIGTERM);
    let status = vm.wait_exit(EXIT_TIMEOUT).unwrap();
    assert_eq!(status.code(), Some(0), "{}", vm.stderr());
}
