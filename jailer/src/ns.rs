//! Namespaces: network namespace join, mount namespace + pivot_root into
//! the jail, and the optional PID namespace / daemonizing fork.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;

use crate::JailError;

/// Directory inside the jail root that briefly holds the host root.
const OLD_ROOT: &str = ".old-root";

fn c_path(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| JailError::NulInPath(path.to_owned()))
}

fn check(rc: libc::c_long, op: impl FnOnce() -> String) -> Result<(), JailError> {
    if rc == -1 {
        Err(JailError::last_os(op()))
    } else {
        Ok(())
    }
}

/// Moves the calling thread into the network namespace at `path`, so the
/// jailed process sees only that namespace's interfaces (e.g. its TAP).
pub(crate) fn join_netns(path: &Path) -> Result<(), JailError> {
    let file = File::open(path).map_err(|e| JailError::Netns {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    // SAFETY: `file` keeps the descriptor open for the duration of the call.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    check(rc.into(), || {
        format!("setns({}, CLONE_NEWNET)", path.display())
    })
}

/// Makes `root` the process's `/` in a private mount namespace, with the
/// host's tree detached so nothing outside the jail stays reachable.
pub(crate) fn pivot_into(root: &Path) -> Result<(), JailError> {
    let c_root = c_path(root)?;
    let slash = c"/";
    // SAFETY: no pointer arguments; only affects this process's namespaces.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNS) };
    check(rc.into(), || "unshare(CLONE_NEWNS)".into())?;

    // Stop our mount changes from propagating back to the host namespace.
    // SAFETY: `slash` is a valid C string; NULL source/fstype/data are allowed
    // for a propagation change.
    let rc = unsafe {
        libc::mount(
            ptr::null(),
            slash.as_ptr(),
            ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            ptr::null(),
        )
    };
    check(rc.into(), || "mount(/, MS_REC|MS_PRIVATE)".into())?;

    // pivot_root needs the new root to be a mount point.
    // SAFETY: `c_root` is a valid C string; NULL fstype/data are allowed for a bind.
    let rc = unsafe {
        libc::mount(
            c_root.as_ptr(),
            c_root.as_ptr(),
            ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            ptr::null(),
        )
    };
    check(rc.into(), || {
        format!("bind mount of {} onto itself", root.display())
    })?;

    let old_root = root.join(OLD_ROOT);
    std::fs::create_dir(&old_root).map_err(JailError::fs("creating", &old_root))?;
    let c_old_root = c_path(&old_root)?;
    // SAFETY: both arguments are valid C strings that outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, c_root.as_ptr(), c_old_root.as_ptr()) };
    check(rc, || {
        format!("pivot_root({}, {})", root.display(), old_root.display())
    })?;
    std::env::set_current_dir("/").map_err(JailError::fs("chdir", "/"))?;

    let old_in_jail = Path::new("/").join(OLD_ROOT);
    let c_old = c_path(&old_in_jail)?;
    // SAFETY: `c_old` is a valid C string.
    let rc = unsafe { libc::umount2(c_old.as_ptr(), libc::MNT_DETACH) };
    check(rc.into(), || {
        format!("umount2({}, MNT_DETACH)", old_in_jail.display())
    })?;
    std::fs::remove_dir(&old_in_jail).map_err(JailError::fs("removing", &old_in_jail))
}

/// Forks when a new PID namespace or daemonizing needs it. Returns only in
/// the process that goes on to exec; the other side exits here: at once when
/// daemonizing, else with the child's exit status (128+signal if killed).
///
/// With `new_pid_ns` the child is PID 1 of a fresh PID namespace. Must be
/// called while the process is single-threaded.
pub(crate) fn fork_if_needed(new_pid_ns: bool, daemonize: bool) -> Result<(), JailError> {
    if new_pid_ns {
        // SAFETY: no pointer arguments; affects only children forked later.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWPID) };
        check(rc.into(), || "unshare(CLONE_NEWPID)".into())?;
    }
    if !new_pid_ns && !daemonize {
        return Ok(());
    }
    // SAFETY: the caller guarantees the process is single-threaded, so the
    // child may keep running arbitrary code after fork.
    let child = unsafe { libc::fork() };
    match child {
        -1 => Err(JailError::last_os("fork")),
        0 => Ok(()),
        pid => {
            log::info!("jailed process has pid {pid}");
            if daemonize {
                std::process::exit(0);
            }
            std::process::exit(wait_exit_code(pid));
        }
    }
}

/// Waits for `pid` and maps its end to a shell-style exit code.
fn wait_exit_code(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid, writable int for the call.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            log::error!("waitpid({pid}): {}", std::io::Error::last_os_error());
            return 1;
        }
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    }
}
