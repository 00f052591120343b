//! A scripted guest TCP client for driving `MmdsNetStack` from tests.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mmds::wire::{self, flags, Segment, ETH_HLEN};
use mmds::{Mmds, MmdsNetStack, DEFAULT_IPV4_ADDR, DEFAULT_MAC_ADDR};

pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 2);

pub fn store() -> Arc<Mutex<Mmds>> {
    let mut m = Mmds::default();
    m.put(serde_json::json!({
        "latest": {"meta-data": {"ami-id": "ami-12345678", "hostname": "vm1",
                   "network": {"interfaces": {"macs": {}}}, "big": "x".repeat(5000)}}
    }))
    .unwrap();
    Arc::new(Mutex::new(m))
}

pub fn stack(m: Arc<Mutex<Mmds>>) -> MmdsNetStack {
    MmdsNetStack::new(DEFAULT_MAC_ADDR, DEFAULT_IPV4_ADDR, m)
}

/// A frame emitted by the stack, parsed and checksum-verified.
#[derive(Debug, Clone)]
pub struct Out {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub mss: Option<u16>,
    pub payload: Vec<u8>,
}

pub fn drain(stack: &mut MmdsNetStack, now: Instant) -> Vec<Out> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1514];
    while let Some(n) = stack.next_frame_at(&mut buf, now) {
        let f = &buf[..n];
        assert_eq!(wire::ethertype(f), Some(wire::ETHERTYPE_IPV4));
        let s = wire::parse_ipv4_tcp(&f[ETH_HLEN..]).expect("stack emitted a bad segment");
        assert_eq!(s.src_ip, DEFAULT_IPV4_ADDR);
        out.push(Out {
            dst_mac: f[0..6].try_into().unwrap(),
            src_mac: f[6..12].try_into().unwrap(),
            src_port: s.src_port,
            dst_port: s.dst_port,
            seq: s.seq,
            ack: s.ack,
            flags: s.flags,
            window: s.window,
            mss: s.mss,
            payload: s.payload.to_vec(),
        });
        assert!(out.len() < 1000);
    }
    out
}

/// Builds a guest TCP frame to the MMDS address.
pub fn tcp_frame(
    port: u16,
    seq: u32,
    ack: u32,
    fl: u8,
    window: u16,
    mss: Option<u16>,
    payload: &[u8],
) -> Vec<u8> {
    let seg = Segment {
        src_ip: GUEST_IP,
        dst_ip: DEFAULT_IPV4_ADDR,
        src_port: port,
        dst_port: 80,
        seq,
        ack,
        flags: fl,
        window,
        mss,
        payload,
    };
    let mut buf = vec![0u8; 1600];
    let n = wire::write_tcp(&mut buf, GUEST_MAC, DEFAULT_MAC_ADDR, 7, &seg).unwrap();
    buf.truncate(n);
    buf
}

/// One guest-side connection.
pub struct Client {
    pub port: u16,
    pub snd_nxt: u32,
    pub rcv_nxt: u32,
    pub window: u16,
    pub received: Vec<u8>,
    pub got_fin: bool,
}

impl Client {
    /// Sends a SYN and completes the handshake; panics unless a SYN-ACK comes back.
    pub fn connect(stack: &mut MmdsNetStack, port: u16, now: Instant) -> Client {
        Self::connect_isn(stack, port, 1000u32.wrapping_mul(u32::from(port)), now)
    }

    /// [`Client::connect`] with a chosen initial sequence number.
    pub fn connect_isn(stack: &mut MmdsNetStack, port: u16, isn: u32, now: Instant) -> Client {
        assert!(stack.handle_frame_at(
            &tcp_frame(port, isn, 0, flags::SYN, 64240, Some(1460), &[]),
            now
        ));
        let out = drain(stack, now);
        assert_eq!(out.len(), 1, "{out:?}");
        let sa = &out[0];
        assert_eq!(sa.flags, flags::SYN | flags::ACK);
        assert_eq!(sa.ack, isn.wrapping_add(1));
        assert_eq!(sa.mss, Some(1460));
        assert_eq!(sa.dst_mac, GUEST_MAC);
        assert_eq!(sa.src_mac, DEFAULT_MAC_ADDR);
        let mut c = Client {
            port,
            snd_nxt: isn.wrapping_add(1),
            rcv_nxt: sa.seq.wrapping_add(1),
            window: 64240,
            received: Vec::new(),
            got_fin: false,
        };
        c.send(stack, flags::ACK, &[], now);
        assert!(
            drain(stack, now).is_empty(),
            "bare ACK must not be answered"
        );
        c
    }

    /// Sends a segment at the client's current sequence.
    pub fn send(&mut self, stack: &mut MmdsNetStack, fl: u8, data: &[u8], now: Instant) {
        let f = tcp_frame(
            self.port,
            self.snd_nxt,
            self.rcv_nxt,
            fl,
            self.window,
            None,
            data,
        );
        assert!(stack.handle_frame_at(&f, now));
        self.snd_nxt = self
            .snd_nxt
            .wrapping_add(data.len() as u32 + u32::from(fl & flags::FIN != 0));
    }

    /// Takes in-order segments addressed to this client; returns whether any new data/FIN arrived.
    pub fn absorb(&mut self, out: &[Out]) -> bool {
        let mut progressed = false;
        for s in out.iter().filter(|s| s.dst_port == self.port) {
            assert_eq!(s.flags & flags::RST, 0, "unexpected reset");
            if s.seq == self.rcv_nxt && (!s.payload.is_empty() || s.flags & flags::FIN != 0) {
                self.received.extend_from_slice(&s.payload);
                self.rcv_nxt = self.rcv_nxt.wrapping_add(s.payload.len() as u32);
                if s.flags & flags::FIN != 0 {
                    self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
                    self.got_fin = true;
                }
                progressed = true;
            }
        }
        progressed
    }

    /// Sends `request`, then ACKs everything until the stack goes quiet; returns the bytes received.
    pub fn exchange(&mut self, stack: &mut MmdsNetStack, request: &[u8], now: Instant) -> Vec<u8> {
        let start = self.received.len();
        self.send(stack, flags::ACK | flags::PSH, request, now);
        for _ in 0..200 {
            let out = drain(stack, now);
            if !self.absorb(&out) {
                break;
            }
            self.send(stack, flags::ACK, &[], now);
        }
        self.received[start..].to_vec()
    }
}

/// Splits an HTTP response into (status, headers, body).
pub fn parse_response(raw: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8(raw.to_vec()).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("no end of headers");
    let status = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(body.len(), len, "body length matches Content-Length");
    (status, head.to_string(), body.to_string())
}
