//! What runs when things go wrong: process-wide preparation before any
//! filter (malloc arenas, signal handlers), and the async-signal-safe reports
//! of a forbidden system call (SIGSYS) or a fatal signal.

use super::*;

// ---------------------------------------------------------------------------
// Process-wide preparation.

pub(super) static PREPARE_MALLOC: Once = Once::new();

/// glibc's malloc gives each thread that allocates its own arena (up to 8
/// per CPU), each with its own resident pages (smaps: 20-30 KiB per thread
/// for the API, control and vCPU threads), and decides how many it may
/// create by reading `/sys/devices/system/cpu/online`: on a thread spawned
/// under a filter (the API's blocking pool under load) that `openat` would
/// trap. One arena, set while files can still be opened, keeps that read
/// out of the filters and the VMM's threads (which allocate little and
/// rarely at once) on the main heap, as Firecracker's musl malloc does.
pub(super) fn fix_malloc_arena_limit() {
    // SAFETY: mallopt has no memory-safety preconditions.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

// ---------------------------------------------------------------------------
// The SIGSYS reporter.

pub(super) static SIGSYS_HANDLER: Once = Once::new();

pub(super) fn install_sigsys_handler() -> std::io::Result<()> {
    let mut result = Ok(());
    SIGSYS_HANDLER.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; the fields set below make it a
        // SA_SIGINFO handler with the right signature.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigsys as *const () as usize;
        // SA_RESETHAND: the handler runs once, with SIGSYS back at its
        // default action (terminate + core) on entry; SA_NODEFER: SIGSYS is
        // not blocked inside it. So the tgkill at its end (or any forbidden
        // call it might make) kills the process by SIGSYS at once, without
        // needing rt_sigaction in any allow-list.
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND | libc::SA_NODEFER;
        // SAFETY: sa_mask is a valid sigset_t owned by `action`.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: `action` is fully initialized; the old action is not needed.
        if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } != 0 {
            result = Err(std::io::Error::last_os_error());
        }
    });
    result?;
    // A seccomp trap is delivered even when SIGSYS is blocked, but then
    // without the report: make sure this thread has it unblocked.
    // SAFETY: `set` is a valid, initialized sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGSYS);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The crash reporter.

/// The signals a crash raises, with their names for the report.
pub(super) const FATAL_SIGNALS: [(libc::c_int, &str); 5] = [
    (libc::SIGSEGV, "SIGSEGV"),
    (libc::SIGBUS, "SIGBUS"),
    (libc::SIGILL, "SIGILL"),
    (libc::SIGFPE, "SIGFPE"),
    (libc::SIGABRT, "SIGABRT"),
];

pub(super) static FATAL_HANDLERS: Once = Once::new();

pub(super) fn install_fatal_handlers() -> std::io::Result<()> {
    let mut result = Ok(());
    FATAL_HANDLERS.call_once(|| {
        for (signal, _) in FATAL_SIGNALS {
            // SAFETY: a zeroed sigaction is valid; the fields set below make
            // it a SA_SIGINFO handler with the right signature.
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            action.sa_sigaction = on_fatal_signal as *const () as usize;
            // As for SIGSYS: the handler runs once, with the default action
            // back in place and the signal unblocked, so re-raising it ends
            // the process without rt_sigaction. SA_ONSTACK: a stack overflow
            // is reported from std's alternate signal stack.
            action.sa_flags =
                libc::SA_SIGINFO | libc::SA_RESETHAND | libc::SA_NODEFER | libc::SA_ONSTACK;
            // SAFETY: sa_mask is a valid sigset_t owned by `action`.
            unsafe { libc::sigemptyset(&mut action.sa_mask) };
            // SAFETY: `action` is fully initialized; the old action is not needed.
            if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
                result = Err(std::io::Error::last_os_error());
                return;
            }
        }
    });
    result
}

extern "C" fn on_fatal_signal(signal: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe work, as in on_sigsys.
    let mut thread = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes (NUL included) into `thread`.
    unsafe { libc::prctl(libc::PR_GET_NAME, thread.as_mut_ptr()) };
    let mut line = [0u8; REPORT_MAX];
    let len = format_crash_report(&thread, signal, &mut line);
    write_all(libc::STDERR_FILENO, &line[..len]);
    // SAFETY: raw syscalls with valid arguments; the signal is at its
    // default action and unblocked here (SA_RESETHAND | SA_NODEFER), so
    // tgkill terminates the process with it.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid);
        libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, signal);
        // Not reached unless the signal was somehow ignored.
        libc::_exit(128 + signal);
    }
}

/// Writes the crash report line for thread `name` and `signal` into `out`,
/// returning its length. No allocation.
pub(super) fn format_crash_report(name: &[u8], signal: libc::c_int, out: &mut [u8]) -> usize {
    let name_len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let name = match &name[..name_len] {
        [] => b"?".as_slice(),
        n => n,
    };
    let signal_name = FATAL_SIGNALS
        .iter()
        .find(|(s, _)| *s == signal)
        .map_or("unknown", |(_, n)| n);
    let mut line = Line { buf: out, len: 0 };
    line.push(b"flint: thread ");
    line.push(name);
    line.push(b" got fatal signal ");
    line.push_number(i64::from(signal));
    line.push(b" (");
    line.push(signal_name.as_bytes());
    line.push(b"); killing the process\n");
    line.len
}

/// `si_syscall` in the `_sigsys` member of `siginfo_t`: after si_signo,
/// si_errno, si_code (+ padding to 16 bytes) and `void *_call_addr`.
pub(super) const SI_SYSCALL_OFFSET: usize = 24;
/// `si_code` of a seccomp trap.
pub(super) const SYS_SECCOMP: i32 = 1;

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe work here: no allocation, no locks, raw
    // syscalls that every allow-list permits (prctl(PR_GET_NAME), write,
    // getpid, gettid, tgkill(SIGSYS), exit_group).
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo_t; for a seccomp trap
        // (si_code SYS_SECCOMP) the _sigsys member is the live one, and the
        // offset is within the 128-byte siginfo_t.
        unsafe {
            if (*info).si_code == SYS_SECCOMP {
                i64::from(
                    info.cast::<u8>()
                        .add(SI_SYSCALL_OFFSET)
                        .cast::<i32>()
                        .read(),
                )
            } else {
                -1
            }
        }
    };
    let mut thread = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes (NUL included) into `thread`.
    unsafe { libc::prctl(libc::PR_GET_NAME, thread.as_mut_ptr()) };
    let mut line = [0u8; REPORT_MAX];
    let len = format_report(&thread, nr, &mut line);
    write_all(libc::STDERR_FILENO, &line[..len]);
    // SAFETY: raw syscalls with valid arguments; SIGSYS is at its default
    // action and unblocked here (SA_RESETHAND | SA_NODEFER), so tgkill
    // terminates the process.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid);
        libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGSYS);
        // Not reached unless SIGSYS was somehow ignored.
        libc::_exit(128 + libc::SIGSYS);
    }
}

pub(super) fn write_all(fd: libc::c_int, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a valid buffer of its length.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n > 0 {
            bytes = &bytes[n as usize..];
        } else if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        } else {
            return;
        }
    }
}

/// Longest report line: the fixed text, a 15-byte thread name, a number
/// and the longest syscall name fit well within it.
pub(super) const REPORT_MAX: usize = 160;

/// A fixed-capacity byte buffer that silently truncates.
pub(super) struct Line<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Line<'_> {
    fn push(&mut self, bytes: &[u8]) {
        let room = self.buf.len() - self.len;
        let n = bytes.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_number(&mut self, value: i64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = value.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if value < 0 {
            self.push(b"-");
        }
        self.push(&digits[i..]);
    }
}

/// Writes the report line for thread `name` (NUL-terminated or full) and
/// system call `nr` into `out`, returning its length. No allocation.
pub(super) fn format_report(name: &[u8], nr: i64, out: &mut [u8]) -> usize {
    let name_len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let name = match &name[..name_len] {
        [] => b"?".as_slice(),
        n => n,
    };
    let mut line = Line { buf: out, len: 0 };
    line.push(b"flint: seccomp: thread ");
    line.push(name);
    line.push(b" made forbidden system call ");
    line.push_number(nr);
    line.push(b" (");
    line.push(syscall_name(nr).unwrap_or("unknown").as_bytes());
    line.push(b"); killing the process\n");
    line.len
}
