//! A deadline on every vhost-user exchange.
//!
//! The `vhost` crate retries a read that fails with `EAGAIN`, so a socket
//! read timeout alone would make a hung daemon block its caller (a vCPU
//! thread, in an activation) forever, one timeout after another. Instead a
//! small thread per connection waits for the deadline of the exchange in
//! progress and, if it passes, shuts the socket down: the blocked read then
//! sees end-of-file, the exchange fails, and the device treats the daemon
//! as gone.

use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    deadline: Option<Instant>,
    fired: bool,
    quit: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The watchdog of one connection; its thread ends when this is dropped.
pub struct Watchdog {
    shared: Arc<Shared>,
    timeout: Duration,
}

/// An exchange in progress; dropping it disarms the deadline.
pub struct Armed<'a>(&'a Watchdog);

impl Watchdog {
    /// Starts the thread for `socket` (a clone of the connection's
    /// stream). `thread_init` runs first on the new thread (flint installs
    /// its seccomp filter there).
    pub fn start(
        socket: UnixStream,
        timeout: Duration,
        thread_init: Option<fn()>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("flint_vhost_wd".into())
            .spawn(move || {
                if let Some(init) = thread_init {
                    init();
                }
                watch(&theirs, &socket);
            })?;
        Ok(Self { shared, timeout })
    }

    /// Arms the deadline for one exchange.
    pub fn arm(&self) -> Armed<'_> {
        let mut state = self.shared.lock();
        state.deadline = Some(Instant::now() + self.timeout);
        drop(state);
        self.shared.wake.notify_one();
        Armed(self)
    }

    /// Whether a deadline passed (the socket is then shut down).
    pub fn fired(&self) -> bool {
        self.shared.lock().fired
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.0.shared.lock().deadline = None;
        self.0.shared.wake.notify_one();
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.lock().quit = true;
        self.shared.wake.notify_one();
    }
}

fn watch(shared: &Shared, socket: &UnixStream) {
    let mut state = shared.lock();
    loop {
        if state.quit {
            return;
        }
        state = match state.deadline {
            None => shared.wake.wait(state).unwrap_or_else(|p| p.into_inner()),
            Some(deadline) => {
                let now = Instant::now();
                if now >= deadline {
                    state.fired = true;
                    state.deadline = None;
                    let _ = socket.shutdown(Shutdown::Both);
                    continue;
                }
                shared
                    .wake
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
    }
}
