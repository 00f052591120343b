//! virtio-pmem driven the way a (possibly hostile) guest driver would.

use std::io::Write;
use std::sync::Arc;

use super::*;
use crate::persist::Persist;
use crate::virtio::balloon::tests::guest::{r, w, Guest};

fn file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f
}

struct T {
    g: Guest,
    pmem: Pmem,
    _file: tempfile::NamedTempFile,
}

impl T {
    fn new(read_only: bool) -> Self {
        let f = file(b"FLINT-PMEM-MARK!rest of the file");
        let mut pmem = Pmem::new(PmemArgs {
            id: "pm0".into(),
            path: f.path().into(),
            read_only,
        })
        .unwrap();
        pmem.set_start(1 << 32);
        let g = Guest::new(0x10_0000, 1);
        pmem.activate(Activation {
            mem: g.mem.clone(),
            queues: vec![g.queue(0)],
            interrupt: Arc::new(IrqTrigger::new().unwrap()),
            acked_features: VIRTIO_F_VERSION_1,
        })
        .unwrap();
        Self { g, pmem, _file: f }
    }

    /// Posts a request of `req` bytes and a `resp_len`-byte answer buffer;
    /// returns (used length, answer).
    fn request(&mut self, req: &[u8], resp_len: u32) -> (u32, u32) {
        let rq = self.g.alloc(16);
        self.g.fill(rq, req);
        let rs = self.g.alloc(16);
        self.g.fill(rs, &[0xee; 4]);
        let head = self.g.chain(0, &[r(rq, req.len() as u32), w(rs, resp_len)]);
        assert_eq!(self.pmem.process_queue(), 1);
        let used = self.g.used(0);
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].0, head);
        let answer = u32::from_le_bytes(self.g.read_mem(rs, 4).try_into().unwrap());
        (used[0].1, answer)
    }
}

#[test]
fn config_space_has_start_and_aligned_size() {
    let t = T::new(false);
    assert_eq!(t.pmem.device_type(), TYPE_PMEM);
    let mut c = [0u8; 16];
    t.pmem.read_config(0, &mut c);
    assert_eq!(u64::from_le_bytes(c[..8].try_into().unwrap()), 1 << 32);
    assert_eq!(u64::from_le_bytes(c[8..].try_into().unwrap()), PMEM_ALIGN);
    assert_eq!(t.pmem.mapping().file_len(), 32);
}

#[test]
fn mapping_shows_the_file_and_writes_reach_it() {
    let t = T::new(false);
    let m = t.pmem.mapping();
    // SAFETY (test): reads and writes inside the live mapping.
    let bytes = unsafe { std::slice::from_raw_parts_mut(m.host_addr() as *mut u8, 32) };
    assert_eq!(&bytes[..16], b"FLINT-PMEM-MARK!");
    bytes[..4].copy_from_slice(b"GUES");
    // The tail past the file reads zeros instead of faulting.
    // SAFETY (test): the reservation is PMEM_ALIGN bytes long.
    let tail = unsafe { *((m.host_addr() + PMEM_ALIGN - 1) as *const u8) };
    assert_eq!(tail, 0);
    let on_disk = std::fs::read(t._file.path()).unwrap();
    assert_eq!(&on_disk[..4], b"GUES");
}

#[test]
fn flush_is_acknowledged() {
    let mut t = T::new(false);
    assert_eq!(t.request(&REQ_FLUSH.to_le_bytes(), 4), (4, RESP_OK));
    assert_eq!(t.pmem.counters()[0], ("flushes", 1));
    let mut ro = T::new(true);
    assert_eq!(ro.request(&REQ_FLUSH.to_le_bytes(), 4), (4, RESP_OK));
}

#[test]
fn hostile_requests_are_answered_or_refused_never_panic() {
    let mut t = T::new(false);
    // Unknown request type: an error answer.
    assert_eq!(t.request(&7u32.to_le_bytes(), 4), (4, RESP_ERR));
    // Short request: error answer.
    assert_eq!(t.request(&[0, 0], 4), (4, RESP_ERR));
    // Response buffer too small: refused, nothing written.
    assert_eq!(t.request(&REQ_FLUSH.to_le_bytes(), 2), (0, 0xeeee_eeee));
    // No writable buffer at all.
    let rq = t.g.alloc(4);
    let head = t.g.chain(0, &[r(rq, 4)]);
    assert_eq!(t.pmem.process_queue(), 1);
    assert_eq!(t.g.used(0), vec![(head, 0)]);
    // Still works.
    assert_eq!(t.request(&REQ_FLUSH.to_le_bytes(), 4), (4, RESP_OK));
    assert!(!t.pmem.needs_reset());
}

#[test]
fn broken_ring_stops_the_device() {
    let mut t = T::new(false);
    t.g.set_avail_idx(0, 1000);
    t.pmem.process_queue();
    assert!(t.pmem.needs_reset());
}

#[test]
fn state_round_trips_and_mismatches_are_refused() {
    let t = T::new(false);
    let state = t.pmem.save().unwrap();
    let args = PmemArgs {
        id: "pm0".into(),
        path: t._file.path().into(),
        read_only: false,
    };
    let back = Pmem::restore(args.clone(), &state).unwrap();
    assert_eq!(back.start(), 1 << 32);
    let mut bad = state.clone();
    bad.read_only = true;
    assert!(Pmem::restore(args.clone(), &bad).is_err());
    let mut bad = state;
    bad.acked_features |= 1 << 60;
    assert!(Pmem::restore(args, &bad).is_err());
}

#[test]
fn empty_or_missing_file_is_refused() {
    let empty = tempfile::NamedTempFile::new().unwrap();
    let args = |p: &std::path::Path| PmemArgs {
        id: "x".into(),
        path: p.into(),
        read_only: false,
    };
    assert!(matches!(
        Pmem::new(args(empty.path())),
        Err(PmemError::Empty(_))
    ));
    assert!(Pmem::new(args(std::path::Path::new("/nonexistent/pmem"))).is_err());
}
