//! Host → guest: `CONNECT <port>`, the guest's answer, data both ways, and
//! every way such a connection ends.

use super::*;

#[test]
fn connect_then_data_both_ways() {
    let mut t = T::new();
    let (mut host, local) = t.host_connect(52);
    assert_eq!(t.dev.vsock_counters().conns_opened, 1);

    // Host → guest.
    let data = pattern(3000, 1);
    host.write_all(&data).unwrap();
    t.g.post_rx(1, RX_BUF);
    let got = t.rx_at_least(1);
    let (hdr, payload) = &got[0];
    assert_eq!(hdr.op, Op::Rw as u16);
    assert_eq!((hdr.src_port, hdr.dst_port), (local, 52));
    assert_eq!(payload, &data);

    // Guest → host.
    let data = pattern(5000, 2);
    t.send(&pkt(Op::Rw, 52, local, 5000), &data);
    let mut buf = vec![0u8; 5000];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(buf, data);

    let c = t.dev.vsock_counters();
    assert_eq!((c.rx_bytes, c.tx_bytes), (3000, 5000));
    assert_eq!(
        (c.errors, c.host_bytes_dropped, c.guest_bytes_dropped),
        (0, 0, 0)
    );
}

#[test]
fn bytes_after_the_connect_line_reach_the_guest() {
    let mut t = T::new();
    let mut host = UnixStream::connect(t.uds()).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    host.write_all(b"CONNECT 7\nearly").unwrap();
    t.g.post_rx(2, RX_BUF);
    let req = t.rx_at_least(1)[0].0;
    assert_eq!(req.op, Op::Request as u16);
    t.send(&pkt(Op::Response, 7, req.src_port, 0), &[]);
    assert_eq!(read_line(&mut host), format!("OK {}\n", req.src_port));
    let got = t.rx_at_least(1);
    assert_eq!(got[0].1, b"early");
}

#[test]
fn guest_rst_closes_the_host_connection() {
    let mut t = T::new();
    let mut host = UnixStream::connect(t.uds()).unwrap();
    host.write_all(b"CONNECT 9\n").unwrap();
    t.g.post_rx(1, RX_BUF);
    let req = t.rx_at_least(1)[0].0;
    t.send(&pkt(Op::Rst, 9, req.src_port, 0), &[]);
    assert!(host_closed(&mut host));
    assert_eq!(t.dev.connection_count(), 0);
}

#[test]
fn no_answer_in_time_closes_the_host_connection_and_resets_the_guest() {
    let mut t = T::with_timeout(Duration::from_millis(20));
    let mut host = UnixStream::connect(t.uds()).unwrap();
    host.write_all(b"CONNECT 9\n").unwrap();
    t.g.post_rx(2, RX_BUF);
    let req = t.rx_at_least(1)[0].0;
    assert_eq!(req.op, Op::Request as u16);
    // The guest never answers.
    let got = t.rx_at_least(1);
    assert_eq!(got[0].0.op, Op::Rst as u16);
    assert_eq!(got[0].0.src_port, req.src_port);
    assert!(host_closed(&mut host));
    assert_eq!(t.dev.connection_count(), 0);
}

#[test]
fn silent_host_program_is_dropped_after_the_timeout() {
    let mut t = T::with_timeout(Duration::from_millis(20));
    let mut host = UnixStream::connect(t.uds()).unwrap();
    host.write_all(b"CONN").unwrap();
    host.set_nonblocking(true).unwrap();
    t.pump_until("the half-written CONNECT to be dropped", |_| {
        let mut b = [0u8; 4];
        matches!(host.read(&mut b), Ok(0))
    });
}

#[test]
fn bad_connect_lines_close_the_host_connection() {
    let mut t = T::new();
    let too_long = format!("CONNECT {}\n", "1".repeat(40));
    for line in [
        "HELLO 52\n",
        "connect 52\n",
        "CONNECT\n",
        "CONNECT \n",
        "CONNECT 52 \n",
        "CONNECT -1\n",
        "CONNECT 4294967296\n",
        "CONNECT 52\r\n",
        too_long.as_str(),
    ] {
        let mut host = UnixStream::connect(t.uds()).unwrap();
        host.write_all(line.as_bytes()).unwrap();
        t.pump();
        assert!(host_closed(&mut host), "{line:?} was accepted");
    }
    assert_eq!(t.dev.connection_count(), 0);
    assert_eq!(t.dev.vsock_counters().errors, 9);
    // No REQUEST reached the guest.
    t.g.post_rx(1, RX_BUF);
    t.pump();
    assert!(t.g.take_rx().is_empty());
}

#[test]
fn connect_line_parser_is_strict() {
    use crate::virtio::vsock::{parse_connect_line as p, ConnectLine::*};
    assert_eq!(p(b"CONNECT 52\n"), Port(52));
    assert_eq!(p(b"CONNECT 4294967295\n"), Port(u32::MAX));
    assert_eq!(p(b"CONN"), Incomplete);
    assert_eq!(p(b"CONNECT 5"), Incomplete);
    assert_eq!(p(b"CONNECX"), Bad);
    assert_eq!(p(b"CONNECT a"), Bad);
    assert_eq!(p(b"CONNECT 12345678901"), Bad);
    assert_eq!(p(b"CONNECT 4294967296\n"), Bad);
    assert_eq!(p(b"CONNECT \n"), Bad);
}

#[test]
fn host_close_sends_shutdown_and_the_guest_rst_finishes_it() {
    let mut t = T::new();
    let (host, local) = t.host_connect(52);
    drop(host);
    t.g.post_rx(1, RX_BUF);
    let got = t.rx_at_least(1);
    assert_eq!(got[0].0.op, Op::Shutdown as u16);
    assert_eq!(got[0].0.flags, 3, "full hang-up: both directions");
    t.send(&pkt(Op::Rst, 52, local, 0), &[]);
    assert_eq!(t.dev.connection_count(), 0);
}

#[test]
fn host_half_close_keeps_the_other_direction() {
    let mut t = T::new();
    let (mut host, local) = t.host_connect(52);
    host.shutdown(std::net::Shutdown::Write).unwrap();
    t.g.post_rx(1, RX_BUF);
    let got = t.rx_at_least(1);
    assert_eq!(got[0].0.op, Op::Shutdown as u16);
    assert_eq!(got[0].0.flags, 2, "the host only stopped sending");
    t.send(&pkt(Op::Rw, 52, local, 3), b"abc");
    let mut b = [0u8; 3];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"abc");
}

#[test]
fn guest_that_never_answers_a_hang_up_is_reset() {
    let mut t = T::with_timeout(Duration::from_millis(20));
    // Connect by hand: the 20 ms timeout would race the helper's RESPONSE.
    let l = std::os::unix::net::UnixListener::bind(format!("{}_5", t.uds().display())).unwrap();
    t.g.post_rx(3, RX_BUF);
    t.send(&pkt(Op::Request, 100, 5, 0), &[]);
    let (host, _) = l.accept().unwrap();
    drop(host);
    let got = t.rx_at_least(2);
    assert_eq!(got[0].0.op, Op::Response as u16);
    assert_eq!((got[1].0.op, got[1].0.flags), (Op::Shutdown as u16, 3));
    // The guest stays silent: flint gives up and resets.
    let got = t.rx_at_least(1);
    assert_eq!(got[0].0.op, Op::Rst as u16);
    assert_eq!(t.dev.connection_count(), 0);
}

#[test]
fn writing_to_a_host_that_went_away_resets_quietly() {
    let mut t = T::new();
    let (host, local) = t.host_connect(52);
    drop(host);
    t.g.post_rx(2, RX_BUF);
    t.send(&pkt(Op::Rw, 52, local, 3), b"abc");
    t.pump();
    let ops: Vec<u16> = t.g.take_rx().iter().map(|(h, _)| h.op).collect();
    assert_eq!(ops.last(), Some(&(Op::Rst as u16)));
    assert_eq!(t.dev.connection_count(), 0);
    assert_eq!(t.dev.vsock_counters().errors, 0, "not the guest's fault");
}

#[test]
fn response_before_the_request_was_delivered_is_refused() {
    let mut t = T::new();
    let mut host = UnixStream::connect(t.uds()).unwrap();
    host.write_all(b"CONNECT 9\n").unwrap();
    t.pump();
    // No RX buffer: the REQUEST is still owed. A guessed RESPONSE fails.
    assert_eq!(t.dev.connection_count(), 1);
    t.send(&pkt(Op::Response, 9, 1 << 30, 0), &[]);
    assert_eq!(t.dev.connection_count(), 0);
    assert!(host_closed(&mut host));
    assert_eq!(t.dev.vsock_counters().errors, 1);
}
