//! Guest → host: connecting to `<uds_path>_<port>`, data, half and full
//! close, refusal; several connections interleaved.

use std::os::unix::net::UnixListener;

use super::*;

/// A host service listening at `<uds_path>_<port>`.
fn service(t: &T, port: u32) -> UnixListener {
    UnixListener::bind(format!("{}_{port}", t.uds().display())).unwrap()
}

/// The guest connects from `peer` to host `port`; returns the accepted
/// host socket.
fn guest_connect(t: &mut T, l: &UnixListener, peer: u32, port: u32) -> UnixStream {
    t.g.post_rx(1, RX_BUF);
    t.send(&pkt(Op::Request, peer, port, 0), &[]);
    // The connector thread connects; its result wakes the device.
    let got = t.rx_at_least(1);
    assert_eq!(got.len(), 1);
    let hdr = got[0].0;
    assert_eq!(hdr.op, Op::Response as u16);
    assert_eq!((hdr.src_port, hdr.dst_port), (port, peer));
    assert_eq!((hdr.src_cid, hdr.dst_cid), (HOST_CID, CID));
    let (s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

#[test]
fn guest_connects_to_a_host_listener_and_data_flows() {
    let mut t = T::new();
    let l = service(&t, 1234);
    let mut host = guest_connect(&mut t, &l, 40000, 1234);

    t.send(&pkt(Op::Rw, 40000, 1234, 11), b"hello world");
    let mut b = [0u8; 11];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello world");

    host.write_all(b"pong").unwrap();
    t.g.post_rx(1, RX_BUF);
    let got = t.rx_at_least(1);
    assert_eq!(got[0].0.op, Op::Rw as u16);
    assert_eq!(got[0].1, b"pong");
}

#[test]
fn refused_connect_gets_rst() {
    let mut t = T::new();
    t.g.post_rx(1, RX_BUF);
    t.send(&pkt(Op::Request, 40000, 99, 0), &[]);
    let got = t.rx_at_least(1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, Op::Rst as u16);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (99, 40000));
    assert_eq!(t.dev.connection_count(), 0);
}

#[test]
fn guest_shutdown_half_closes_then_full_close_gets_rst() {
    let mut t = T::new();
    let l = service(&t, 5);
    let mut host = guest_connect(&mut t, &l, 1000, 5);
    let mut shut = pkt(Op::Shutdown, 1000, 5, 0);
    shut.flags = 2; // the guest sends no more
    t.send(&shut, &[]);
    let mut b = [0u8; 1];
    assert_eq!(host.read(&mut b).unwrap(), 0, "host sees EOF");
    // The other direction still works.
    host.write_all(b"x").unwrap();
    t.g.post_rx(1, RX_BUF);
    assert_eq!(t.rx_at_least(1)[0].1, b"x");
    // Full close: Linux waits for our RST.
    shut.flags = 3;
    t.g.post_rx(1, RX_BUF);
    t.send(&shut, &[]);
    let got = t.g.take_rx();
    assert_eq!(got[0].0.op, Op::Rst as u16);
    assert_eq!(t.dev.connection_count(), 0);
}

#[test]
fn guest_rst_closes_the_host_socket() {
    let mut t = T::new();
    let l = service(&t, 5);
    let mut host = guest_connect(&mut t, &l, 1000, 5);
    t.send(&pkt(Op::Rst, 1000, 5, 0), &[]);
    assert!(host_closed(&mut host));
    assert_eq!(t.dev.connection_count(), 0);
    // No RST answers an RST.
    t.g.post_rx(1, RX_BUF);
    t.pump();
    assert!(t.g.take_rx().is_empty());
}

#[test]
fn packets_for_unknown_connections_get_rst() {
    let mut t = T::new();
    t.g.post_rx(3, RX_BUF);
    t.send(&pkt(Op::Rw, 7, 8, 3), b"abc");
    t.send(&pkt(Op::CreditRequest, 7, 9, 0), &[]);
    t.send(&pkt(Op::Response, 7, 10, 0), &[]);
    let got = t.g.take_rx();
    let ops: Vec<_> = got.iter().map(|(h, _)| (h.op, h.src_port)).collect();
    let rst = Op::Rst as u16;
    assert_eq!(ops, vec![(rst, 8), (rst, 9), (rst, 10)]);
}

#[test]
fn several_connections_interleave() {
    let mut t = T::new();
    let l = service(&t, 77);
    let mut hosts: Vec<UnixStream> = (0..4)
        .map(|i| guest_connect(&mut t, &l, 100 + i, 77))
        .collect();
    let (mut h2, local) = t.host_connect(88);
    // Guest → host, interleaved.
    for round in 0..3u8 {
        for (i, _) in hosts.iter().enumerate() {
            let data = pattern(100, round * 10 + i as u8);
            t.send(&pkt(Op::Rw, 100 + i as u32, 77, 100), &data);
        }
        t.send(&pkt(Op::Rw, 88, local, 1), &[round]);
    }
    for (i, h) in hosts.iter_mut().enumerate() {
        for round in 0..3u8 {
            let mut b = vec![0u8; 100];
            h.read_exact(&mut b).unwrap();
            assert_eq!(b, pattern(100, round * 10 + i as u8));
        }
    }
    let mut b = [0u8; 3];
    h2.read_exact(&mut b).unwrap();
    assert_eq!(b, [0, 1, 2]);
    // Host → guest: every connection gets its own bytes, fairly.
    for (i, h) in hosts.iter_mut().enumerate() {
        h.write_all(&pattern(10, i as u8)).unwrap();
    }
    h2.write_all(b"z").unwrap();
    t.g.post_rx(5, RX_BUF);
    let got = t.rx_at_least(5);
    for (hdr, payload) in got {
        if hdr.src_port == local {
            assert_eq!(payload, b"z");
        } else {
            assert_eq!(hdr.src_port, 77);
            assert_eq!(payload, pattern(10, (hdr.dst_port - 100) as u8));
        }
    }
    assert_eq!(t.dev.connection_count(), 5);
}

#[test]
fn a_connection_the_guest_resets_while_it_is_being_connected_is_dropped() {
    let mut t = T::new();
    let l = service(&t, 7);
    t.g.post_rx(2, RX_BUF);
    // The REQUEST goes to the connector thread; the guest gives up before
    // its result is back.
    t.send(&pkt(Op::Request, 700, 7, 0), &[]);
    t.send(&pkt(Op::Rst, 700, 7, 0), &[]);
    // The connect still happens; its result is thrown away.
    let (mut host, _) = l.accept().unwrap();
    host.set_nonblocking(true).unwrap();
    t.pump_until("the abandoned host socket closed", |_| {
        matches!(host.read(&mut [0u8; 1]), Ok(0))
    });
    assert_eq!(t.dev.connection_count(), 0);
    assert!(t.g.take_rx().is_empty(), "no RESPONSE, no RST for an RST");
}

#[test]
fn a_second_request_while_connecting_is_a_protocol_error() {
    let mut t = T::new();
    let _l = service(&t, 8);
    t.g.post_rx(2, RX_BUF);
    t.send(&pkt(Op::Request, 800, 8, 0), &[]);
    t.send(&pkt(Op::Request, 800, 8, 0), &[]);
    let got = t.rx_at_least(1);
    assert_eq!(got[0].0.op, Op::Rst as u16);
    // The late connect result is dropped, not answered.
    for _ in 0..20 {
        t.pump();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(t.g.take_rx().is_empty());
    assert_eq!(t.dev.connection_count(), 0);
}

#[test]
fn connects_in_flight_counts_each_connect_until_its_answer_is_taken() {
    let mut t = T::new();
    t.g.post_rx(1, RX_BUF);
    assert_eq!(t.dev.connects_in_flight(), 0);
    t.send(&pkt(Op::Request, 40000, 99, 0), &[]);
    // Answered or not by the helper thread, the device has not taken it.
    assert_eq!(t.dev.connects_in_flight(), 1);
    let got = t.rx_at_least(1);
    assert_eq!(got[0].0.op, Op::Rst as u16);
    assert_eq!(t.dev.connects_in_flight(), 0);

    // A reset forgets the connection, not the connect under way: its
    // (stale, dropped) answer still counts until the device takes it.
    t.send(&pkt(Op::Request, 40001, 98, 0), &[]);
    t.dev.reset();
    assert_eq!(t.dev.connects_in_flight(), 1);
    t.pump_until("the stale answer taken", |t| {
        t.dev.connects_in_flight() == 0
    });
    assert_eq!(t.dev.connection_count(), 0);
}
