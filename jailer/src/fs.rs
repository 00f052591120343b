//! Builds the jail's directory tree on the host.

use std::ffi::CString;
use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{chown, DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::validate::JailConfig;
use crate::JailError;

/// A character device node to create inside the jail.
struct DeviceNode {
    rel_path: &'static str,
    major: u32,
    minor: u32,
    mode: u32,
    /// Owned by the jail's uid:gid (else root).
    jail_owned: bool,
}

/// What flint needs: KVM and TAP devices, usable only by the jail's user.
const DEVICES: &[DeviceNode] = &[
    DeviceNode {
        rel_path: "dev/kvm",
        major: 10,
        minor: 232,
        mode: 0o660,
        jail_owned: true,
    },
    DeviceNode {
        rel_path: "dev/net/tun",
        major: 10,
        minor: 200,
        mode: 0o660,
        jail_owned: true,
    },
];

/// Needed when daemonizing, to point stdio at it from inside the jail.
const DEV_NULL: DeviceNode = DeviceNode {
    rel_path: "dev/null",
    major: 1,
    minor: 3,
    mode: 0o666,
    jail_owned: false,
};

/// Creates `<chroot-base>/<exec-name>/<id>/root` with the binary and device
/// nodes in it, owned so that the jailed uid can use it.
///
/// The final `root` component is created with a non-recursive mkdir, so two
/// jailers racing for the same id cannot both succeed.
pub(crate) fn build_jail(cfg: &JailConfig) -> Result<(), JailError> {
    let root = &cfg.jail_root;
    if let Some(parent) = root.parent() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(JailError::fs("creating directory", parent))?;
    }
    match DirBuilder::new().mode(0o755).create(root) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(JailError::JailExists(root.clone()))
        }
        other => other.map_err(JailError::fs("creating jail root", root))?,
    }
    set_mode(root, 0o755)?;

    let exec_dst = root.join(&cfg.exec_name);
    fs::copy(&cfg.exec_file, &exec_dst)
        .map_err(JailError::fs("copying exec file to", &exec_dst))?;
    set_mode(&exec_dst, 0o755)?;
    copy_shared_libraries(&cfg.exec_file, root)?;

    for dir in ["dev", "dev/net"] {
        let path = root.join(dir);
        DirBuilder::new()
            .mode(0o755)
            .create(&path)
            .map_err(JailError::fs("creating directory", &path))?;
        set_mode(&path, 0o755)?;
    }
    let nodes = DEVICES.iter().chain(cfg.daemonize.then_some(&DEV_NULL));
    for node in nodes {
        make_device(root, node, cfg.uid, cfg.gid)?;
    }

    chown(root, Some(cfg.uid), Some(cfg.gid)).map_err(JailError::fs("chown of jail root", root))?;
    Ok(())
}

/// The shared libraries (and dynamic loader) a dynamically linked binary
/// needs, from `ldd`'s output: absolute paths only. A static binary has none.
pub(crate) fn parse_ldd(output: &str) -> Vec<PathBuf> {
    output
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Copies the libraries a dynamically linked exec file needs into the jail
/// at the same paths, so a glibc-linked flint runs inside it. Files, not
/// links: nothing in the jail points back at the host.
fn copy_shared_libraries(exec_file: &Path, root: &Path) -> Result<(), JailError> {
    let output = match Command::new("ldd").arg(exec_file).output() {
        Ok(out) => out,
        Err(e) => {
            log::warn!(
                "cannot run ldd ({e}); assuming {} is static",
                exec_file.display()
            );
            return Ok(());
        }
    };
    // ldd fails ("not a dynamic executable") for static binaries: nothing to copy.
    if !output.status.success() {
        return Ok(());
    }
    for lib in parse_ldd(&String::from_utf8_lossy(&output.stdout)) {
        let rel = lib.strip_prefix("/").unwrap_or(&lib);
        let dst = root.join(rel);
        if let Some(dir) = dst.parent() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(JailError::fs("creating directory", dir))?;
        }
        fs::copy(&lib, &dst).map_err(JailError::fs("copying shared library to", &dst))?;
        set_mode(&dst, 0o755)?;
    }
    Ok(())
}

/// Sets an exact mode, which `mkdir`/`mknod` alone would leave to the umask.
fn set_mode(path: &Path, mode: u32) -> Result<(), JailError> {
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(JailError::fs("chmod", path))
}

fn make_device(root: &Path, node: &DeviceNode, uid: u32, gid: u32) -> Result<(), JailError> {
    let path = root.join(node.rel_path);
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| JailError::NulInPath(path.clone()))?;
    let dev = libc::makedev(node.major, node.minor);
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::mknod(c_path.as_ptr(), libc::S_IFCHR | node.mode, dev) };
    if rc != 0 {
        return Err(JailError::Fs {
            what: "creating device node",
            path,
            source: io::Error::last_os_error(),
        });
    }
    set_mode(&path, node.mode)?;
    if node.jail_owned {
        chown(&path, Some(uid), Some(gid)).map_err(JailError::fs("chown of device node", &path))?;
    }
    Ok(())
}

#[cfg(test)]
mod ldd_tests {
    use super::*;

    #[test]
    fn ldd_output_gives_absolute_library_paths() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x7f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x7f)\n\t/lib64/ld-linux-x86-64.so.2 (0x7f)\n";
        assert_eq!(
            parse_ldd(out),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }
}
