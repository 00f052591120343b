//! Connecting guest-initiated connections to `<uds_path>_<port>` on a
//! helper thread (`flint_vsockconn`), so that the thread serving the
//! device never makes a `connect(2)` call and its seccomp filter can forbid
//! it: a guest that takes over the device thread cannot reach arbitrary
//! host sockets.
//!
//! The muxer hands the helper `(connection, id, path)`; the helper connects without
//! blocking ([`host::connect`]), queues the result and writes an eventfd
//! that sits in the muxer's epoll set. The helper is started with the
//! device (before the VMM confines its threads) and confines itself first
//! through the hook the VMM registers with [`set_connector_confinement`]
//! (a filter allowing Unix `socket`/`connect` and little else). It ends
//! when the device is dropped.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, OnceLock};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::connection::ConnKey;
use super::host;

/// What the helper thread runs first; an error stops the helper (every
/// guest connect is then refused with RST: fail closed).
pub type Confinement = fn() -> Result<(), String>;

static CONFINE: OnceLock<Confinement> = OnceLock::new();

/// Registers what each connector thread runs before its first connect
/// (the VMM installs its seccomp filter there). Set once per process;
/// later calls are ignored.
pub fn set_connector_confinement(confine: Confinement) {
    let _ = CONFINE.set(confine);
}

/// One connect to make: the connection, the request's id, the path.
type Request = (ConnKey, u64, PathBuf);
/// The result of one connect: the connection, the request's id, the stream.
type Done = (ConnKey, u64, io::Result<UnixStream>);

/// The muxer's handle on its helper thread.
pub(super) struct Connector {
    requests: Sender<Request>,
    results: Receiver<Done>,
    ready: Arc<EventFd>,
    /// Requests submitted and not yet taken back as results (see
    /// [`Connector::in_flight`]).
    in_flight: usize,
}

impl Connector {
    /// Starts the helper thread.
    pub fn spawn() -> io::Result<Self> {
        let (requests, request_rx) = channel::<Request>();
        let (result_tx, results) = channel::<Done>();
        let ready = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let wake = ready.clone();
        std::thread::Builder::new()
            .name("flint_vsockconn".into())
            .spawn(move || {
                if let Some(confine) = CONFINE.get() {
                    if let Err(e) = confine() {
                        log::error!("vsock connector: {e}; refusing guest connections");
                        return;
                    }
                }
                for (key, id, path) in request_rx {
                    if result_tx.send((key, id, host::connect(&path))).is_err() {
                        return;
                    }
                    // A full counter still leaves the fd readable.
                    let _ = wake.write(1);
                }
            })?;
        Ok(Self {
            requests,
            results,
            ready,
            in_flight: 0,
        })
    }

    /// The eventfd that is readable while results wait.
    pub fn ready_fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }

    /// Asks for a connection to `path`; false if the helper is gone.
    pub fn submit(&mut self, key: ConnKey, id: u64, path: PathBuf) -> bool {
        let sent = self.requests.send((key, id, path)).is_ok();
        self.in_flight += usize::from(sent);
        sent
    }

    /// The results ready now (clears the eventfd first, so a result queued
    /// meanwhile wakes the muxer again).
    pub fn take_results(&mut self) -> Vec<Done> {
        let _ = self.ready.read();
        let done: Vec<Done> = self.results.try_iter().collect();
        self.in_flight = self.in_flight.saturating_sub(done.len());
        done
    }

    /// Connects submitted whose result the muxer has not taken yet, stale
    /// ones (of connections reset meanwhile) included: zero means the
    /// helper is idle and nothing of earlier guest packets is still to come.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}
