//! A private containerd for the shim and CRI tests: its own root, state,
//! socket and log in a temp dir, with flint's binaries (the shim, flint)
//! first on its PATH.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A private containerd, killed (with what it left) on drop. The tests add
/// their own methods (`impl Containerd` in the test file).
pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub child: Child,
    /// The containerd namespace its `ctr` calls and bundles are in.
    pub namespace: &'static str,
}

impl Containerd {
    /// Starts one in a new temp dir named `prefix...` with the config
    /// `config(dir)` returns (`dir`: the temp dir, for its paths; the
    /// config must put the gRPC socket at `dir/c.sock`).
    pub fn launch(
        prefix: &str,
        namespace: &'static str,
        bin_dir: &Path,
        config: impl FnOnce(&Path) -> String,
    ) -> Containerd {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        let config = config(dir.path());
        let child = start(dir.path(), bin_dir, &config);
        Containerd {
            dir,
            child,
            namespace,
        }
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    pub fn log(&self) -> String {
        log_of(self.dir.path())
    }

    /// The log's last `lines` lines, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `ctr` on this containerd, in its namespace.
    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a")
            .arg(self.sock())
            .args(["-n", self.namespace])
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_cmd(args).output().expect("running ctr")
    }

    /// A task's bundle (the shim's state directory for it).
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir
            .path()
            .join("state/io.containerd.runtime.v2.task")
            .join(self.namespace)
            .join(id)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Whatever a failed test left running (the shims and their flints
        // name the temp dir on their command lines) or mounted under it.
        let prefix = self.dir.path().display().to_string();
        super::procs::kill_with_their_vms(&prefix);
        for point in mounts_under(&prefix).into_iter().rev() {
            let _ = Command::new("umount").args(["-l", &point]).status();
        }
    }
}

/// Mount points under `prefix`, in mount order.
pub fn mounts_under(prefix: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|m| m.split_whitespace().nth(4))
        .filter(|point| point.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// What the containerd tests need, or why they cannot run: root (the shim
/// mounts rootfs snapshots), containerd and busybox-static. Builds the shim
/// and the jailer (other packages' binaries; a no-op when fresh) and
/// returns the directory that holds them and flint.
pub fn prerequisites() -> Result<PathBuf, String> {
    if !super::is_root() {
        return Err("the shim mounts rootfs snapshots: needs root".into());
    }
    let have_containerd = Command::new("containerd").arg("--version").output().is_ok();
    if !have_containerd || !Path::new("/bin/busybox").is_file() {
        return Err("containerd or busybox-static missing (scripts/test installs them)".into());
    }
    let flint = PathBuf::from(env!("CARGO_BIN_EXE_flint"));
    let bin_dir = flint.parent().unwrap().to_owned();
    let built = Command::new(env!("CARGO"))
        .args(["build", "-p", "shim", "--bin", "containerd-shim-flint-v2"])
        .args(["-p", "jailer", "--bin", "flint-jailer"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(built.success(), "building the shim and the jailer");
    assert!(bin_dir.join("containerd-shim-flint-v2").is_file());
    Ok(bin_dir)
}

/// Writes `config` to `dir/config.toml` and starts containerd with it,
/// logging to `dir/containerd.log`; returns once `ctr` gets an answer on
/// `dir/c.sock` (the address `config` must name). The caller owns the
/// child and kills and waits for it when done (the tests' `Drop`).
#[allow(clippy::zombie_processes)] // returned to the caller, who waits
pub fn start(dir: &Path, bin_dir: &Path, config: &str) -> Child {
    std::fs::write(dir.join("config.toml"), config).unwrap();
    let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new("containerd")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .env("PATH", path)
        .env("FLINT_GUEST_DIR", super::guest_dir())
        .env("FLINT_BIN", bin_dir.join("flint"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting containerd");
    let start = Instant::now();
    loop {
        let up = Command::new("ctr")
            .arg("-a")
            .arg(dir.join("c.sock"))
            .arg("version")
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success());
        if up {
            return child;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("containerd did not come up: {}", log_of(dir));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// containerd's log so far.
pub fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
}
