//! Snapshot state: save, restore, TRANSPORT_RESET once the driver runs.

use super::*;
use crate::persist::Persist;
use crate::virtio::vsock::VsockState;

#[test]
fn restore_sends_transport_reset_then_connections_work() {
    let mut t = T::new();
    let (mut host, _) = t.host_connect(52);
    let mut state = t.dev.save().unwrap();
    assert_eq!(state.queues.len(), 3);
    assert_eq!(state.guest_cid, CID);
    assert_eq!(state.uds_path, t.uds());
    let json = serde_json::to_string(&state).unwrap();
    state = serde_json::from_str::<VsockState>(&json).unwrap();
    // The test's guest starts fresh rings.
    state.queues.clear();
    let T { dev, dir, .. } = t;
    drop(dev);
    assert!(host_closed(&mut host));

    let config = VsockConfig {
        guest_cid: CID,
        uds_path: dir.path().join("v.sock"),
    };
    let dev = Vsock::restore_with_connect_timeout(config, &state, Duration::from_secs(30)).unwrap();
    assert_eq!(dev.guest_cid(), CID);
    let mut t = T::activate(dev, dir);
    // No event buffer yet: nothing happens.
    t.dev.handle_event_queue();
    assert!(t.g.take_used(2).is_empty());
    let ev = t.g.alloc(8);
    t.g.mem.write_obj(0xffff_ffffu32, GuestAddress(ev)).unwrap();
    t.g.chain(2, &[(ev, 8, true)]);
    t.dev.handle_event_queue();
    assert_eq!(t.g.take_used(2), vec![(0, 4)]);
    let id: u32 = t.g.mem.read_obj(GuestAddress(ev)).unwrap();
    assert_eq!(id, 0, "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");
    // Only once.
    t.g.chain(2, &[(ev, 8, true)]);
    t.dev.handle_event_queue();
    assert!(t.g.take_used(2).is_empty());

    let (mut host, local) = t.host_connect(53);
    t.send(&pkt(Op::Rw, 53, local, 2), b"ok");
    let mut b = [0u8; 2];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ok");
}

#[test]
fn fresh_device_sends_no_transport_reset() {
    let mut t = T::new();
    let ev = t.g.alloc(8);
    t.g.chain(2, &[(ev, 8, true)]);
    t.dev.handle_event_queue();
    assert!(t.g.take_used(2).is_empty());
}

#[test]
fn listener_replaces_a_stale_socket_but_not_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let config = VsockConfig {
        guest_cid: CID,
        uds_path: path.clone(),
    };
    let dev = Vsock::new(config.clone()).unwrap();
    drop(dev);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"precious").unwrap();
    assert!(Vsock::new(config).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn reserved_cids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 40] {
        let config = VsockConfig {
            guest_cid: cid,
            uds_path: dir.path().join("v.sock"),
        };
        assert!(matches!(
            Vsock::new(config),
            Err(crate::virtio::vsock::VsockError::BadCid(_))
        ));
    }
}

#[test]
fn config_space_is_the_cid_and_counters_are_named() {
    let t = T::new();
    let mut b = [0u8; 8];
    t.dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), CID);
    assert_eq!(t.dev.device_type(), 19);
    assert_eq!(t.dev.queue_max_sizes().len(), 3);
    assert_eq!(t.dev.avail_features(), VIRTIO_F_VERSION_1);
    let names: Vec<_> = t.dev.counters().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"host_bytes_dropped"));
}
