//! Saving and restoring a drive: the whole device state comes back.

use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};

use super::*;
use crate::persist::Persist;
use crate::rate_limiter::{BucketConfig, TokenKind};
use crate::virtio::block::{BlockPersistError, BlockSnapshotState};

fn config(t: &T, read_only: bool, limiter: Option<RateLimiter>) -> BlockConfig {
    BlockConfig {
        drive_id: t.blk.drive_id().into(),
        path: t.image.path().into(),
        read_only,
        rate_limiter: limiter,
    }
}

/// Restores `saved` into a new device on the same guest and activates it
/// on a fresh queue (ring positions 0), as the transport does.
fn restore_into(t: &mut T, saved: &BlockSnapshotState, limiter: Option<RateLimiter>) {
    let cfg = config(t, saved.read_only, limiter);
    t.blk = Block::restore(cfg, saved).unwrap();
    // Guest memory is restored as it was: keep the used ring's index, which
    // the test helper's queue set-up clears.
    let used = used_idx(t.mem);
    t.activate(saved.acked_features);
    t.mem
        .write_obj(used, vm_memory::GuestAddress(super::USED_RING + 2))
        .unwrap();
}

#[test]
fn round_trip_continues_at_the_saved_ring_position() {
    let mut t = T::new();
    let buf = t.alloc(512);
    let req = t.request(VIRTIO_BLK_T_IN, 3, &[w(buf, 512)]);
    assert_eq!(t.complete(req, 513), VIRTIO_BLK_S_OK as u8);
    let saved = t.blk.save().unwrap();
    assert_eq!(
        saved.queue.map(|q| (q.next_avail, q.next_used)),
        Some((1, 1))
    );
    assert_eq!(saved.acked_features, t.blk.avail_features());

    restore_into(&mut t, &saved, None);
    assert_eq!(t.blk.save().unwrap(), saved, "the same state back");
    // The next request is taken from ring entry 1, not 0 again.
    t.assert_still_works();
}

#[test]
fn needs_reset_survives_a_restore() {
    let mut t = T::new();
    let buf = t.alloc(512);
    t.request(VIRTIO_BLK_T_IN, 0, &[w(buf, 512)]);
    let idx = t.vq.avail().idx().load();
    t.vq.avail().idx().store(idx.wrapping_add(1000));
    assert_eq!(t.run(), 0);
    assert!(t.blk.needs_reset());
    let saved = t.blk.save().unwrap();
    assert!(saved.needs_reset);

    restore_into(&mut t, &saved, None);
    assert!(t.blk.needs_reset(), "still waiting for the driver's reset");
    assert_eq!(t.run(), 0);
}

#[test]
fn rate_limiter_levels_are_part_of_the_state() {
    let bucket = BucketConfig {
        size: 1 << 20,
        one_time_burst: 0,
        refill_time_ms: 100_000,
    };
    let limiter = || RateLimiter::new(Some(bucket), None).unwrap();
    let mut l = limiter();
    assert!(l.consume(1000, TokenKind::Bytes));
    let mut t = T::build(64 * 512, false, Some(l), "d");
    let saved = t.blk.save().unwrap();
    let level = saved.rate_limiter.unwrap().bandwidth.unwrap().budget;
    assert!(level < 1 << 20, "{level}");

    restore_into(&mut t, &saved, Some(limiter()));
    let back = t.blk.save().unwrap().rate_limiter.unwrap();
    assert!(
        back.bandwidth.unwrap().budget < (1 << 20) - 500,
        "not refilled to full"
    );
}

#[test]
fn states_the_drive_could_not_have_are_refused() {
    let t = T::new();
    let saved = t.blk.save().unwrap();
    let refused = |state: &BlockSnapshotState, read_only: bool| -> String {
        match Block::restore(config(&t, read_only, None), state) {
            Err(e @ BlockPersistError::Mismatch { .. }) => e.to_string(),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("accepted"),
        }
    };
    let mut unoffered = saved.clone();
    unoffered.acked_features |= 1 << 50;
    assert!(refused(&unoffered, false).contains("never offered"));

    let mut other = saved.clone();
    other.drive_id = "other".into();
    assert!(refused(&other, false).contains("\"other\""));

    assert!(refused(&saved, true).contains("read_only"));
}
