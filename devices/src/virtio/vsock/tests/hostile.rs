//! Hostile guests: malformed headers and chains are dropped (or reset the
//! connection they name), never panic, never stop the device.

use super::*;
use crate::virtio::vsock::packet::{check_header, parse_packet, PacketError, MAX_PAYLOAD};
use crate::virtio::IrqKind;

#[test]
fn parse_packet_refuses_bad_headers() {
    let good = pkt(Op::Rw, 1, 2, 3);
    let bytes = |h: &Header, extra: &[u8]| {
        let mut b = h.to_bytes().to_vec();
        b.extend_from_slice(extra);
        b
    };
    let b = bytes(&good, b"abcXYZ");
    let (hdr, op, payload) = parse_packet(&b, CID).unwrap();
    assert_eq!((hdr, op, payload), (good, Op::Rw, &b"abc"[..]));

    assert_eq!(parse_packet(&b[..43], CID), Err(PacketError::Short(43)));
    assert_eq!(parse_packet(&[], CID), Err(PacketError::Short(0)));
    let b = bytes(&good, b"ab");
    assert_eq!(parse_packet(&b, CID), Err(PacketError::Truncated(3, 2)));
    type Case = (fn(&mut Header), PacketError);
    let cases: [Case; 7] = [
        (|h| h.len = u32::MAX, PacketError::TooLong(u32::MAX)),
        (|h| h.src_cid = 4, PacketError::BadSrcCid(4)),
        (|h| h.dst_cid = 3, PacketError::BadDstCid(3)),
        (|h| h.type_ = 2, PacketError::BadType(2)),
        (|h| h.op = 0, PacketError::BadOp(0)),
        (|h| h.op = 8, PacketError::BadOp(8)),
        (
            |h| h.op = Op::Request as u16,
            PacketError::PayloadOnControl(1, 3),
        ),
    ];
    for (change, want) in cases {
        let mut h = good;
        change(&mut h);
        assert_eq!(check_header(&h, CID), Err(want.clone()));
        assert_eq!(parse_packet(&bytes(&h, &[0; 8]), CID).unwrap_err(), want);
    }
    let mut h = good;
    h.len = MAX_PAYLOAD as u32;
    assert!(check_header(&h, CID).is_ok());
}

#[test]
fn header_split_over_descriptors_is_parsed() {
    let mut t = T::new();
    t.g.post_rx(1, RX_BUF);
    let raw = pkt(Op::Rw, 7, 8, 5).to_bytes();
    let mut bytes = raw.to_vec();
    bytes.extend_from_slice(b"hello");
    let a = t.g.alloc(64);
    let b = t.g.alloc(64);
    let c = t.g.alloc(64);
    t.g.mem.write_slice(&bytes[..10], GuestAddress(a)).unwrap();
    t.g.mem
        .write_slice(&bytes[10..40], GuestAddress(b))
        .unwrap();
    t.g.mem.write_slice(&bytes[40..], GuestAddress(c)).unwrap();
    t.g.chain(1, &[(a, 10, false), (b, 30, false), (c, 9, false)]);
    t.dev.handle_tx_queue();
    // Parsed: an RST for the unknown connection.
    let got = t.g.take_rx();
    assert_eq!(got[0].0.op, Op::Rst as u16);
    assert_eq!(t.dev.vsock_counters().errors, 0);
}

/// Queues each chain, checks it is returned and counted as an error with
/// no answer, then checks a good packet still works.
fn all_dropped(t: &mut T, chains: &[Vec<D>]) {
    t.g.post_rx(1, RX_BUF);
    let before = t.dev.vsock_counters().errors;
    for descs in chains {
        t.g.chain(1, descs);
    }
    t.dev.handle_tx_queue();
    assert_eq!(t.g.take_used(1).len(), chains.len(), "every chain returned");
    assert_eq!(t.dev.vsock_counters().errors - before, chains.len() as u64);
    assert!(t.g.take_rx().is_empty(), "no answer to garbage");
    assert!(!t.dev.needs_reset());
    t.send(&pkt(Op::Rw, 1, 2, 0), &[]);
    assert_eq!(t.g.take_rx()[0].0.op, Op::Rst as u16, "device still works");
}

fn put(t: &mut T, h: &Header, payload: &[u8]) -> (u64, u32) {
    let mut b = h.to_bytes().to_vec();
    b.extend_from_slice(payload);
    let addr = t.g.alloc(b.len() as u64);
    t.g.mem.write_slice(&b, GuestAddress(addr)).unwrap();
    (addr, b.len() as u32)
}

#[test]
fn malformed_chains_are_dropped() {
    let mut t = T::new();
    let (good, glen) = put(&mut t, &pkt(Op::Rw, 1, 2, 4), b"data");
    let mut huge = pkt(Op::Rw, 1, 2, 0);
    huge.len = u32::MAX;
    let (huge, hlen) = put(&mut t, &huge, &[]);
    let (long, _) = put(&mut t, &pkt(Op::Rw, 1, 2, 4000), b"abc");
    let mut wrong = vec![];
    for change in [
        (|h: &mut Header| h.src_cid = 9) as fn(&mut Header),
        |h| h.dst_cid = 7,
        |h| h.type_ = 2,
        |h| h.op = 99,
    ] {
        let mut h = pkt(Op::Rw, 1, 2, 0);
        change(&mut h);
        let (a, l) = put(&mut t, &h, &[]);
        wrong.push(vec![(a, l, false)]);
    }
    let mut chains = vec![
        vec![(good, 20, false)],                        // short chain
        vec![(huge, hlen, false)],                      // len beyond the cap
        vec![(long, 47, false)],                        // len beyond the buffer
        vec![(good, glen, true)],                       // write-only
        vec![(good, 20, false), (good + 20, 24, true)], // write-only tail
        vec![(MEM_SIZE - 8, 44, false)],                // runs off guest memory
        vec![(MEM_SIZE + 0x1000, glen, false)],         // outside guest memory
    ];
    chains.extend(wrong);
    all_dropped(&mut t, &chains);
}

#[test]
fn looping_chain_is_dropped() {
    let mut t = T::new();
    t.g.post_rx(1, RX_BUF);
    let (a, _) = put(&mut t, &pkt(Op::Rw, 1, 2, 0), &[]);
    t.g.store_desc(
        1,
        200,
        a,
        10,
        virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16,
        200,
    );
    t.g.make_available(1, 200);
    t.dev.handle_tx_queue();
    assert_eq!(t.dev.vsock_counters().errors, 1);
    assert!(t.g.take_rx().is_empty());
}

#[test]
fn bad_packet_naming_a_connection_resets_it() {
    let mut t = T::new();
    let (mut host, local) = t.host_connect(52);
    t.g.post_rx(1, RX_BUF);
    let mut h = pkt(Op::Rw, 52, local, 0);
    h.type_ = 2; // SEQPACKET
    t.send(&h, &[]);
    assert_eq!(t.g.take_rx()[0].0.op, Op::Rst as u16);
    assert!(host_closed(&mut host));

    // A forged source CID never resets anything.
    let (_host, local) = t.host_connect(53);
    let mut h = pkt(Op::Rst, 53, local, 0);
    h.src_cid = 99;
    t.send(&h, &[]);
    assert_eq!(t.dev.connection_count(), 1);
}

#[test]
fn bad_rx_buffers_are_returned_empty() {
    let mut t = T::new();
    let ro = t.g.alloc(RX_BUF as u64);
    let small = t.g.alloc(64);
    t.g.post_rx_chain(&[(ro, RX_BUF, false)]);
    t.g.post_rx_chain(&[(small, 20, true)]);
    t.g.post_rx_chain(&[(MEM_SIZE - 16, RX_BUF, true)]);
    t.g.post_rx(1, RX_BUF);
    t.send(&pkt(Op::Rw, 1, 2, 0), &[]);
    let used = t.g.take_used(0);
    let lens: Vec<u32> = used.iter().map(|&(_, len)| len).collect();
    assert_eq!(lens, vec![0, 0, 0, 44]);
    assert_eq!(t.dev.vsock_counters().errors, 3);
}

#[test]
fn rx_header_split_over_descriptors() {
    let mut t = T::new();
    let (a, b) = (t.g.alloc(16), t.g.alloc(4096));
    t.g.post_rx_chain(&[(a, 16, true), (b, 4096, true)]);
    let (mut host, local) = {
        let mut host = UnixStream::connect(t.uds()).unwrap();
        host.write_all(b"CONNECT 1\n").unwrap();
        t.pump();
        (host.try_clone().unwrap(), t.g.take_rx()[0].0.src_port)
    };
    t.send(&pkt(Op::Response, 1, local, 0), &[]);
    assert_eq!(read_line(&mut host), format!("OK {local}\n"));
}

#[test]
fn corrupt_avail_index_needs_reset() {
    let mut t = T::new();
    let avail = 0x4000 + 0x1000;
    t.g.mem.write_obj(1000u16, GuestAddress(avail + 2)).unwrap();
    t.dev.handle_tx_queue();
    assert!(t.dev.needs_reset());
    assert!(t.irq.status() & IrqKind::Config as u32 != 0);
}

#[test]
fn a_packet_in_an_indirect_table_is_dropped_unfollowed() {
    let mut t = T::new();
    t.g.post_rx(1, RX_BUF);
    // A well-formed packet behind a one-entry indirect table: it would get
    // an RST back if the table were followed (not offered, so it is not).
    let (addr, len) = put(&mut t, &pkt(Op::Rw, 1, 2, 0), &[]);
    let table = t.g.alloc(16);
    let entry = virtio_queue::desc::split::Descriptor::new(addr, len, 0, 0);
    t.g.mem
        .write_obj(
            virtio_queue::desc::RawDescriptor::from(entry),
            GuestAddress(table),
        )
        .unwrap();
    let indirect = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;
    let head = t.g.chain(1, &[(table, 16, false)]);
    t.g.store_desc(1, head, table, 16, indirect, 0);
    t.dev.handle_tx_queue();
    assert_eq!(t.g.take_used(1), vec![(head, 0)]);
    assert_eq!(t.dev.vsock_counters().errors, 1);
    assert!(
        t.g.take_rx().is_empty(),
        "no answer: the packet was never read"
    );
    assert!(!t.dev.needs_reset());
}
