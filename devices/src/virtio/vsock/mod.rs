//! virtio-vsock: stream sockets between guest and host, with Firecracker's
//! host side so its users' tools work unchanged.
//!
//! Three queues: RX (0, packets to the guest), TX (1, packets from the
//! guest) and event (2, only `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`, sent once
//! after a restore). Config space is the guest CID (u64 LE).
//!
//! The host side is a Unix socket listener at `uds_path`:
//! * host → guest: a host program connects to `uds_path` and writes
//!   `CONNECT <port>\n`; flint sends the guest a REQUEST to that port from a
//!   fresh local port (≥ 2^30) and, on the guest's RESPONSE, writes
//!   `OK <local_port>\n` back; from then on the socket is the stream. An RST
//!   or no answer within the connect timeout closes the host socket.
//! * guest → host: a connection to CID 2, port P is connected (without
//!   blocking) to `<uds_path>_<P>` by a helper thread (`connector`), so the
//!   device thread never calls `connect(2)`; failure answers the guest
//!   with RST.
//!
//! Split by concern: [`packet`] (the header and hostile-input checks, pure),
//! [`connection`] (one connection's credit and shutdown state), `host`
//! (listener socket, `CONNECT` line, outgoing connects), `listener`
//! (accepting host programs), `muxer` (the connection table and host
//! sockets), `guest` (acting on guest packets, choosing RX
//! packets), `device` (the [`VirtioDevice`] side and queue processing),
//! `event_handler` (the VMM event loop side), `persist` (snapshot state).

pub mod connection;
mod connector;
mod device;
mod event_handler;
mod guest;
mod host;
mod listener;
mod muxer;
pub mod packet;
mod persist;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::{GuestMemory, IrqTrigger};
use muxer::Muxer;
use packet::{Segment, MAX_PAYLOAD};

pub use connector::{set_connector_confinement, Confinement};
pub use host::connect as connect_host_socket;
pub use host::{parse_connect_line, ConnectLine, MAX_CONNECT_LINE};
pub use persist::{VsockPersistError, VsockState};

/// virtio device type of a vsock device.
pub const TYPE_VSOCK: u32 = 19;
/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the RX queue (packets to the guest).
pub const RX_INDEX: usize = 0;
/// Index of the TX queue (packets from the guest).
pub const TX_INDEX: usize = 1;
/// Index of the event queue.
pub const EVQ_INDEX: usize = 2;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];
/// How long a host program waits for the guest to answer its `CONNECT`
/// (and may take to send that line at all), and how long a closing
/// connection may wait for the guest's RST or a slow host reader before it
/// is reset (Firecracker uses 2 s for both).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// TX chains handled per wakeup before yielding to the event loop.
const TX_PER_TURN: usize = crate::virtio::chain::CHAINS_PER_TURN;
/// RX packets delivered per wakeup before yielding to the event loop.
const RX_PER_TURN: usize = crate::virtio::chain::CHAINS_PER_TURN;

/// How the VMM describes the vsock device (from the VM configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's CID (3 or more; 0–2 and `u32::MAX` are reserved).
    pub guest_cid: u64,
    /// Where the host listener is created; guest connections to port P go
    /// to `<uds_path>_<P>`.
    pub uds_path: PathBuf,
}

/// Why a vsock device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The CID is reserved or does not fit a 32-bit `sockaddr_vm`.
    #[error("vsock: guest CID {0} is invalid (must be 3..=4294967294)")]
    BadCid(u64),
    /// The host listener could not be created.
    #[error("vsock: listening on {}: {source}", .path.display())]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// Creating the queue eventfds failed.
    #[error("vsock: creating eventfds: {0}")]
    EventFd(#[source] io::Error),
}

/// Traffic, connection and error counters (for metrics and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VsockCounters {
    /// Packets delivered to the guest.
    pub rx_packets: u64,
    /// Payload bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Packets taken from the guest (valid ones).
    pub tx_packets: u64,
    /// Payload bytes taken from the guest.
    pub tx_bytes: u64,
    /// Connections set up (either direction).
    pub conns_opened: u64,
    /// Connections torn down (reset, closed, timed out).
    pub conns_reset: u64,
    /// Malformed packets or chains, protocol violations, bad CONNECT lines.
    pub errors: u64,
    /// Bytes read from a host socket that never reached the guest (should
    /// stay 0: reads are sized to the guest's buffer and credit).
    pub host_bytes_dropped: u64,
    /// Guest data discarded before reaching the host (a connection reset
    /// with bytes still buffered, or data beyond the guest's credit).
    pub guest_bytes_dropped: u64,
}

/// What exists only while the driver has the device running.
struct Active {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    evq: Queue,
    interrupt: Arc<IrqTrigger>,
}

/// A virtio-vsock device (see the module docs).
pub struct Vsock {
    guest_cid: u64,
    acked_features: u64,
    muxer: Muxer,
    queue_evts: Vec<EventFd>,
    active: Option<Active>,
    /// A TRANSPORT_RESET event is owed to the driver (after a restore).
    reset_event_pending: bool,
    /// Where a restored device's queues were, applied at its next activation.
    restored: Option<super::PendingRestore>,
    needs_reset: bool,
    segs: Vec<Segment>,
    tx_payload: Vec<u8>,
    rx_buf: Vec<u8>,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .field("muxer", &self.muxer)
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

impl Vsock {
    /// Creates the device and its host listener (a stale socket file at
    /// `uds_path` is replaced; any other file there is an error).
    pub fn new(config: VsockConfig) -> Result<Self, VsockError> {
        Self::with_connect_timeout(config, CONNECT_TIMEOUT)
    }

    /// [`Vsock::new`] with another bound on how long a host program waits
    /// for its `CONNECT` to be answered.
    pub fn with_connect_timeout(
        config: VsockConfig,
        timeout: Duration,
    ) -> Result<Self, VsockError> {
        let cid = config.guest_cid;
        if !(3..u64::from(u32::MAX)).contains(&cid) {
            return Err(VsockError::BadCid(cid));
        }
        let muxer =
            Muxer::new(cid, &config.uds_path, timeout).map_err(|source| VsockError::Listen {
                path: config.uds_path.clone(),
                source,
            })?;
        let queue_evts = (0..QUEUE_SIZES.len())
            .map(|_| EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()
            .map_err(VsockError::EventFd)?;
        Ok(Self {
            guest_cid: cid,
            acked_features: 0,
            muxer,
            queue_evts,
            active: None,
            reset_event_pending: false,
            restored: None,
            needs_reset: false,
            segs: Vec::new(),
            tx_payload: Vec::with_capacity(MAX_PAYLOAD),
            rx_buf: vec![0; MAX_PAYLOAD],
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Traffic and error counters.
    pub fn vsock_counters(&self) -> &VsockCounters {
        &self.muxer.counters
    }

    /// Live connections.
    pub fn connection_count(&self) -> usize {
        self.muxer.conns.len()
    }

    /// Host-bound bytes buffered across all connections (bounded by
    /// [`connection::CONN_BUF_SIZE`] per connection).
    pub fn host_bound_buffered(&self) -> usize {
        self.muxer.conns.values().map(|c| c.buffered()).sum()
    }

    /// Host connects the helper thread has been asked for and whose result
    /// the device has not taken yet (it takes them when [`host_events_fd`]
    /// is readable). The fuzzer waits for zero so that each input's
    /// effects are complete, and reproducible, before the next one.
    ///
    /// [`host_events_fd`]: Vsock::host_events_fd
    pub fn connects_in_flight(&self) -> usize {
        self.muxer.connector.in_flight()
    }

    /// The fd of the host sockets' epoll set (readable when one has news).
    pub fn host_events_fd(&self) -> std::os::fd::RawFd {
        self.muxer.epoll_fd()
    }
}
