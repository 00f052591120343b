//! The filters and reports, checked without installing anything.

use super::*;

#[test]
fn every_filter_compiles() {
    for kind in [
        ThreadKind::Vmm,
        ThreadKind::Api,
        ThreadKind::Vcpu,
        ThreadKind::Output,
        ThreadKind::Control,
        ThreadKind::Watchdog,
        ThreadKind::VsockConnect,
    ] {
        let program = filter(kind).unwrap();
        // Well under the kernel's 4096-instruction limit.
        assert!(
            program.len() < 2048,
            "{kind:?}: {} instructions",
            program.len()
        );
    }
}

/// The system calls `strace -f` saw each kind of thread make after the
/// point where it installs its filter (boot to reboot; API with
/// pause/resume/logger/metrics/stop; drives, a tap, console input,
/// SIGTERM), as a guard against narrowing a list by mistake.
#[test]
fn what_real_runs_do_is_allowed() {
    use libc::*;
    let seen: [(ThreadKind, &[i64]); 3] = [
        (
            ThreadKind::Vcpu,
            &[
                SYS_ioctl,
                SYS_write,
                SYS_futex,
                SYS_rt_sigreturn,
                SYS_rt_sigprocmask,
                SYS_close,
                SYS_fcntl,
                SYS_munmap,
                SYS_madvise,
                SYS_sigaltstack,
                SYS_exit,
            ],
        ),
        (
            ThreadKind::Api,
            &[
                SYS_accept4,
                SYS_epoll_wait,
                SYS_epoll_ctl,
                SYS_recvfrom,
                SYS_write,
                SYS_writev,
                SYS_shutdown,
                SYS_close,
                SYS_fcntl,
                SYS_futex,
                SYS_clone,
                SYS_mmap,
                SYS_mprotect,
                SYS_munmap,
                SYS_madvise,
                SYS_rseq,
                SYS_set_robust_list,
                SYS_rt_sigprocmask,
                SYS_prctl,
                SYS_sched_getaffinity,
                SYS_gettid,
                SYS_getrandom,
                SYS_sigaltstack,
                SYS_exit,
            ],
        ),
        (
            ThreadKind::Vmm,
            &[
                SYS_epoll_wait,
                SYS_read,
                SYS_write,
                SYS_lseek,
                SYS_fdatasync,
                SYS_statx,
                SYS_unlink,
                SYS_timerfd_settime,
                SYS_recvfrom,
                SYS_sendto,
                SYS_getpid,
                SYS_tgkill,
                SYS_rt_sigprocmask,
                SYS_rt_sigreturn,
                SYS_clock_nanosleep,
                SYS_futex,
                SYS_close,
                SYS_fcntl,
                SYS_munmap,
                SYS_sigaltstack,
                SYS_exit_group,
            ],
        ),
    ];
    for (kind, syscalls) in seen {
        let rules = rules(kind).unwrap();
        for nr in syscalls {
            assert!(
                rules.0.contains_key(nr),
                "{kind:?} does not allow {}",
                syscall_name(*nr).unwrap()
            );
        }
    }
    // And what none of them needs once running.
    for kind in [
        ThreadKind::Vmm,
        ThreadKind::Api,
        ThreadKind::Vcpu,
        ThreadKind::Output,
        ThreadKind::Watchdog,
    ] {
        let rules = rules(kind).unwrap();
        for nr in [
            SYS_execve,
            SYS_fork,
            SYS_ptrace,
            SYS_mount,
            SYS_rt_sigaction,
            SYS_kill,
        ] {
            assert!(!rules.0.contains_key(&nr), "{kind:?} allows {nr}");
        }
    }
}

#[test]
fn the_report_line() {
    let mut out = [0u8; REPORT_MAX];
    let len = format_report(b"flint_vcpu0\0\0\0\0\0", libc::SYS_socket, &mut out);
    assert_eq!(
        std::str::from_utf8(&out[..len]).unwrap(),
        "flint: seccomp: thread flint_vcpu0 made forbidden system call 41 (socket); killing the process\n"
    );
    let len = format_report(b"", 999, &mut out);
    assert_eq!(
        std::str::from_utf8(&out[..len]).unwrap(),
        "flint: seccomp: thread ? made forbidden system call 999 (unknown); killing the process\n"
    );
    // The longest names fit.
    let len = format_report(
        b"0123456789abcde",
        libc::SYS_set_mempolicy_home_node,
        &mut out,
    );
    assert!(out[..len].ends_with(b"killing the process\n"));
    let mut tiny = [0u8; 10];
    assert_eq!(format_report(b"x", -5, &mut tiny), 10);
}

/// Only the control thread (migration streams) and vsock's connector
/// thread may connect sockets: not the device thread a guest talks to, nor
/// the vCPU, API and writer threads.
#[test]
fn only_the_control_and_vsock_connector_threads_connect() {
    for kind in [
        ThreadKind::Vmm,
        ThreadKind::Api,
        ThreadKind::Vcpu,
        ThreadKind::Output,
    ] {
        let rules = rules(kind).unwrap();
        assert!(
            !rules.0.contains_key(&libc::SYS_connect),
            "{kind:?} allows connect"
        );
    }
    for kind in [ThreadKind::Control, ThreadKind::VsockConnect] {
        assert!(rules(kind).unwrap().0.contains_key(&libc::SYS_connect));
    }
    // The connector opens no files and talks to nothing but Unix sockets.
    let connector = rules(ThreadKind::VsockConnect).unwrap();
    for nr in [
        libc::SYS_openat,
        libc::SYS_ioctl,
        libc::SYS_clone,
        libc::SYS_read,
        libc::SYS_sendto,
    ] {
        let allowed = match connector.0.get(&nr) {
            None => false,
            // sendto is allowed for signal-hook's self-pipe only (a
            // rule on its flags), like on every thread.
            Some(Some(_)) => nr != libc::SYS_sendto,
            Some(None) => true,
        };
        assert!(
            !allowed,
            "the connector allows {}",
            syscall_name(nr).unwrap()
        );
    }
}

/// The device thread opens no files once it runs: drive images, log and
/// metrics files named through the API are opened by the control thread
/// (`controller::control`, `Job::Open`) and handed over. A stray open
/// fails with EACCES rather than killing flint.
#[test]
fn the_device_thread_opens_no_files() {
    let vmm = rules(ThreadKind::Vmm).unwrap();
    for nr in [libc::SYS_open, libc::SYS_openat, libc::SYS_openat2] {
        assert!(!vmm.0.contains_key(&nr), "{}", syscall_name(nr).unwrap());
    }
    let refused = errno_rules(ThreadKind::Vmm);
    assert!(refused.contains(&(libc::SYS_openat, libc::EACCES)));
    assert!(refused.contains(&(libc::SYS_open, libc::EACCES)));
    // The control thread does open them.
    assert!(rules(ThreadKind::Control)
        .unwrap()
        .0
        .contains_key(&libc::SYS_openat));
}
