//! Run-time changes (`PATCH /drives/{id}`): a new backing image and limits.

use super::*;
use crate::rate_limiter::{BucketConfig, TokenKind};

#[test]
fn update_path_switches_image_and_capacity() {
    let first = image(8 * 512);
    let second = image(64 * 512);
    let mut block = Block::new(BlockConfig {
        drive_id: "data".into(),
        path: first.path().to_path_buf(),
        read_only: false,
        rate_limiter: None,
    })
    .unwrap();
    assert_eq!(block.capacity_sectors(), 8);
    block.update_path(second.path().to_path_buf()).unwrap();
    assert_eq!(block.capacity_sectors(), 64);
    let mut capacity = [0u8; 8];
    block.read_config(0, &mut capacity);
    assert_eq!(
        u64::from_le_bytes(capacity),
        64,
        "config space shows the new size"
    );
    // A path that cannot be opened leaves the drive as it was.
    assert!(block.update_path("/nonexistent/disk.img".into()).is_err());
    assert_eq!(block.capacity_sectors(), 64);
}

#[test]
fn a_preopened_image_is_used_instead_of_opening_the_path() {
    // The VMM's device thread may not open files: its control thread opens
    // the new image and hands it over with `preopen`.
    let first = image(8 * 512);
    let second = image(16 * 512);
    let mut block = Block::new(BlockConfig {
        drive_id: "data".into(),
        path: first.path().to_path_buf(),
        read_only: false,
        rate_limiter: None,
    })
    .unwrap();
    let file = crate::virtio::block::open_image(second.path(), false).unwrap();
    // The path is gone: only the handed-over file can make this work.
    let path = second.path().to_path_buf();
    second.close().unwrap();
    block.preopen(path.clone(), file);
    block.update_path(path.clone()).unwrap();
    assert_eq!(block.capacity_sectors(), 16);
    // Used once: a second update to the same (missing) path opens it.
    assert!(block.update_path(path).is_err());
    // A file handed over for another path is not used for this one.
    let third = image(24 * 512);
    let other = crate::virtio::block::open_image(third.path(), false).unwrap();
    block.preopen("/elsewhere".into(), other);
    block.update_path(first.path().to_path_buf()).unwrap();
    assert_eq!(block.capacity_sectors(), 8);
}

#[test]
fn rate_limits_change_only_where_a_limiter_exists() {
    let img = image(8 * 512);
    let mut limited = Block::new(BlockConfig {
        drive_id: "a".into(),
        path: img.path().to_path_buf(),
        read_only: true,
        rate_limiter: Some(RateLimiter::new(None, None).unwrap()),
    })
    .unwrap();
    let ops = BucketConfig {
        size: 1,
        one_time_burst: 0,
        refill_time_ms: 1000,
    };
    assert!(limited.update_rate_limiter(None, Some(ops)));
    let mut unlimited = Block::new(BlockConfig {
        drive_id: "b".into(),
        path: img.path().to_path_buf(),
        read_only: true,
        rate_limiter: None,
    })
    .unwrap();
    assert!(!unlimited.update_rate_limiter(None, Some(ops)));
}

#[test]
fn updated_buckets_take_effect() {
    let mut limiter = RateLimiter::new(None, None).unwrap();
    assert!(
        limiter.consume(1 << 30, TokenKind::Bytes),
        "unlimited at first"
    );
    limiter.update_buckets(
        None,
        Some(BucketConfig {
            size: 1,
            one_time_burst: 0,
            refill_time_ms: 60_000,
        }),
    );
    assert!(limiter.consume(1, TokenKind::Ops));
    assert!(
        !limiter.consume(1, TokenKind::Ops),
        "the new ops limit applies"
    );
}
