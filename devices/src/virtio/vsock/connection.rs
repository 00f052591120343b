//! One stream connection between a guest socket and a host Unix socket.
//!
//! Guest → host: RW payloads are written straight to the (non-blocking)
//! host socket; what it does not take waits in a buffer of at most
//! [`CONN_BUF_SIZE`] bytes, which is exactly the `buf_alloc` advertised to
//! the guest, so a guest honouring its credit can never overflow it and one
//! that does not is reset. `fwd_cnt` counts bytes handed to the host socket.
//!
//! Host → guest: data is read from the host socket only while the guest has
//! credit (`peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`) and an RX buffer to
//! put it in; the socket is polled edge-triggered and `host_readable`
//! remembers that there may be more to read.

use std::io::{self, Read};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::packet::{Header, Op, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// Receive buffer per connection advertised to the guest (`buf_alloc`) and
/// the bound on host-bound bytes held for a slow host reader.
pub const CONN_BUF_SIZE: u32 = 64 * 1024;
/// Send a CREDIT_UPDATE once the guest's view of our free space drops below
/// this and we have freed at least as much.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 4;

/// Identifies a connection: (host-side port, guest-side port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    /// Our port (the host service port, or the one flint assigned).
    pub local_port: u32,
    /// The guest socket's port.
    pub peer_port: u32,
}

/// Why a connection must be reset.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The guest broke the protocol for this connection.
    #[error("protocol: {0}")]
    Protocol(&'static str),
    /// The host socket failed.
    #[error("host socket: {0}")]
    Host(#[from] io::Error),
}

/// What reading the host socket gave.
pub enum HostRead {
    /// `n` bytes.
    Data(usize),
    /// Nothing for now.
    Empty,
    /// The host will send no more.
    Eof,
}

/// A connection's state (see the module docs).
pub struct Connection {
    pub(super) stream: UnixStream,
    pub(super) key: ConnKey,
    /// The host socket's epoll token (see `Muxer::register`).
    pub(super) token: u64,
    /// `Some(deadline)` while a host-initiated REQUEST awaits the guest's
    /// RESPONSE.
    pub(super) connecting: Option<Instant>,
    /// `Some(deadline)` once the connection is closing (the guest shut
    /// down both ways, or we told it the host did): it is reset then if
    /// not finished, so neither a silent guest nor a stuck host reader can
    /// hold it forever.
    pub(super) closing: Option<Instant>,
    host_buf: Vec<u8>,
    /// Leading bytes of `host_buf` that are flint's own (`OK <port>`), not
    /// guest data: they neither use nor return credit.
    own_pending: usize,
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    /// The host socket may have data (an edge was seen, no WouldBlock yet).
    pub(super) host_readable: bool,
    /// The host socket hung up (both directions).
    pub(super) host_hup: bool,
    host_eof: bool,
    guest_shut: u32,
    /// Control packets owed to the guest.
    pub(super) send_request: bool,
    pub(super) send_response: bool,
    send_credit_update: bool,
    send_shutdown: u32,
    /// Whether EPOLLOUT is currently registered for the host socket.
    pub(super) out_registered: bool,
}

impl Connection {
    /// A host program asked (`CONNECT <port>`) for a guest listener: a
    /// REQUEST is owed to the guest, the answer is due by `deadline`.
    pub fn host_initiated(stream: UnixStream, key: ConnKey, deadline: Instant) -> Self {
        let mut c = Self::new(stream, key);
        c.connecting = Some(deadline);
        c.send_request = true;
        c
    }

    /// The guest's REQUEST reached a host listener: a RESPONSE is owed.
    pub fn guest_initiated(stream: UnixStream, key: ConnKey, hdr: &Header) -> Self {
        let mut c = Self::new(stream, key);
        c.update_peer_credit(hdr);
        c.send_response = true;
        c
    }

    fn new(stream: UnixStream, key: ConnKey) -> Self {
        Self {
            stream,
            key,
            token: 0,
            connecting: None,
            closing: None,
            host_buf: Vec::new(),
            own_pending: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            host_readable: true,
            host_hup: false,
            host_eof: false,
            guest_shut: 0,
            send_request: false,
            send_response: false,
            send_credit_update: false,
            send_shutdown: 0,
            out_registered: false,
        }
    }

    /// Every guest packet carries its receive-buffer state.
    pub fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
    }

    /// How many more bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Host-bound bytes waiting for the host socket (never more than
    /// [`CONN_BUF_SIZE`] of guest data plus flint's `OK` line).
    pub fn buffered(&self) -> usize {
        self.host_buf.len()
    }

    /// Guest data among [`Connection::buffered`].
    pub fn buffered_guest_bytes(&self) -> usize {
        self.host_buf.len() - self.own_pending
    }

    /// The guest's RESPONSE arrived: the connection is up.
    pub fn established(&mut self) {
        self.connecting = None;
    }

    /// Data from the guest. Returns whether bytes are left waiting for the
    /// host socket (EPOLLOUT wanted).
    pub fn recv_rw(&mut self, payload: &[u8]) -> Result<bool, ConnError> {
        if self.connecting.is_some() {
            return Err(ConnError::Protocol("data before RESPONSE"));
        }
        if self.guest_shut & SHUTDOWN_SEND != 0 {
            return Err(ConnError::Protocol("data after SHUTDOWN(SEND)"));
        }
        let guest_bytes = self.host_buf.len() - self.own_pending;
        if guest_bytes + payload.len() > CONN_BUF_SIZE as usize {
            return Err(ConnError::Protocol("data beyond the credit given"));
        }
        self.rx_cnt = self.rx_cnt.wrapping_add(payload.len() as u32);
        let mut rest = payload;
        if self.host_buf.is_empty() {
            let n = write_some(&mut self.stream, rest)?;
            self.consumed(n);
            rest = &rest[n..];
        }
        self.host_buf.extend_from_slice(rest);
        Ok(!self.host_buf.is_empty())
    }

    /// Queues bytes of our own for the host (the `OK <port>` line); they do
    /// not count against the guest's credit.
    pub fn queue_host_line(&mut self, line: &[u8]) {
        if self.host_buf.len() == self.own_pending {
            self.host_buf.extend_from_slice(line);
            self.own_pending += line.len();
        }
    }

    fn consumed(&mut self, n: usize) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        let guest_view =
            CONN_BUF_SIZE.saturating_sub(self.rx_cnt.wrapping_sub(self.last_fwd_cnt_sent));
        let freed = self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent);
        if guest_view < CREDIT_UPDATE_THRESHOLD && freed >= CREDIT_UPDATE_THRESHOLD {
            self.send_credit_update = true;
        }
    }

    /// The host socket can take more: writes what is waiting. Returns
    /// whether bytes are still waiting.
    pub fn flush(&mut self) -> Result<bool, ConnError> {
        while !self.host_buf.is_empty() {
            let n = write_some(&mut self.stream, &self.host_buf)?;
            if n == 0 {
                break;
            }
            self.host_buf.drain(..n);
            let own = n.min(self.own_pending);
            self.own_pending -= own;
            self.consumed(n - own);
        }
        if self.host_buf.is_empty() && self.host_buf.capacity() > 4096 {
            // Idle connections do not keep a full buffer's worth of memory.
            self.host_buf = Vec::new();
        }
        if self.host_buf.is_empty() && self.guest_shut & SHUTDOWN_SEND != 0 {
            // The guest's half-close reaches the host once its data has.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Ok(!self.host_buf.is_empty())
    }

    /// The guest shut down (part of) the connection. Returns true when the
    /// connection is fully closed and can be reset once flushed.
    pub fn recv_shutdown(&mut self, flags: u32) -> bool {
        self.guest_shut |= flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
        if flags & SHUTDOWN_RCV != 0 {
            let _ = self.stream.shutdown(Shutdown::Read);
        }
        if flags & SHUTDOWN_SEND != 0 && self.host_buf.is_empty() {
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        self.guest_shut == SHUTDOWN_RCV | SHUTDOWN_SEND
    }

    /// Whether the guest closed both ways and everything reached the host.
    pub fn finished(&self) -> bool {
        self.guest_shut == SHUTDOWN_RCV | SHUTDOWN_SEND && self.host_buf.is_empty()
    }

    /// The guest asked for our buffer state.
    pub fn credit_requested(&mut self) {
        self.send_credit_update = true;
    }

    /// Whether host data may be read for the guest now.
    pub fn can_read_host(&self) -> bool {
        self.connecting.is_none()
            && !self.send_request
            && !self.send_response
            && self.host_readable
            && !self.host_eof
            && self.guest_shut & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// Whether the connection owes the guest a packet (or may, once read).
    pub fn has_rx_work(&self) -> bool {
        self.send_request
            || self.send_response
            || self.send_credit_update
            || self.send_shutdown != 0
            || self.can_read_host()
    }

    /// Reads at most `buf.len()` host bytes (the caller caps it by credit).
    pub fn read_host(&mut self, buf: &mut [u8]) -> Result<HostRead, ConnError> {
        loop {
            return match self.stream.read(buf) {
                Ok(0) if !buf.is_empty() => {
                    self.host_eof = true;
                    self.host_readable = false;
                    // We send no more; with a full hang-up the host is gone
                    // both ways and the guest should reset the connection.
                    self.send_shutdown = SHUTDOWN_SEND;
                    if self.host_hup {
                        self.send_shutdown |= SHUTDOWN_RCV;
                    }
                    Ok(HostRead::Eof)
                }
                Ok(n) => Ok(HostRead::Data(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.host_readable = false;
                    Ok(HostRead::Empty)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e.into()),
            };
        }
    }

    /// The next control packet owed (REQUEST, RESPONSE, CREDIT_UPDATE,
    /// SHUTDOWN, in that order), clearing it.
    pub fn take_control(&mut self) -> Option<(Op, u32)> {
        if std::mem::take(&mut self.send_request) {
            return Some((Op::Request, 0));
        }
        if std::mem::take(&mut self.send_response) {
            return Some((Op::Response, 0));
        }
        if std::mem::take(&mut self.send_credit_update) {
            return Some((Op::CreditUpdate, 0));
        }
        if self.send_shutdown != 0 {
            return Some((Op::Shutdown, std::mem::take(&mut self.send_shutdown)));
        }
        None
    }

    /// The header of a packet to the guest; counts RW payload as sent.
    pub fn header(&mut self, guest_cid: u64, op: Op, flags: u32, len: u32) -> Header {
        if op == Op::Rw {
            self.tx_cnt = self.tx_cnt.wrapping_add(len);
        }
        // Any packet carries our buffer state, so no separate update is due.
        self.send_credit_update = false;
        self.last_fwd_cnt_sent = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len,
            type_: TYPE_STREAM,
            op: op as u16,
            flags,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt,
        }
    }
}

/// Writes as much of `data` as the non-blocking socket takes (0 if full).
/// MSG_NOSIGNAL: a host program that went away is an EPIPE error for this
/// connection, never a SIGPIPE for the VMM.
fn write_some(stream: &mut UnixStream, data: &[u8]) -> io::Result<usize> {
    let sock = socket2::SockRef::from(&*stream);
    loop {
        return match sock.send_with_flags(data, libc::MSG_NOSIGNAL) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
    }
}

/// A header for a packet not tied to a live connection (an RST reply).
pub fn rst_header(guest_cid: u64, key: ConnKey) -> Header {
    Header {
        src_cid: HOST_CID,
        dst_cid: guest_cid,
        src_port: key.local_port,
        dst_port: key.peer_port,
        len: 0,
        type_: TYPE_STREAM,
        op: Op::Rst as u16,
        flags: 0,
        buf_alloc: CONN_BUF_SIZE,
        fwd_cnt: 0,
    }
}
