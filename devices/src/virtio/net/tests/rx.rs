//! Receive: frames land in guest buffers with a correct header; frames wait
//! for buffers; bad buffers come back empty.

use virtio_bindings::virtio_net as vn;

use super::*;

fn read_guest(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

fn num_buffers(f: &[u8]) -> u16 {
    u16::from_le_bytes([f[10], f[11]])
}

#[test]
fn frame_lands_in_guest_memory_with_header_and_num_buffers() {
    let mem = mem();
    let (rxq, txq) = queues(&mem);
    let (mut net, wire, irq) = active_net(&mem, &rxq, &txq, 0);
    add_chain(&rxq, 0, &[(BUF, 12, true), (BUF + 0x1000, 2000, true)]);
    let f = frame(vn::VIRTIO_NET_HDR_F_DATA_VALID as u8, 0, 100);
    wire.lock().unwrap().to_guest.push_back(f.clone());
    net.process_rx();
    assert_eq!(used(&rxq), vec![(0, 112)]);
    let hdr = read_guest(&mem, BUF, 12);
    assert_eq!(hdr[0], f[0]);
    assert_eq!(num_buffers(&hdr), 1);
    assert_eq!(read_guest(&mem, BUF + 0x1000, 100), f[12..]);
    assert!(vring_irq(&irq));
    assert_eq!(net.net_counters().rx_frames, 1);
}

#[test]
fn mergeable_buffers_spread_a_frame_over_chains() {
    let mem = mem();
    let (rxq, txq) = queues(&mem);
    let mrg = feature(vn::VIRTIO_NET_F_MRG_RXBUF);
    let (mut net, wire, _irq) = active_net(&mem, &rxq, &txq, mrg);
    for i in 0..5u16 {
        add_chain(&rxq, i, &[(BUF + 0x100 * u64::from(i), 64, true)]);
    }
    let f = frame(0, 0, 188); // 200 bytes: 4 chains
    wire.lock().unwrap().to_guest.push_back(f.clone());
    net.process_rx();
    assert_eq!(used(&rxq), vec![(0, 64), (1, 64), (2, 64), (3, 8)]);
    let mut got = Vec::new();
    for (i, len) in [64, 64, 64, 8].into_iter().enumerate() {
        got.extend(read_guest(&mem, BUF + 0x100 * i as u64, len));
    }
    assert_eq!(num_buffers(&got), 4);
    got[10..12].copy_from_slice(&[0, 0]);
    assert_eq!(got, f);
    // The fifth chain is kept for the next frame.
    wire.lock().unwrap().to_guest.push_back(frame(0, 0, 20));
    net.process_rx();
    assert_eq!(used(&rxq)[4], (4, 32));
}

#[test]
fn frame_waits_for_buffers_instead_of_being_dropped() {
    let mem = mem();
    let (rxq, txq) = queues(&mem);
    let (mut net, wire, _irq) = active_net(&mem, &rxq, &txq, 0);
    let (a, b) = (frame(0, 0, 30), frame(0, 0, 40));
    wire.lock().unwrap().to_guest.extend([a.clone(), b.clone()]);
    net.process_rx();
    net.process_rx(); // more tap events: still nothing to put it in
    assert!(used(&rxq).is_empty());
    assert_eq!(
        wire.lock().unwrap().to_guest.len(),
        1,
        "only one frame taken"
    );
    // The guest posts buffers (and notifies).
    add_chain(&rxq, 0, &[(BUF, 1500, true)]);
    add_chain(&rxq, 1, &[(BUF + 0x1000, 1500, true)]);
    net.process_rx();
    assert_eq!(used(&rxq), vec![(0, 42), (1, 52)]);
    assert_eq!(read_guest(&mem, BUF + 12, 30), a[12..]);
    assert_eq!(read_guest(&mem, BUF + 0x1000 + 12, 40), b[12..]);
    assert_eq!(net.net_counters().rx_dropped, 0);
}

#[test]
fn hostile_chains_are_returned_empty_and_later_ones_still_work() {
    let mem = mem();
    let (rxq, txq) = queues(&mem);
    let (mut net, wire, _irq) = active_net(&mem, &rxq, &txq, 0);
    add_chain(&rxq, 0, &[(BUF, 12, true), (BUF + 12, 1500, false)]); // read-only
    add_chain(&rxq, 2, &[(BUF, 8, true)]); // smaller than the header
    add_chain(&rxq, 3, &[(MEM_SIZE as u64, 1500, true)]); // outside guest memory
    let next = (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16;
    let looping = [RawDescriptor::from(SplitDescriptor::new(BUF, 100, next, 4))];
    rxq.add_desc_chains(&looping, 4).unwrap(); // points at itself
    add_chain(&rxq, 5, &[(BUF + 0x1000, 1500, true)]); // good
    let f = frame(0, 0, 64);
    wire.lock().unwrap().to_guest.push_back(f.clone());
    net.process_rx();
    assert_eq!(used(&rxq), vec![(0, 0), (2, 0), (3, 0), (4, 0), (5, 76)]);
    assert_eq!(read_guest(&mem, BUF + 0x1000 + 12, 64), f[12..]);
    assert_eq!(net.net_counters().bad_chains, 4);
    assert!(!net.needs_reset());
}

#[test]
fn frame_too_big_for_a_single_buffer_is_dropped_and_the_buffer_kept() {
    let mem = mem();
    let (rxq, txq) = queues(&mem);
    let (mut net, wire, _irq) = active_net(&mem, &rxq, &txq, 0);
    add_chain(&rxq, 0, &[(BUF, 100, true)]);
    let small = frame(0, 0, 50);
    wire.lock()
        .unwrap()
        .to_guest
        .extend([frame(0, 0, 500), small.clone()]);
    net.process_rx();
    assert_eq!(used(&rxq), vec![(0, 62)]);
    assert_eq!(read_guest(&mem, BUF + 12, 50), small[12..]);
    assert_eq!(net.net_counters().rx_dropped, 1);
}

#[test]
fn runt_frames_from_the_tap_are_dropped() {
    let mem = mem();
    let (rxq, txq) = queues(&mem);
    let (mut net, wire, _irq) = active_net(&mem, &rxq, &txq, 0);
    add_chain(&rxq, 0, &[(BUF, 1500, true)]);
    wire.lock()
        .unwrap()
        .to_guest
        .extend([vec![0; 5], frame(0, 0, 1), frame(0, 0, 20)]);
    net.process_rx();
    assert_eq!(used(&rxq), vec![(0, 32)]);
    assert_eq!(net.net_counters().rx_dropped, 2);
}

#[test]
fn broken_avail_ring_needs_reset() {
    let mem = mem();
    let (rxq, txq) = queues(&mem);
    let (mut net, wire, irq) = active_net(&mem, &rxq, &txq, 0);
    rxq.avail().idx().store(0x8000);
    wire.lock().unwrap().to_guest.push_back(frame(0, 0, 20));
    net.process_rx();
    assert!(net.needs_reset());
    assert!(config_irq(&irq));
    assert!(used(&rxq).is_empty());
}

#[test]
fn a_flood_from_the_tap_is_taken_in_bounded_batches() {
    use crate::virtio::chain::CHAINS_PER_TURN;
    let mem = mem();
    let (rxq, txq) = queues(&mem);
    let (mut net, wire, _irq) = active_net(&mem, &rxq, &txq, 0);
    // Activation kicked the queues; start from quiet eventfds.
    let _ = net.queue_events()[0].read();
    // One buffer too small for any of the frames: each is dropped.
    add_chain(&rxq, 0, &[(BUF, 64, true)]);
    let frames = CHAINS_PER_TURN * 2 + 10;
    for _ in 0..frames {
        wire.lock().unwrap().to_guest.push_back(frame(0, 0, 200));
    }
    let mut turns = 0;
    loop {
        net.process_rx();
        turns += 1;
        let dropped = net.net_counters().rx_dropped as usize;
        assert_eq!(dropped, frames.min(turns * CHAINS_PER_TURN), "turn {turns}");
        // The tap is edge-triggered: the device must have re-armed its RX
        // queue to come back for the rest.
        let again = net.queue_events()[0].read().is_ok();
        assert_eq!(again, dropped < frames, "turn {turns}");
        if dropped == frames {
            break;
        }
    }
    assert_eq!(turns, 3);
}
