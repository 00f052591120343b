//! The in-process network stack that answers ARP and TCP port 80 for the MMDS
//! address, so guest metadata traffic never reaches the host network.
//!
//! Wiring (virtio-net, done by the VMM): on TX, offer every guest frame to
//! [`MmdsNetStack::handle_frame`] and do not write it to the tap when it returns
//! true; on RX, before reading the tap, fill guest buffers from
//! [`MmdsNetStack::next_frame`] while it returns frames; call
//! [`MmdsNetStack::tick`] when [`MmdsNetStack::next_timeout`] passes (e.g. from a
//! timerfd) and then drain `next_frame` again.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::store::Mmds;
use crate::tcp::{Conn, Verdict};
use crate::wire::{self, flags, Segment, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETH_HLEN};

/// Connections served at once (Firecracker's default).
pub const DEFAULT_MAX_CONNECTIONS: usize = 30;
/// TCP port served.
pub const MMDS_TCP_PORT: u16 = 80;
/// Queued RST segments beyond which further ones are dropped (Firecracker's default).
pub const MAX_PENDING_RESETS: usize = 100;
const MAX_PENDING_ARP: usize = 8;
/// A connection silent this long may be evicted to make room for a new one.
pub const IDLE_EVICT: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct PendingRst {
    mac: [u8; 6],
    ip: Ipv4Addr,
    local_port: u16,
    remote_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
}

/// How the guest filled the TCP checksum of a transmitted frame, from its virtio-net header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxChecksum {
    /// Complete checksum (header flags 0): verified, bad frames dropped.
    Complete,
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM` set: the guest offloaded the TCP checksum to
    /// the device, so the field holds only the pseudo-header sum and is not verified
    /// (the frame crossed guest memory only; the IPv4 header checksum still is).
    Partial,
}

/// MMDS's ARP/IPv4/TCP endpoint on one guest network interface.
#[derive(Debug)]
pub struct MmdsNetStack {
    mac: [u8; 6],
    ip: Ipv4Addr,
    mmds: Arc<Mutex<Mmds>>,
    max_conns: usize,
    conns: Vec<Conn>,
    next_conn: usize,
    arp_replies: VecDeque<([u8; 6], Ipv4Addr)>,
    resets: VecDeque<PendingRst>,
    rng: u64,
    ip_id: u16,
}

impl MmdsNetStack {
    /// A stack answering as `mac`/`ipv4` (see [`crate::config`] for the defaults),
    /// serving `mmds`, with at most [`DEFAULT_MAX_CONNECTIONS`] connections.
    pub fn new(mac: [u8; 6], ipv4: Ipv4Addr, mmds: Arc<Mutex<Mmds>>) -> Self {
        Self::with_max_connections(mac, ipv4, mmds, DEFAULT_MAX_CONNECTIONS)
    }

    /// As [`MmdsNetStack::new`] with a different connection bound (at least 1).
    pub fn with_max_connections(
        mac: [u8; 6],
        ipv4: Ipv4Addr,
        mmds: Arc<Mutex<Mmds>>,
        max: usize,
    ) -> Self {
        let seed = getrandom::u64().unwrap_or_else(|_| {
            u64::from(std::process::id()) ^ (Instant::now().elapsed().as_nanos() as u64)
        });
        MmdsNetStack {
            mac,
            ip: ipv4,
            mmds,
            max_conns: max.max(1),
            conns: Vec::new(),
            next_conn: 0,
            arp_replies: VecDeque::new(),
            resets: VecDeque::new(),
            rng: seed | 1,
            ip_id: 0,
        }
    }

    /// The address served.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ip
    }

    /// Moves the stack to another address (`PUT /mmds/config` before boot); open
    /// connections, which belong to the old one, are dropped.
    pub fn set_ipv4(&mut self, ipv4: Ipv4Addr) {
        self.ip = ipv4;
        self.conns.clear();
        self.resets.clear();
        self.arp_replies.clear();
    }

    /// Number of open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Cheap test whether a guest frame is addressed to MMDS (ARP for, or IPv4 to, its
    /// address); such frames are always consumed by [`MmdsNetStack::handle_frame`].
    pub fn is_mmds_frame(&self, frame: &[u8]) -> bool {
        match wire::ethertype(frame) {
            Some(ETHERTYPE_ARP) => {
                wire::parse_arp(&frame[ETH_HLEN..]).is_some_and(|a| a.tpa == self.ip)
            }
            Some(ETHERTYPE_IPV4) => wire::ipv4_dst(frame) == Some(self.ip),
            _ => false,
        }
    }

    /// Offers a frame the guest transmitted; true if it was MMDS's (consumed, also when
    /// malformed and dropped) and must not go to the tap.
    pub fn handle_frame(&mut self, frame: &[u8]) -> bool {
        self.handle_frame_at(frame, Instant::now())
    }

    /// [`MmdsNetStack::handle_frame`] at an explicit time (tests, fuzzing).
    pub fn handle_frame_at(&mut self, frame: &[u8], now: Instant) -> bool {
        self.handle_tx_frame(frame, TxChecksum::Complete, now)
    }

    /// The full TX entry point: `frame` without the virtio-net header, `csum` from that
    /// header's flags. Returns true if the frame was MMDS's (consumed).
    pub fn handle_tx_frame(&mut self, frame: &[u8], csum: TxChecksum, now: Instant) -> bool {
        if !self.is_mmds_frame(frame) {
            return false;
        }
        let Some(src_mac) = wire::src_mac(frame) else {
            return true;
        };
        if wire::ethertype(frame) == Some(ETHERTYPE_ARP) {
            if let Some(arp) = wire::parse_arp(&frame[ETH_HLEN..]) {
                if arp.oper == 1 && self.arp_replies.len() < MAX_PENDING_ARP {
                    self.arp_replies.push_back((arp.sha, arp.spa));
                }
            }
            return true;
        }
        let verify = csum == TxChecksum::Complete;
        let seg = match wire::parse_ipv4_tcp_with(&frame[ETH_HLEN..], verify) {
            Ok(seg) => seg,
            Err(e) => {
                log::debug!("mmds: dropped guest packet: {e}");
                return true;
            }
        };
        self.handle_segment(src_mac, &seg, now);
        true
    }

    fn handle_segment(&mut self, mac: [u8; 6], seg: &Segment, now: Instant) {
        if seg.dst_port != MMDS_TCP_PORT {
            return self.reset_for(mac, seg);
        }
        let found = self
            .conns
            .iter()
            .position(|c| c.remote_ip == seg.src_ip && c.remote_port == seg.src_port);
        if let Some(i) = found {
            let mmds = self.mmds.clone();
            let mut guard = lock(&mmds);
            let conn = &mut self.conns[i];
            conn.remote_mac = mac;
            if conn.receive(seg, &mut guard, now) == Verdict::Remove || conn.is_done() {
                self.conns.remove(i);
            }
            return;
        }
        let syn_only =
            seg.flags & (flags::SYN | flags::ACK | flags::RST | flags::FIN) == flags::SYN;
        if !syn_only {
            return self.reset_for(mac, seg);
        }
        if self.conns.len() >= self.max_conns && !self.evict_one(now) {
            return self.reset_for(mac, seg);
        }
        let iss = self.random_u32();
        self.conns.push(Conn::new(mac, seg, iss, now));
    }

    /// Frees a slot held by a lingering or idle connection (resetting it); false if none.
    fn evict_one(&mut self, now: Instant) -> bool {
        let victim = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                c.is_lingering() || now.saturating_duration_since(c.last_active) >= IDLE_EVICT
            })
            .min_by_key(|(_, c)| c.last_active)
            .map(|(i, _)| i);
        let Some(i) = victim else {
            return false;
        };
        let c = self.conns.remove(i);
        let (seq, ack) = c.reset_numbers();
        self.queue_reset(PendingRst {
            mac: c.remote_mac,
            ip: c.remote_ip,
            local_port: c.local_port,
            remote_port: c.remote_port,
            seq,
            ack,
            flags: flags::RST | flags::ACK,
        });
        true
    }

    /// Queues the RFC 793 reset answering a segment that has no connection.
    fn reset_for(&mut self, mac: [u8; 6], seg: &Segment) {
        if seg.flags & flags::RST != 0 {
            return;
        }
        let (seq, ack, f) = if seg.flags & flags::ACK != 0 {
            (seg.ack, 0, flags::RST)
        } else {
            let len = seg.payload.len() as u32
                + u32::from(seg.flags & flags::SYN != 0)
                + u32::from(seg.flags & flags::FIN != 0);
            (0, seg.seq.wrapping_add(len), flags::RST | flags::ACK)
        };
        self.queue_reset(PendingRst {
            mac,
            ip: seg.src_ip,
            local_port: seg.dst_port,
            remote_port: seg.src_port,
            seq,
            ack,
            flags: f,
        });
    }

    fn queue_reset(&mut self, r: PendingRst) {
        if self.resets.len() < MAX_PENDING_RESETS {
            self.resets.push_back(r);
        }
    }

    /// Runs retransmission timers; connections that stopped answering are reset.
    pub fn tick(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.conns.len() {
            if self.conns[i].tick(now) {
                i += 1;
            } else {
                let c = self.conns.remove(i);
                log::debug!(
                    "mmds: connection from {}:{} timed out",
                    c.remote_ip,
                    c.remote_port
                );
            }
        }
    }

    /// When [`MmdsNetStack::tick`] next has work (earliest retransmission deadline).
    pub fn next_timeout(&self) -> Option<Instant> {
        self.conns.iter().filter_map(Conn::deadline).min()
    }

    /// Whether [`MmdsNetStack::next_frame`] has a frame now (to kick the guest's RX queue).
    pub fn has_pending_frames(&self) -> bool {
        !self.arp_replies.is_empty()
            || !self.resets.is_empty()
            || self.conns.iter().any(Conn::wants_to_send)
    }

    /// Writes the next frame for the guest into `buf` (give it the full RX buffer, at
    /// least 1514 bytes for full segments); returns its length.
    pub fn next_frame(&mut self, buf: &mut [u8]) -> Option<usize> {
        self.next_frame_at(buf, Instant::now())
    }

    /// [`MmdsNetStack::next_frame`] at an explicit time (tests, fuzzing).
    pub fn next_frame_at(&mut self, buf: &mut [u8], now: Instant) -> Option<usize> {
        if let Some(&(mac, ip)) = self.arp_replies.front() {
            let n = wire::write_arp(buf, (self.mac, self.ip), (mac, ip), 2)?;
            self.arp_replies.pop_front();
            return Some(n);
        }
        if let Some(r) = self.resets.front() {
            let seg = Segment {
                src_ip: self.ip,
                dst_ip: r.ip,
                src_port: r.local_port,
                dst_port: r.remote_port,
                seq: r.seq,
                ack: r.ack,
                flags: r.flags,
                window: 0,
                mss: None,
                payload: &[],
            };
            let n = wire::write_tcp(buf, self.mac, r.mac, self.ip_id, &seg)?;
            self.ip_id = self.ip_id.wrapping_add(1);
            self.resets.pop_front();
            return Some(n);
        }
        let count = self.conns.len();
        for k in 0..count {
            let i = (self.next_conn + k) % count;
            if !self.conns[i].wants_to_send() {
                continue;
            }
            let n = self.conns[i].emit(buf, (self.mac, self.ip), self.ip_id, now)?;
            self.ip_id = self.ip_id.wrapping_add(1);
            self.next_conn = i + 1;
            if self.conns[i].is_done() {
                self.conns.remove(i);
            }
            return Some(n);
        }
        None
    }

    fn random_u32(&mut self) -> u32 {
        // xorshift64*: unpredictable enough for initial sequence numbers given a random seed.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }
}

/// Locks the store; a poisoned lock (a panic elsewhere) still holds consistent data
/// because every store update is a single assignment.
fn lock(m: &Mutex<Mmds>) -> MutexGuard<'_, Mmds> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
