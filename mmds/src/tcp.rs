//! One passive TCP connection of the MMDS server: handshake, in-order receive,
//! go-back-N retransmission, FIN/RST, and the HTTP request/response loop on top.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::handler::respond;
use crate::http::{parse_request, Parsed, MAX_BODY_BYTES, MAX_HEADER_BYTES};
use crate::store::Mmds;
use crate::wire::{flags, write_tcp, Segment, ETH_HLEN, IPV4_HLEN, TCP_HLEN};

/// Bytes of unprocessed request data a connection buffers (its receive window).
pub const RECV_CAP: usize = MAX_HEADER_BYTES + MAX_BODY_BYTES;
/// MSS MMDS advertises and the largest payload it sends.
pub const OUR_MSS: u16 = 1460;
const INITIAL_RTO: Duration = Duration::from_millis(500);
const MAX_RTO: Duration = Duration::from_secs(8);
/// Retransmissions of the same data before the connection is reset.
pub const MAX_RETRIES: u32 = 6;

fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

fn seq_le(a: u32, b: u32) -> bool {
    a == b || seq_lt(a, b)
}

/// Result of feeding a segment to a connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Keep the connection.
    Keep,
    /// The peer reset it, or it replaced itself by a new SYN: remove silently.
    Remove,
}

/// One connection, keyed by the guest's (address, port).
#[derive(Debug)]
pub(crate) struct Conn {
    pub remote_mac: [u8; 6],
    pub remote_ip: Ipv4Addr,
    pub remote_port: u16,
    pub local_port: u16,
    irs: u32,
    iss: u32,
    syn_acked: bool,
    snd_una: u32,
    snd_nxt: u32,
    /// Data not yet acknowledged, starting at sequence `buf_seq`.
    send_buf: Vec<u8>,
    buf_seq: u32,
    fin_queued: bool,
    fin_acked: bool,
    peer_wnd: u32,
    peer_mss: u16,
    rcv_nxt: u32,
    peer_fin: bool,
    recv_buf: Vec<u8>,
    ack_pending: bool,
    rto: Duration,
    rto_deadline: Option<Instant>,
    /// The persist timer fired: send one byte past a zero window.
    probe: bool,
    retries: u32,
    pub last_active: Instant,
}

impl Conn {
    /// A connection for the guest's SYN `seg`, answering with initial sequence `iss`.
    pub fn new(remote_mac: [u8; 6], seg: &Segment, iss: u32, now: Instant) -> Self {
        Conn {
            remote_mac,
            remote_ip: seg.src_ip,
            remote_port: seg.src_port,
            local_port: seg.dst_port,
            irs: seg.seq,
            iss,
            syn_acked: false,
            snd_una: iss,
            snd_nxt: iss,
            send_buf: Vec::new(),
            buf_seq: iss.wrapping_add(1),
            fin_queued: false,
            fin_acked: false,
            peer_wnd: u32::from(seg.window),
            peer_mss: seg.mss.unwrap_or(536).clamp(64, OUR_MSS),
            rcv_nxt: seg.seq.wrapping_add(1),
            peer_fin: false,
            recv_buf: Vec::new(),
            ack_pending: false,
            rto: INITIAL_RTO,
            rto_deadline: None,
            probe: false,
            retries: 0,
            last_active: now,
        }
    }

    /// Whether the exchange is over (both FINs acknowledged) and nothing is left to send.
    pub fn is_done(&self) -> bool {
        self.fin_acked && self.peer_fin && !self.ack_pending
    }

    /// Whether everything MMDS sent, FIN included, is acknowledged and only the
    /// guest's FIN is awaited: evicting such a connection loses nothing.
    pub fn is_lingering(&self) -> bool {
        self.fin_acked
    }

    fn fin_seq(&self) -> u32 {
        self.buf_seq.wrapping_add(self.send_buf.len() as u32)
    }

    fn fin_sent(&self) -> bool {
        self.fin_queued && seq_lt(self.fin_seq(), self.snd_nxt)
    }

    /// Feeds a segment of this connection; `mmds` answers completed requests.
    pub fn receive(&mut self, seg: &Segment, mmds: &mut Mmds, now: Instant) -> Verdict {
        self.last_active = now;
        if seg.flags & flags::RST != 0 {
            // Accept a reset only in the window, so a blind guess cannot kill others' streams.
            let wnd = (RECV_CAP - self.recv_buf.len()).max(1) as u32;
            let ok = seg.seq.wrapping_sub(self.rcv_nxt) < wnd;
            return if ok { Verdict::Remove } else { Verdict::Keep };
        }
        if seg.flags & flags::SYN != 0 {
            if seg.seq == self.irs && !self.syn_acked {
                self.snd_nxt = self.iss; // our SYN-ACK was lost: send it again
                return Verdict::Keep;
            }
            // A new connection on the same port, or junk: challenge with an ACK.
            self.ack_pending = true;
            return Verdict::Keep;
        }
        if seg.flags & flags::ACK == 0 {
            return Verdict::Keep;
        }
        if !self.on_ack(seg, now) {
            return Verdict::Keep;
        }
        self.on_data(seg);
        self.serve(mmds, now);
        Verdict::Keep
    }

    /// Processes the acknowledgment; false if the segment must be dropped.
    fn on_ack(&mut self, seg: &Segment, now: Instant) -> bool {
        let a = seg.ack;
        if !self.syn_acked {
            if a != self.iss.wrapping_add(1) {
                return false;
            }
            self.syn_acked = true;
            self.snd_una = a;
            if seq_lt(self.snd_nxt, a) {
                self.snd_nxt = a;
            }
        }
        if seq_lt(self.snd_nxt, a) {
            self.ack_pending = true; // acks what we never sent
            return false;
        }
        if seq_lt(a, self.snd_una) {
            return true; // old duplicate ack; data may still be new
        }
        self.peer_wnd = u32::from(seg.window);
        if seq_lt(self.snd_una, a) {
            self.snd_una = a;
            let data_end = self.fin_seq();
            let acked_data = if seq_le(a, data_end) { a } else { data_end };
            let n = acked_data.wrapping_sub(self.buf_seq) as usize;
            self.send_buf.drain(..n.min(self.send_buf.len()));
            self.buf_seq = acked_data;
            if self.fin_queued && a == data_end.wrapping_add(1) {
                self.fin_acked = true;
            }
            self.retries = 0;
            self.rto = INITIAL_RTO;
            self.rto_deadline = (self.snd_una != self.snd_nxt).then(|| now + self.rto);
        }
        if self.zero_window_stall() && self.rto_deadline.is_none() {
            self.rto_deadline = Some(now + self.rto); // persist timer
        }
        true
    }

    /// Data waits, none is in flight, and the guest's window is closed: only a
    /// probe (on the persist timer) can learn that it opened.
    fn zero_window_stall(&self) -> bool {
        self.syn_acked
            && self.peer_wnd == 0
            && self.snd_una == self.snd_nxt
            && seq_lt(self.snd_nxt, self.fin_seq())
    }

    fn on_data(&mut self, seg: &Segment) {
        let len = seg.payload.len() as u32;
        let has_fin = seg.flags & flags::FIN != 0;
        if len == 0 && !has_fin {
            return;
        }
        self.ack_pending = true; // every data/FIN segment gets an (at least duplicate) ACK
        if self.peer_fin || seq_lt(self.rcv_nxt, seg.seq) {
            return; // after the peer's FIN, or out of order: dropped, the guest retransmits
        }
        let skip = self.rcv_nxt.wrapping_sub(seg.seq);
        if skip > len || (skip == len && !has_fin) {
            return; // entirely old
        }
        let fresh = &seg.payload[skip as usize..];
        let room = RECV_CAP - self.recv_buf.len();
        let take = fresh.len().min(room);
        self.recv_buf.extend_from_slice(&fresh[..take]);
        self.rcv_nxt = self.rcv_nxt.wrapping_add(take as u32);
        if has_fin && take == fresh.len() {
            self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
            self.peer_fin = true;
        }
    }

    /// Answers buffered requests, one at a time: the next is parsed only once the
    /// previous response is fully acknowledged, which bounds the send buffer.
    fn serve(&mut self, mmds: &mut Mmds, now: Instant) {
        if self.fin_queued || !self.send_buf.is_empty() {
            return;
        }
        match parse_request(&self.recv_buf) {
            Parsed::Complete(req, used) => {
                let keep = req.keep_alive && !self.peer_fin;
                let resp = respond(mmds, &req, now);
                self.send_buf = resp.serialize(req.version, keep);
                self.recv_buf.drain(..used);
                if !keep {
                    self.fin_queued = true;
                }
            }
            Parsed::Invalid(resp) => {
                self.send_buf = resp.serialize(crate::http::Version::Http11, false);
                self.fin_queued = true;
            }
            Parsed::Incomplete => {
                if self.peer_fin || self.recv_buf.len() >= RECV_CAP {
                    self.fin_queued = true;
                }
            }
        }
        if self.fin_queued {
            self.recv_buf = Vec::new();
        }
    }

    /// Retransmission timer: rewinds to the oldest unacknowledged byte when due.
    /// Returns false once the peer has been unresponsive for [`MAX_RETRIES`].
    pub fn tick(&mut self, now: Instant) -> bool {
        match self.rto_deadline {
            Some(d) if d <= now && self.snd_una != self.snd_nxt => {
                self.retries += 1;
                if self.retries > MAX_RETRIES {
                    return false;
                }
                self.snd_nxt = self.snd_una;
                self.rto = (self.rto * 2).min(MAX_RTO);
                self.rto_deadline = None;
                true
            }
            Some(d) if d <= now && self.zero_window_stall() => {
                self.probe = true;
                self.rto = (self.rto * 2).min(MAX_RTO);
                self.rto_deadline = None;
                true
            }
            _ => true,
        }
    }

    /// Whether [`Conn::emit`] would write a frame now.
    pub fn wants_to_send(&self) -> bool {
        if !self.syn_acked {
            return self.snd_nxt == self.iss;
        }
        let in_flight = self.snd_nxt.wrapping_sub(self.snd_una);
        let data =
            seq_lt(self.snd_nxt, self.fin_seq()) && (in_flight < self.peer_wnd || self.probe);
        self.ack_pending || data || (self.fin_queued && !self.fin_sent())
    }

    /// Writes this connection's next segment into `buf` as a frame from `local`.
    pub fn emit(
        &mut self,
        buf: &mut [u8],
        local: ([u8; 6], Ipv4Addr),
        ip_id: u16,
        now: Instant,
    ) -> Option<usize> {
        let max_payload = buf.len().checked_sub(ETH_HLEN + IPV4_HLEN + TCP_HLEN)?;
        let mut seg = Segment {
            src_ip: local.1,
            dst_ip: self.remote_ip,
            src_port: self.local_port,
            dst_port: self.remote_port,
            seq: self.snd_nxt,
            ack: self.rcv_nxt,
            flags: flags::ACK,
            window: (RECV_CAP - self.recv_buf.len()).min(usize::from(u16::MAX)) as u16,
            mss: None,
            payload: &[],
        };
        let mut advance = 0u32;
        if !self.syn_acked {
            if self.snd_nxt != self.iss || max_payload < 4 {
                return None;
            }
            seg.flags |= flags::SYN;
            seg.mss = Some(OUR_MSS);
            advance = 1;
        } else {
            let off = self.snd_nxt.wrapping_sub(self.buf_seq) as usize;
            let in_flight = self.snd_nxt.wrapping_sub(self.snd_una);
            let mut room = self.peer_wnd.saturating_sub(in_flight) as usize;
            if self.probe {
                room = room.max(1);
            }
            let avail = if seq_lt(self.snd_nxt, self.fin_seq()) {
                self.send_buf.len() - off
            } else {
                0
            };
            let n = avail
                .min(room)
                .min(usize::from(self.peer_mss))
                .min(max_payload);
            if n > 0 {
                seg.payload = &self.send_buf[off..off + n];
                seg.flags |= flags::PSH;
                advance = n as u32;
            }
            if self.fin_queued && off + n == self.send_buf.len() && !self.fin_sent() {
                seg.flags |= flags::FIN;
                advance += 1;
            }
            if advance == 0 && !self.ack_pending {
                return None;
            }
        }
        let len = write_tcp(buf, local.0, self.remote_mac, ip_id, &seg)?;
        self.ack_pending = false;
        self.probe = false;
        if advance > 0 {
            self.snd_nxt = self.snd_nxt.wrapping_add(advance);
            if self.rto_deadline.is_none() {
                self.rto_deadline = Some(now + self.rto);
            }
        }
        Some(len)
    }
}

impl Conn {
    /// (seq, ack) for a RST that the guest accepts (RFC 5961: seq exactly its rcv_nxt).
    pub fn reset_numbers(&self) -> (u32, u32) {
        (self.snd_nxt, self.rcv_nxt)
    }

    /// The retransmission deadline, if data is in flight.
    pub fn deadline(&self) -> Option<Instant> {
        self.rto_deadline
            .filter(|_| self.snd_una != self.snd_nxt || self.zero_window_stall())
    }
}
