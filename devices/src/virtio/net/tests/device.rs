//! Device surface: features, config space, activation, the event loop.

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_net as vn;

use super::*;
use crate::virtio::{ActivateError, TYPE_NET};

#[test]
fn features_and_config_space_follow_the_mac() {
    let (net, _, _) = fake_net(config(Some([2, 0, 0, 0, 0, 7])));
    assert_eq!(net.device_type(), TYPE_NET);
    assert_eq!(net.queue_max_sizes(), &[256, 256]);
    assert_eq!(net.queue_events().len(), 2);
    let f = net.avail_features();
    assert_ne!(f & VIRTIO_F_VERSION_1, 0);
    assert_ne!(f & feature(vn::VIRTIO_NET_F_MAC), 0);
    assert_ne!(f & feature(vn::VIRTIO_NET_F_MRG_RXBUF), 0);
    assert_eq!(f & feature(vn::VIRTIO_NET_F_GUEST_UFO), 0);
    assert_eq!(f & feature(vn::VIRTIO_NET_F_HOST_UFO), 0);
    let mut cfg = [0xffu8; 10];
    net.read_config(0, &mut cfg);
    assert_eq!(cfg, [2, 0, 0, 0, 0, 7, 1, 0, 0, 0]);
    let mut tail = [0xffu8; 4];
    net.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0; 4]);

    let (mut net, _, _) = fake_net(config(None));
    assert_eq!(net.avail_features() & feature(vn::VIRTIO_NET_F_MAC), 0);
    net.write_config(0, &[9; 6]); // ignored
    net.read_config(0, &mut cfg);
    assert_eq!(cfg, [0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    let names: Vec<_> = net.counters().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"tx_bytes") && names.contains(&"bad_chains"));
}

#[test]
fn tap_offloads_follow_the_guest_features() {
    let csum = feature(vn::VIRTIO_NET_F_GUEST_CSUM);
    let tso4 = feature(vn::VIRTIO_NET_F_GUEST_TSO4);
    let tso6 = feature(vn::VIRTIO_NET_F_GUEST_TSO6);
    let ufo = feature(vn::VIRTIO_NET_F_GUEST_UFO); // not offered: dropped
    for (features, want) in [
        (0, 0),
        (csum, libc::TUN_F_CSUM),
        (csum | tso4, libc::TUN_F_CSUM | libc::TUN_F_TSO4),
        (
            csum | tso4 | tso6 | ufo,
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6,
        ),
        (tso4 | tso6, 0), // TSO without checksum offload is invalid
    ] {
        let mem = mem();
        let (rxq, txq) = queues(&mem);
        let (_net, wire, _irq) = active_net(&mem, &rxq, &txq, features);
        assert_eq!(
            wire.lock().unwrap().offload,
            Some(want),
            "features {features:#x}"
        );
    }
}

#[test]
fn activation_needs_two_queues() {
    let mem = mem();
    let (rxq, _) = queues(&mem);
    let (mut net, _, _) = fake_net(config(None));
    let err = net
        .activate(Activation {
            mem: mem.clone(),
            queues: vec![rxq.create_queue::<Queue>().unwrap()],
            interrupt: Arc::new(IrqTrigger::new().unwrap()),
            acked_features: VIRTIO_F_VERSION_1,
        })
        .unwrap_err();
    assert!(matches!(err, ActivateError::BadQueue(1)));
    assert!(!net.state().activated);
}

#[test]
fn event_loop_ignores_notifications_before_activation_then_runs_the_queues() {
    let mem = mem();
    let (rxq, txq) = queues(&mem);
    let (net, wire, tap_evt) = fake_net(config(None));
    let net = Arc::new(Mutex::new(net));
    let mut em = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
    em.add_subscriber(net.clone());

    // Before DRIVER_OK: queue kicks and tap frames are drained and ignored.
    add_chain(&txq, 0, &[(BUF, 40, false)]);
    wire.lock().unwrap().to_guest.push_back(frame(0, 0, 20));
    for evt in net.lock().unwrap().queue_events() {
        evt.write(1).unwrap();
    }
    tap_evt.write(1).unwrap();
    assert!(em.run_with_timeout(100).unwrap() >= 3);
    {
        let net = net.lock().unwrap();
        for evt in net.queue_events() {
            assert!(evt.read().is_err(), "queue event left set");
        }
        assert_eq!(net.net_counters().rx_dropped, 1);
        assert!(used(&txq).is_empty());
    }

    // Activation kicks both queues: the pending TX chain goes out and the
    // frame waiting in the tap reaches the guest.
    let f = frame(0, 0, 28);
    mem.write_slice(&f, GuestAddress(BUF)).unwrap();
    add_chain(&rxq, 0, &[(BUF + 0x1000, 1500, true)]);
    wire.lock().unwrap().to_guest.push_back(frame(0, 0, 30));
    let irq = activate(
        &mut net.lock().unwrap(),
        &mem,
        &rxq,
        &txq,
        VIRTIO_F_VERSION_1,
    );
    em.run_with_timeout(100).unwrap();
    assert_eq!(wire.lock().unwrap().from_guest, vec![f]);
    assert_eq!(used(&txq), vec![(0, 0)]);
    assert_eq!(used(&rxq), vec![(0, 42)]);
    assert!(vring_irq(&irq));

    // After a reset the device is quiet again.
    net.lock().unwrap().reset();
    add_chain(&txq, 1, &[(BUF, 40, false)]);
    net.lock().unwrap().queue_events()[TX_INDEX]
        .write(1)
        .unwrap();
    em.run_with_timeout(100).unwrap();
    assert_eq!(wire.lock().unwrap().from_guest.len(), 1);
}
