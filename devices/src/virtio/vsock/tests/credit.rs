//! Credit both ways: never more to the guest than it has room for, never
//! more host-bound bytes held than advertised; per-turn work bounds.

use super::*;

fn credit_update(peer: u32, local: u32, buf_alloc: u32, fwd_cnt: u32) -> Header {
    let mut h = pkt(Op::CreditUpdate, peer, local, 0);
    h.buf_alloc = buf_alloc;
    h.fwd_cnt = fwd_cnt;
    h
}

#[test]
fn exhausted_credit_stops_host_reads_until_credit_update() {
    let mut t = T::new();
    let (mut host, local) = t.host_connect(52);
    t.send(&credit_update(52, local, 1000, 0), &[]);
    let data = pattern(3000, 9);
    host.write_all(&data).unwrap();
    t.g.post_rx(4, RX_BUF);
    let got = t.rx_at_least(1);
    t.pump();
    assert_eq!(got.len(), 1, "one packet, then out of credit");
    assert_eq!(got[0].1, data[..1000]);
    assert!(t.g.take_rx().is_empty(), "nothing more without credit");

    let mut received = got[0].1.clone();
    for fwd in [1000, 2000] {
        t.send(&credit_update(52, local, 1000, fwd), &[]);
        t.pump();
        let got = t.g.take_rx();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.len(), 1000);
        received.extend(&got[0].1);
    }
    assert_eq!(received, data);
    assert_eq!(t.dev.vsock_counters().host_bytes_dropped, 0);
}

#[test]
fn credit_request_gets_a_credit_update() {
    let mut t = T::new();
    let (_host, local) = t.host_connect(52);
    t.g.post_rx(1, RX_BUF);
    t.send(&pkt(Op::CreditRequest, 52, local, 0), &[]);
    let got = t.g.take_rx();
    assert_eq!(got[0].0.op, Op::CreditUpdate as u16);
    assert_eq!(got[0].0.buf_alloc, CONN_BUF_SIZE);
    assert_eq!(got[0].0.fwd_cnt, 0);
}

/// The guest's view of one connection's send credit.
struct Sender {
    local: u32,
    sent: u32,
    fwd_cnt: u32,
}

impl Sender {
    fn credit(&self) -> u32 {
        CONN_BUF_SIZE - (self.sent - self.fwd_cnt)
    }

    /// Sends up to 32 KiB if the credit allows; returns the bytes sent.
    fn send_some(&mut self, t: &mut T, total: &mut Vec<u8>) -> usize {
        let n = self.credit().min(32 * 1024) as usize;
        if n == 0 {
            return 0;
        }
        let data = pattern(n, total.len() as u8);
        t.send(&pkt(Op::Rw, 52, self.local, n as u32), &data);
        total.extend(&data);
        self.sent += n as u32;
        n
    }

    /// Takes the device's packets (CREDIT_UPDATEs) into account.
    fn absorb(&mut self, t: &mut T) {
        for (hdr, _) in t.g.take_rx() {
            assert_ne!(hdr.op, Op::Rst as u16, "connection reset");
            self.fwd_cnt = hdr.fwd_cnt;
        }
        if t.g.rx_outstanding() < 4 {
            t.g.post_rx(1, RX_BUF);
        }
    }
}

/// Connects and makes the guest send until its credit is gone, with a
/// host that never reads; returns the guest's view and what it sent.
fn stall(t: &mut T) -> (UnixStream, Sender, Vec<u8>) {
    let (host, local) = t.host_connect(52);
    let mut s = Sender {
        local,
        sent: 0,
        fwd_cnt: 0,
    };
    let mut total = Vec::new();
    t.g.post_rx(1, RX_BUF);
    for _ in 0..100 {
        let n = s.send_some(t, &mut total);
        t.pump();
        s.absorb(t);
        assert!(t.dev.host_bound_buffered() <= CONN_BUF_SIZE as usize);
        if n == 0 {
            break;
        }
    }
    assert_eq!(s.credit(), 0, "the host socket never filled up");
    (host, s, total)
}

#[test]
fn slow_host_reader_does_not_grow_buffers_and_nothing_is_lost() {
    let mut t = T::new();
    let (mut host, mut s, mut total) = stall(&mut t);
    assert!(t.dev.host_bound_buffered() > 0);
    assert!(t.dev.host_bound_buffered() <= CONN_BUF_SIZE as usize);

    // The host starts reading; the guest keeps sending 256 KiB more.
    host.set_nonblocking(true).unwrap();
    let mut received: Vec<u8> = Vec::new();
    let target = total.len() + 256 * 1024;
    let mut more = 0;
    t.pump_until("all bytes at the host", |t| {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = host.read(&mut buf) {
            if n == 0 {
                break;
            }
            received.extend(&buf[..n]);
        }
        t.pump();
        s.absorb(t);
        if total.len() < target {
            more += s.send_some(t, &mut total);
        }
        assert!(t.dev.host_bound_buffered() <= CONN_BUF_SIZE as usize);
        received.len() == target
    });
    assert!(more > 0);
    assert!(
        received == total,
        "host bytes differ from what the guest sent"
    );
    let c = t.dev.vsock_counters();
    assert_eq!(
        (c.errors, c.guest_bytes_dropped, c.host_bytes_dropped),
        (0, 0, 0)
    );
}

#[test]
fn data_beyond_credit_resets_instead_of_buffering() {
    let mut t = T::new();
    let (mut host, s, _) = stall(&mut t);
    t.send(&pkt(Op::Rw, 52, s.local, 1), b"!");
    let got = t.g.take_rx();
    assert_eq!(got.last().unwrap().0.op, Op::Rst as u16);
    assert_eq!(t.dev.connection_count(), 0);
    assert_eq!(t.dev.host_bound_buffered(), 0);
    let c = t.dev.vsock_counters();
    assert!(c.guest_bytes_dropped > 0);
    assert_eq!(c.errors, 1);
    assert!(host_closed_after_draining(&mut host));
}

/// Reads until EOF (the socket held data when flint closed it).
fn host_closed_after_draining(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut b = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
}

#[test]
fn tx_work_per_turn_is_bounded() {
    let mut t = T::new();
    for i in 0..100 {
        t.g.send(&pkt(Op::Rst, 1000 + i, 5, 0), &[]);
    }
    t.dev.handle_tx_queue();
    assert_eq!(t.g.take_used(1).len(), 64);
    // It asked to be called again.
    assert!(t.dev.queue_events()[1].read().is_ok());
    t.dev.handle_tx_queue();
    assert_eq!(t.g.take_used(1).len(), 36);
}

#[test]
fn rx_work_per_turn_is_bounded() {
    let mut t = T::new();
    for i in 0..100 {
        t.g.send(&pkt(Op::Rw, 1000 + i, 5, 0), &[]);
    }
    t.dev.handle_tx_queue();
    t.dev.handle_tx_queue();
    t.g.post_rx(100, RX_BUF);
    let _ = t.dev.queue_events()[0].read();
    t.dev.handle_rx_queue();
    assert_eq!(t.g.take_rx().len(), 64);
    assert!(t.dev.queue_events()[0].read().is_ok());
    t.dev.handle_rx_queue();
    assert_eq!(t.g.take_rx().len(), 36);
}

#[test]
fn host_reads_are_sized_to_the_guest_buffer() {
    let mut t = T::new();
    let (mut host, _) = t.host_connect(52);
    let data = pattern(1000, 4);
    host.write_all(&data).unwrap();
    t.pump();
    assert!(t.g.take_rx().is_empty(), "no RX buffer: nothing read");
    let mut received: Vec<u8> = Vec::new();
    for _ in 0..10 {
        t.g.post_rx(1, HDR_LEN as u32 + 100);
        t.dev.handle_rx_queue();
        let got = t.g.take_rx();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.len(), 100);
        received.extend(&got[0].1);
    }
    assert_eq!(received, data);
    assert_eq!(t.dev.vsock_counters().host_bytes_dropped, 0);
}

#[test]
fn guest_close_waits_for_host_bound_bytes_then_resets() {
    let mut t = T::new();
    let (mut host, s, total) = stall(&mut t);
    let mut shut = pkt(Op::Shutdown, 52, s.local, 0);
    shut.flags = 3;
    t.send(&shut, &[]);
    assert_eq!(t.dev.connection_count(), 1, "bytes still buffered");
    // The host reads everything; then the guest gets its RST.
    host.set_nonblocking(true).unwrap();
    let mut received: Vec<u8> = Vec::new();
    t.pump_until("the flush", |t| {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = host.read(&mut buf) {
            if n == 0 {
                break;
            }
            received.extend(&buf[..n]);
        }
        t.pump();
        t.dev.connection_count() == 0
    });
    let got = t.g.take_rx();
    assert_eq!(got.last().unwrap().0.op, Op::Rst as u16);
    host.set_nonblocking(false).unwrap();
    host.read_to_end(&mut received).unwrap();
    assert!(received == total);
    assert_eq!(t.dev.vsock_counters().guest_bytes_dropped, 0);
}
