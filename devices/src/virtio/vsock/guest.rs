//! The muxer's guest side: acting on checked packets from the TX queue, and
//! choosing the next packet for an RX buffer.

use std::os::fd::AsRawFd;
use std::time::Instant;

use super::connection::{rst_header, ConnError, ConnKey, Connection, HostRead};
use super::host;
use super::muxer::{log_limited, Muxer, MAX_CONNECTIONS, MAX_QUEUED_RSTS};
use super::packet::{Header, Op, PacketError, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND};

impl Muxer {
    /// Acts on a packet that passed [`check_header`](super::packet::check_header).
    pub fn handle_guest(&mut self, hdr: &Header, op: Op, payload: &[u8]) {
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if self.connecting.remove(&key).is_some() {
            // The guest spoke before its REQUEST was answered: RST is its
            // right (no answer to it), anything else breaks the protocol.
            if op != Op::Rst {
                self.counters.errors += 1;
                log_limited(
                    self.counters.errors,
                    &format!("{op:?} for connecting {key:?}"),
                );
                self.queue_rst(key);
            }
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            match op {
                Op::Request => self.guest_connect(key, hdr),
                // Never answer an RST: two peers could ping-pong forever.
                Op::Rst => {}
                _ => {
                    log::debug!("vsock: op {op:?} for unknown connection {key:?}; RST");
                    self.queue_rst(key);
                }
            }
            return;
        };
        conn.update_peer_credit(hdr);
        match op {
            Op::Request => {
                self.counters.errors += 1;
                log_limited(self.counters.errors, &format!("REQUEST for live {key:?}"));
                self.kill(key, true);
                return;
            }
            Op::Response => {
                // Only an answer to a REQUEST the guest has actually seen.
                if conn.connecting.is_none() || conn.send_request {
                    self.counters.errors += 1;
                    log_limited(self.counters.errors, &format!("stray RESPONSE for {key:?}"));
                    self.kill(key, true);
                    return;
                }
                conn.established();
                conn.queue_host_line(format!("OK {}\n", key.local_port).as_bytes());
                match conn.flush() {
                    Ok(waiting) => self.set_out(key, waiting),
                    Err(e) => return self.host_error(key, &e),
                }
            }
            Op::Rst => {
                self.kill(key, false);
                return;
            }
            Op::Shutdown => {
                let full = conn.recv_shutdown(hdr.flags);
                if conn.finished() {
                    // Linux waits for our RST to complete its close.
                    self.kill(key, true);
                    return;
                }
                if full && conn.closing.is_none() {
                    conn.closing = Some(Instant::now() + self.connect_timeout);
                    self.arm_timer();
                }
            }
            Op::Rw => match conn.recv_rw(payload) {
                Ok(waiting) => self.set_out(key, waiting),
                Err(e) => {
                    if let ConnError::Protocol(_) = e {
                        self.counters.errors += 1;
                        log_limited(self.counters.errors, &format!("connection {key:?}: {e}"));
                    } else {
                        log::debug!("vsock: connection {key:?}: {e}; resetting");
                    }
                    self.counters.guest_bytes_dropped += payload.len() as u64;
                    self.kill(key, true);
                    return;
                }
            },
            Op::CreditUpdate => {}
            Op::CreditRequest => conn.credit_requested(),
        }
        // New credit, or a control packet owed.
        self.mark_ready(key);
    }

    /// A packet failed its checks: reset the connection it names, if its
    /// addressing was sound and the connection exists; otherwise just drop.
    pub fn reject_guest(&mut self, hdr: Option<&Header>, why: &PacketError) {
        self.counters.errors += 1;
        log_limited(
            self.counters.errors,
            &format!("bad packet from the guest: {why}"),
        );
        let sound = |h: &&Header| h.src_cid == self.guest_cid && h.dst_cid == HOST_CID;
        let Some(hdr) = hdr.filter(sound).filter(|_| why.names_connection()) else {
            return;
        };
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if self.conns.contains_key(&key) {
            self.kill(key, true);
        }
    }

    /// Whether some packet may be owed to the guest.
    pub fn has_rx_work(&self) -> bool {
        !self.rsts.is_empty() || !self.rx_ready.is_empty()
    }

    /// The next packet for the guest, with at most `buf.len()` payload bytes
    /// (read into `buf`): queued RSTs first, then connections round-robin,
    /// each giving one packet per turn. `None` when nothing is owed now.
    pub fn next_rx(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        if let Some(hdr) = self.take_rst() {
            return Some((hdr, 0));
        }
        let guest_cid = self.guest_cid;
        while let Some(key) = self.pop_ready() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            if conn.can_read_host() && !buf.is_empty() {
                let want = buf.len().min(conn.peer_credit() as usize);
                match conn.read_host(&mut buf[..want]) {
                    Ok(HostRead::Data(n)) => {
                        let hdr = conn.header(guest_cid, Op::Rw, 0, n as u32);
                        self.mark_ready(key);
                        return Some((hdr, n));
                    }
                    Ok(HostRead::Empty) | Ok(HostRead::Eof) => {}
                    Err(e) => {
                        self.host_error(key, &e);
                        if let Some(hdr) = self.take_rst() {
                            return Some((hdr, 0));
                        }
                        continue;
                    }
                }
            }
            if let Some((op, flags)) = conn.take_control() {
                let hdr = conn.header(guest_cid, op, flags, 0);
                let more = conn.has_rx_work();
                if op == Op::Shutdown && flags == SHUTDOWN_RCV | SHUTDOWN_SEND {
                    // The host is gone: the guest should answer with RST.
                    conn.closing = Some(Instant::now() + self.connect_timeout);
                    self.arm_timer();
                }
                if more {
                    self.mark_ready(key);
                }
                return Some((hdr, 0));
            }
        }
        None
    }

    /// Owes the guest an RST for `key` (no connection behind it).
    pub(super) fn queue_rst(&mut self, key: ConnKey) {
        if self.rsts.len() < MAX_QUEUED_RSTS {
            self.rsts.push_back(key);
        } else {
            self.counters.errors += 1;
            log_limited(self.counters.errors, &"RST queue full; dropping an RST");
        }
    }

    /// The next RST owed, as a header.
    pub(super) fn take_rst(&mut self) -> Option<Header> {
        let key = self.rsts.pop_front()?;
        Some(rst_header(self.guest_cid, key))
    }

    /// Has the connector thread connect a guest REQUEST to
    /// `<uds_path>_<port>` (see [`Muxer::guest_connects_done`]).
    pub(super) fn guest_connect(&mut self, key: ConnKey, hdr: &Header) {
        if self.conns.len() + self.pending.len() + self.connecting.len() >= MAX_CONNECTIONS {
            log::warn!("vsock: {MAX_CONNECTIONS} connections open; refusing the guest's");
            self.queue_rst(key);
            return;
        }
        self.next_connect_id += 1;
        let id = self.next_connect_id;
        let path = host::port_path(&self.uds_path, key.local_port);
        if !self.connector.submit(key, id, path) {
            log::warn!("vsock: the connector thread is gone; refusing the guest's connection");
            self.queue_rst(key);
            return;
        }
        self.connecting.insert(key, (id, *hdr));
    }

    /// The connector's results: each still-wanted connection joins the
    /// table (and the guest gets its RESPONSE), each failure an RST.
    /// Results for requests the guest or a reset abandoned are dropped.
    pub(super) fn guest_connects_done(&mut self) {
        for (key, id, result) in self.connector.take_results() {
            let Some(&(want, hdr)) = self.connecting.get(&key) else {
                continue;
            };
            if want != id {
                continue;
            }
            self.connecting.remove(&key);
            let stream = match result {
                Ok(s) => s,
                Err(e) => {
                    log::debug!("vsock: guest connect to port {}: {e}", key.local_port);
                    self.queue_rst(key);
                    continue;
                }
            };
            let fd = stream.as_raw_fd();
            let token = match self.register(fd) {
                Ok(token) => token,
                Err(e) => {
                    log::warn!("vsock: watching host socket: {e}");
                    self.queue_rst(key);
                    continue;
                }
            };
            let mut conn = Connection::guest_initiated(stream, key, &hdr);
            conn.token = token;
            // The host program may have hung up while the result waited:
            // its epoll event comes next turn, after the RX path may have
            // read EOF, so note a hang-up now (as a connect made here
            // would have seen it).
            conn.host_hup = hung_up(fd);
            self.conns.insert(key, conn);
            self.by_fd.insert(fd, key);
            self.counters.conns_opened += 1;
            self.mark_ready(key);
        }
    }
}

/// Whether the peer of socket `fd` has hung up (a zero-timeout `poll`).
fn hung_up(fd: std::os::fd::RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd for the one entry passed, and a zero
    // timeout never blocks.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n == 1 && pfd.revents & libc::POLLHUP != 0
}
