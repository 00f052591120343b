//! Transmit: good frames reach the tap intact; bad chains come back empty.

use std::time::Duration;

use virtio_bindings::virtio_net as vn;

use super::*;
use crate::rate_limiter::BucketConfig;

#[test]
fn frame_over_three_descriptors_reaches_the_tap_intact() {
    let mem = mem();
    let (rxq, txq) = queues(&mem);
    let (mut net, wire, irq) = active_net(&mem, &rxq, &txq, 0);
    let f = frame(0, 0, 100);
    mem.write_slice(&f[..30], GuestAddress(BUF)).unwrap();
    mem.write_slice(&f[30..70], GuestAddress(BUF + 0x1000))
        .unwrap();
    mem.write_slice(&f[70..], GuestAddress(BUF + 0x2000))
        .unwrap();
    add_chain(
        &txq,
        0,
        &[
            (BUF, 30, false),
            (BUF + 0x1000, 40, false),
            (BUF + 0x2000, 42, false),
        ],
    );
    net.process_tx();
    assert_eq!(wire.lock().unwrap().from_guest, vec![f]);
    assert_eq!(used(&txq), vec![(0, 0)]);
    assert!(vring_irq(&irq));
    assert_eq!(net.net_counters().tx_frames, 1);
}

#[test]
fn hostile_chains_are_returned_empty_and_later_ones_still_work() {
    let mem = mem();
    let (rxq, txq) = queues(&mem);
    let (mut net, wire, _irq) = active_net(&mem, &rxq, &txq, 0);
    let f = frame(0, 0, 50);
    mem.write_slice(&f, GuestAddress(BUF)).unwrap();
    let len = f.len() as u32;
    let outside = MEM_SIZE as u64 + 0x1000;
    add_chain(&txq, 0, &[(BUF, 12, false), (BUF, 50, true)]); // writable descriptor
    add_chain(&txq, 2, &[(outside, len, false)]); // outside guest memory
    add_chain(&txq, 3, &[(MEM_SIZE as u64 - 8, 16, false)]); // straddles the end
    add_chain(&txq, 4, &[(BUF, 8, false)]); // shorter than the vnet header
    add_chain(&txq, 5, &[(BUF, 40_000, false), (BUF, 40_000, false)]); // over the cap
    add_chain(&txq, 7, &[(u64::MAX - 4, 16, false)]); // wraps the address space
    add_chain(&txq, 8, &[(BUF, len, false)]); // good
    net.process_tx();
    assert_eq!(wire.lock().unwrap().from_guest, vec![f]);
    assert_eq!(
        used(&txq),
        vec![(0, 0), (2, 0), (3, 0), (4, 0), (5, 0), (7, 0), (8, 0)]
    );
    assert_eq!(net.net_counters().bad_chains, 6);
    assert!(!net.needs_reset());
}

#[test]
fn looping_chain_is_rejected() {
    let mem = mem();
    let (rxq, txq) = queues(&mem);
    let (mut net, wire, _irq) = active_net(&mem, &rxq, &txq, 0);
    let f = frame(0, 0, 20);
    mem.write_slice(&f, GuestAddress(BUF)).unwrap();
    let next = VRING_DESC_F_NEXT as u16;
    let looping = [
        RawDescriptor::from(SplitDescriptor::new(BUF, 32, next, 1)),
        RawDescriptor::from(SplitDescriptor::new(BUF, 32, next, 0)),
    ];
    txq.add_desc_chains(&looping, 0).unwrap();
    // A next index beyond the table.
    let dangling = [RawDescriptor::from(SplitDescriptor::new(
        BUF, 32, next, 999,
    ))];
    txq.add_desc_chains(&dangling, 2).unwrap();
    add_chain(&txq, 3, &[(BUF, 32, false)]);
    net.process_tx();
    assert_eq!(wire.lock().unwrap().from_guest, vec![f]);
    assert_eq!(used(&txq), vec![(0, 0), (2, 0), (3, 0)]);
    assert_eq!(net.net_counters().bad_chains, 2);
}

#[test]
fn head_index_outside_the_queue_needs_reset() {
    let mem = mem();
    let (rxq, txq) = queues(&mem);
    let (mut net, wire, irq) = active_net(&mem, &rxq, &txq, 0);
    txq.avail().ring().ref_at(0).unwrap().store(500);
    txq.avail().idx().store(1);
    net.process_tx();
    assert!(net.needs_reset());
    assert!(config_irq(&irq));
    assert!(wire.lock().unwrap().from_guest.is_empty());
}

#[test]
fn avail_index_far_ahead_needs_reset_until_the_driver_resets() {
    let mem = mem();
    let (rxq, txq) = queues(&mem);
    let (mut net, wire, irq) = active_net(&mem, &rxq, &txq, 0);
    txq.avail().idx().store(1000);
    net.process_tx();
    assert!(net.needs_reset());
    assert!(config_irq(&irq));
    net.process_tx(); // stays stopped, no panic
    assert!(used(&txq).is_empty());

    // The driver resets and sets the queues up again: good chains work.
    net.reset();
    assert!(!net.needs_reset() && !net.state().activated);
    let mem2 = super::mem();
    let (rxq2, txq2) = queues(&mem2);
    activate(&mut net, &mem2, &rxq2, &txq2, VIRTIO_F_VERSION_1);
    let f = frame(0, 0, 20);
    mem2.write_slice(&f, GuestAddress(BUF)).unwrap();
    add_chain(&txq2, 0, &[(BUF, f.len() as u32, false)]);
    net.process_tx();
    assert_eq!(wire.lock().unwrap().from_guest, vec![f]);
}

#[test]
fn offloads_in_the_header_must_have_been_negotiated() {
    let mem = mem();
    let (rxq, txq) = queues(&mem);
    let csum = vn::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    let tso4 = vn::VIRTIO_NET_HDR_GSO_TCPV4 as u8;
    let tso6 = vn::VIRTIO_NET_HDR_GSO_TCPV6 as u8;
    let frames = [
        frame(csum, 0, 60),
        frame(csum, tso4, 60),
        frame(csum, tso6, 60),
        frame(csum, vn::VIRTIO_NET_HDR_GSO_UDP as u8, 60),
        frame(csum, tso4 | vn::VIRTIO_NET_HDR_GSO_ECN as u8, 60),
    ];
    for (i, f) in frames.iter().enumerate() {
        let addr = BUF + 0x100 * i as u64;
        mem.write_slice(f, GuestAddress(addr)).unwrap();
        add_chain(&txq, i as u16, &[(addr, f.len() as u32, false)]);
    }
    // Checksum and TSO4 negotiated, TSO6/UFO/ECN not.
    let features = feature(vn::VIRTIO_NET_F_CSUM) | feature(vn::VIRTIO_NET_F_HOST_TSO4);
    let (mut net, wire, _irq) = active_net(&mem, &rxq, &txq, features);
    net.process_tx();
    assert_eq!(wire.lock().unwrap().from_guest, frames[..2].to_vec());
    assert_eq!(used(&txq).len(), 5);
    assert_eq!(net.net_counters().bad_chains, 3);
}

#[test]
fn rate_limited_tx_waits_for_the_timer_and_keeps_the_chain() {
    let mem = mem();
    let (rxq, txq) = queues(&mem);
    let bucket = BucketConfig {
        size: 100,
        one_time_burst: 0,
        refill_time_ms: 30,
    };
    let mut cfg = config(None);
    cfg.tx_rate_limiter = Some(RateLimiter::new(Some(bucket), None).unwrap());
    let (mut net, wire, _evt) = fake_net(cfg);
    activate(&mut net, &mem, &rxq, &txq, VIRTIO_F_VERSION_1);
    let f = frame(0, 0, 80);
    mem.write_slice(&f, GuestAddress(BUF)).unwrap();
    add_chain(&txq, 0, &[(BUF, f.len() as u32, false)]);
    add_chain(&txq, 1, &[(BUF, f.len() as u32, false)]);
    net.process_tx();
    assert_eq!(wire.lock().unwrap().from_guest.len(), 1);
    assert_eq!(used(&txq).len(), 1, "the second chain waits on the ring");
    assert!(net.tx_limiter.as_ref().unwrap().is_blocked());
    net.process_tx(); // a notification while blocked changes nothing
    assert_eq!(used(&txq).len(), 1);
    std::thread::sleep(Duration::from_millis(35));
    net.tx_limiter.as_mut().unwrap().event_handler().unwrap();
    net.process_tx();
    assert_eq!(wire.lock().unwrap().from_guest.len(), 2);
    assert_eq!(used(&txq), vec![(0, 0), (1, 0)]);
}

#[test]
fn a_frame_in_an_indirect_table_is_refused_unfollowed() {
    let mem = mem();
    let (rxq, txq) = queues(&mem);
    let (mut net, wire, _irq) = active_net(&mem, &rxq, &txq, 0);
    let f = frame(0, 0, 50);
    mem.write_slice(&f, GuestAddress(BUF)).unwrap();
    // A good one-descriptor table, but VIRTIO_F_INDIRECT_DESC is not offered.
    let table = BUF + 0x1000;
    let entry = SplitDescriptor::new(BUF, f.len() as u32, 0, 0);
    mem.write_obj(RawDescriptor::from(entry), GuestAddress(table))
        .unwrap();
    let indirect = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;
    let head = [RawDescriptor::from(SplitDescriptor::new(
        table, 16, indirect, 0,
    ))];
    txq.add_desc_chains(&head, 0).unwrap();
    add_chain(&txq, 1, &[(BUF, f.len() as u32, false)]);
    net.process_tx();
    assert_eq!(
        wire.lock().unwrap().from_guest,
        vec![f],
        "only the direct one"
    );
    assert_eq!(used(&txq), vec![(0, 0), (1, 0)]);
    assert_eq!(net.net_counters().bad_chains, 1);
    assert!(!net.needs_reset());
}
