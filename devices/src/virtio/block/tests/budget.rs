//! Bounded work per event-loop turn: a full ring is served in batches of
//! [`CHAINS_PER_TURN`], the queue re-armed between them, and a doomed chain
//! costs at most one queue's worth of descriptor reads.

use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;

use super::*;
use crate::virtio::chain::CHAINS_PER_TURN;

/// Whether the device asked the event loop to come back (and clears it).
fn rearmed(t: &T) -> bool {
    t.blk.queue_events()[0].read().is_ok()
}

#[test]
fn a_full_ring_is_served_in_bounded_batches() {
    let mut t = T::new();
    let buf = t.alloc(512);
    let req = t.request(VIRTIO_BLK_T_IN, 5, &[w(buf, 512)]);
    // 255 more entries for the same chain: a full ring of 256 requests.
    for _ in 1..256 {
        t.make_available(req.head);
    }
    let mut turns = Vec::new();
    loop {
        let n = t.run();
        let again = rearmed(&t);
        turns.push(n);
        assert!(n <= CHAINS_PER_TURN, "{n} requests in one turn");
        if !again {
            break;
        }
        assert!(turns.len() < 16, "never settles: {turns:?}");
    }
    assert_eq!(turns, vec![CHAINS_PER_TURN; 256 / CHAINS_PER_TURN]);
    let used = t.used();
    assert_eq!(used.len(), 256);
    assert!(used.iter().all(|&u| u == (req.head, 513)));
    assert_eq!(t.read_mem(req.status, 1), vec![VIRTIO_BLK_S_OK as u8]);
    assert_eq!(t.read_mem(buf, 512), vec![5; 512]);
    // Nothing left: the next notification finds an empty ring, no re-arm.
    assert_eq!(t.run(), 0);
    assert!(!rearmed(&t));
}

#[test]
fn a_ring_of_hostile_chains_is_refused_in_bounded_batches() {
    let mut t = T::new();
    // Even heads loop on themselves, odd heads are indirect (not offered)
    // tables of 65535 descriptors; none of them is ever followed past the
    // queue size.
    let buf = t.alloc(16);
    let table = t.alloc(0x8_0000);
    for i in 0..256u16 {
        if i % 2 == 0 {
            t.store_desc(i, buf, 16, VRING_DESC_F_NEXT as u16, i);
        } else {
            t.store_desc(i, table, 0xffff * 16, VRING_DESC_F_INDIRECT as u16, 0);
        }
        t.make_available(i);
    }
    let mut total = 0;
    for _ in 0..256 / CHAINS_PER_TURN {
        let n = t.run();
        assert_eq!(n, CHAINS_PER_TURN);
        total += n;
    }
    assert_eq!(total, 256);
    let used = t.used();
    assert_eq!(used.len(), 256);
    assert!(
        used.iter().all(|&(_, len)| len == 0),
        "refused: nothing written"
    );
    assert_eq!(t.blk.counters()[5], ("bad_requests", 256));
    t.g.next_desc = 0;
    t.assert_still_works();
}
