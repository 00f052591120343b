//! Builds the jail's directory tree on the host.

use std::ffi::CString;
use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{chown, DirBuilderExt, PermissionsExt};
use std::path::Path;

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
