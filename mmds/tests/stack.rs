//! End-to-end tests of the MMDS network stack, driven by a scripted guest (no VM).

mod common;

use std::time::{Duration, Instant};

use common::*;
use mmds::wire::{self, flags, ETH_HLEN};
use mmds::{MmdsVersion, DEFAULT_IPV4_ADDR, DEFAULT_MAC_ADDR};

#[test]
fn arp_request_gets_reply() {
    let mut s = stack(store());
    let now = Instant::now();
    let mut req = [0u8; 60]; // padded to Ethernet minimum, as NICs send it
    wire::write_arp(
        &mut req,
        (GUEST_MAC, GUEST_IP),
        ([0; 6], DEFAULT_IPV4_ADDR),
        1,
    )
    .unwrap();
    assert!(s.is_mmds_frame(&req));
    assert!(s.handle_frame_at(&req, now));
    assert!(s.has_pending_frames());
    let mut buf = [0u8; 1514];
    let n = s.next_frame_at(&mut buf, now).unwrap();
    assert_eq!(n, wire::ARP_FRAME_LEN);
    assert_eq!(&buf[0..6], &GUEST_MAC);
    assert_eq!(&buf[6..12], &DEFAULT_MAC_ADDR);
    let arp = wire::parse_arp(&buf[ETH_HLEN..n]).unwrap();
    assert_eq!(arp.oper, 2);
    assert_eq!(arp.sha, DEFAULT_MAC_ADDR);
    assert_eq!(arp.spa, DEFAULT_IPV4_ADDR);
    assert_eq!(arp.tpa, GUEST_IP);
    assert_eq!(&buf[32..38], &GUEST_MAC, "target hardware address");
    assert!(s.next_frame_at(&mut buf, now).is_none());
    // ARP for another address is not MMDS's: it goes to the tap.
    wire::write_arp(
        &mut req,
        (GUEST_MAC, GUEST_IP),
        ([0; 6], "172.16.0.1".parse().unwrap()),
        1,
    )
    .unwrap();
    assert!(!s.handle_frame_at(&req, now));
    assert!(!s.has_pending_frames());
}

#[test]
fn handshake_get_meta_data_and_close() {
    let mut s = stack(store());
    let now = Instant::now();
    let mut c = Client::connect(&mut s, 40000, now);
    let raw = c.exchange(
        &mut s,
        b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: Wget\r\nConnection: close\r\n\r\n",
        now,
    );
    let (status, head, body) = parse_response(&raw);
    assert_eq!(status, 200);
    assert!(head.contains("Content-Type: text/plain"));
    assert!(head.contains("Connection: close"));
    assert_eq!(body, "ami-id\nbig\nhostname\nnetwork/");
    assert!(c.got_fin, "Connection: close ends with our FIN");
    assert_eq!(s.connections(), 1, "waiting for the guest's FIN");
    c.send(&mut s, flags::FIN | flags::ACK, &[], now);
    let out = drain(&mut s, now);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].flags, flags::ACK);
    assert_eq!(out[0].ack, c.snd_nxt);
    assert_eq!(s.connections(), 0);
}

#[test]
fn http10_json_keep_alive_and_segmented_response() {
    let mut s = stack(store());
    let now = Instant::now();
    let mut c = Client::connect(&mut s, 40001, now);
    let raw = c.exchange(
        &mut s,
        b"GET /latest/meta-data/network HTTP/1.1\r\nAccept: application/json\r\n\r\n",
        now,
    );
    let (status, head, body) = parse_response(&raw);
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"interfaces":{"macs":{}}}"#)
    );
    assert!(head.contains("Content-Type: application/json"));
    assert!(!c.got_fin, "HTTP/1.1 keeps the connection");
    // A 5000-byte value needs several segments; the request arrives in two pieces.
    c.send(&mut s, flags::ACK, b"GET /latest/meta-data/big HT", now);
    let raw = c.exchange(&mut s, b"TP/1.0\r\n\r\n", now);
    let (status, _, body) = parse_response(&raw);
    assert_eq!((status, body.len()), (200, 5000));
    assert!(c.got_fin, "HTTP/1.0 closes");
}

#[test]
fn respects_peer_window_and_retransmits() {
    let mut s = stack(store());
    let t0 = Instant::now();
    let mut c = Client::connect(&mut s, 40002, t0);
    c.window = 1000;
    c.send(
        &mut s,
        flags::ACK | flags::PSH,
        b"GET /latest/meta-data/big HTTP/1.0\r\n\r\n",
        t0,
    );
    let first = drain(&mut s, t0);
    let sent: usize = first.iter().map(|o| o.payload.len()).sum();
    assert!(
        sent > 0 && sent <= 1000,
        "in flight {sent} exceeds the window"
    );
    assert!(s.next_timeout().is_some());
    // Lose everything: nothing more until the timer, then the same bytes again.
    assert!(drain(&mut s, t0 + Duration::from_millis(100)).is_empty());
    let t1 = t0 + Duration::from_secs(1);
    s.tick(t1);
    let again = drain(&mut s, t1);
    assert_eq!(
        again[0].seq,
        first.iter().find(|o| !o.payload.is_empty()).unwrap().seq
    );
    assert_eq!(
        again[0].payload,
        first
            .iter()
            .find(|o| !o.payload.is_empty())
            .unwrap()
            .payload
    );
    // Now receive normally.
    c.window = 64240;
    c.absorb(&again);
    c.send(&mut s, flags::ACK, &[], t1);
    for _ in 0..100 {
        let out = drain(&mut s, t1);
        if !c.absorb(&out) {
            break;
        }
        c.send(&mut s, flags::ACK, &[], t1);
    }
    let (status, _, body) = parse_response(&c.received);
    assert_eq!((status, body.len()), (200, 5000));
    assert!(c.got_fin);
}

#[test]
fn unresponsive_peer_is_dropped_after_retries() {
    let mut s = stack(store());
    let mut t = Instant::now();
    let mut c = Client::connect(&mut s, 40003, t);
    c.send(
        &mut s,
        flags::ACK | flags::PSH,
        b"GET / HTTP/1.0\r\n\r\n",
        t,
    );
    drain(&mut s, t);
    for _ in 0..20 {
        t += Duration::from_secs(10);
        s.tick(t);
        drain(&mut s, t);
    }
    assert_eq!(s.connections(), 0);
    assert!(s.next_timeout().is_none());
}

#[test]
fn v2_token_flow_over_tcp() {
    let m = store();
    m.lock().unwrap().set_version(MmdsVersion::V2);
    let mut s = stack(m);
    let now = Instant::now();
    let mut c = Client::connect(&mut s, 40004, now);
    let raw = c.exchange(
        &mut s,
        b"GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n",
        now,
    );
    assert_eq!(parse_response(&raw).0, 401);
    let raw = c.exchange(
        &mut s,
        b"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 10\r\n\r\n",
        now,
    );
    let (status, head, token) = parse_response(&raw);
    assert_eq!(status, 200);
    assert!(head.contains("X-metadata-token-ttl-seconds: 10"));
    let get = format!("GET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: {token}\r\n\r\n");
    let raw = c.exchange(&mut s, get.as_bytes(), now);
    assert_eq!(
        parse_response(&raw),
        (200, parse_response(&raw).1, "ami-12345678".into())
    );
    let later = now + Duration::from_secs(11);
    let raw = c.exchange(&mut s, get.as_bytes(), later);
    assert_eq!(parse_response(&raw).0, 401, "expired token refused");
}

#[test]
fn connection_table_is_bounded() {
    let mut s = stack(store());
    let now = Instant::now();
    let mut clients: Vec<_> = (0..30)
        .map(|i| Client::connect(&mut s, 41000 + i, now))
        .collect();
    assert_eq!(s.connections(), 30);
    // The 31st SYN is refused with RST|ACK while all others are busy.
    assert!(s.handle_frame_at(&tcp_frame(42000, 5, 0, flags::SYN, 1000, None, &[]), now));
    let out = drain(&mut s, now);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].flags, flags::RST | flags::ACK);
    assert_eq!(out[0].ack, 6);
    assert_eq!(s.connections(), 30);
    // Existing connections still work.
    let raw = clients[7].exchange(
        &mut s,
        b"GET /latest/meta-data/hostname HTTP/1.1\r\n\r\n",
        now,
    );
    assert_eq!(parse_response(&raw).2, "vm1");
    // Once others have been idle long enough, the oldest is evicted (reset) for a newcomer.
    let later = now + Duration::from_secs(31);
    clients[7].exchange(&mut s, b"GET / HTTP/1.1\r\n\r\n", later);
    assert!(s.handle_frame_at(&tcp_frame(42000, 5, 0, flags::SYN, 1000, None, &[]), later));
    let out = drain(&mut s, later);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0].flags, flags::RST | flags::ACK);
    assert_ne!(out[0].dst_port, clients[7].port, "the active one is kept");
    assert_eq!(out[1].flags, flags::SYN | flags::ACK);
    assert_eq!(s.connections(), 30);
    clients.clear();
}

#[test]
fn out_of_order_and_duplicate_segments() {
    let mut s = stack(store());
    let now = Instant::now();
    let mut c = Client::connect(&mut s, 40005, now);
    let req = b"GET /latest/meta-data/hostname HTTP/1.0\r\n\r\n";
    // The second half first: dropped, answered by a duplicate ACK for the first byte.
    let f = tcp_frame(
        c.port,
        c.snd_nxt + 10,
        c.rcv_nxt,
        flags::ACK,
        64240,
        None,
        &req[10..],
    );
    assert!(s.handle_frame_at(&f, now));
    let out = drain(&mut s, now);
    assert_eq!(
        (out.len(), out[0].ack, out[0].payload.len()),
        (1, c.snd_nxt, 0)
    );
    // Then overlapping retransmission of everything: accepted once.
    c.send(&mut s, flags::ACK, &req[..5], now);
    c.snd_nxt -= 5;
    let raw = c.exchange(&mut s, req, now);
    assert_eq!(parse_response(&raw).2, "vm1");
}

#[test]
fn other_ports_and_stray_segments_get_resets() {
    let mut s = stack(store());
    let now = Instant::now();
    let mut f = tcp_frame(40006, 100, 0, flags::SYN, 1000, None, &[]);
    f[ETH_HLEN + 20 + 3] = 81; // destination port 81
    mmds::fuzz::fix_checksums(&mut f);
    assert!(s.handle_frame_at(&f, now));
    let out = drain(&mut s, now);
    assert_eq!(
        (out.len(), out[0].flags, out[0].ack),
        (1, flags::RST | flags::ACK, 101)
    );
    assert_eq!(out[0].src_port, 81);
    // An ACK for no connection gets RST with seq = its ack.
    assert!(s.handle_frame_at(&tcp_frame(40007, 1, 777, flags::ACK, 1000, None, b"x"), now));
    let out = drain(&mut s, now);
    assert_eq!((out[0].flags, out[0].seq), (flags::RST, 777));
    // A stray RST is never answered.
    assert!(s.handle_frame_at(&tcp_frame(40007, 1, 0, flags::RST, 0, None, &[]), now));
    assert!(drain(&mut s, now).is_empty());
    // A guest RST ends its connection.
    let mut c = Client::connect(&mut s, 40008, now);
    c.send(&mut s, flags::RST, &[], now);
    assert_eq!(s.connections(), 0);
}

#[test]
fn partial_checksums_from_offloading_guests() {
    let mut s = stack(store());
    let now = Instant::now();
    let mut f = tcp_frame(40009, 9, 0, flags::SYN, 1000, Some(1460), &[]);
    f[ETH_HLEN + 20 + 16] ^= 0x5a; // only a pseudo-header sum, as with NEEDS_CSUM
    assert!(s.handle_tx_frame(&f, mmds::TxChecksum::Complete, now));
    assert!(
        drain(&mut s, now).is_empty(),
        "a bad checksum is dropped when complete"
    );
    assert!(s.handle_tx_frame(&f, mmds::TxChecksum::Partial, now));
    let out = drain(&mut s, now);
    assert_eq!(
        out[0].flags,
        flags::SYN | flags::ACK,
        "accepted when offloaded"
    );
    f[ETH_HLEN + 10] ^= 1;
    assert!(s.handle_tx_frame(&f, mmds::TxChecksum::Partial, now));
    assert!(
        drain(&mut s, now).is_empty(),
        "the IPv4 header checksum is still verified"
    );
}

#[test]
fn finished_connection_is_evicted_first_when_full() {
    let mut s =
        mmds::MmdsNetStack::with_max_connections(DEFAULT_MAC_ADDR, DEFAULT_IPV4_ADDR, store(), 3);
    let now = Instant::now();
    let mut clients: Vec<_> = (0..3)
        .map(|i| Client::connect(&mut s, 43000 + i, now))
        .collect();
    // clients[1] got its whole answer and our FIN, but never sends its own FIN.
    let raw = clients[1].exchange(&mut s, b"GET /latest/meta-data/big HTTP/1.0\r\n\r\n", now);
    assert_eq!(parse_response(&raw).0, 200);
    assert!(clients[1].got_fin);
    // Another connection is mid-response (not acked): it must not be the victim.
    clients[2].send(
        &mut s,
        flags::ACK,
        b"GET /latest/meta-data/big HTTP/1.0\r\n\r\n",
        now,
    );
    drain(&mut s, now);
    assert!(s.handle_frame_at(&tcp_frame(43100, 5, 0, flags::SYN, 1000, None, &[]), now));
    let out = drain(&mut s, now);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(
        (out[0].flags, out[0].dst_port),
        (flags::RST | flags::ACK, clients[1].port)
    );
    assert_eq!(
        out[0].seq, clients[1].rcv_nxt,
        "in the guest's window exactly"
    );
    assert_eq!(
        (out[1].flags, out[1].dst_port),
        (flags::SYN | flags::ACK, 43100)
    );
    assert_eq!(s.connections(), 3);
}

#[test]
fn zero_window_is_probed_until_it_opens() {
    let mut s = stack(store());
    let t0 = Instant::now();
    let mut c = Client::connect(&mut s, 40010, t0);
    c.window = 0;
    c.send(
        &mut s,
        flags::ACK | flags::PSH,
        b"GET /latest/meta-data/ami-id HTTP/1.0\r\n\r\n",
        t0,
    );
    let out = drain(&mut s, t0);
    assert!(
        out.iter().all(|o| o.payload.is_empty()),
        "nothing sent into a zero window"
    );
    let t1 = t0 + Duration::from_secs(1);
    assert!(
        s.next_timeout().is_some_and(|d| d <= t1),
        "persist timer armed"
    );
    s.tick(t1);
    let out = drain(&mut s, t1);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].payload.len(), 1, "one-byte window probe");
    c.absorb(&out);
    c.window = 64240; // the guest read it and opens its window
    c.send(&mut s, flags::ACK, &[], t1);
    for _ in 0..10 {
        let out = drain(&mut s, t1);
        if !c.absorb(&out) {
            break;
        }
        c.send(&mut s, flags::ACK, &[], t1);
    }
    let (status, _, body) = parse_response(&c.received);
    assert_eq!((status, body.as_str()), (200, "ami-12345678"));
}

#[test]
fn stack_and_store_can_move_to_device_threads() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<mmds::MmdsNetStack>();
    send::<mmds::Mmds>();
    sync::<std::sync::Mutex<mmds::Mmds>>();
}
