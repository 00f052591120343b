//! Starting and stopping the API server: the Unix socket's life cycle and
//! the `flint_api` thread with its tokio runtime. The per-connection HTTP
//! work is in `service.rs`.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

use tokio::net::UnixListener;
use tokio::sync::{oneshot, Notify};
use vmm_sys_util::eventfd::EventFd;

use crate::metrics::{ApiMetrics, ApiMetricsSnapshot};
use crate::service::serve_connection;
use api::ApiMessage;

/// Limits of the server; the defaults suit production, tests shorten the
/// timeouts.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// A client must send a request's headers within this long (and an idle
    /// keep-alive connection is closed after it), so half-sent requests
    /// cannot pin connections forever.
    pub header_timeout: Duration,
    /// A request's body must arrive within this long after its headers.
    pub body_timeout: Duration,
    /// How long to wait for the VMM's answer before replying 503.
    pub reply_timeout: Duration,
    /// Largest accepted request body in bytes (413 beyond).
    pub max_body: usize,
    /// Most connections open at once. Bounds the file descriptors and
    /// threads the API can take from the VMM process. A client beyond it
    /// displaces the connection idle the longest (one not waiting for the
    /// VMM: idle keep-alive, or still sending its request), so slow or idle
    /// clients cannot keep a new one waiting; if every connection is waiting
    /// for the VMM, the new one gets an immediate 503.
    pub max_connections: usize,
    /// Run first on the API thread, before it serves anything (flint installs
    /// the API thread's seccomp filter here). An error stops the server from
    /// starting.
    pub thread_init: Option<fn() -> Result<(), String>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(60),
            max_body: 64 * 1024,
            max_connections: 64,
            thread_init: None,
        }
    }
}

/// Why the API server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    /// Another process is serving on the socket path.
    #[error("API socket {}: socket in use by a live process", path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket is at the path; it is left alone rather
    /// than deleted.
    #[error("API socket {}: exists and is not a socket; not removing it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Inspecting, removing or binding the socket failed.
    #[error("API socket {}: {source}", path.display())]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The runtime or thread could not be created.
    #[error("cannot start the API server thread: {0}")]
    Start(io::Error),
}

/// What every connection of the server shares.
pub(crate) struct Shared {
    pub to_vmm: Sender<ApiMessage>,
    pub wake_vmm: EventFd,
    pub metrics: Arc<ApiMetrics>,
    pub options: ServerOptions,
    pub connections: Mutex<Connections>,
}

/// The open connections, so a new client can displace the one idle the
/// longest when all `max_connections` slots are taken.
#[derive(Default)]
pub(crate) struct Connections {
    next_id: u64,
    open: HashMap<u64, Connection>,
}

struct Connection {
    /// Since when the connection has not been waiting for the VMM; `None`
    /// while it is (it must not be dropped: its client wants the answer).
    idle_since: Option<Instant>,
    /// Notified to close the connection.
    close: Arc<Notify>,
}

impl Connections {
    /// Registers a new connection, first closing the one idle the longest
    /// if `max` are open. `None` if all `max` are waiting for the VMM.
    fn admit(&mut self, max: usize) -> Option<(u64, Arc<Notify>)> {
        if self.open.len() >= max {
            let oldest = self
                .open
                .iter()
                .filter_map(|(id, c)| c.idle_since.map(|since| (since, *id)))
                .min()
                .map(|(_, id)| id)?;
            if let Some(evicted) = self.open.remove(&oldest) {
                evicted.close.notify_one();
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let close = Arc::new(Notify::new());
        self.open.insert(
            id,
            Connection {
                idle_since: Some(Instant::now()),
                close: Arc::clone(&close),
            },
        );
        Some((id, close))
    }

    /// Marks a connection as waiting for the VMM (`busy`) or not.
    pub(crate) fn set_busy(&mut self, id: u64, busy: bool) {
        if let Some(c) = self.open.get_mut(&id) {
            c.idle_since = if busy { None } else { Some(Instant::now()) };
        }
    }

    fn remove(&mut self, id: u64) {
        self.open.remove(&id);
    }
}

impl Shared {
    /// The connection registry (never poisoned in practice: nothing panics
    /// while holding it; if it were, its data is still consistent).
    pub(crate) fn connections(&self) -> MutexGuard<'_, Connections> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connection's place in [`Connections`]; leaving it frees the slot.
pub(crate) struct Slot {
    pub id: u64,
    shared: Arc<Shared>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.connections().remove(self.id);
    }
}

/// A running API server. Dropping it (or [`ApiServerHandle::shutdown`])
/// stops the server and removes the socket file, so a clean exit leaves no
/// stale socket behind.
#[derive(Debug)]
pub struct ApiServerHandle {
    socket: PathBuf,
    /// (device, inode) of the socket we bound, so we never remove a socket
    /// some later server created at the same path.
    identity: Option<(u64, u64)>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    metrics: Arc<ApiMetrics>,
}

impl ApiServerHandle {
    /// The socket the server listens on.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The request counters now, for the VMM's metrics file.
    pub fn metrics(&self) -> ApiMetricsSnapshot {
        self.metrics.snapshot()
    }

    /// A reader of the request counters that can live on another thread
    /// (the VMM's), independent of this handle.
    pub fn metrics_source(&self) -> impl Fn() -> ApiMetricsSnapshot + Send + 'static {
        let metrics = self.metrics.clone();
        move || metrics.snapshot()
    }

    /// Stops the server, waits for its thread and removes the socket.
    /// Requests in flight are abandoned (their clients see the connection
    /// close).
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("API server thread panicked");
            }
        }
        if let Some(identity) = self.identity.take() {
            if socket_identity(&self.socket) == Some(identity) {
                if let Err(e) = std::fs::remove_file(&self.socket) {
                    log::warn!("cannot remove API socket {}: {e}", self.socket.display());
                }
            }
        }
    }
}

impl Drop for ApiServerHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Starts the API server on `socket` with default [`ServerOptions`]; see
/// [`spawn_api_server_with`].
pub fn spawn_api_server(
    socket: &Path,
    to_vmm: Sender<ApiMessage>,
    wake_vmm: EventFd,
) -> Result<ApiServerHandle, ApiServerError> {
    spawn_api_server_with(socket, to_vmm, wake_vmm, ServerOptions::default())
}

/// Starts the API server on its own thread, `flint_api`.
///
/// Each request is parsed, sent to `to_vmm` as an [`ApiMessage`] and
/// `wake_vmm` is written so the VMM's event loop notices it; the VMM answers
/// on the message's `reply` channel. A stale socket file at `socket` (no
/// process listening) is replaced; a live one is an error.
pub fn spawn_api_server_with(
    socket: &Path,
    to_vmm: Sender<ApiMessage>,
    wake_vmm: EventFd,
    options: ServerOptions,
) -> Result<ApiServerHandle, ApiServerError> {
    let socket_err = |source| ApiServerError::Socket {
        path: socket.to_owned(),
        source,
    };
    remove_stale_socket(socket)?;
    let listener = StdUnixListener::bind(socket).map_err(socket_err)?;
    let identity = socket_identity(socket);
    // Remove the socket if anything below fails.
    let mut handle = ApiServerHandle {
        socket: socket.to_owned(),
        identity,
        stop: None,
        thread: None,
        metrics: Arc::new(ApiMetrics::default()),
    };
    listener.set_nonblocking(true).map_err(socket_err)?;
    let max_connections = options.max_connections.max(1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(max_connections)
        .thread_name("flint_api_wait")
        .build()
        .map_err(ApiServerError::Start)?;
    let shared = Arc::new(Shared {
        to_vmm,
        wake_vmm,
        metrics: Arc::clone(&handle.metrics),
        options,
        connections: Mutex::new(Connections::default()),
    });
    let (stop, stopped) = oneshot::channel();
    let thread_init = shared.options.thread_init;
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("flint_api".to_owned())
        .spawn(move || {
            let init = thread_init.map_or(Ok(()), |init| init());
            let ok = init.is_ok();
            let _ = started_tx.send(init);
            if !ok {
                return;
            }
            runtime.block_on(accept_loop(listener, shared, stopped, max_connections));
            // Do not wait for blocking-pool threads still waiting on the VMM.
            runtime.shutdown_background();
        })
        .map_err(ApiServerError::Start)?;
    handle.stop = Some(stop);
    handle.thread = Some(thread);
    match started_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(ApiServerError::Start(std::io::Error::other(format!(
            "API thread setup: {e}"
        )))),
        Err(_) => Err(ApiServerError::Start(std::io::Error::other(
            "the API thread ended while starting",
        ))),
    }
}

async fn accept_loop(
    listener: StdUnixListener,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
    max_connections: usize,
) {
    let listener = match UnixListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            log::error!("API server cannot listen: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let admitted = shared.connections().admit(max_connections);
                    let Some((id, close)) = admitted else {
                        // Every connection waits for the VMM: say so at once
                        // rather than leave the client hanging. The socket's
                        // buffer is empty, so this write does not block.
                        shared.metrics.record_refused();
                        let _ = stream.try_write(BUSY);
                        continue;
                    };
                    let slot = Slot {
                        id,
                        shared: Arc::clone(&shared),
                    };
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = serve_connection(stream, Arc::clone(&shared), id) => {}
                            _ = close.notified() => {
                                shared.metrics.record_evicted();
                                log::debug!("API: closed an idle connection for a new client");
                            }
                        }
                        drop(slot);
                    });
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    log::warn!("API server: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// The answer to a client beyond `max_connections` when none can be
/// displaced.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
Content-Length: 72\r\nConnection: close\r\n\r\n\
{\"fault_message\": \"too many API connections waiting for the VMM; retry\"}";

/// Clears the way for binding: a socket nobody listens on is removed, a live
/// one or a non-socket is an error, a missing path is fine.
fn remove_stale_socket(path: &Path) -> Result<(), ApiServerError> {
    let socket_err = |source| ApiServerError::Socket {
        path: path.to_owned(),
        source,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(socket_err(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ApiServerError::NotASocket {
            path: path.to_owned(),
        });
    }
    match StdUnixStream::connect(path) {
        Ok(_) => Err(ApiServerError::InUse {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(socket_err)
        }
        Err(e) => Err(socket_err(e)),
    }
}

fn socket_identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()))
}
