//! Helpers for tests that run the real `flint` binary against the real guest.
//!
//! The guest (kernel, initramfs, rootfs) comes from `$FLINT_GUEST_DIR`, which
//! `scripts/test` sets, or from `../shared/guest` next to the repository.
//! Boots are slow on hosts whose KVM emulates guest kernel code (~30 s), so
//! waits are generous and nothing asserts on time.

#![allow(dead_code)]

pub mod containerd;
pub mod jails;
pub mod oci;
pub mod procs;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// 1-vCPU boots share this lock for reading and run in parallel; SMP boots
/// take it for writing and run alone (SMP guests are sensitive to host load).
pub static BOOT_LOCK: RwLock<()> = RwLock::new(());

/// Generous limit for one boot to a marker on a slow emulating host.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// The directory holding vmlinux, bzImage, initramfs.cpio and rootfs.ext4.
pub fn guest_dir() -> PathBuf {
    let dir = std::env::var_os("FLINT_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/guest"));
    assert!(
        dir.join("vmlinux").is_file(),
        "no guest at {} (run scripts/test, which finds or builds one, or set FLINT_GUEST_DIR)",
        dir.display()
    );
    dir
}

/// A path inside the guest directory.
pub fn guest_file(name: &str) -> PathBuf {
    guest_dir().join(name)
}

/// A VM config as JSON, with the usual boot arguments plus `extra_args`.
pub fn config_json(kernel: &Path, initrd: Option<&Path>, vcpus: u8, extra_args: &str) -> String {
    let mut boot = serde_json::json!({
        "kernel_image_path": kernel,
        "boot_args": format!("console=ttyS0 reboot=k panic=-1 {extra_args}"),
    });
    if let Some(initrd) = initrd {
        boot["initrd_path"] = serde_json::json!(initrd);
    }
    serde_json::json!({
        "boot-source": boot,
        "machine-config": {"vcpu_count": vcpus, "mem_size_mib": 256},
    })
    .to_string()
}

/// A running `flint run` whose console output is collected line by line.
pub struct Flint {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    console: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Flint {
    /// Writes `config` to a temporary file and starts `flint run` on it.
    pub fn start(config: &str) -> Self {
        Self::start_with(config, |cmd| cmd)
    }

    /// Like [`Flint::start`], letting `wrap` change the command (e.g. run it
    /// inside a network namespace).
    pub fn start_with(config: &str, wrap: impl FnOnce(Command) -> Command) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vm.json");
        std::fs::write(&path, config).expect("write config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flint"));
        cmd.args(["run", "--config"]).arg(&path);
        Self::spawn(wrap(cmd), dir)
    }

    /// Starts an already prepared flint command (its stdio is captured here).
    pub fn spawn(mut cmd: Command, dir: tempfile::TempDir) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn flint");
        let (tx, lines) = channel();
        let console = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("stdout");
        let all = console.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                all.lock().unwrap().push_str(&format!("{line}\n"));
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err_pipe = child.stderr.take().expect("stderr");
        let err_all = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines() {
                let Ok(line) = line else { break };
                err_all.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            lines,
            console,
            stderr,
            _dir: dir,
        }
    }

    /// Waits for a console line that starts with `marker` (so the kernel's
    /// echo of its own command line never matches) and returns it. On timeout
    /// or early exit, returns an error with everything flint printed.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> Result<String, String> {
        self.wait_for_line(
            |line| line.trim_start().starts_with(marker),
            marker,
            timeout,
        )
    }

    /// Waits for a console line containing `text` anywhere.
    pub fn wait_for_text(&mut self, text: &str, timeout: Duration) -> Result<String, String> {
        self.wait_for_line(|line| line.contains(text), text, timeout)
    }

    fn wait_for_line(
        &mut self,
        matches: impl Fn(&str) -> bool,
        marker: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if matches(&line) => return Ok(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(self.report(&format!("timed out waiting for {marker:?}")))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Let the stderr reader catch up before reporting.
                    std::thread::sleep(Duration::from_millis(200));
                    return Err(self.report(&format!("flint ended before {marker:?}")));
                }
            }
        }
    }

    /// Sends text to the guest's console.
    pub fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(text.as_bytes())
            .expect("write to flint stdin");
        stdin.flush().expect("flush flint stdin");
    }

    /// Waits for flint to exit; kills it and fails on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                std::thread::sleep(Duration::from_millis(100));
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(self.report("flint did not exit in time"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal to flint.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety impact.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// The flint process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the guest printed so far.
    pub fn console(&self) -> String {
        self.console.lock().unwrap().clone()
    }

    /// Everything flint logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn report(&mut self, what: &str) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(200));
        format!(
            "{what}\n--- console ---\n{}\n--- flint stderr ---\n{}",
            tail(&self.console(), 60),
            tail(&self.stderr(), 40)
        )
    }
}

impl Drop for Flint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A test that cannot run its real check here (not root, no namespaces):
/// outside CI it says so and the caller returns; under CI (`CI=true`) it
/// fails, so a missing prerequisite never passes as green.
pub fn cannot_run(reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("cannot run under CI: {reason}");
    }
    println!("skipped: {reason}");
}

/// Whether flint's tests run as root (namespaces, taps, the jailer).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a command, panicking with its stderr if it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace with a tap in it, removed on drop.
pub struct NetNs {
    /// The namespace's name.
    pub name: String,
}

impl NetNs {
    /// Creates a namespace with `tap` up at `host_ip`/24, or `None` where
    /// namespaces cannot be made (not root).
    pub fn new(tap: &str, host_ip: &str) -> Option<Self> {
        let name = format!("flint-{tap}-{}", std::process::id());
        let ok = Command::new("ip").args(["netns", "add", &name]).status();
        if !ok.is_ok_and(|s| s.success()) {
            return None;
        }
        let ns = Self { name };
        ns.exec(&["ip", "tuntap", "add", "dev", tap, "mode", "tap"]);
        ns.exec(&["ip", "addr", "add", &format!("{host_ip}/24"), "dev", tap]);
        ns.exec(&["ip", "link", "set", tap, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        Some(ns)
    }

    /// A command run inside the namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }

    /// Runs a command inside the namespace; panics if it fails.
    pub fn exec(&self, args: &[&str]) -> String {
        run(&mut self.command(args))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Waits (up to a minute) for a flint to create its socket.
pub fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "socket {} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
