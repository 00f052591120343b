//! Well-formed requests: the data lands where it should, on disk and in
//! guest memory, with the right status and used length.

use virtio_bindings::virtio_blk::*;

use super::*;
use crate::virtio::block::{BlockError, BlockState};
use crate::virtio::{ActivateError, TYPE_BLOCK, VIRTIO_F_VERSION_1};

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

#[test]
fn write_then_read_back() {
    let mut t = T::new();
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    let buf = t.alloc(1024);
    t.fill(buf, &data);
    let req = t.request(VIRTIO_BLK_T_OUT, 3, &[r(buf, 1024)]);
    assert_eq!(t.complete(req, 1), OK);
    assert!(t.take_vring_irq());
    assert_eq!(t.disk(3 * 512, 1024), data);
    // Neighbours untouched.
    assert_eq!(t.disk(2 * 512, 512), vec![2; 512]);
    assert_eq!(t.disk(5 * 512, 512), vec![5; 512]);

    let back = t.alloc(1024);
    let req = t.request(VIRTIO_BLK_T_IN, 3, &[w(back, 1024)]);
    assert_eq!(t.complete(req, 1025), OK);
    assert_eq!(t.read_mem(back, 1024), data);
    assert!(t.take_vring_irq());

    let counters = t.blk.counters();
    let get = |name| counters.iter().find(|(n, _)| *n == name).unwrap().1;
    assert_eq!((get("reads"), get("read_bytes")), (1, 1024));
    assert_eq!((get("writes"), get("write_bytes")), (1, 1024));
    assert_eq!(get("bad_requests"), 0);
}

#[test]
fn scattered_buffers_and_any_layout() {
    let mut t = T::new();
    // Read sectors 10..13 into three buffers of different sizes.
    let (a, b, c) = (t.alloc(512), t.alloc(1024), t.alloc(512));
    let req = t.request(VIRTIO_BLK_T_IN, 10, &[w(a, 512), w(b, 1024), w(c, 512)]);
    assert_eq!(t.complete(req, 2049), OK);
    assert_eq!(t.read_mem(a, 512), vec![10; 512]);
    assert_eq!(t.read_mem(b, 1024)[..512], vec![11; 512]);
    assert_eq!(t.read_mem(b, 1024)[512..], vec![12; 512]);
    assert_eq!(t.read_mem(c, 512), vec![13; 512]);

    // Header split over two descriptors (5 + 11 bytes).
    let h = t.header(VIRTIO_BLK_T_IN, 20);
    let buf = t.alloc(512);
    let s = t.status_desc();
    let head = t.chain(&[r(h.addr, 5), r(h.addr + 5, 11), w(buf, 512), s]);
    let req = Req {
        head,
        status: s.addr,
    };
    assert_eq!(t.complete(req, 513), OK);
    assert_eq!(t.read_mem(buf, 512), vec![20; 512]);

    // Header and data in one readable descriptor; data and status in one
    // writable descriptor.
    let one = t.alloc(16 + 512);
    let h = t.header(VIRTIO_BLK_T_OUT, 30);
    let hdr = t.read_mem(h.addr, 16);
    t.fill(one, &hdr);
    t.fill(one + 16, &[0xab; 512]);
    let s = t.status_desc();
    let head = t.chain(&[r(one, 16 + 512), s]);
    assert_eq!(
        t.complete(
            Req {
                head,
                status: s.addr
            },
            1
        ),
        OK
    );
    assert_eq!(t.disk(30 * 512, 512), vec![0xab; 512]);
    let h = t.header(VIRTIO_BLK_T_IN, 30);
    let tail = t.alloc(513);
    let head = t.chain(&[h, w(tail, 513)]);
    assert_eq!(
        t.complete(
            Req {
                head,
                status: tail + 512
            },
            513
        ),
        OK
    );
    assert_eq!(t.read_mem(tail, 512), vec![0xab; 512]);
}

#[test]
fn many_requests_in_one_batch_and_ring_wraparound() {
    let mut t = T::new();
    // 3 descriptors each: 300 requests wrap both the table and the rings.
    for round in 0..6u64 {
        let mut reqs = Vec::new();
        for i in 0..50u64 {
            let buf = t.alloc(512);
            let sector = (round * 50 + i) % 64;
            reqs.push((
                t.request(VIRTIO_BLK_T_IN, sector, &[w(buf, 512)]),
                buf,
                sector,
            ));
        }
        assert_eq!(t.run(), 50);
        let used = t.used();
        assert_eq!(used.len(), 50);
        for ((req, buf, sector), (head, len)) in reqs.into_iter().zip(used) {
            assert_eq!((head, len), (req.head, 513), "round {round}");
            assert_eq!(t.read_mem(buf, 512), vec![sector as u8; 512]);
        }
        t.bump = super::SCRATCH_START;
    }
}

#[test]
fn get_id_returns_the_drive_name() {
    let mut t = T::new();
    let buf = t.alloc(20);
    t.fill(buf, &[0xee; 20]);
    let req = t.request(VIRTIO_BLK_T_GET_ID, 0, &[w(buf, 20)]);
    assert_eq!(t.complete(req, 21), OK);
    let mut want = b"flint-disk0".to_vec();
    want.resize(20, 0);
    assert_eq!(t.read_mem(buf, 20), want);

    // Longer names are cut at 20 bytes; a short buffer gets what fits.
    let mut t = T::build(4096, false, None, "a-very-long-drive-name-indeed");
    let buf = t.alloc(32);
    t.fill(buf, &[0xee; 32]);
    let req = t.request(VIRTIO_BLK_T_GET_ID, 0, &[w(buf, 32)]);
    assert_eq!(t.complete(req, 21), OK);
    assert_eq!(
        &t.read_mem(buf, 32)[..],
        &b"a-very-long-drive-na\xee\xee\xee\xee\xee\xee\xee\xee\xee\xee\xee\xee"[..]
    );
    let buf = t.alloc(4);
    let req = t.request(VIRTIO_BLK_T_GET_ID, 0, &[w(buf, 4)]);
    assert_eq!(t.complete(req, 5), OK);
    assert_eq!(t.read_mem(buf, 4), b"a-ve");
}

#[test]
fn flush_succeeds_and_data_is_in_the_file() {
    let mut t = T::new();
    let buf = t.alloc(512);
    t.fill(buf, &[0x11; 512]);
    let req = t.request(VIRTIO_BLK_T_OUT, 0, &[r(buf, 512)]);
    assert_eq!(t.complete(req, 1), OK);
    let req = t.request(VIRTIO_BLK_T_FLUSH, 0xdead, &[]);
    assert_eq!(t.complete(req, 1), OK);
    // Read through a separate open of the file, as a restarted flint would.
    let on_disk = std::fs::read(t.image.path()).unwrap();
    assert_eq!(on_disk[..512], [0x11; 512]);
}

#[test]
fn read_only_drive_refuses_writes_and_leaves_the_image_alone() {
    let mut t = T::build(8 * 512, true, None, "ro");
    assert_ne!(t.blk.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    let before = t.whole_disk();
    let buf = t.alloc(512);
    t.fill(buf, &[0x77; 512]);
    let req = t.request(VIRTIO_BLK_T_OUT, 1, &[r(buf, 512)]);
    assert_eq!(t.complete(req, 1), IOERR);
    // Discard / write-zeroes are not offered, so not negotiated.
    let range = t.alloc(16);
    t.fill(range, &[0; 16]);
    for kind in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        let req = t.request(kind, 0, &[r(range, 16)]);
        assert_eq!(t.complete(req, 1), UNSUPP);
    }
    assert_eq!(t.whole_disk(), before);
    // Reads and flushes work.
    let req = t.request(VIRTIO_BLK_T_IN, 1, &[w(buf, 512)]);
    assert_eq!(t.complete(req, 513), OK);
    assert_eq!(t.read_mem(buf, 512), vec![1; 512]);
    let req = t.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
    assert_eq!(t.complete(req, 1), OK);
}

/// Writes one discard / write-zeroes range.
fn range(t: &mut T, sector: u64, count: u32, flags: u32) -> D {
    let addr = t.alloc(16);
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&sector.to_le_bytes());
    b[8..12].copy_from_slice(&count.to_le_bytes());
    b[12..].copy_from_slice(&flags.to_le_bytes());
    t.fill(addr, &b);
    r(addr, 16)
}

#[test]
fn write_zeroes_and_discard() {
    let mut t = T::new();
    let unmap = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
    for flags in [0, unmap] {
        let d = range(&mut t, 10, 3, flags);
        let req = t.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[d]);
        assert_eq!(t.complete(req, 1), OK);
        assert_eq!(t.disk(10 * 512, 3 * 512), vec![0; 3 * 512]);
        assert_eq!(t.disk(9 * 512, 512), vec![9; 512]);
        assert_eq!(t.disk(13 * 512, 512), vec![13; 512]);
        let refill = t.alloc(1536);
        t.fill(refill, &[0xcc; 1536]);
        let req = t.request(VIRTIO_BLK_T_OUT, 10, &[r(refill, 1536)]);
        assert_eq!(t.complete(req, 1), OK);
        t.assert_still_works();
    }
    let len_before = t.whole_disk().len();
    let d = range(&mut t, 8, 8, 0);
    let req = t.request(VIRTIO_BLK_T_DISCARD, 0, &[d]);
    assert_eq!(t.complete(req, 1), OK);
    assert_eq!(t.whole_disk().len(), len_before, "discard keeps the size");
    assert_eq!(t.disk(16 * 512, 512), vec![16; 512]);

    // Unmap on a discard and unknown flags are unsupported; ranges beyond
    // the disk, too large, or malformed payloads are errors.
    let d = range(&mut t, 8, 8, unmap);
    let req = t.request(VIRTIO_BLK_T_DISCARD, 0, &[d]);
    assert_eq!(t.complete(req, 1), UNSUPP);
    let d = range(&mut t, 8, 8, 0x80);
    let req = t.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[d]);
    assert_eq!(t.complete(req, 1), UNSUPP);
    for (sector, count) in [(60, 5), (u64::MAX, 2), (0, u32::MAX)] {
        let d = range(&mut t, sector, count, 0);
        let req = t.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[d]);
        assert_eq!(t.complete(req, 1), IOERR, "{sector} {count}");
    }
    let a = range(&mut t, 0, 1, 0);
    let b = range(&mut t, 1, 1, 0);
    let req = t.request(VIRTIO_BLK_T_DISCARD, 0, &[a, b]);
    assert_eq!(t.complete(req, 1), IOERR, "two ranges");
    let req = t.request(VIRTIO_BLK_T_DISCARD, 0, &[r(a.addr, 8)]);
    assert_eq!(t.complete(req, 1), IOERR, "half a range");
    assert_eq!(t.disk(0, 512), vec![0; 512]);
    assert_eq!(t.disk(512, 512), vec![1; 512]);

    // Not negotiated: unsupported.
    let mut t = T::new();
    t.restart(VIRTIO_F_VERSION_1);
    let d = range(&mut t, 0, 1, 0);
    let req = t.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[d]);
    assert_eq!(t.complete(req, 1), UNSUPP);
    assert_eq!(t.disk(0, 512), vec![0; 512]);
    assert_eq!(t.disk(512, 512), vec![1; 512]);
}

#[test]
fn unknown_types_are_unsupported() {
    let mut t = T::new();
    let buf = t.alloc(512);
    for kind in [2, 3, VIRTIO_BLK_T_SECURE_ERASE, 0x8000_0000, u32::MAX] {
        let req = t.request(kind, 0, &[w(buf, 512)]);
        assert_eq!(t.complete(req, 1), UNSUPP, "type {kind}");
    }
    t.assert_still_works();
}

#[test]
fn capacity_ignores_a_partial_last_sector() {
    let mut t = T::build(10 * 512 + 100, false, None, "odd");
    assert_eq!(t.blk.capacity_sectors(), 10);
    let mut cap = [0u8; 8];
    t.blk.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 10);
    let buf = t.alloc(1024);
    let req = t.request(VIRTIO_BLK_T_IN, 9, &[w(buf, 512)]);
    assert_eq!(t.complete(req, 513), OK);
    let req = t.request(VIRTIO_BLK_T_IN, 9, &[w(buf, 1024)]);
    assert_eq!(t.complete(req, 1), IOERR, "reaches into the partial sector");
    let req = t.request(VIRTIO_BLK_T_OUT, 10, &[r(buf, 512)]);
    assert_eq!(t.complete(req, 1), IOERR);
    assert_eq!(t.whole_disk().len(), 10 * 512 + 100);
}

#[test]
fn identity_features_and_config_space() {
    let t = T::new();
    assert_eq!(t.blk.device_type(), TYPE_BLOCK);
    assert_eq!(t.blk.queue_max_sizes(), &[256]);
    assert_eq!(t.blk.queue_events().len(), 1);
    let f = t.blk.avail_features();
    for bit in [
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ] {
        assert_ne!(f & (1 << bit), 0, "feature {bit}");
    }
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
    assert_ne!(f & VIRTIO_F_VERSION_1, 0);
    let mut b = [0u8; 4];
    t.blk.read_config(20, &mut b);
    assert_eq!(u32::from_le_bytes(b), 512);
    assert_eq!(t.blk.capacity_sectors(), 64);
    let s: BlockState = t.blk.state();
    assert_eq!(s.capacity_sectors, 64);
    assert_eq!(s.acked_features, f);
    assert_eq!(s.drive_id, "flint-disk0");
    assert!(!s.read_only && !s.needs_reset);
}

#[test]
fn open_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.img");
    let err = Block::new(BlockConfig {
        drive_id: "root".into(),
        path: path.clone(),
        read_only: false,
        rate_limiter: None,
    })
    .err()
    .unwrap();
    assert!(matches!(err, BlockError::Open { .. }));
    let msg = err.to_string();
    assert!(msg.contains(path.to_str().unwrap()), "{msg}");
    assert!(msg.contains("root"), "{msg}");
    // A directory opens (read-only) but is not an image.
    let err = Block::new(BlockConfig {
        drive_id: "root".into(),
        path: dir.path().into(),
        read_only: true,
        rate_limiter: None,
    })
    .err()
    .unwrap();
    assert!(matches!(err, BlockError::NotAnImage { .. }), "{err}");
}

#[test]
fn activation_needs_exactly_one_queue_and_reset_forgets_it() {
    let image = image(4096);
    let blk = Block::new(BlockConfig {
        drive_id: "x".into(),
        path: image.path().into(),
        read_only: false,
        rate_limiter: None,
    })
    .unwrap();
    let mut t = T::unactivated(blk, image);
    for n in [0, 2] {
        let queues = (0..n).map(|_| t.queue()).collect();
        let err = t.blk.activate(Activation {
            mem: t.mem.clone(),
            queues,
            interrupt: t.irq.clone(),
            acked_features: VIRTIO_F_VERSION_1,
        });
        assert!(matches!(err, Err(ActivateError::BadQueue(_))));
        assert!(!t.blk.is_activated());
    }
    t.activate(VIRTIO_F_VERSION_1);
    assert!(t.blk.is_activated());
    t.blk.reset();
    assert!(!t.blk.is_activated());
    assert_eq!(t.blk.state().acked_features, 0);
    // Requests after a reset (before re-activation) are left alone.
    let buf = t.alloc(512);
    t.request(VIRTIO_BLK_T_IN, 0, &[w(buf, 512)]);
    assert_eq!(t.run(), 0);
    // Config writes are ignored.
    t.blk.write_config(0, &[1, 2, 3, 4]);
    let mut cap = [0u8; 8];
    t.blk.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8);
}
