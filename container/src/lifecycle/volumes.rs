//! Shared directories (`run -v HOST_DIR:GUEST_DIR[:ro]`): one `virtiofsd`
//! per volume on a socket in the container's directory, one virtio-fs
//! device per volume in the VM config (`"fs": [{"tag", "socket",
//! "num_request_queues", "queue_size"}]`; flint backs guest memory with a
//! shareable memfd when `fs` is present), and the guest init mounts each
//! tag on its directory before the main process starts. `:ro` is enforced
//! by the daemon (`--readonly`) and by a read-only mount.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::state::VolumeMap;
use crate::ContainerError;

fn usage(message: impl Into<String>) -> ContainerError {
    ContainerError::Usage(message.into())
}

/// Parses volume number `index`: `HOST_DIR:GUEST_DIR[:ro|:rw]`; the host
/// directory must exist (it is made absolute).
pub fn parse_volume(text: &str, index: usize) -> Result<VolumeMap, ContainerError> {
    let parts: Vec<&str> = text.split(':').collect();
    let (host, guest, read_only) = match parts.as_slice() {
        [h, g] => (*h, *g, false),
        [h, g, "ro"] => (*h, *g, true),
        [h, g, "rw"] => (*h, *g, false),
        _ => {
            return Err(usage(format!(
                "-v {text:?}: expected HOST_DIR:GUEST_DIR[:ro]"
            )))
        }
    };
    if !guest.starts_with('/') || guest == "/" {
        return Err(usage(format!(
            "-v {text:?}: the container directory must be absolute and not /"
        )));
    }
    let host_dir = std::fs::canonicalize(host)
        .ok()
        .filter(|p| p.is_dir())
        .ok_or_else(|| usage(format!("-v {text:?}: {host} is not a directory")))?;
    Ok(VolumeMap {
        host_dir,
        guest_dir: guest.to_owned(),
        read_only,
        tag: format!("vol{index}"),
    })
}

/// The virtiofsd to run: `$FLINT_VIRTIOFSD`, else `virtiofsd` in `PATH`
/// (or `~/.cargo/bin`, where `cargo install virtiofsd` puts it).
pub fn find_virtiofsd() -> Result<PathBuf, ContainerError> {
    if let Some(p) = std::env::var_os("FLINT_VIRTIOFSD").filter(|p| !p.is_empty()) {
        return Ok(p.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin"));
    std::env::split_paths(&path)
        .chain(cargo)
        .chain([
            PathBuf::from("/usr/libexec"),
            PathBuf::from("/usr/lib/qemu"),
        ])
        .map(|d| d.join("virtiofsd"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            usage("-v needs virtiofsd: install it (cargo install virtiofsd) or set FLINT_VIRTIOFSD")
        })
}

/// The socket of volume `v` in container directory `dir`.
pub fn socket_path(dir: &Path, v: &VolumeMap) -> PathBuf {
    dir.join(format!("{}.virtiofsd.sock", v.tag))
}

/// Starts one virtiofsd per volume (its log in container directory `dir`,
/// its socket in `socket_dir`: the jail's root when the VMM is jailed) and
/// waits for their sockets; they die with the calling process
/// (`PR_SET_PDEATHSIG`).
pub fn start_daemons(
    dir: &Path,
    socket_dir: &Path,
    volumes: &[VolumeMap],
) -> Result<Vec<Child>, ContainerError> {
    if volumes.is_empty() {
        return Ok(Vec::new());
    }
    let bin = find_virtiofsd()?;
    let mut children = Vec::new();
    for v in volumes {
        let socket = socket_path(socket_dir, v);
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::File::create(dir.join(format!("{}.virtiofsd.log", v.tag)))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null());
        let mut cmd = Command::new(&bin);
        cmd.arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&v.host_dir)
            .args(["--cache", "auto"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if v.read_only {
            cmd.arg("--readonly");
        }
        // SAFETY: prctl with plain integers between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| ContainerError::Io {
            what: format!("starting {}", bin.display()),
            source: e,
        })?;
        children.push(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            if Instant::now() > deadline {
                return Err(usage(format!(
                    "virtiofsd for {} did not create {} (see {}/{}.virtiofsd.log)",
                    v.host_dir.display(),
                    socket.display(),
                    dir.display(),
                    v.tag
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(children)
}

/// The VM config's `fs` section for `volumes`.
pub fn fs_config(dir: &Path, volumes: &[VolumeMap]) -> serde_json::Value {
    volumes
        .iter()
        .map(|v| {
            serde_json::json!({
                "tag": v.tag,
                "socket": socket_path(dir, v),
                "num_request_queues": 1,
                "queue_size": 1024,
            })
        })
        .collect()
}

/// The settings' `volumes` for the guest init.
pub fn settings_volumes(volumes: &[VolumeMap]) -> serde_json::Value {
    volumes
        .iter()
        .map(|v| serde_json::json!({"tag": v.tag, "path": v.guest_dir, "ro": v.read_only}))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_specs_parse() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let v = parse_volume(&format!("{d}:/www:ro"), 0).unwrap();
        assert_eq!(
            (v.guest_dir.as_str(), v.read_only, v.tag.as_str()),
            ("/www", true, "vol0")
        );
        assert!(!parse_volume(&format!("{d}:/data"), 1).unwrap().read_only);
        for bad in [
            format!("{d}:rel"),
            format!("{d}:/"),
            format!("{d}:/x:rx"),
            "/no/such/dir:/x".to_owned(),
            d.to_owned(),
        ] {
            assert!(parse_volume(&bad, 0).is_err(), "{bad}");
        }
    }
}
