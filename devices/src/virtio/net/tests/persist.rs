//! Saving and restoring a card: the whole device state comes back, and RX
//! buffers held for a frame still arriving are handed back to the ring.

use virtio_bindings::virtio_net as vn;

use super::*;
use crate::persist::Persist;

fn restore(
    saved: &NetSnapshotState,
    mac: Option<[u8; 6]>,
) -> Result<(Net, Arc<Mutex<Wire>>), NetPersistError> {
    let wire = Arc::new(Mutex::new(Wire::default()));
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let tap = FakeTap {
        wire: wire.clone(),
        evt,
    };
    let args = NetConstructorArgs {
        config: config(mac),
        backend: Some(Box::new(tap)),
    };
    Net::restore(args, saved).map(|net| (net, wire))
}

#[test]
fn round_trip_rewinds_held_rx_buffers_and_keeps_features() {
    let mem = mem();
    let (rxq, txq) = queues(&mem);
    let mrg = feature(vn::VIRTIO_NET_F_MRG_RXBUF);
    let (mut net, wire, _irq) = active_net(&mem, &rxq, &txq, mrg);
    // Two 64-byte buffers for a 200-byte frame: both are taken and held.
    add_chain(&rxq, 0, &[(BUF, 64, true)]);
    add_chain(&rxq, 1, &[(BUF + 0x100, 64, true)]);
    wire.lock().unwrap().to_guest.push_back(frame(0, 0, 188));
    net.process_rx();
    assert!(used(&rxq).is_empty());
    let saved = net.save().unwrap();
    assert_eq!(saved.acked_features, VIRTIO_F_VERSION_1 | mrg);
    assert_eq!(
        saved.queues,
        vec![QueuePosition::default(), QueuePosition::default()],
        "the held buffers count as not taken"
    );

    let (mut back, wire) = restore(&saved, None).unwrap();
    activate(&mut back, &mem, &rxq, &txq, saved.acked_features);
    assert_eq!(back.save().unwrap(), saved, "the same state back");
    wire.lock().unwrap().to_guest.push_back(frame(0, 0, 20));
    back.process_rx();
    assert_eq!(used(&rxq), vec![(0, 32)], "the first buffer is used again");
}

#[test]
fn needs_reset_and_positions_survive_a_restore() {
    let mem = mem();
    let (rxq, txq) = queues(&mem);
    let (mut net, wire, _irq) = active_net(&mem, &rxq, &txq, 0);
    add_chain(&rxq, 0, &[(BUF, 1500, true)]);
    wire.lock().unwrap().to_guest.push_back(frame(0, 0, 30));
    net.process_rx();
    assert_eq!(used(&rxq).len(), 1);
    let mut saved = net.save().unwrap();
    assert_eq!(saved.queues[0].next_avail, 1);
    saved.needs_reset = true;
    let (mut back, _wire) = restore(&saved, None).unwrap();
    activate(&mut back, &mem, &rxq, &txq, saved.acked_features);
    assert!(back.needs_reset());
    assert_eq!(back.save().unwrap(), saved);
}

#[test]
fn states_the_card_could_not_have_are_refused() {
    let (net, _wire, _evt) = fake_net(config(None));
    let saved = net.save().unwrap();
    let refused = |state: &NetSnapshotState, mac| match restore(state, mac) {
        Err(e @ NetPersistError::Mismatch { .. }) => e.to_string(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("accepted"),
    };
    let mut unoffered = saved.clone();
    unoffered.acked_features |= 1 << 60;
    assert!(refused(&unoffered, None).contains("never offered"));
    assert!(refused(&saved, Some([2, 0, 0, 0, 0, 1])).contains("MAC"));
    let mut three = saved.clone();
    three.queues = vec![QueuePosition::default(); 3];
    assert!(refused(&three, None).contains("3 saved queue positions"));
}
