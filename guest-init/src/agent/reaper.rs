//! The agent's only `waitpid` caller: it reaps every child (and, as PID 1
//! or a subreaper, every orphan) and keeps the exit status of the processes
//! the agent started, so an exec session and any number of `Wait` requests
//! can all learn how a process ended.
//!
//! Spawning happens under the table's lock, and the reaper reaps only under
//! that lock, so it can neither reap a child before the child is registered
//! nor steal the status std's `Command::spawn` collects itself when an exec
//! fails.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::process::{Child, Command};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use agent_protocol::ExitStatus;

/// Exit statuses kept for late `Wait` requests.
const KEEP_EXITED: usize = 1024;

#[derive(Default)]
struct Table {
    running: HashSet<i32>,
    exited: HashMap<i32, ExitStatus>,
    order: VecDeque<i32>,
}

/// The process table and its reaping thread.
pub struct Reaper {
    table: Mutex<Table>,
    changed: Condvar,
}

/// The signal set holding only SIGCHLD.
fn sigchld_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        set
    }
}

/// Blocks SIGCHLD in the calling thread, and so in every thread it creates
/// afterwards, so the reaper can wait for it with `sigtimedwait`. (std
/// clears the mask again in spawned processes.) Call before any thread.
pub fn block_sigchld() {
    let set = sigchld_set();
    // SAFETY: `set` is a valid signal set; the old mask is not wanted.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// How a wait status ended.
pub fn exit_status(status: i32) -> ExitStatus {
    if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    }
}

impl Reaper {
    /// A reaper with its thread running; call [`block_sigchld`] first.
    pub fn start() -> Arc<Reaper> {
        let reaper = Arc::new(Reaper {
            table: Mutex::new(Table::default()),
            changed: Condvar::new(),
        });
        let r = reaper.clone();
        std::thread::spawn(move || {
            let set = sigchld_set();
            let timeout = libc::timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            loop {
                // The timeout only guards against a lost wake-up; SIGCHLD
                // normally ends the wait at once.
                // SAFETY: valid set and timeout; no siginfo wanted.
                unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
                r.reap();
            }
        });
        reaper
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reaps every child that has ended.
    fn reap(&self) {
        let mut table = self.lock();
        let mut any = false;
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes only `status`.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if table.running.remove(&pid) {
                table.exited.insert(pid, exit_status(status));
                table.order.push_back(pid);
                if table.order.len() > KEEP_EXITED {
                    if let Some(old) = table.order.pop_front() {
                        table.exited.remove(&old);
                    }
                }
                any = true;
            }
        }
        if any {
            self.changed.notify_all();
        }
    }

    /// Spawns `command` and registers the child for [`Reaper::wait`]. Never
    /// call `wait` on the returned `Child`.
    pub fn spawn(&self, command: &mut Command) -> io::Result<Child> {
        let mut table = self.lock();
        let child = command.spawn()?;
        let pid = child.id() as i32;
        // A reused pid: the status kept for its previous owner is stale.
        if table.exited.remove(&pid).is_some() {
            table.order.retain(|&p| p != pid);
        }
        table.running.insert(pid);
        Ok(child)
    }

    /// Blocks until process `pid`, which the agent started, has ended;
    /// `None` if the agent did not start it (or forgot it long ago).
    pub fn wait(&self, pid: i32) -> Option<ExitStatus> {
        let mut table = self.lock();
        loop {
            if let Some(status) = table.exited.get(&pid) {
                return Some(*status);
            }
            if !table.running.contains(&pid) {
                return None;
            }
            table = self
                .changed
                .wait_timeout(table, Duration::from_secs(1))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Whether `pid` is a process the agent started that is still running.
    pub fn is_running(&self, pid: i32) -> bool {
        self.lock().running.contains(&pid)
    }
}
