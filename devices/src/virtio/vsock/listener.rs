//! The host-initiated side of the muxer: accepting host programs on the
//! listener, reading their `CONNECT <port>` line, assigning a local port
//! and queueing the REQUEST for the guest.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};

use super::connection::{ConnKey, Connection};
use super::host::{ConnectLine, PendingHost};
use super::muxer::{log_limited, Muxer, FIRST_LOCAL_PORT, MAX_CONNECTIONS};

/// Host programs accepted per listener wakeup.
const ACCEPTS_PER_TURN: usize = 16;

impl Muxer {
    pub(super) fn accept_hosts(&mut self) {
        for _ in 0..ACCEPTS_PER_TURN {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of fds (or similar): the listener would stay
                    // readable and spin the loop; stop watching it until a
                    // connection closes.
                    log::warn!(
                        "vsock: accepting on {}: {e}; pausing the listener",
                        self.uds_path.display()
                    );
                    self.pause_listener(true);
                    return;
                }
            };
            if self.conns.len() + self.pending.len() >= MAX_CONNECTIONS {
                self.host_refusals += 1;
                if self.host_refusals <= 32 || self.host_refusals.is_power_of_two() {
                    log::warn!(
                        "vsock: {MAX_CONNECTIONS} connections open; refusing a host one \
                         (refused so far: {})",
                        self.host_refusals
                    );
                }
                continue;
            }
            let fd = stream.as_raw_fd();
            let token = match stream.set_nonblocking(true).and_then(|_| self.register(fd)) {
                Ok(token) => token,
                Err(e) => {
                    log::warn!("vsock: setting up a host connection: {e}");
                    continue;
                }
            };
            let deadline = Instant::now() + self.connect_timeout;
            let pending = PendingHost::new(stream, token, deadline);
            self.pending.insert(fd, pending);
            self.arm_timer();
            // Its line may have arrived before the socket joined the set.
            self.pending_readable(fd);
        }
    }

    pub(super) fn pending_readable(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        let port = match p.read_line() {
            ConnectLine::Incomplete => return,
            ConnectLine::Bad => {
                self.counters.errors += 1;
                log_limited(
                    self.counters.errors,
                    &"bad CONNECT line from a host program",
                );
                self.drop_pending(fd);
                return;
            }
            ConnectLine::Port(port) => port,
        };
        let Some(p) = self.pending.remove(&fd) else {
            return;
        };
        let Some(local_port) = self.alloc_port() else {
            log::warn!("vsock: no free local port; dropping a host connection");
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        let deadline = Instant::now() + self.connect_timeout;
        let mut conn = Connection::host_initiated(p.stream, key, deadline);
        conn.token = p.token;
        self.conns.insert(key, conn);
        self.by_fd.insert(fd, key);
        self.counters.conns_opened += 1;
        self.arm_timer();
        self.mark_ready(key);
    }

    pub(super) fn drop_pending(&mut self, fd: RawFd) {
        if self.pending.remove(&fd).is_some() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            self.pause_listener(false);
        }
    }

    /// Stops (or resumes) watching the listener.
    pub(super) fn pause_listener(&mut self, pause: bool) {
        if self.listener_paused == pause {
            return;
        }
        let fd = self.listener.as_raw_fd();
        let result = if pause {
            self.epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default())
        } else {
            let ev = EpollEvent::new(EventSet::IN, fd as u64);
            self.epoll.ctl(ControlOperation::Add, fd, ev)
        };
        match result {
            Ok(()) => self.listener_paused = pause,
            Err(e) => log::error!("vsock: watching the listener: {e}"),
        }
    }

    fn alloc_port(&mut self) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.local_port == port) {
                return Some(port);
            }
        }
        None
    }
}
