//! Per-thread seccomp filters: each kind of flint thread gets an allow-list
//! of the system calls it makes once it runs, and anything else traps.
//!
//! | kind | thread | installed |
//! |---|---|---|
//! | [`ThreadKind::Vmm`] | the main thread's event loop | after the VM is built |
//! | [`ThreadKind::Vcpu`] | `flint_vcpuN` | at the top of the thread, before the first `KVM_RUN` |
//! | [`ThreadKind::Api`] | `flint_api` (and the `flint_api_wait` blocking-pool threads it spawns, which inherit it) | at the top of the thread, before the runtime starts |
//! | [`ThreadKind::Output`] | `flint_serial`, `flint_log_out`, `flint_metrics` ([`crate::bounded_writer`]) | at the top of the thread, unless it inherited the VMM's filter (spawned after boot) |
//! | [`ThreadKind::Watchdog`] | `flint_vhost_wd` (one per virtio-fs device, `devices::virtio::fs`) | at the top of the thread, unless it inherited the VMM's filter |
//! | [`ThreadKind::Control`] | `flint_ctl`: snapshot files and migration streams | at the top of the thread |
//! | [`ThreadKind::VsockConnect`] | `flint_vsockconn`: vsock's guest-initiated connects to host Unix sockets | at the top of the thread ([`confine_device_helpers`]) |
//!
//! Only the control and vsock-connect threads may call `connect(2)`; the
//! device thread (`Vmm`) may not, so a guest that takes it over cannot
//! reach host sockets other than `<uds_path>_<port>` through the helper.
//!
//! Whether filters are wanted at all (`--no-seccomp`) is recorded once with
//! [`set_enabled`], for threads started deep inside flint (the writer threads)
//! that have no other way to know.
//!
//! System calls made before a thread installs its filter (opening KVM,
//! mapping guest memory, creating vCPUs and threads) need not be allowed.
//! A filter applies to the calling thread only (no TSYNC) and to every
//! thread it spawns afterwards; filters of one thread stack.
//!
//! `open`/`openat` on the Vmm, Api, Vcpu, Output and VsockConnect threads
//! fail with `EACCES` rather
//! than trap (glibc's malloc probes a `/proc` file lazily and copes), and
//! `clone3` on the Api and Vmm threads fails with `ENOSYS` (glibc falls back to
//! `clone`, whose flags the filter checks).
//!
//! A forbidden call raises `SIGSYS`. The handler writes one line to stderr,
//! `flint: seccomp: thread flint_vcpu0 made forbidden system call 41 (socket); killing the process`,
//! and the process then dies of `SIGSYS`.
//!
//! A crash under a filter is reported as what it is: before the first
//! filter, [`install`] replaces the handlers of SIGSEGV, SIGBUS, SIGILL,
//! SIGFPE and SIGABRT (std's stack-overflow handler would otherwise call
//! `rt_sigaction` on a fault and be killed for that, hiding the real
//! signal). The handler writes
//! `flint: thread flint_vcpu0 got fatal signal 11 (SIGSEGV); killing the process`
//! and re-raises the signal at its default action; the filters allow the
//! `tgkill` of these signals to the own process, and nothing else is needed
//! (`write`, `gettid`, `getpid`, `prctl(PR_GET_NAME)` are in every list).
//!
//! The lists were taken from `strace -f` of real runs (boot to exit, the
//! API with pause/resume/logger/metrics, drives with rate limiters, a tap
//! with ping and TCP, console input, SIGINT/SIGTERM) and widened where a
//! call is cheap and plausible (e.g. snapshot ioctls, vDSO fallbacks).
//! Arguments are checked where that is cheap and cannot break flint:
//! `ioctl` requests ([`ioctls`]), `socket` families, `tgkill` targets and
//! signals, `mmap`/`mprotect` without `PROT_EXEC`, `prctl` options.

mod ioctls;
mod names;
mod report;

use report::*;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

pub use names::syscall_name;

/// Which of flint's threads a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread once the VM is built: the event loop (devices,
    /// block and network I/O, API requests, metrics, logs; snapshot and
    /// migration I/O is the control thread's).
    Vmm,
    /// The API server thread (tokio current-thread runtime + hyper) and its
    /// blocking-pool threads.
    Api,
    /// A vCPU thread: `KVM_RUN` and the exits it handles.
    Vcpu,
    /// A writer thread draining console, log or metrics output into a host
    /// file: writes, waits, nothing else.
    Output,
    /// The control thread: writes snapshot files and streams migrations
    /// (files, sockets, no KVM).
    Control,
    /// A virtio-fs connection's watchdog: waits, and shuts a hung
    /// vhost-user socket down.
    Watchdog,
    /// vsock's connector thread: non-blocking Unix `socket` + `connect`
    /// to `<uds_path>_<port>` for the guest, results over a channel and an
    /// eventfd (`devices::virtio::vsock::set_connector_confinement`).
    VsockConnect,
}

static ENABLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static CONFINED: Cell<bool> = const { Cell::new(false) };
}

/// Records whether flint runs its threads under filters (set once at the
/// start of a run; false, the default, in tests and `--no-seccomp`).
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether flint runs its threads under filters.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Registers the confinement of helper threads the device models start
/// themselves (vsock's connector): when filters are enabled, each installs
/// [`ThreadKind::VsockConnect`] before its first `connect`. Called once at
/// the start of a run, before any device exists.
pub fn confine_device_helpers() {
    devices::virtio::vsock::set_connector_confinement(|| {
        if !enabled() {
            return Ok(());
        }
        install(ThreadKind::VsockConnect).map_err(|e| e.to_string())
    });
}

/// Whether the calling thread installed a filter with [`install`] (threads
/// it spawns afterwards inherit that filter, and may not install another:
/// their filter forbids `seccomp(2)`).
pub fn thread_confined() -> bool {
    CONFINED.with(Cell::get)
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the rules (a bug in this module).
    #[error("building the {kind:?} seccomp filter: {source}")]
    Build {
        /// The filter's kind.
        kind: ThreadKind,
        /// seccompiler's error.
        source: seccompiler::BackendError,
    },
    /// The SIGSYS handler could not be installed.
    #[error("installing the SIGSYS handler: {0}")]
    Handler(std::io::Error),
    /// `prctl(PR_SET_NO_NEW_PRIVS)` or `seccomp(2)` failed.
    #[error("installing the {kind:?} seccomp filter: {source}")]
    Apply {
        /// The filter's kind.
        kind: ThreadKind,
        /// seccompiler's error.
        source: seccompiler::Error,
    },
}

/// The BPF program for `kind`: its allow-list, `SIGSYS` (trap) for
/// everything else, except a few calls that fail with an error instead
/// (`clone3`, and `open`/`openat` where no files are opened; see
/// `errno_rules`).
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build { kind, source };
    let filter = SeccompFilter::new(
        rules(kind).map_err(build)?.into_map(),
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(build)?;
    let program = BpfProgram::try_from(filter).map_err(build)?;
    Ok([errno_prefix(errno_rules(kind)), program].concat())
}

/// Installs the process-wide SIGSYS reporter (once) and applies `kind`'s
/// filter to the calling thread (after `PR_SET_NO_NEW_PRIVS`). Threads the
/// caller spawns afterwards inherit the filter.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    let program = filter(kind)?;
    PREPARE_MALLOC.call_once(fix_malloc_arena_limit);
    install_sigsys_handler().map_err(SeccompError::Handler)?;
    install_fatal_handlers().map_err(SeccompError::Handler)?;
    seccompiler::apply_filter(&program).map_err(|source| SeccompError::Apply { kind, source })?;
    CONFINED.with(|c| c.set(true));
    Ok(())
}

// ---------------------------------------------------------------------------
// The allow-lists.

fn rules(kind: ThreadKind) -> Result<Rules, seccompiler::BackendError> {
    let mut rules = Rules::default();
    common(&mut rules)?;
    match kind {
        ThreadKind::Vmm => vmm(&mut rules),
        ThreadKind::Api => api(&mut rules),
        ThreadKind::Vcpu => vcpu(&mut rules),
        ThreadKind::Output => output(&mut rules),
        ThreadKind::Control => control(&mut rules),
        ThreadKind::Watchdog => watchdog(&mut rules),
        ThreadKind::VsockConnect => vsock_connect(&mut rules),
    }?;
    Ok(rules)
}

/// One allow-list under construction: a syscall is allowed outright, or
/// when any of its rules matches.
#[derive(Default)]
struct Rules(BTreeMap<i64, Option<Vec<SeccompRule>>>);

type BuildResult = Result<(), seccompiler::BackendError>;

impl Rules {
    /// Allows these system calls with any arguments.
    fn allow(&mut self, syscalls: &[i64]) {
        for &nr in syscalls {
            self.0.insert(nr, None);
        }
    }

    /// Allows `nr` when all of `conditions` hold (or-ed with its other rules).
    fn allow_if(&mut self, nr: i64, conditions: Vec<SeccompCondition>) -> BuildResult {
        let rule = SeccompRule::new(conditions)?;
        match self.0.entry(nr).or_insert_with(|| Some(Vec::new())) {
            // Already allowed outright: nothing to narrow.
            None => {}
            Some(rules) => rules.push(rule),
        }
        Ok(())
    }

    /// Allows `nr` when argument `arg` is one of `values` (low 32 bits).
    fn allow_arg_in(&mut self, nr: i64, arg: u8, values: &[u64]) -> BuildResult {
        for &value in values {
            self.allow_if(nr, vec![eq(arg, value)?])?;
        }
        Ok(())
    }

    fn into_map(self) -> BTreeMap<i64, Vec<SeccompRule>> {
        self.0
            .into_iter()
            .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
            .collect()
    }
}

/// Argument `arg`'s low 32 bits equal `value` (ints, enums, flags: the
/// kernel reads them as 32-bit, and callers may sign-extend).
fn eq(arg: u8, value: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
}

/// Argument `arg` has none of the bits of `mask` set.
fn none_of(arg: u8, mask: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask),
        0,
    )
}

fn to_u64(values: &[u32]) -> Vec<u64> {
    values.iter().map(|&v| u64::from(v)).collect()
}

fn pid() -> u64 {
    // SAFETY: getpid has no preconditions.
    u64::from(unsafe { libc::getpid() }.unsigned_abs())
}

/// What every flint thread does, whatever its job.
fn common(r: &mut Rules) -> BuildResult {
    use libc::*;
    // Memory: malloc (brk, arenas grown with mprotect, large blocks with
    // mmap/mremap/munmap, trimming with madvise) and thread stacks freed at
    // thread exit. Never executable memory.
    r.allow(&[SYS_brk, SYS_munmap, SYS_mremap, SYS_madvise]);
    r.allow_if(SYS_mmap, vec![none_of(2, PROT_EXEC as u64)?])?;
    r.allow_if(SYS_mprotect, vec![none_of(2, PROT_EXEC as u64)?])?;
    // Mutexes, condvars and mpsc channels (futex); spin-wait back-off.
    r.allow(&[SYS_futex, SYS_sched_yield]);
    // Clocks and sleeps (clock_gettime/gettimeofday are normally vDSO calls,
    // but fall back to the syscall when the host clocksource has no vDSO
    // support, as on hosts where KVM is nested or emulated).
    r.allow(&[
        SYS_clock_gettime,
        SYS_gettimeofday,
        SYS_clock_getres,
        SYS_clock_nanosleep,
        SYS_nanosleep,
    ]);
    // Signals: returning from handlers (the vCPU kick, signal-hook's
    // SIGINT/SIGTERM handler, which runs on whichever thread the kernel
    // picks), restarting interrupted sleeps, masking around pthread_kill and
    // thread exit, and std's alternate signal stack torn down at thread exit.
    r.allow(&[
        SYS_rt_sigreturn,
        SYS_restart_syscall,
        SYS_rt_sigprocmask,
        SYS_sigaltstack,
    ]);
    // signal-hook's self-pipe write from the SIGINT/SIGTERM handler:
    // send(fd, "X", 1, MSG_DONTWAIT) on a Unix socket, from any thread.
    let no_address = SeccompCondition::new(4, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, 0)?;
    r.allow_if(SYS_sendto, vec![eq(3, MSG_DONTWAIT as u64)?, no_address])?;
    // Thread and process end; dropping file descriptors.
    r.allow(&[SYS_exit, SYS_exit_group, SYS_close]);
    // Identity (pthread_kill, logging) and std's per-thread HashMap keys;
    // glibc's malloc sizes its arenas with sched_getaffinity.
    r.allow(&[SYS_getpid, SYS_gettid, SYS_getrandom, SYS_sched_getaffinity]);
    // The SIGSYS and crash reports: the thread's name, then the signal to
    // itself (abort() raises SIGABRT the same way).
    r.allow_if(SYS_prctl, vec![eq(0, PR_GET_NAME as u64)?])?;
    r.allow_if(SYS_tgkill, vec![eq(0, pid())?, eq(2, SIGSYS as u64)?])?;
    for signal in FATAL_SIGNALS {
        r.allow_if(SYS_tgkill, vec![eq(0, pid())?, eq(2, signal.0 as u64)?])?;
    }
    // Log lines (stderr or the log file), console output, eventfd kicks.
    r.allow(&[SYS_write, SYS_writev]);
    Ok(())
}

/// An epoll loop woken by eventfds (the API's reactor, the VMM's event
/// manager).
const EVENT_LOOP: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_create1,
    libc::SYS_eventfd2,
];

/// A vCPU thread: `KVM_RUN` and the exits it handles (PIO/MMIO into device
/// code: serial output to stdout, virtio register accesses that kick
/// eventfds and activate devices, the i8042 and exit-status ports).
fn vcpu(r: &mut Rules) -> BuildResult {
    use libc::*;
    r.allow_arg_in(SYS_ioctl, 1, &to_u64(ioctls::VCPU))?;
    // std's debug-build check that an fd is open before closing it.
    r.allow_if(SYS_fcntl, vec![eq(1, F_GETFD as u64)?])?;
    // A virtio device is activated and reset on the vCPU thread whose
    // status-register write asked for it: the balloon (re)arms or disarms
    // its statistics timer there, and a vsock reset closes its host
    // connections, taking their sockets (and re-adding its listener) off
    // the device's own epoll set.
    r.allow(&[SYS_timerfd_settime, SYS_epoll_ctl]);
    // A virtio-fs activation or reset talks vhost-user to its daemon on
    // this thread: requests with their fds (SCM_RIGHTS: guest memory's
    // memfd, the kick and call eventfds) go out with sendmsg(MSG_NOSIGNAL),
    // replies come back with recvmsg(flags 0).
    r.allow_if(SYS_sendmsg, vec![eq(2, MSG_NOSIGNAL as u64)?])?;
    r.allow_if(SYS_recvmsg, vec![eq(2, 0)?])?;
    Ok(())
}

/// A writer thread: writes, futex waits and sleeps on a full non-blocking
/// file are in `common`; closing a replaced file adds std's debug-build
/// check that the fd is open.
fn output(r: &mut Rules) -> BuildResult {
    r.allow_if(libc::SYS_fcntl, vec![eq(1, libc::F_GETFD as u64)?])
}

/// A virtio-fs watchdog thread (`devices::virtio::fs`): condvar waits and
/// clocks are in `common`; past a deadline it shuts the vhost-user socket
/// down.
fn watchdog(r: &mut Rules) -> BuildResult {
    r.allow(&[libc::SYS_shutdown]);
    Ok(())
}

/// The API thread: a tokio current-thread runtime serving HTTP/1.1 (hyper)
/// on the already-bound Unix socket, handing requests to the VMM through a
/// channel and an eventfd, waiting for answers on blocking-pool threads.
fn api(r: &mut Rules) -> BuildResult {
    use libc::*;
    r.allow_arg_in(SYS_ioctl, 1, &to_u64(ioctls::API))?;
    // The reactor (epoll; its waker is an eventfd). Creating them is allowed
    // too, should the runtime ever be built on this thread.
    r.allow(EVENT_LOOP);
    // Connections: accept, read requests, write answers, close.
    r.allow(&[
        SYS_accept4,
        SYS_accept,
        SYS_read,
        SYS_readv,
        SYS_recvfrom,
        SYS_recvmsg,
        SYS_sendto,
        SYS_sendmsg,
        SYS_shutdown,
        SYS_getsockopt,
        SYS_getsockname,
        SYS_getpeername,
        SYS_fcntl,
        SYS_poll,
        SYS_ppoll,
    ]);
    // spawn_blocking threads (flint_api_wait).
    threads(r)
}

/// Spawning threads: glibc's pthread_create, with clone3 answered ENOSYS up
/// front (see errno_rules) so that glibc falls back to clone, whose flags
/// can be checked: threads only, no processes. New threads name themselves.
fn threads(r: &mut Rules) -> BuildResult {
    use libc::*;
    r.allow_if(
        SYS_clone,
        vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq((CLONE_THREAD | CLONE_VM) as u64),
            (CLONE_THREAD | CLONE_VM) as u64,
        )?],
    )?;
    r.allow(&[SYS_set_robust_list, SYS_rseq]);
    r.allow_if(SYS_prctl, vec![eq(0, PR_SET_NAME as u64)?])?;
    Ok(())
}

/// The VMM thread's event loop after boot: devices (virtio-blk image I/O,
/// virtio-net tap I/O, rate-limiter timers), console input, the API's
/// requests (logger and metrics files, pause/resume kicks, collecting
/// snapshot and migration state for the control thread), and the end of the run (joining threads, removing the
/// API socket, restoring the terminal).
fn vmm(r: &mut Rules) -> BuildResult {
    use libc::*;
    r.allow_arg_in(SYS_ioctl, 1, &to_u64(ioctls::VMM))?;
    // The event loop and its sources.
    r.allow(EVENT_LOOP);
    r.allow(&[
        SYS_timerfd_create,
        SYS_timerfd_settime,
        SYS_timerfd_gettime,
        SYS_poll,
        SYS_ppoll,
        SYS_pipe2,
    ]);
    // Reading and writing fds: eventfds, timerfds, the tap, stdin, the
    // signal self-pipes, block images, snapshot/log/metrics files.
    r.allow(&[
        SYS_read,
        SYS_readv,
        SYS_pread64,
        SYS_preadv,
        SYS_preadv2,
        SYS_pwrite64,
        SYS_pwritev,
        SYS_pwritev2,
        SYS_lseek,
        SYS_fsync,
        SYS_msync,
        SYS_fdatasync,
        SYS_fallocate,
        SYS_ftruncate,
        SYS_flock,
        SYS_fcntl,
    ]);
    // Files: stat, the API socket removed at exit. No `open`/`openat`
    // (see errno_rules): logger/metrics files and drive images named
    // through the API are opened by the control thread and handed over;
    // snapshot files are the control thread's too (no renames or
    // directories here).
    r.allow(&[
        SYS_fstat,
        SYS_newfstatat,
        SYS_statx,
        SYS_lstat,
        SYS_stat,
        SYS_unlinkat,
        SYS_unlink,
    ]);
    // Sockets: the signal self-pipes and vsock's host side (Unix only; the
    // migration's TCP and Unix streams are the control thread's). No
    // `connect`: vsock's connects for the guest are made by its connector
    // thread (ThreadKind::VsockConnect).
    r.allow_if(SYS_socket, vec![eq(0, AF_UNIX as u64)?])?;
    r.allow_if(SYS_socketpair, vec![eq(0, AF_UNIX as u64)?])?;
    r.allow(&[
        SYS_bind,
        SYS_listen,
        SYS_accept4,
        SYS_accept,
        SYS_sendto,
        SYS_sendmsg,
        SYS_recvfrom,
        SYS_recvmsg,
        SYS_shutdown,
        SYS_getsockopt,
        SYS_getsockname,
        SYS_getpeername,
    ]);
    // Kicking vCPU threads out of KVM_RUN (pause, stop): this process only.
    r.allow_if(SYS_tgkill, vec![eq(0, pid())?, eq(2, SIGRTMIN() as u64)?])?;
    // The drain threads of a log or metrics FIFO set through the API after
    // boot, or of the console of a VM built then (crate::bounded_writer).
    threads(r)
}

/// The control thread: snapshot files (create, write, sync, rename into
/// place, directories) and migration streams (Unix and TCP: connect, send,
/// receive with timeouts), nonces from getrandom (in `common`).
fn control(r: &mut Rules) -> BuildResult {
    use libc::*;
    r.allow(&[
        SYS_read,
        SYS_readv,
        SYS_pread64,
        SYS_pwrite64,
        SYS_pwritev,
        SYS_lseek,
        SYS_fsync,
        SYS_fdatasync,
        SYS_fallocate,
        SYS_ftruncate,
        SYS_fcntl,
        SYS_openat,
        SYS_open,
        SYS_fstat,
        SYS_newfstatat,
        SYS_statx,
        SYS_lstat,
        SYS_stat,
        SYS_renameat,
        SYS_renameat2,
        SYS_rename,
        SYS_unlinkat,
        SYS_unlink,
        SYS_mkdirat,
        SYS_mkdir,
        SYS_getdents64,
        SYS_poll,
        SYS_ppoll,
    ]);
    for family in [AF_UNIX, AF_INET, AF_INET6] {
        r.allow_if(SYS_socket, vec![eq(0, family as u64)?])?;
    }
    r.allow(&[
        SYS_connect,
        SYS_sendto,
        SYS_sendmsg,
        SYS_recvfrom,
        SYS_recvmsg,
        SYS_shutdown,
        SYS_setsockopt,
        SYS_getsockopt,
        SYS_getsockname,
        SYS_getpeername,
    ]);
    Ok(())
}

/// vsock's connector thread: a non-blocking Unix stream socket
/// (`socket` + `fcntl` O_NONBLOCK), `connect`, then the result over a
/// channel (futex) and an eventfd `write` (in `common`).
fn vsock_connect(r: &mut Rules) -> BuildResult {
    use libc::*;
    r.allow_if(SYS_socket, vec![eq(0, AF_UNIX as u64)?])?;
    r.allow(&[SYS_connect]);
    for cmd in [F_GETFL, F_SETFL, F_GETFD, F_SETFD] {
        r.allow_if(SYS_fcntl, vec![eq(1, cmd as u64)?])?;
    }
    Ok(())
}

/// System calls that fail with an error instead of trapping, checked
/// before the allow-list:
///
/// * `clone3` (Api, Vmm): `ENOSYS`, so glibc's pthread_create falls back to
///   `clone`, whose flags (unlike clone3's, behind a pointer) the
///   allow-list can check.
/// * `open`/`openat` (Vmm, Api, Vcpu, Output, VsockConnect): `EACCES`. These threads open no files
///   (the VMM thread has the control thread open what API requests name),
///   but glibc's malloc reads `/proc/sys/vm/overcommit_memory` the first
///   time it trims a thread's heap (at thread exit, say) and handles a
///   failed open; trapping there would kill a healthy flint.
fn errno_rules(kind: ThreadKind) -> &'static [(i64, i32)] {
    const NO_FILES: [(i64, i32); 2] = [
        (libc::SYS_openat, libc::EACCES),
        (libc::SYS_open, libc::EACCES),
    ];
    match kind {
        ThreadKind::Api => &[(libc::SYS_clone3, libc::ENOSYS), NO_FILES[0], NO_FILES[1]],
        ThreadKind::Vcpu | ThreadKind::Output | ThreadKind::Watchdog | ThreadKind::VsockConnect => {
            &NO_FILES
        }
        ThreadKind::Vmm => &[(libc::SYS_clone3, libc::ENOSYS), NO_FILES[0], NO_FILES[1]],
        ThreadKind::Control => &[],
    }
}

/// BPF returning `SECCOMP_RET_ERRNO` for each of `rules`, falling through
/// to what follows (the allow-list) for everything else.
fn errno_prefix(rules: &[(i64, i32)]) -> BpfProgram {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    const SECCOMP_DATA_NR: u32 = 0;
    const SECCOMP_DATA_ARCH: u32 = 4;
    if rules.is_empty() {
        return Vec::new();
    }
    let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    let mut program = vec![
        insn(LD_W_ABS, 0, 0, SECCOMP_DATA_ARCH),
        // Another ABI: straight on to the allow-list (which kills it).
        insn(JEQ_K, 0, (2 * rules.len() + 1) as u8, AUDIT_ARCH_X86_64),
        insn(LD_W_ABS, 0, 0, SECCOMP_DATA_NR),
    ];
    for &(nr, errno) in rules {
        program.push(insn(JEQ_K, 0, 1, nr as u32));
        program.push(insn(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | errno as u32));
    }
    program
}

#[cfg(test)]
mod tests;
