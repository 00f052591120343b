//! A hostile driver: every malformed request fails with the right status (or
//! comes back with length 0), never panics, never touches the image or
//! memory it should not, and the device keeps serving good requests.

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

use super::*;
use crate::virtio::VIRTIO_F_VERSION_1;

const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;

#[test]
fn buffers_outside_guest_memory() {
    let mut t = T::new();
    let before = t.whole_disk();
    for bad in [MEM_SIZE - 256, MEM_SIZE, 0xffff_ffff_0000, u64::MAX - 100] {
        let req = t.request(VIRTIO_BLK_T_IN, 0, &[w(bad, 512)]);
        assert_eq!(t.complete(req, 1), IOERR, "IN to {bad:#x}");
        let req = t.request(VIRTIO_BLK_T_OUT, 0, &[r(bad, 512)]);
        assert_eq!(t.complete(req, 1), IOERR, "OUT from {bad:#x}");
    }
    // One good buffer followed by a bad one: nothing is written at all.
    let good = t.alloc(512);
    t.fill(good, &[0x99; 512]);
    let req = t.request(VIRTIO_BLK_T_OUT, 0, &[r(good, 512), r(MEM_SIZE, 512)]);
    assert_eq!(t.complete(req, 1), IOERR);
    assert_eq!(t.whole_disk(), before);
    // GET_ID into memory that is not there.
    let req = t.request(VIRTIO_BLK_T_GET_ID, 0, &[w(MEM_SIZE + 4096, 20)]);
    assert_eq!(t.complete(req, 1), IOERR);
    // The header itself outside memory.
    let s = t.status_desc();
    let head = t.chain(&[r(MEM_SIZE - 8, 16), s]);
    let req = Req {
        head,
        status: s.addr,
    };
    assert_eq!(t.complete(req, 1), IOERR);
    t.assert_still_works();
}

#[test]
fn wrong_data_directions() {
    let mut t = T::new();
    let before = t.whole_disk();
    let buf = t.alloc(1024);
    t.fill(buf, &[0x42; 1024]);
    // IN into a device-readable buffer: guest memory untouched.
    let req = t.request(VIRTIO_BLK_T_IN, 1, &[r(buf, 512)]);
    assert_eq!(t.complete(req, 1), IOERR);
    // Mixed: readable then writable.
    let req = t.request(VIRTIO_BLK_T_IN, 1, &[r(buf, 512), w(buf + 512, 512)]);
    assert_eq!(t.complete(req, 1), IOERR);
    assert_eq!(t.read_mem(buf, 1024), vec![0x42; 1024]);
    // OUT from a device-writable buffer: image untouched.
    let req = t.request(VIRTIO_BLK_T_OUT, 1, &[w(buf, 512)]);
    assert_eq!(t.complete(req, 1), IOERR);
    // GET_ID into a readable buffer.
    let req = t.request(VIRTIO_BLK_T_GET_ID, 0, &[r(buf, 20)]);
    assert_eq!(t.complete(req, 1), IOERR);
    assert_eq!(t.whole_disk(), before);
    assert_eq!(t.read_mem(buf, 1024), vec![0x42; 1024]);
    let bad = t
        .blk
        .counters()
        .into_iter()
        .find(|(n, _)| *n == "bad_requests");
    assert_eq!(bad, Some(("bad_requests", 4)));
    t.assert_still_works();
}

#[test]
fn bad_headers() {
    let mut t = T::new();
    let h = t.header(VIRTIO_BLK_T_IN, 0);
    let buf = t.alloc(512);
    let cases: Vec<Vec<D>> = vec![
        vec![r(h.addr, 8)],                                // 8-byte header, nothing else
        vec![r(h.addr, 15)],                               // one byte short
        vec![r(h.addr, 10), r(h.addr + 10, 5)],            // split, still short
        vec![w(h.addr, 16), w(buf, 512)],                  // header device-writable
        vec![r(h.addr, 8), w(h.addr + 8, 8), w(buf, 512)], // half writable
        vec![],                                            // only a status byte
    ];
    for (i, mut descs) in cases.into_iter().enumerate() {
        let s = t.status_desc();
        descs.push(s);
        let head = t.chain(&descs);
        let req = Req {
            head,
            status: s.addr,
        };
        assert_eq!(t.complete(req, 1), IOERR, "case {i}");
    }
    t.assert_still_works();
}

#[test]
fn unusable_status_descriptor_returns_length_zero() {
    let mut t = T::new();
    let before = t.whole_disk();
    let buf = t.alloc(512);
    t.fill(buf, &[0x33; 512]);
    let h = t.header(VIRTIO_BLK_T_OUT, 0);
    let cases: Vec<Vec<D>> = vec![
        vec![h, r(buf, 512)],                 // no status: last is the data
        vec![h],                              // header only
        vec![h, r(buf, 512), r(buf, 1)],      // read-only status
        vec![h, r(buf, 512), w(buf, 0)],      // empty status
        vec![h, r(buf, 512), w(MEM_SIZE, 1)], // status outside memory
        vec![h, r(buf, 512), w(u64::MAX, 1)], // status address wraps
    ];
    for (i, descs) in cases.into_iter().enumerate() {
        let head = t.chain(&descs);
        assert_eq!(t.run(), 1, "case {i}");
        assert_eq!(t.used(), vec![(head, 0)], "case {i}");
    }
    // None of those writes happened.
    assert_eq!(t.whole_disk(), before);
    t.assert_still_works();
}

#[test]
fn sectors_outside_the_drive() {
    let mut t = T::new(); // 64 sectors
    let buf = t.alloc(1024);
    let before = t.whole_disk();
    for (sector, len) in [
        (64, 512),
        (63, 1024),
        (u64::MAX, 512),            // sector + count overflows
        (u64::MAX - 1, 1024),       // same, by more
        ((u64::MAX >> 9) + 1, 512), // sector * 512 overflows
        (1 << 60, 512),
    ] {
        let req = t.request(VIRTIO_BLK_T_IN, sector, &[w(buf, len)]);
        assert_eq!(t.complete(req, 1), IOERR, "IN {sector} {len}");
        let req = t.request(VIRTIO_BLK_T_OUT, sector, &[r(buf, len)]);
        assert_eq!(t.complete(req, 1), IOERR, "OUT {sector} {len}");
    }
    assert_eq!(t.whole_disk(), before);
    t.assert_still_works();
}

#[test]
fn lengths_that_are_not_whole_sectors() {
    let mut t = T::new();
    let buf = t.alloc(2048);
    let before = t.whole_disk();
    for parts in [&[511u32][..], &[513], &[100], &[1], &[512, 1], &[256, 255]] {
        let descs: Vec<D> = parts.iter().map(|&l| w(buf, l)).collect();
        let req = t.request(VIRTIO_BLK_T_IN, 0, &descs);
        assert_eq!(t.complete(req, 1), IOERR, "IN {parts:?}");
        let descs: Vec<D> = parts.iter().map(|&l| r(buf, l)).collect();
        let req = t.request(VIRTIO_BLK_T_OUT, 0, &descs);
        assert_eq!(t.complete(req, 1), IOERR, "OUT {parts:?}");
    }
    assert_eq!(t.whole_disk(), before);
    // Halves of a sector in two buffers are fine.
    let req = t.request(VIRTIO_BLK_T_IN, 2, &[w(buf, 256), w(buf + 1024, 256)]);
    assert_eq!(t.complete(req, 513), VIRTIO_BLK_S_OK as u8);
    assert_eq!(t.read_mem(buf, 256), vec![2; 256]);
    assert_eq!(t.read_mem(buf + 1024, 256), vec![2; 256]);
    t.assert_still_works();
}

#[test]
fn huge_lengths() {
    // A sparse 8 GiB image, so u32::MAX-ish lengths pass the sector check
    // and must be stopped by the guest memory check (no host allocation).
    let image = NamedTempFile::new().unwrap();
    image.as_file().set_len(8 << 30).unwrap();
    let blk = Block::new(BlockConfig {
        drive_id: "big".into(),
        path: image.path().into(),
        read_only: false,
        rate_limiter: None,
    })
    .unwrap();
    let mut t = T::unactivated(blk, image);
    t.activate(t.blk.avail_features());
    let buf = t.alloc(512);
    let big = u32::MAX - 511; // a multiple of 512
    let req = t.request(VIRTIO_BLK_T_IN, 0, &[w(buf, big)]);
    assert_eq!(t.complete(req, 1), IOERR);
    let req = t.request(VIRTIO_BLK_T_OUT, 0, &[r(buf, big)]);
    assert_eq!(t.complete(req, 1), IOERR);
    // u32::MAX plus the header makes the chain longer than 4 GiB, which the
    // spec forbids: the chain is cut short and returned empty.
    for data in [
        &[w(buf, u32::MAX)][..],
        &[w(buf, u32::MAX), w(buf, u32::MAX)],
    ] {
        let req = t.request(VIRTIO_BLK_T_IN, 0, data);
        assert_eq!(t.run(), 1);
        assert_eq!(t.used(), vec![(req.head, 0)]);
    }
    assert_eq!(std::fs::metadata(t.image.path()).unwrap().len(), 8 << 30);
    t.assert_still_works();
}

#[test]
fn looping_and_runaway_chains() {
    let mut t = T::new();
    let h = t.header(VIRTIO_BLK_T_IN, 0);
    let buf = t.alloc(512);
    let s = t.status_desc();
    // 0 -> 1 -> 2 -> 0 -> ...
    t.store_desc(0, h.addr, 16, NEXT, 1);
    t.store_desc(1, buf, 512, WRITE | NEXT, 2);
    t.store_desc(2, s.addr, 1, WRITE | NEXT, 0);
    t.make_available(0);
    // A descriptor pointing to itself.
    t.store_desc(3, h.addr, 16, NEXT, 3);
    t.make_available(3);
    // next beyond the table.
    t.store_desc(4, h.addr, 16, NEXT, 300);
    t.make_available(4);
    assert_eq!(t.run(), 3);
    assert_eq!(t.used(), vec![(0, 0), (3, 0), (4, 0)]);
    t.assert_still_works();
}

#[test]
fn indirect_tables_are_refused_unfollowed() {
    let mut t = T::new();
    // An indirect table (never offered) with 300 data buffers: refused at
    // the indirect descriptor, never followed, so its status byte (only
    // reachable through the table) stays untouched.
    let h = t.header(VIRTIO_BLK_T_IN, 0);
    let buf = t.alloc(512);
    let s = t.status_desc();
    let n: u16 = 302;
    let table = t.alloc(u64::from(n) * 16);
    for i in 0..n {
        let (addr, len, flags) = match i {
            0 => (h.addr, 16, NEXT),
            _ if i == n - 1 => (s.addr, 1, WRITE),
            _ => (buf, 512, WRITE | NEXT),
        };
        let d = SplitDescriptor::new(addr, len, flags, i + 1);
        t.mem
            .write_obj(
                RawDescriptor::from(d),
                GuestAddress(table + u64::from(i) * 16),
            )
            .unwrap();
    }
    t.store_desc(0, table, u32::from(n) * 16, VRING_DESC_F_INDIRECT as u16, 0);
    t.make_available(0);
    assert_eq!(t.run(), 1);
    assert_eq!(t.used(), vec![(0, 0)]);
    assert_eq!(t.read_mem(s.addr, 1), vec![0xff], "status untouched");
    // A table that is not a whole number of descriptors, and one outside memory.
    t.store_desc(1, table, 17, VRING_DESC_F_INDIRECT as u16, 0);
    t.make_available(1);
    t.store_desc(2, MEM_SIZE, 64, VRING_DESC_F_INDIRECT as u16, 0);
    t.make_available(2);
    assert_eq!(t.run(), 2);
    assert_eq!(t.used(), vec![(1, 0), (2, 0)]);
    t.next_desc = 3;
    t.assert_still_works();
}

#[test]
fn avail_index_far_ahead_stops_the_device_until_reset() {
    let mut t = T::new();
    let buf = t.alloc(512);
    t.request(VIRTIO_BLK_T_IN, 0, &[w(buf, 512)]);
    let idx = t.vq.avail().idx().load();
    t.vq.avail().idx().store(idx.wrapping_add(1000));
    assert_eq!(t.run(), 0);
    assert!(t.blk.needs_reset());
    assert_ne!(t.irq.status() & IrqKind::Config as u32, 0);
    assert!(t.used().is_empty());
    // Stays stopped, even once the index looks sane again.
    t.vq.avail().idx().store(idx);
    assert_eq!(t.run(), 0);
    assert!(t.blk.state().needs_reset);
    // The driver resets and starts over.
    t.restart(t.blk.avail_features());
    assert!(!t.blk.needs_reset());
    t.assert_still_works();
}

#[test]
fn head_index_outside_the_table_stops_the_device() {
    let mut t = T::new();
    t.make_available(256);
    assert_eq!(t.run(), 0);
    assert!(t.blk.needs_reset());
    t.restart(VIRTIO_F_VERSION_1);
    t.assert_still_works();
}

#[test]
fn zero_length_buffers_are_skipped() {
    let mut t = T::new();
    let buf = t.alloc(512);
    let req = t.request(
        VIRTIO_BLK_T_IN,
        5,
        &[w(MEM_SIZE * 4, 0), w(buf, 512), w(0, 0)],
    );
    assert_eq!(t.complete(req, 513), VIRTIO_BLK_S_OK as u8);
    assert_eq!(t.read_mem(buf, 512), vec![5; 512]);
    // A read of zero sectors is a no-op that succeeds.
    let req = t.request(VIRTIO_BLK_T_IN, 64, &[]);
    assert_eq!(t.complete(req, 1), VIRTIO_BLK_S_OK as u8);
}
