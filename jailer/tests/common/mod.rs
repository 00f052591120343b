//! Helpers for the jailer integration tests: run `flint-jailer` on
//! `/bin/busybox` (static, so it runs in an empty jail), find the jailed
//! process, and clean up processes, cgroups and jail directories.

#![allow(dead_code)]

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BUSYBOX: &str = "/bin/busybox";
pub const NOBODY: u32 = 65534;

/// Skips the calling test (with a note) unless running as root with a static
/// busybox; under CI (`CI=true`) it fails instead, so a missing prerequisite
/// never passes silently.
#[macro_export]
macro_rules! require_root {
    () => {
        if let Some(reason) = common::skip_reason() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("cannot run under CI: {reason}");
            }
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

pub fn skip_reason() -> Option<&'static str> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned));
    if euid.as_deref() != Some("0") {
        return Some("not root");
    }
    if !Path::new(BUSYBOX).exists() {
        return Some("no /bin/busybox (install busybox-static)");
    }
    None
}

/// Polls `cond` every 20ms until it holds or `secs` pass.
pub fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// `(mount point, fstype, options)` of every cgroup/cgroup2 mount.
pub fn cgroup_mounts() -> Vec<(PathBuf, String, Vec<String>)> {
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f[..] {
                [_, mp, fstype @ ("cgroup" | "cgroup2"), opts, ..] => Some((
                    PathBuf::from(mp.replace("\\040", " ")),
                    fstype.to_owned(),
                    opts.split(',').map(str::to_owned).collect(),
                )),
                _ => None,
            }
        })
        .collect()
}

/// The v1 hierarchy carrying `controller`.
pub fn v1_mount(controller: &str) -> Option<PathBuf> {
    cgroup_mounts()
        .into_iter()
        .find(|(_, t, o)| t == "cgroup" && o.iter().any(|c| c == controller))
        .map(|(p, _, _)| p)
}

/// The unified (v2) mount.
pub fn v2_mount() -> Option<PathBuf> {
    cgroup_mounts()
        .into_iter()
        .find(|(_, t, _)| t == "cgroup2")
        .map(|(p, _, _)| p)
}

/// The controllers the unified root offers.
pub fn v2_controllers() -> Vec<String> {
    v2_mount()
        .and_then(|m| fs::read_to_string(m.join("cgroup.controllers")).ok())
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The cgroup path of `pid` for a v1 `controller`, or for v2 with `None`.
pub fn proc_cgroup(pid: u32, controller: Option<&str>) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctls, path) = (f.next()?, f.next()?, f.next()?);
        let hit = match controller {
            Some(c) => ctls.split(',').any(|x| x == c),
            None => ctls.is_empty(),
        };
        hit.then(|| path.to_owned())
    })
}

/// A `/proc/PID/status` field, e.g. `status_field(pid, "Uid")`.
pub fn status_field(pid: u32, name: &str) -> String {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{name}:"))
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default()
}

/// One jail under a private chroot base, with a unique id and parent cgroup;
/// dropping it kills what it started and removes its directories and cgroups.
pub struct Jail {
    pub base: tempfile::TempDir,
    logs: tempfile::TempDir,
    pub id: String,
    pub parent: String,
    /// Passed as --uid (default nobody).
    pub uid: String,
    /// Passed as --exec-file (default the static busybox).
    pub exec_file: String,
    children: Vec<Child>,
}

impl Jail {
    pub fn new(tag: &str) -> Self {
        let pid = std::process::id();
        Jail {
            base: tempfile::Builder::new()
                .prefix("flint-jail-test")
                .tempdir()
                .expect("tempdir"),
            logs: tempfile::tempdir().expect("tempdir"),
            id: format!("{tag}-{pid}"),
            parent: format!("flint-test-{tag}-{pid}"),
            uid: NOBODY.to_string(),
            exec_file: BUSYBOX.to_owned(),
            children: Vec::new(),
        }
    }

    pub fn root(&self) -> PathBuf {
        jailer::jail_root(self.base.path(), Path::new(&self.exec_file), &self.id)
    }

    pub fn log_path(&self) -> PathBuf {
        self.logs.path().join("stderr")
    }

    /// The jailer's (and, without --daemonize, the jailed process's) stderr.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `flint-jailer --id .. --exec-file EXEC --uid/--gid nobody
    /// --chroot-base .. --parent-cgroup .. EXTRA -- EXEC_ARGS`.
    pub fn command(&self, extra: &[&str], exec_args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flint-jailer"));
        cmd.args(["--id", &self.id, "--exec-file", &self.exec_file])
            .args(["--uid", &self.uid, "--gid", &NOBODY.to_string()])
            .arg("--chroot-base")
            .arg(self.base.path())
            .args(["--parent-cgroup", &self.parent])
            .args(extra)
            .arg("--")
            .args(exec_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(self.log_path()).expect("log file"));
        cmd
    }

    /// Starts the jailer in the background; returns its pid.
    pub fn spawn(&mut self, extra: &[&str], exec_args: &[&str]) -> u32 {
        let child = self
            .command(extra, exec_args)
            .spawn()
            .expect("spawn flint-jailer");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Runs the jailer to completion; returns its status.
    pub fn run(&self, extra: &[&str], exec_args: &[&str]) -> ExitStatus {
        self.command(extra, exec_args)
            .status()
            .expect("run flint-jailer")
    }

    /// Waits for the last spawned jailer's status (None if it is still running after `secs`).
    pub fn wait_exit(&mut self, secs: u64) -> Option<ExitStatus> {
        let child = self.children.last_mut()?;
        let mut status = None;
        wait_for(secs, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    /// Whether `pid` has exec'd busybox with its root being this jail's.
    pub fn is_jailed(&self, pid: u32) -> bool {
        let (Ok(a), Ok(b)) = (
            fs::metadata(format!("/proc/{pid}/root/")),
            fs::metadata(self.root()),
        ) else {
            return false;
        };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        a.dev() == b.dev() && a.ino() == b.ino() && cmdline.starts_with(b"busybox\0")
    }

    /// Waits until `pid` runs busybox in the jail, failing with the jailer's stderr.
    pub fn wait_jailed(&self, pid: u32) {
        assert!(
            wait_for(10, || self.is_jailed(pid)),
            "pid {pid} never ran in the jail; stderr:\n{}",
            self.stderr()
        );
    }

    /// Every live process running in this jail.
    pub fn jailed_pids(&self) -> Vec<u32> {
        let Ok(dir) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| self.is_jailed(pid) && !status_field(pid, "State").starts_with('Z'))
            .collect()
    }

    /// Waits (up to 10s) for exactly one jailed process and returns it.
    pub fn find_jailed(&self) -> u32 {
        let mut found = Vec::new();
        wait_for(10, || {
            found = self.jailed_pids();
            found.len() == 1
        });
        assert_eq!(
            found.len(),
            1,
            "jailed processes: {found:?}; stderr:\n{}",
            self.stderr()
        );
        found[0]
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        for pid in self.jailed_pids() {
            // SAFETY: sending a signal has no memory-safety implications.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        wait_for(5, || self.jailed_pids().is_empty());
        for (mount, _, _) in cgroup_mounts() {
            for dir in [
                mount.join(&self.parent).join(&self.id),
                mount.join(&self.parent),
            ] {
                // Right after its last task dies a cgroup can be briefly busy.
                wait_for(5, || match fs::remove_dir(&dir) {
                    Ok(()) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::NotFound,
                });
            }
        }
    }
}
