//! A private containerd for the shim and CRI tests: its own root, state,
//! socket and log in a temp dir, with flint's binaries (the shim, flint)
//! first on its PATH.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
