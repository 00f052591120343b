//! The connection table and everything on the host side of it: the listener,
//! host programs still sending their `CONNECT` line, live connections, and
//! the timer bounding how long a host program waits for the guest.
//!
//! All host sockets are non-blocking and sit in the muxer's own epoll set
//! (edge-triggered; EPOLLOUT only while a connection has host-bound bytes
//! waiting), whose fd the device registers with the VMM's event manager.
//! Keeping the set private lets connections come and go from any context
//! (guest packets, device reset, restore) without going through
//! `EventOps`, and lets tests drive the device without an event loop.
//! Work per wakeup is bounded ([`EVENTS_PER_TURN`]); epoll reports the rest
//! on the next turn, so one busy socket cannot starve the others.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{ConnKey, Connection};
use super::connector::Connector;
use super::host::{self, PendingHost};
use super::packet::Header;
use super::VsockCounters;

/// Most host connections (live plus still sending `CONNECT`) at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Host socket events handled per wakeup.
pub const EVENTS_PER_TURN: usize = 32;
/// RSTs kept for connections already gone; more are dropped (the guest
/// starves the RX queue, and its sockets time out on their own).
pub(super) const MAX_QUEUED_RSTS: usize = 2 * MAX_CONNECTIONS;
/// First port flint assigns to host-initiated connections (as Firecracker).
pub(super) const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// Logs at most the first 32 occurrences, then at powers of two.
pub(super) fn log_limited(count: u64, msg: &dyn std::fmt::Display) {
    if count <= 32 || count.is_power_of_two() {
        log::warn!("vsock: {msg} (errors so far: {count})");
    }
}

/// The connection table and host sockets (see the module docs).
pub struct Muxer {
    pub(super) guest_cid: u64,
    pub(super) uds_path: PathBuf,
    pub(super) listener: UnixListener,
    pub(super) epoll: Epoll,
    pub(super) timer: TimerFd,
    pub(super) connect_timeout: Duration,
    pub(super) conns: HashMap<ConnKey, Connection>,
    pub(super) by_fd: HashMap<RawFd, ConnKey>,
    pub(super) pending: HashMap<RawFd, PendingHost>,
    /// Guest REQUESTs whose host connect the connector thread is making:
    /// the request's id (results for an older request with the same key
    /// are dropped) and the REQUEST's header.
    pub(super) connecting: HashMap<ConnKey, (u64, Header)>,
    /// Makes the host-side `connect` calls (see `connector`).
    pub(super) connector: Connector,
    pub(super) next_connect_id: u64,
    /// Connections that may owe the guest a packet, served round-robin.
    pub(super) rx_ready: VecDeque<ConnKey>,
    rx_queued: HashSet<ConnKey>,
    /// RSTs owed for connections that no longer exist.
    pub(super) rsts: VecDeque<ConnKey>,
    pub(super) next_port: u32,
    /// Whether the listener is out of the epoll set (accept failing).
    pub(super) listener_paused: bool,
    /// Generation of the last host socket token handed out.
    next_gen: u32,
    /// Host programs refused for lack of room (for throttled logs).
    pub(super) host_refusals: u64,
    pub(super) counters: VsockCounters,
}

impl std::fmt::Debug for Muxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Muxer")
            .field("uds_path", &self.uds_path)
            .field("connections", &self.conns.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Muxer {
    /// Binds the listener at `uds_path` and sets up the epoll set.
    pub fn new(guest_cid: u64, uds_path: &Path, connect_timeout: Duration) -> io::Result<Self> {
        let listener = host::bind_listener(uds_path)?;
        let epoll = Epoll::new()?;
        let timer = TimerFd::new().map_err(io::Error::from)?;
        let connector = Connector::spawn()?;
        // The timer is edge-triggered and never read: each expiry is one
        // event, and no read can block after a re-arm cleared the count.
        let timer_set = EventSet::IN | EventSet::EDGE_TRIGGERED;
        for (fd, set) in [
            (listener.as_raw_fd(), EventSet::IN),
            (timer.as_raw_fd(), timer_set),
            (connector.ready_fd(), EventSet::IN),
        ] {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(set, fd as u64))?;
        }
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            epoll,
            timer,
            connect_timeout,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            pending: HashMap::new(),
            connecting: HashMap::new(),
            connector,
            next_connect_id: 0,
            rx_ready: VecDeque::new(),
            rx_queued: HashSet::new(),
            rsts: VecDeque::new(),
            next_port: FIRST_LOCAL_PORT,
            listener_paused: false,
            next_gen: 0,
            host_refusals: 0,
            counters: VsockCounters::default(),
        })
    }

    /// The epoll set's fd, readable while a host socket has news.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// The listener's path.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Handles up to [`EVENTS_PER_TURN`] host socket events.
    pub fn process_host_events(&mut self) {
        let mut events = [EpollEvent::default(); EVENTS_PER_TURN];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("vsock: polling host sockets: {e}");
                }
                return;
            }
        };
        for ev in &events[..n] {
            let token = ev.data();
            let fd = token as u32 as RawFd;
            let set = ev.event_set();
            if token == self.listener.as_raw_fd() as u64 {
                self.accept_hosts();
            } else if token == self.timer.as_raw_fd() as u64 {
                self.expire();
            } else if token == self.connector.ready_fd() as u64 {
                self.guest_connects_done();
            } else if self.pending.get(&fd).is_some_and(|p| p.token == token) {
                self.pending_readable(fd);
            } else if let Some(&key) = self.by_fd.get(&fd) {
                if self.conns.get(&key).is_some_and(|c| c.token == token) {
                    self.conn_event(key, set);
                }
            }
            // Anything else is stale: its socket closed earlier this turn.
        }
    }

    /// Adds a host socket to the epoll set (edge-triggered EPOLLIN) and
    /// returns its token: the fd in the low 32 bits, a fresh generation in
    /// the high ones, so an event still queued for a closed socket is never
    /// applied to a new one that reused its fd number.
    pub(super) fn register(&mut self, fd: RawFd) -> io::Result<u64> {
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let token = (u64::from(self.next_gen) << 32) | u64::from(fd as u32);
        let set = EventSet::IN | EventSet::EDGE_TRIGGERED;
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(set, token))?;
        Ok(token)
    }

    /// Turns EPOLLOUT on or off for a connection (only on change).
    pub(super) fn set_out(&mut self, key: ConnKey, want: bool) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.out_registered == want {
            return;
        }
        let fd = conn.stream.as_raw_fd();
        let mut set = EventSet::IN | EventSet::EDGE_TRIGGERED;
        if want {
            set |= EventSet::OUT;
        }
        let event = EpollEvent::new(set, conn.token);
        match self.epoll.ctl(ControlOperation::Modify, fd, event) {
            Ok(()) => conn.out_registered = want,
            Err(e) => {
                log::error!("vsock: watching host socket {fd}: {e}");
                self.kill(key, true);
            }
        }
    }

    /// Arms the timer for the earliest connect or close deadline.
    pub(super) fn arm_timer(&mut self) {
        let now = Instant::now();
        let earliest = self
            .pending
            .values()
            .map(|p| p.deadline)
            .chain(
                self.conns
                    .values()
                    .filter_map(|c| c.connecting.or(c.closing)),
            )
            .min();
        let Some(deadline) = earliest else {
            return;
        };
        let wait = deadline
            .saturating_duration_since(now)
            .max(Duration::from_millis(1));
        if let Err(e) = self.timer.reset(wait, None) {
            log::error!("vsock: arming the connect timer: {e}");
        }
    }

    fn conn_event(&mut self, key: ConnKey, set: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP) {
            conn.host_readable = true;
        }
        if set.contains(EventSet::HANG_UP) {
            conn.host_hup = true;
        }
        if set.contains(EventSet::OUT) {
            match conn.flush() {
                Ok(waiting) => {
                    let finished = conn.finished();
                    self.set_out(key, waiting);
                    if finished {
                        self.kill(key, true);
                        return;
                    }
                }
                Err(e) => {
                    self.host_error(key, &e);
                    return;
                }
            }
        }
        if set.contains(EventSet::ERROR) && !set.contains(EventSet::IN) {
            self.host_error(key, &"socket error");
            return;
        }
        self.mark_ready(key);
    }

    pub(super) fn host_error(&mut self, key: ConnKey, why: &dyn std::fmt::Display) {
        log::debug!("vsock: connection {key:?}: {why}; resetting");
        self.kill(key, true);
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let late: Vec<RawFd> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&fd, _)| fd)
            .collect();
        for fd in late {
            log::debug!("vsock: host program sent no CONNECT line in time");
            self.drop_pending(fd);
        }
        let late: Vec<ConnKey> = self
            .conns
            .values()
            .filter(|c| c.connecting.or(c.closing).is_some_and(|d| d <= now))
            .map(|c| c.key)
            .collect();
        for key in late {
            log::debug!("vsock: connection {key:?} not answered or closed in time; RST");
            self.kill(key, true);
        }
        self.arm_timer();
    }

    /// Queues `key` for the RX path unless it is already queued.
    pub(super) fn mark_ready(&mut self, key: ConnKey) {
        if self.rx_queued.insert(key) {
            self.rx_ready.push_back(key);
        }
    }

    /// Takes the next queued connection key off the RX round-robin.
    pub(super) fn pop_ready(&mut self) -> Option<ConnKey> {
        let key = self.rx_ready.pop_front()?;
        self.rx_queued.remove(&key);
        Some(key)
    }

    /// Closes a connection's host socket and forgets it; with `rst`, the
    /// guest is told.
    pub(super) fn kill(&mut self, key: ConnKey, rst: bool) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        self.counters.guest_bytes_dropped += conn.buffered_guest_bytes() as u64;
        let fd = conn.stream.as_raw_fd();
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        self.by_fd.remove(&fd);
        drop(conn);
        self.pause_listener(false);
        self.counters.conns_reset += 1;
        if rst {
            self.queue_rst(key);
        }
    }

    /// Drops every connection without telling the guest (device reset or a
    /// fresh start after restore: the guest side is gone or will be reset).
    pub fn close_all(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.kill(key, false);
        }
        self.connecting.clear();
        self.rx_ready.clear();
        self.rx_queued.clear();
        self.rsts.clear();
    }
}
