//! PID 1's part in agent mode: run the agent (this same binary with
//! `FLINT_AGENT_LISTEN=vsock:PORT`) as a child, reap every process meanwhile,
//! and restart the agent when it dies. An agent exiting with status 0 was
//! asked to shut the guest down; one that keeps dying ends the guest with
//! [`STATUS_AGENT_FAILED`].

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use guest_init::agent::LISTEN_ENV;

use crate::{say, wait_for, STDERR_TTY};

/// Reported when the agent cannot be started or keeps crashing (Docker's
/// status for a failure of the container runtime itself).
pub const STATUS_AGENT_FAILED: u8 = 125;
/// More crashes than this within [`CRASH_WINDOW`] end the guest.
const MAX_CRASHES: usize = 5;
const CRASH_WINDOW: Duration = Duration::from_secs(60);

/// Runs the agent until it asks for shutdown (0) or keeps crashing.
pub fn supervise(port: u32) -> u8 {
    let mut crashes = VecDeque::new();
    loop {
        let agent = match start(port) {
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
fn start(port: u32) -> io::Result<libc::pid_t> {
    let log = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(STDERR_TTY)
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::inherit());
    let child = Command::new("/proc/self/exe")
        .arg0("flint-agent")
        .env_clear()
        .env(LISTEN_ENV, format!("vsock:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    Ok(child.id() as libc::pid_t)
}
