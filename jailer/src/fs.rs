//! Builds the jail's directory tree on the host.

use std::ffi::{CString, OsStr};
use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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

/// Creates `<chroot-base>/<exec-name>/<id>/root` with the binary, the
/// shared libraries it needs and device nodes in it, owned so that the
/// jailed uid can use it.
///
/// The directories below the chroot base are made and opened one at a time
/// without following symlinks (see [`create_jail_dirs`]), so a planted
/// symlink cannot redirect the jail. The final `root` component is created
/// with a non-recursive mkdir, so two jailers racing for the same id cannot
/// both succeed.
pub(crate) fn build_jail(cfg: &JailConfig) -> Result<(), JailError> {
    let root = &cfg.jail_root;
    let id = std::ffi::OsStr::new(&cfg.id);
    create_jail_dirs(&cfg.chroot_base, &[&cfg.exec_name, id], root)?;
    // From here on the root is ours: a failure removes it again, so it does
    // not block a retry with this id.
    fill_jail(cfg).inspect_err(|_| {
        if let Err(rm) = fs::remove_dir_all(root) {
            log::warn!("removing {}: {rm}", root.display());
        }
    })
}

/// Puts the binary, its libraries and the device nodes into the new root.
fn fill_jail(cfg: &JailConfig) -> Result<(), JailError> {
    let root = &cfg.jail_root;
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

fn unsafe_path(path: &Path, reason: impl Into<String>) -> JailError {
    JailError::UnsafePath {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn c_name(name: &OsStr, path: &Path) -> Result<CString, JailError> {
    CString::new(name.as_bytes()).map_err(|_| JailError::NulInPath(path.to_owned()))
}

/// `fstat` of an open descriptor.
fn fstat(fd: &OwnedFd, path: &Path) -> Result<libc::stat, JailError> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fd` is open and `st` is valid for writes of one `stat`.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(JailError::fs("fstat", path)(io::Error::last_os_error()));
    }
    // SAFETY: fstat succeeded, so it filled in `st`.
    Ok(unsafe { st.assume_init() })
}

/// Opens directory `name` under `parent` without following a symlink there.
fn open_dir_nofollow(parent: &OwnedFd, name: &CString, path: &Path) -> Result<OwnedFd, JailError> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `parent` is an open directory and `name` a valid C string.
    let fd = unsafe { libc::openat(parent.as_raw_fd(), name.as_ptr(), flags) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ELOOP) => unsafe_path(path, "is a symbolic link"),
            Some(libc::ENOTDIR) => unsafe_path(path, "is not a directory (or is a symbolic link)"),
            _ => JailError::fs("opening directory", path)(e),
        });
    }
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates (or, for all but the last, reuses) each directory of
/// `<base>/<components...>/root`, walking with `openat(O_NOFOLLOW)` from the
/// base so no component can be a symlink. A reused directory must be owned
/// by root and not writable by group or others, so nobody else can swap it
/// for a symlink later; the base itself must not be writable by others
/// unless it is sticky (like /tmp).
fn create_jail_dirs(base: &Path, components: &[&OsStr], root: &Path) -> Result<(), JailError> {
    let c_base = c_name(base.as_os_str(), base)?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: `c_base` is a valid C string.
    let fd = unsafe { libc::open(c_base.as_ptr(), flags) };
    if fd < 0 {
        return Err(JailError::fs("opening chroot base", base)(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    let mut dir = unsafe { OwnedFd::from_raw_fd(fd) };
    let st = fstat(&dir, base)?;
    if st.st_mode & 0o022 != 0 && st.st_mode & libc::S_ISVTX == 0 {
        return Err(unsafe_path(
            base,
            "chroot base is writable by group or others and not sticky",
        ));
    }
    let mut path = base.to_owned();
    for name in components {
        path.push(name);
        let c = c_name(name, &path)?;
        // SAFETY: `dir` is an open directory and `c` a valid C string.
        let created = unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o755) } == 0;
        if !created && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
            return Err(JailError::fs("creating directory", &path)(
                io::Error::last_os_error(),
            ));
        }
        let next = open_dir_nofollow(&dir, &c, &path)?;
        if created {
            // SAFETY: `next` is an open descriptor; plain mode argument.
            unsafe { libc::fchmod(next.as_raw_fd(), 0o755) };
        }
        let st = fstat(&next, &path)?;
        if st.st_uid != 0 || st.st_mode & 0o022 != 0 {
            return Err(unsafe_path(
                &path,
                format!(
                    "existing directory is owned by uid {} with mode {:o}; it must be owned \
                     by root and not writable by group or others",
                    st.st_uid,
                    st.st_mode & 0o7777
                ),
            ));
        }
        dir = next;
    }
    let c = c_name(OsStr::new("root"), root)?;
    // SAFETY: `dir` is an open directory and `c` a valid C string.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o755) } != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.kind() == io::ErrorKind::AlreadyExists {
            JailError::JailExists(root.to_owned())
        } else {
            JailError::fs("creating jail root", root)(e)
        });
    }
    open_dir_nofollow(&dir, &c, root).map(drop)
}

/// Copies the loader and libraries a dynamically linked exec file needs
/// (found by [`crate::elf::shared_libraries`], never by running `ldd`) into
/// the jail at the same paths, so a glibc-linked flint runs inside it.
/// Files, not links: nothing in the jail points back at the host.
fn copy_shared_libraries(exec_file: &Path, root: &Path) -> Result<(), JailError> {
    for lib in crate::elf::shared_libraries(exec_file)? {
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
