//! Hostile guest input: malformed frames, oversize requests and random bytes must be
//! dropped (or refused) without panics or unbounded state.

mod common;

use std::time::Instant;

use common::*;
use mmds::fuzz::fix_checksums;
use mmds::wire::{flags, ETH_HLEN};

/// A deterministic xorshift generator for reproducible random inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Offers `f` and asserts it was consumed and answered by nothing.
fn dropped(s: &mut mmds::MmdsNetStack, f: &[u8], what: &str) {
    let now = Instant::now();
    assert!(
        s.handle_frame_at(f, now),
        "{what}: frame to the MMDS address must be consumed"
    );
    let mut buf = [0u8; 1514];
    assert!(s.next_frame_at(&mut buf, now).is_none(), "{what}: answered");
    assert_eq!(s.connections(), 0, "{what}: opened a connection");
}

#[test]
fn malformed_ip_and_tcp_are_dropped() {
    let mut s = stack(store());
    let syn = tcp_frame(40000, 1, 0, flags::SYN, 1000, Some(1460), b"");
    let ip = ETH_HLEN;
    let tcp = ETH_HLEN + 20;
    let mut cases: Vec<(&str, Vec<u8>, bool)> = Vec::new();
    let mut edit = |what, f: &dyn Fn(&mut Vec<u8>), fix| {
        let mut v = syn.clone();
        f(&mut v);
        cases.push((what, v, fix));
    };
    edit("bad ip checksum", &|v| v[ip + 10] ^= 1, false);
    edit("bad tcp checksum", &|v| v[tcp + 16] ^= 1, false);
    edit("ip options", &|v| v[ip] = 0x46, true);
    edit("ipv6 version", &|v| v[ip] = 0x65, true);
    edit("more fragments", &|v| v[ip + 6] |= 0x20, true);
    edit("fragment offset", &|v| v[ip + 7] = 1, true);
    edit("udp", &|v| v[ip + 9] = 17, true);
    edit("total length beyond frame", &|v| v[ip + 3] += 1, true);
    edit("total length too small", &|v| v[ip + 3] = 39, true);
    edit("tcp offset beyond segment", &|v| v[tcp + 12] = 0xf0, true);
    edit("tcp offset below 5", &|v| v[tcp + 12] = 0x40, true);
    for (what, mut f, fix) in cases {
        if fix {
            fix_checksums(&mut f);
        }
        dropped(&mut s, &f, what);
    }
    // Every truncation of a valid SYN and of a data segment.
    let data = tcp_frame(
        40000,
        1,
        0,
        flags::ACK,
        1000,
        None,
        b"GET / HTTP/1.0\r\n\r\n",
    );
    for f in [&syn, &data] {
        for n in 0..f.len() {
            let consumed = s.handle_frame_at(&f[..n], Instant::now());
            assert_eq!(consumed, n >= ETH_HLEN + 20, "length {n}");
            assert!(
                drain(&mut s, Instant::now()).is_empty(),
                "truncated to {n} answered"
            );
        }
    }
}

#[test]
fn malformed_tcp_options_do_not_panic() {
    let mut s = stack(store());
    let now = Instant::now();
    for opts in [
        &[2u8, 0][..],
        &[2, 40, 1, 1],
        &[1, 1, 1, 2],
        &[2, 4, 0],
        &[3, 255, 0, 0],
        &[0, 0, 0, 0],
    ] {
        let mut f = tcp_frame(40001, 1, 0, flags::SYN, 1000, Some(1460), b"");
        let opt_at = ETH_HLEN + 40;
        f[opt_at..opt_at + 4].fill(0);
        f[opt_at..opt_at + opts.len()].copy_from_slice(opts);
        fix_checksums(&mut f);
        assert!(s.handle_frame_at(&f, now));
        let out = drain(&mut s, now);
        assert_eq!(out.len(), 1, "SYN with options {opts:?} is still answered");
        assert!(s.handle_frame_at(
            &tcp_frame(40001, 2, out[0].seq + 1, flags::RST, 0, None, b""),
            now
        ));
        assert_eq!(s.connections(), 0);
    }
}

#[test]
fn oversize_and_garbage_requests_get_400_and_close() {
    let mut s = stack(store());
    let now = Instant::now();
    let mut c = Client::connect(&mut s, 40002, now);
    let mut raw = Vec::new();
    for chunk in vec![b'a'; 5000].chunks(1000) {
        raw = c.exchange(&mut s, chunk, now);
        if !raw.is_empty() {
            break;
        }
    }
    assert_eq!(parse_response(&raw).0, 400);
    assert!(c.got_fin);
    // More data after our FIN is not processed.
    c.send(&mut s, flags::ACK, b"GET / HTTP/1.0\r\n\r\n", now);
    let out = drain(&mut s, now);
    assert!(out.iter().all(|o| o.payload.is_empty()));
    let mut c = Client::connect(&mut s, 40003, now);
    let raw = c.exchange(&mut s, b"\x00\xff garbage\r\n\r\n", now);
    assert_eq!(parse_response(&raw).0, 400);
    let mut c = Client::connect(&mut s, 40004, now);
    let raw = c.exchange(&mut s, b"DELETE / HTTP/1.1\r\n\r\n", now);
    let (status, head, _) = parse_response(&raw);
    assert_eq!(status, 405);
    assert!(head.contains("Allow: GET, PUT"));
}

#[test]
fn sequence_numbers_wrap() {
    let mut s = stack(store());
    let now = Instant::now();
    let mut c = Client::connect_isn(&mut s, 40005, u32::MAX - 10, now);
    let raw = c.exchange(&mut s, b"GET /latest/meta-data/big HTTP/1.0\r\n\r\n", now);
    let (status, _, body) = parse_response(&raw);
    assert_eq!((status, body.len()), (200, 5000));
}

#[test]
fn random_frames_and_fuzz_entry_points() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut s = stack(store());
    let valid = tcp_frame(40006, 1, 0, flags::SYN, 1000, Some(1460), b"");
    for i in 0..20_000 {
        let mut f = if i % 2 == 0 {
            let n = (rng.next() % 120) as usize;
            let mut f = valid.clone();
            f.resize(ETH_HLEN + 20 + n.max(20), 0);
            let body = rng.bytes(f.len() - ETH_HLEN - 20);
            f[ETH_HLEN + 20..].copy_from_slice(&body);
            f
        } else {
            let mut f = valid.clone();
            let at = ETH_HLEN + (rng.next() as usize % (f.len() - ETH_HLEN));
            f[at] = rng.next() as u8;
            f
        };
        if rng.next() & 1 == 0 {
            fix_checksums(&mut f);
        }
        s.handle_frame_at(&f, Instant::now());
        drain_any(&mut s);
        assert!(s.connections() <= 30);
    }
    for _ in 0..2_000 {
        let len = (rng.next() % 300) as usize;
        let data = rng.bytes(len);
        mmds::fuzz::frames(&data);
        mmds::fuzz::http_request(&data);
        mmds::fuzz::json_patch(&data);
    }
    mmds::fuzz::http_request(
        b"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 5\r\n\r\n",
    );
    mmds::fuzz::json_patch(b"{\"a\":{\"b\":1}}\0{\"a\":{\"b\":null,\"c\":[1]}}");
}

/// Drains output frames without insisting they are TCP (resets and SYN-ACKs alike).
fn drain_any(s: &mut mmds::MmdsNetStack) {
    let mut buf = [0u8; 1514];
    let mut n = 0;
    while s.next_frame_at(&mut buf, Instant::now()).is_some() {
        n += 1;
        assert!(n < 1000);
    }
}
