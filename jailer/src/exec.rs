//! The last steps inside the jail: detach, close inherited descriptors, drop
//! privileges and exec the jailed binary with an empty environment.

use std::convert::Infallible;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr;

use crate::JailError;

fn fail(op: impl Into<String>) -> JailError {
    JailError::last_os(op)
}

/// New session and stdio on the jail's `/dev/null`, so the jailed process
/// outlives the terminal it was started from.
pub(crate) fn daemonize() -> Result<(), JailError> {
    // SAFETY: no arguments; fails only if we already lead a process group,
    // which `ns::fork_if_needed` rules out by forking first.
    if unsafe { libc::setsid() } == -1 {
        return Err(fail("setsid"));
    }
    // SAFETY: the path is a valid C string literal.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd == -1 {
        return Err(fail("open(/dev/null) in the jail"));
    }
    for target in 0..=2 {
        // SAFETY: `fd` is an open descriptor we own; dup2 onto 0..=2 only
        // replaces the standard streams.
        if unsafe { libc::dup2(fd, target) } == -1 {
            return Err(fail(format!("dup2(/dev/null, {target})")));
        }
    }
    // SAFETY: `fd` is open, owned here and >2 (0..=2 were open when it was allocated).
    unsafe { libc::close(fd) };
    Ok(())
}

/// Closes every descriptor above stderr, so nothing the jailer inherited
/// (sockets, files of the host) leaks into the jail.
pub(crate) fn close_inherited_fds() -> Result<(), JailError> {
    // SAFETY: close_range takes plain integers; closing fds nobody in this
    // single-threaded process still uses is harmless.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc == 0 {
        return Ok(());
    }
    if io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
        return Err(fail("close_range(3, ~0)"));
    }
    // Old kernel: /proc is not mounted in the jail, so walk the fd range.
    // SAFETY: sysconf has no pointer arguments.
    let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) };
    let max = if max < 0 { 1 << 20 } else { max as libc::c_int };
    for fd in 3..max {
        // SAFETY: closing a descriptor number; EBADF for unused ones is ignored.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Drops all groups, then the gid, then the uid (in that order: after the
/// uid change we could no longer change the groups).
pub(crate) fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
    // SAFETY: a zero-length list needs no valid pointer.
    if unsafe { libc::setgroups(0, ptr::null()) } == -1 {
        return Err(fail("setgroups([])"));
    }
    // SAFETY: plain integer arguments.
    if unsafe { libc::setresgid(gid, gid, gid) } == -1 {
        return Err(fail(format!("setresgid({gid})")));
    }
    // SAFETY: plain integer arguments.
    if unsafe { libc::setresuid(uid, uid, uid) } == -1 {
        return Err(fail(format!("setresuid({uid})")));
    }
    Ok(())
}

fn c_string(s: &OsStr) -> Result<CString, JailError> {
    CString::new(s.as_bytes()).map_err(|_| JailError::NulInPath(PathBuf::from(s)))
}

/// Execs `/<exec_name>` with argv `[exec_name, args...]` and an empty
/// environment; returns only on failure.
pub(crate) fn exec(exec_name: &OsStr, args: &[OsString]) -> Result<Infallible, JailError> {
    let path = Path::new("/").join(exec_name);
    let c_path = c_string(path.as_os_str())?;
    let argv: Vec<CString> = std::iter::once(exec_name)
        .chain(args.iter().map(OsString::as_os_str))
        .map(c_string)
        .collect::<Result<_, _>>()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(ptr::null());
    let envp: [*const libc::c_char; 1] = [ptr::null()];
    // SAFETY: `c_path` is a valid C string; `argv_ptrs` and `envp` are
    // NULL-terminated arrays of valid C strings (`argv` outlives the call).
    unsafe { libc::execve(c_path.as_ptr(), argv_ptrs.as_ptr(), envp.as_ptr()) };
    Err(JailError::Exec {
        path,
        source: io::Error::last_os_error(),
    })
}
