//! PID 1's part in agent mode: run the agent (this same binary with
//! `FLINT_AGENT_LISTEN=vsock:PORT`) as a child, reap every process meanwhile,
//! and restart the agent when it dies. An agent exiting with status 0 was
//! asked to shut the guest down; one that keeps dying ends the guest with
//! [`STATUS_AGENT_FAILED`].
//!
//! Tests run the same supervision on the host with
//! `FLINT_AGENT_SUPERVISE=unix:/path` (as a subreaper instead of PID 1).

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use guest_init::agent::LISTEN_ENV;

use crate::{say, wait_for, ON_HOST, STDERR_TTY};

/// Reported when the agent cannot be started or keeps crashing (Docker's
/// status for a failure of the container runtime itself).
pub const STATUS_AGENT_FAILED: u8 = 125;
/// More crashes than this within [`CRASH_WINDOW`] end the guest.
const MAX_CRASHES: usize = 5;
const CRASH_WINDOW: Duration = Duration::from_secs(60);

/// Test-only: supervise an agent listening on this address, on the host.
pub const SUPERVISE_ENV: &str = "FLINT_AGENT_SUPERVISE";

/// Runs the agent listening on `listen` (`vsock:PORT` or `unix:/path`)
/// until it asks for shutdown (0) or keeps crashing.
pub fn supervise(listen: &str) -> u8 {
    let mut crashes = VecDeque::new();
    loop {
        let agent = match start(listen) {
            Ok(pid) => pid,
            Err(e) => {
                say(&format!("starting the agent: {e}"));
                return STATUS_AGENT_FAILED;
            }
        };
        let status = wait_for(agent);
        if status == 0 {
            return 0;
        }
        let now = Instant::now();
        crashes.push_back(now);
        while crashes
            .front()
            .is_some_and(|&t| now.duration_since(t) > CRASH_WINDOW)
        {
            crashes.pop_front();
        }
        if crashes.len() > MAX_CRASHES {
            say(&format!(
                "the agent died {} times within {} s (last status {status}); giving up",
                crashes.len(),
                CRASH_WINDOW.as_secs()
            ));
            return STATUS_AGENT_FAILED;
        }
        say(&format!("the agent died (status {status}); restarting it"));
        std::thread::sleep(Duration::from_millis(100) * crashes.len() as u32);
    }
}

/// Starts the agent with its output on the guest's stderr port.
fn start(listen: &str) -> io::Result<libc::pid_t> {
    let log = match ON_HOST.load(Ordering::Relaxed) {
        true => Stdio::inherit(),
        false => OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(STDERR_TTY)
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::inherit()),
    };
    let mut command = Command::new("/proc/self/exe");
    // SAFETY: prctl in the child between fork and exec, no memory touched.
    // (PID 1 never dies; this is for the host tests' supervisor.)
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .arg0("flint-agent")
        .env_clear()
        .env(LISTEN_ENV, listen)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    Ok(child.id() as libc::pid_t)
}
