//! An exec's resource limits (`ExecSpec::rlimits`, the OCI spec's
//! `process.rlimits`): checked and turned into `setrlimit(2)` arguments
//! before the fork, so the child only makes the system calls.

use agent_protocol::Rlimit;

/// The resources `setrlimit(2)` knows, by the OCI spec's names.
const RESOURCES: [(&str, i32); 16] = [
    ("RLIMIT_CPU", libc::RLIMIT_CPU as i32),
    ("RLIMIT_FSIZE", libc::RLIMIT_FSIZE as i32),
    ("RLIMIT_DATA", libc::RLIMIT_DATA as i32),
    ("RLIMIT_STACK", libc::RLIMIT_STACK as i32),
    ("RLIMIT_CORE", libc::RLIMIT_CORE as i32),
    ("RLIMIT_RSS", libc::RLIMIT_RSS as i32),
    ("RLIMIT_NPROC", libc::RLIMIT_NPROC as i32),
    ("RLIMIT_NOFILE", libc::RLIMIT_NOFILE as i32),
    ("RLIMIT_MEMLOCK", libc::RLIMIT_MEMLOCK as i32),
    ("RLIMIT_AS", libc::RLIMIT_AS as i32),
    ("RLIMIT_LOCKS", libc::RLIMIT_LOCKS as i32),
    ("RLIMIT_SIGPENDING", libc::RLIMIT_SIGPENDING as i32),
    ("RLIMIT_MSGQUEUE", libc::RLIMIT_MSGQUEUE as i32),
    ("RLIMIT_NICE", libc::RLIMIT_NICE as i32),
    ("RLIMIT_RTPRIO", libc::RLIMIT_RTPRIO as i32),
    ("RLIMIT_RTTIME", libc::RLIMIT_RTTIME as i32),
];

/// A limit ready for `setrlimit(2)` in the child.
#[derive(Debug, Clone, Copy)]
pub struct Prepared {
    resource: i32,
    limit: libc::rlimit,
}

/// Checks `limits` and prepares them: an unknown name or a soft limit
/// above the hard one is refused (the process must not run without a
/// limit it was given).
pub fn prepare(limits: &[Rlimit]) -> Result<Vec<Prepared>, String> {
    limits
        .iter()
        .map(|l| {
            let resource = RESOURCES
                .iter()
                .find(|(name, _)| *name == l.kind)
                .map(|(_, r)| *r)
                .ok_or_else(|| format!("rlimit {:?}: unknown resource", l.kind))?;
            if l.soft > l.hard {
                return Err(format!(
                    "rlimit {}: soft limit {} above the hard limit {}",
                    l.kind, l.soft, l.hard
                ));
            }
            // u64::MAX is RLIM_INFINITY on Linux, the spec's "unlimited".
            Ok(Prepared {
                resource,
                limit: libc::rlimit {
                    rlim_cur: l.soft as libc::rlim_t,
                    rlim_max: l.hard as libc::rlim_t,
                },
            })
        })
        .collect()
}

/// Sets the limits on the calling process. Async-signal-safe: runs in the
/// child between fork and exec, before it drops privileges (raising a hard
/// limit needs them).
pub fn apply(limits: &[Prepared]) -> std::io::Result<()> {
    for l in limits {
        // SAFETY: setrlimit(2) reads the rlimit struct we pass.
        if unsafe { libc::setrlimit(l.resource as _, &l.limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(kind: &str, soft: u64, hard: u64) -> Rlimit {
        Rlimit {
            kind: kind.into(),
            soft,
            hard,
        }
    }

    #[test]
    fn names_map_to_resources_and_bad_limits_are_refused() {
        let p = prepare(&[
            limit("RLIMIT_NOFILE", 64, 128),
            limit("RLIMIT_CORE", 0, u64::MAX),
        ])
        .unwrap();
        assert_eq!(p[0].resource, libc::RLIMIT_NOFILE as i32);
        assert_eq!((p[0].limit.rlim_cur, p[0].limit.rlim_max), (64, 128));
        assert_eq!(p[1].limit.rlim_max, libc::RLIM_INFINITY);
        assert!(prepare(&[limit("RLIMIT_BOGUS", 1, 1)])
            .unwrap_err()
            .contains("unknown"));
        assert!(prepare(&[limit("RLIMIT_NOFILE", 9, 8)])
            .unwrap_err()
            .contains("above"));
    }

    #[test]
    fn applied_limits_are_what_the_process_then_has() {
        // In a forked child, so the test process keeps its own limits.
        let p = prepare(&[limit("RLIMIT_NOFILE", 40, 50)]).unwrap();
        // SAFETY: fork(2); the child only makes system calls and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let mut got = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit(2) writes into `got`; _exit(2) ends the child.
            unsafe {
                let ok = apply(&p).is_ok()
                    && libc::getrlimit(libc::RLIMIT_NOFILE, &mut got) == 0
                    && (got.rlim_cur, got.rlim_max) == (40, 50);
                libc::_exit(if ok { 0 } else { 1 });
            }
        }
        let mut status = 0;
        // SAFETY: waitpid(2) on our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
