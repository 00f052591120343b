//! The agent's threads: a cache of worker threads, started with the agent
//! and reused, instead of a new thread per connection, pump or splice.
//!
//! Creating threads late is what this is about. On hosts whose KVM
//! emulates the guest kernel (the test host), a system call now and then
//! completes on an exception path that loses the thread pointer it set
//! (see the guest README's quirks): a process started then dies of SIGSEGV
//! on its first thread-local access. For a child of the agent that is one
//! failed command; for a thread of the agent it is the whole agent, and
//! with it every session in flight. Threads made while the agent starts
//! are covered by the supervisor's restart; after that, steady use (one
//! `exec` after another, port connections) reuses idle workers and creates
//! none. A cache that grows on demand keeps the old semantics: a job
//! never waits for a busy worker.

use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Mutex;

type Job = Box<dyn FnOnce() + Send>;

/// Idle workers kept beyond this many end (a burst of connections does not
/// leave hundreds of threads behind).
const KEEP_IDLE: usize = 64;

/// Workers started with the agent: enough for a few concurrent `exec`s
/// (a connection, two output pumps and an input relay each) and port
/// connections (two directions each).
pub const PRESTART: usize = 16;

/// A cache of threads; the agent's is [`POOL`].
pub struct Workers {
    /// Idle workers, each waiting on its own channel.
    idle: Mutex<Vec<Sender<Job>>>,
}

/// The agent's workers.
pub static POOL: Workers = Workers::new();

/// Runs `job` on one of the agent's workers (see [`Workers::run`]).
pub fn run<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Done<T> {
    POOL.run(job)
}

/// A job's result, for the caller that wants to wait for it.
pub struct Done<T>(Receiver<T>);

impl<T> Done<T> {
    /// Waits for the job; `None` if it panicked.
    pub fn join(self) -> Option<T> {
        self.0.recv().ok()
    }
}

impl Workers {
    /// An empty cache.
    pub const fn new() -> Workers {
        Workers {
            idle: Mutex::new(Vec::new()),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Sender<Job>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts `n` idle workers.
    pub fn prestart(&'static self, n: usize) {
        for _ in 0..n {
            self.start_worker(Box::new(|| {}));
        }
    }

    /// Runs `job` on an idle worker, or on a new one if none is idle.
    pub fn run<T: Send + 'static>(
        &'static self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Done<T> {
        let (tx, rx): (SyncSender<T>, _) = mpsc::sync_channel(1);
        let mut job: Job = Box::new(move || {
            let _ = tx.send(job());
        });
        loop {
            let idle = self.idle().pop();
            match idle {
                // A worker that ended meanwhile gives the job back.
                Some(worker) => match worker.send(job) {
                    Ok(()) => break,
                    Err(mpsc::SendError(back)) => job = back,
                },
                None => {
                    self.start_worker(job);
                    break;
                }
            }
        }
        Done(rx)
    }

    fn start_worker(&'static self, first: Job) {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("agent-worker".into())
            .spawn(move || {
                let mut job = first;
                loop {
                    job();
                    {
                        let mut idle = self.idle();
                        if idle.len() >= KEEP_IDLE {
                            return;
                        }
                        idle.push(tx.clone());
                    }
                    match rx.recv() {
                        Ok(next) => job = next,
                        Err(_) => return,
                    }
                }
            });
        if let Err(e) = spawned {
            // Out of threads: the job is dropped unrun; its caller sees a
            // failed `join` (the result channel closes).
            eprintln!("flint-agent: starting a worker thread: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn jobs_run_concurrently_and_workers_are_reused() {
        static MINE: Workers = Workers::new();
        MINE.prestart(2);
        // Two jobs that wait for each other need two workers at once.
        let (a_tx, a_rx) = mpsc::channel::<()>();
        let (b_tx, b_rx) = mpsc::channel::<()>();
        let first = MINE.run(move || {
            a_tx.send(()).unwrap();
            b_rx.recv().unwrap();
            1
        });
        let second = MINE.run(move || {
            a_rx.recv().unwrap();
            b_tx.send(()).unwrap();
            2
        });
        assert_eq!(first.join(), Some(1));
        assert_eq!(second.join(), Some(2));
        // One job after another: no new thread.
        let mut threads = HashSet::new();
        for _ in 0..20 {
            let id = MINE.run(|| std::thread::current().id()).join().unwrap();
            threads.insert(id);
        }
        assert!(threads.len() <= 2, "{} threads", threads.len());
    }

    #[test]
    fn a_panicking_job_is_reported_and_the_pool_goes_on() {
        static MINE: Workers = Workers::new();
        let done = MINE.run(|| -> u8 { panic!("boom") });
        assert_eq!(done.join(), None);
        assert_eq!(MINE.run(|| 7).join(), Some(7));
    }
}
