//! Inflate, deflate and free page reporting give real host memory back.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::MetadataExt;

use vm_memory::{FileOffset, GuestAddress};

use super::guest::{w, Guest};
use super::*;
use crate::virtio::balloon::pages::{walk_pfns, MAX_PFN_BYTES};

const MIB: u64 = 1 << 20;
/// The ballooned area: 64 MiB above the rings and buffers.
const AREA: u64 = 64 * MIB;
const AREA_PAGES: u64 = AREA / PAGE_SIZE;

fn pfn(addr: u64) -> u32 {
    (addr / PAGE_SIZE) as u32
}

#[test]
fn inflating_64_mib_returns_it_to_the_host() {
    let mut t = T::new(all_options(), AREA);
    let mem = t.g.mem;
    touch(mem, LOW, AREA);
    let before = resident(mem, LOW, AREA);
    assert_eq!(before as u64, AREA_PAGES, "all touched pages are resident");
    let rss_before = vm_rss_kib();
    // Like Linux: 256 PFNs per buffer, one buffer per chain.
    let first = pfn(LOW);
    let pfns: Vec<u32> = (first..first + AREA_PAGES as u32).collect();
    let mut heads = Vec::new();
    let start = std::time::Instant::now();
    for chunk in pfns.chunks(256) {
        heads.push(t.send_pfns(QueueKind::Inflate, chunk));
    }
    let took = start.elapsed();
    let q = t.q(QueueKind::Inflate);
    let used = t.g.used(q);
    assert_eq!(used.len(), heads.len());
    assert!(used
        .iter()
        .zip(&heads)
        .all(|(&(h, len), &head)| h == head && len == 0));
    let after = resident(mem, LOW, AREA);
    let rss_after = vm_rss_kib();
    println!(
        "balloon inflate: {} MiB touched, {} MiB resident before, {} KiB after; \
         returned {} MiB (mincore) in {took:?} (64 chains of 256 PFNs); \
         process VmRSS {} -> {} KiB",
        AREA / MIB,
        before as u64 * PAGE_SIZE / MIB,
        after as u64 * PAGE_SIZE / 1024,
        (before - after) as u64 * PAGE_SIZE / MIB,
        rss_before,
        rss_after
    );
    assert_eq!(after, 0, "no inflated page is still resident");
    assert_eq!(t.counter("inflated_pages"), AREA_PAGES);
    assert_eq!(t.counter("returned_bytes"), AREA);
    assert_eq!(t.counter("errors"), 0);
    assert!(t.take_irq(IrqKind::Vring));
    // The pages read as zeros and can be used again (deflate + touch).
    assert_eq!(t.g.read_mem(LOW, 16), vec![0; 16]);
    for chunk in pfns.chunks(256).take(4) {
        t.send_pfns(QueueKind::Deflate, chunk);
    }
    assert_eq!(t.counter("deflated_pages"), 1024);
    touch(mem, LOW, 4 * MIB);
    assert_eq!(resident(mem, LOW, 4 * MIB), 1024);
}

#[test]
fn scattered_pfns_are_dropped_page_by_page() {
    let mut t = T::new(all_options(), 4 * MIB);
    let mem = t.g.mem;
    touch(mem, LOW, 4 * MIB);
    // Every other page of the first MiB, out of order.
    let mut pfns: Vec<u32> = (0..128).map(|i| pfn(LOW) + 2 * i).collect();
    pfns.reverse();
    t.send_pfns(QueueKind::Inflate, &pfns);
    assert_eq!(resident(mem, LOW, MIB), 128);
    assert_eq!(resident(mem, LOW + MIB, 3 * MIB), 768);
    assert_eq!(t.counter("inflated_pages"), 128);
}

#[test]
fn contiguous_pfns_are_coalesced_into_runs() {
    let g = Guest::new(LOW + MIB, 1);
    let base = pfn(LOW);
    let pfns = [
        base,
        base + 1,
        base + 2,
        base + 10,
        base + 11,
        base + 5,
        u32::MAX,
    ];
    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
    let mut g = g;
    let buf = g.alloc(64);
    g.fill(buf, &bytes);
    let mut runs = Vec::new();
    let walk = walk_pfns(g.mem, [(buf, bytes.len() as u32)], |a, l| runs.push((a, l)));
    assert_eq!(
        runs,
        vec![
            (LOW, 3 * PAGE_SIZE),
            (LOW + 10 * PAGE_SIZE, 2 * PAGE_SIZE),
            (LOW + 5 * PAGE_SIZE, PAGE_SIZE)
        ]
    );
    assert_eq!((walk.valid, walk.invalid, walk.runs), (6, 1, 3));
    // A chain at the size cap is one run per contiguous stretch, too.
    let n = (MAX_PFN_BYTES / 4) as u32;
    let big: Vec<u8> = (0..n).flat_map(|i| (i % 256).to_le_bytes()).collect();
    let buf = g.alloc(MAX_PFN_BYTES);
    g.fill(buf, &big);
    let walk = walk_pfns(g.mem, [(buf, MAX_PFN_BYTES as u32)], |_, _| {});
    assert_eq!((walk.valid, walk.runs), (u64::from(n), u64::from(n / 256)));
    // Buffers rewritten to claim more after the checks: the walk still
    // reads at most MAX_PFN_BYTES.
    let walk = walk_pfns(g.mem, [(buf, 1 << 20), (buf, u32::MAX)], |_, _| {});
    assert_eq!(walk.valid + walk.invalid, MAX_PFN_BYTES / 4);
}

#[test]
fn reported_free_ranges_are_returned() {
    let mut t = T::new(all_options(), 16 * MIB);
    let mem = t.g.mem;
    touch(mem, LOW, 16 * MIB);
    let q = t.q(QueueKind::Reporting);
    // Two 4 MiB ranges in one report, as Linux's page reporting sends them.
    let head = t.g.chain(q, &[w(LOW, 4 << 20), w(LOW + 8 * MIB, 4 << 20)]);
    assert_eq!(t.b.process_queue(q), 1);
    assert_eq!(t.g.used(q), vec![(head, 0)]);
    assert_eq!(resident(mem, LOW, 4 * MIB), 0);
    assert_eq!(resident(mem, LOW + 4 * MIB, 4 * MIB), 1024, "untouched");
    assert_eq!(resident(mem, LOW + 8 * MIB, 4 * MIB), 0);
    assert_eq!(t.counter("reported_bytes"), 8 * MIB);
    // A range that is not page aligned loses its partial pages only.
    let head =
        t.g.chain(q, &[w(LOW + 4 * MIB + 100, 3 * PAGE_SIZE as u32)]);
    t.b.process_queue(q);
    assert_eq!(t.g.used(q), vec![(head, 0)]);
    assert_eq!(resident(mem, LOW + 4 * MIB, 4 * MIB), 1024 - 2);
    assert!(t.take_irq(IrqKind::Vring));
}

/// Shared memory (memfd, as a VMM that shares guest RAM maps it) needs
/// MADV_REMOVE: the backing pages must go, not just the mapping.
#[test]
fn shared_memfd_memory_is_punched_out() {
    // SAFETY: a NUL-terminated name and valid flags; we own the new fd.
    let fd = unsafe { libc::memfd_create(c"balloon-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `fd` was just created and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    let size = LOW + 8 * MIB;
    file.set_len(size).unwrap();
    let mem = GuestMemory::from_ranges_with_files([(
        GuestAddress(0),
        size as usize,
        Some(FileOffset::new(file.try_clone().unwrap(), 0)),
    )])
    .unwrap();
    let b = Balloon::new(all_options()).unwrap();
    let n = b.layout().count;
    let mut t = T::with_guest(b, Guest::from_memory(mem, 0, size, n));
    let mem = t.g.mem;
    touch(mem, LOW, 8 * MIB);
    let blocks_before = file.metadata().unwrap().blocks();
    let first = pfn(LOW);
    let pfns: Vec<u32> = (first..first + 2048).collect();
    for chunk in pfns.chunks(256) {
        t.send_pfns(QueueKind::Inflate, chunk);
    }
    let blocks_after = file.metadata().unwrap().blocks();
    assert_eq!(resident(mem, LOW, 8 * MIB), 0);
    // st_blocks counts 512-byte units: 8 MiB = 16384 of them; what stays
    // is the rings and buffers below LOW.
    assert!(blocks_before >= 16384, "{blocks_before} blocks");
    assert!(
        blocks_after < 1024,
        "memfd kept its pages: {blocks_before} -> {blocks_after} blocks"
    );
    assert_eq!(t.counter("errors"), 0);
}
