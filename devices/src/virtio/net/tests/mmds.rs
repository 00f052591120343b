//! MMDS on the card: its frames never reach the tap, its answers come back
//! on RX through the ordinary RX path; everything else is untouched.

use std::net::Ipv4Addr;

use ::mmds::wire::{parse_arp, write_arp, ETHERTYPE_ARP};
use ::mmds::{Mmds, MmdsNetStack, DEFAULT_IPV4_ADDR, DEFAULT_MAC_ADDR, DEFAULT_SIZE_LIMIT};
use vm_memory::Bytes;

use super::*;

const GUEST_MAC: [u8; 6] = [0x06, 0, 0, 0, 0, 0x42];
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 2);

fn with_mmds(net: &mut Net) {
    let store = Arc::new(Mutex::new(Mmds::new(DEFAULT_SIZE_LIMIT)));
    net.set_mmds(MmdsNetStack::new(
        DEFAULT_MAC_ADDR,
        DEFAULT_IPV4_ADDR,
        store,
    ));
}

/// A vnet header then an ARP request from the guest for `target`.
fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN + ::mmds::wire::ARP_FRAME_LEN];
    write_arp(
        &mut f[VNET_HDR_LEN..],
        (GUEST_MAC, GUEST_IP),
        ([0; 6], target),
        1,
    )
    .unwrap();
    f
}

/// Queues `f` on TX at descriptor `index` (buffer `BUF + index * 0x1000`).
fn send(mem: &GuestMemory, txq: &MockSplitQueue<GuestMemory>, index: u16, f: &[u8]) {
    let addr = BUF + u64::from(index) * 0x1000;
    mem.write_slice(f, GuestAddress(addr)).unwrap();
    add_chain(txq, index, &[(addr, f.len() as u32, false)]);
}

const RX_BUF: u64 = BUF + 0x20000;

#[test]
fn arp_for_mmds_is_answered_on_rx_and_not_sent_to_the_tap() {
    let mem = mem();
    let (rxq, txq) = queues(&mem);
    let (mut net, wire, irq) = active_net(&mem, &rxq, &txq, 0);
    with_mmds(&mut net);
    add_chain(&rxq, 0, &[(RX_BUF, 2048, true)]);
    send(&mem, &txq, 0, &arp_request(DEFAULT_IPV4_ADDR));
    net.process_tx();
    assert!(
        wire.lock().unwrap().from_guest.is_empty(),
        "MMDS frame reached the tap"
    );
    assert_eq!(used(&txq), vec![(0, 0)]);
    let want = (VNET_HDR_LEN + ::mmds::wire::ARP_FRAME_LEN) as u32;
    assert_eq!(used(&rxq), vec![(0, want)]);
    let mut got = vec![0u8; want as usize];
    mem.read_slice(&mut got, GuestAddress(RX_BUF)).unwrap();
    // Zeroed vnet header, num_buffers 1.
    assert_eq!(got[..VNET_HDR_LEN], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    let eth = &got[VNET_HDR_LEN..];
    assert_eq!(eth[..6], GUEST_MAC);
    assert_eq!(u16::from_be_bytes([eth[12], eth[13]]), ETHERTYPE_ARP);
    let arp = parse_arp(&eth[14..]).unwrap();
    assert_eq!(arp.spa, DEFAULT_IPV4_ADDR);
    assert_eq!(arp.tpa, GUEST_IP);
    assert!(vring_irq(&irq));
    let c = net.net_counters();
    assert_eq!((c.mmds_tx_frames, c.mmds_rx_frames, c.tx_frames), (1, 1, 0));
    assert_eq!(c.rx_frames, 1);
}

#[test]
fn other_frames_still_go_to_the_tap_and_tap_frames_still_arrive() {
    let mem = mem();
    let (rxq, txq) = queues(&mem);
    let (mut net, wire, _irq) = active_net(&mem, &rxq, &txq, 0);
    with_mmds(&mut net);
    let other_arp = arp_request(Ipv4Addr::new(10, 0, 0, 1));
    let plain = frame(0, 0, 100);
    send(&mem, &txq, 0, &other_arp);
    send(&mem, &txq, 1, &plain);
    net.process_tx();
    assert_eq!(wire.lock().unwrap().from_guest, vec![other_arp, plain]);
    assert_eq!(net.net_counters().mmds_tx_frames, 0);
    // RX from the tap is unchanged with MMDS idle.
    add_chain(&rxq, 0, &[(RX_BUF, 2048, true)]);
    wire.lock().unwrap().to_guest.push_back(frame(0, 0, 60));
    net.process_rx();
    assert_eq!(used(&rxq), vec![(0, 72)]);
}

#[test]
fn mmds_answer_waits_for_a_buffer_and_precedes_tap_frames() {
    let mem = mem();
    let (rxq, txq) = queues(&mem);
    let (mut net, wire, _irq) = active_net(&mem, &rxq, &txq, 0);
    with_mmds(&mut net);
    wire.lock().unwrap().to_guest.push_back(frame(0, 0, 60));
    send(&mem, &txq, 0, &arp_request(DEFAULT_IPV4_ADDR));
    // No RX buffer yet: the answer is kept, not dropped.
    net.process_tx();
    assert!(used(&rxq).is_empty());
    add_chain(&rxq, 0, &[(RX_BUF, 2048, true)]);
    add_chain(&rxq, 1, &[(RX_BUF + 0x1000, 2048, true)]);
    net.process_rx();
    let arp_len = (VNET_HDR_LEN + ::mmds::wire::ARP_FRAME_LEN) as u32;
    assert_eq!(used(&rxq), vec![(0, arp_len), (1, 72)]);
    assert_eq!(net.net_counters().rx_dropped, 0);
}

#[test]
fn a_timer_wakeup_with_nothing_due_does_not_block() {
    let mem = mem();
    let (rxq, txq) = queues(&mem);
    let (mut net, wire, _irq) = active_net(&mem, &rxq, &txq, 0);
    with_mmds(&mut net);
    // The timerfd is not armed (no connection): reading it must not block
    // the event loop, and the RX path still runs.
    add_chain(&rxq, 0, &[(RX_BUF, 2048, true)]);
    wire.lock().unwrap().to_guest.push_back(frame(0, 0, 60));
    net.handle_mmds_timer();
    assert_eq!(used(&rxq), vec![(0, 72)]);
}
