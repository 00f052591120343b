//! PID 1's supervision of the agent, run on the host: `guest-init` with
//! `FLINT_AGENT_SUPERVISE=unix:...` supervises an agent the same way PID 1
//! does in a guest (as a subreaper), so a killed agent must come back, one
//! that keeps dying must end the supervisor with status 125, and `Shutdown`
//! must end it with status 0.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

/// The agent binary: this crate's, or `FLINT_AGENT_TEST_BIN` (e.g. the
/// static release build `container` embeds).
fn agent_bin() -> PathBuf {
    std::env::var_os("FLINT_AGENT_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_guest-init").into())
}

use agent_protocol::{AgentClient, PROTOCOL_VERSION};

struct Supervisor {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Supervisor {
    fn start(name: &str) -> Supervisor {
        let dir = std::env::temp_dir().join(format!("flint-sup-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("agent.sock");
        let child = Command::new(agent_bin())
            .env(
                "FLINT_AGENT_SUPERVISE",
                format!("unix:{}", socket.display()),
            )
            .spawn()
            .unwrap();
        Supervisor { child, dir, socket }
    }

    /// A client once an agent answers (readiness, not timing); `None`
    /// once the supervisor has ended.
    fn try_client(&mut self) -> Option<AgentClient<UnixStream>> {
        for _ in 0..1500 {
            if let Ok(s) = UnixStream::connect(&self.socket) {
                if let Ok(c) = AgentClient::handshake(s) {
                    return Some(c);
                }
            }
            if self.child.try_wait().unwrap().is_some() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no agent on {}", self.socket.display());
    }

    fn client(&mut self) -> AgentClient<UnixStream> {
        self.try_client().expect("the supervisor ended")
    }

    /// The pid of the agent the supervisor runs now; `None` once the
    /// supervisor has ended.
    fn agent_pid(&mut self) -> Option<i32> {
        let me = self.child.id() as i32;
        let list = self.try_client()?.list_processes().unwrap();
        let agent = list
            .iter()
            .find(|p| p.ppid == me && p.argv.first().map(String::as_str) == Some("flint-agent"));
        Some(
            agent
                .unwrap_or_else(|| panic!("no flint-agent child of {me} in {list:?}"))
                .pid,
        )
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn kill(pid: i32) {
    // SAFETY: kill(2) with plain integers.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
}

#[test]
fn a_killed_agent_is_restarted_and_shutdown_ends_with_0() {
    let mut sup = Supervisor::start("restart");
    let first = sup.agent_pid().unwrap();
    kill(first);
    let second = sup.agent_pid().unwrap();
    assert_ne!(first, second, "a new agent");
    assert_eq!(sup.client().ping().unwrap().0, PROTOCOL_VERSION);
    sup.client().shutdown().unwrap();
    assert_eq!(sup.child.wait().unwrap().code(), Some(0));
}

#[test]
fn an_agent_that_keeps_dying_ends_with_125() {
    let mut sup = Supervisor::start("crashloop");
    let mut killed = Vec::new();
    while let Some(pid) = sup.agent_pid() {
        assert!(!killed.contains(&pid), "a new agent each time");
        kill(pid);
        killed.push(pid);
    }
    assert_eq!(sup.child.wait().unwrap().code(), Some(125));
    assert_eq!(killed.len(), 6, "restarted 5 times, then gave up");
}
