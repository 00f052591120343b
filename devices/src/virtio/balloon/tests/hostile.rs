//! A hostile driver: PFNs outside RAM, huge and odd arrays, wrong
//! directions, ranges past the end, a corrupted ring.

use super::guest::{w, Guest};
use super::*;
use crate::virtio::balloon::pages::MAX_PFN_BYTES;

const MIB: u64 = 1 << 20;

fn pfn(addr: u64) -> u32 {
    (addr / PAGE_SIZE) as u32
}

#[test]
fn pfns_outside_ram_are_skipped_and_the_rest_handled() {
    // RAM: [0, LOW + 1 MiB) and [64 MiB, 65 MiB); a hole in between.
    let b = Balloon::new(all_options()).unwrap();
    let n = b.layout().count;
    let g = Guest::with_ranges(&[(0, LOW + MIB), (64 * MIB, MIB)], n);
    let mut t = T::with_guest(b, g);
    let mem = t.g.mem;
    touch(mem, LOW, MIB);
    touch(mem, 64 * MIB, MIB);
    let pfns = [
        pfn(LOW),
        pfn(LOW + MIB),    // first page of the hole
        pfn(32 * MIB),     // in the hole
        pfn(64 * MIB),     // second region
        pfn(65 * MIB),     // just past the end
        u32::MAX,          // far past the end
        pfn(64 * MIB) + 1, // second region (joins the run of 64 MiB)
    ];
    let head = t.send_pfns(QueueKind::Inflate, &pfns);
    assert_eq!(t.g.used(0), vec![(head, 0)]);
    assert_eq!(t.counter("inflated_pages"), 3);
    assert_eq!(t.counter("errors"), 1, "one error for the buffer");
    assert_eq!(resident(mem, LOW, MIB), 255);
    assert_eq!(resident(mem, 64 * MIB, MIB), 254);
    assert!(!t.b.needs_reset());
}

#[test]
fn a_run_across_two_regions_is_split_per_region() {
    // Two adjacent regions: a contiguous PFN run crosses the boundary.
    let b = Balloon::new(all_options()).unwrap();
    let n = b.layout().count;
    let g = Guest::with_ranges(&[(0, LOW + MIB), (LOW + MIB, MIB)], n);
    let mut t = T::with_guest(b, g);
    let mem = t.g.mem;
    touch(mem, LOW, 2 * MIB);
    let first = pfn(LOW);
    let pfns: Vec<u32> = (first..first + 512).collect();
    t.send_pfns(QueueKind::Inflate, &pfns[..256]);
    t.send_pfns(QueueKind::Inflate, &pfns[256..]);
    assert_eq!(resident(mem, LOW, 2 * MIB), 0);
    assert_eq!(t.counter("errors"), 0);
}

#[test]
fn huge_odd_and_misdirected_pfn_arrays_are_refused_whole() {
    let mut t = T::new(all_options(), MIB);
    let mem = t.g.mem;
    touch(mem, LOW, MIB);
    let q = t.q(QueueKind::Inflate);
    let pfns: Vec<u8> = (pfn(LOW)..pfn(LOW) + 256)
        .flat_map(|p| p.to_le_bytes())
        .collect();
    let buf = t.g.alloc(MAX_PFN_BYTES + 4);
    t.g.fill(buf, &pfns);
    let cases = [
        // More than the cap, in one buffer and across two.
        vec![r(buf, MAX_PFN_BYTES as u32 + 4)],
        vec![r(buf, MAX_PFN_BYTES as u32), r(buf, 4)],
        // Four billion PFNs claimed (not even inside memory).
        vec![r(buf, u32::MAX - 3)],
        // Not a whole number of PFNs.
        vec![r(buf, 6)],
        vec![r(buf, 1023)],
        // Device-writable: the device must not be handed its own buffer.
        vec![w(buf, 1024)],
        // Outside guest memory.
        vec![r(LOW + MIB - 8, 16)],
        vec![r(u64::MAX - 3, 4)],
    ];
    for descs in &cases {
        let head = t.g.chain(q, descs);
        assert_eq!(t.b.process_queue(q), 1);
        assert_eq!(t.g.used(q), vec![(head, 0)]);
    }
    assert_eq!(t.counter("errors"), cases.len() as u64);
    assert_eq!(t.counter("inflated_pages"), 0);
    assert_eq!(resident(mem, LOW, MIB), 256, "nothing was dropped");
    // Empty chains (zero-length buffer) are fine and do nothing.
    let head = t.g.chain(q, &[r(buf, 0)]);
    t.b.process_queue(q);
    assert_eq!(t.g.used(q), vec![(head, 0)]);
    // The device still works.
    t.send_pfns(QueueKind::Inflate, &[pfn(LOW)]);
    assert_eq!(resident(mem, LOW, MIB), 255);
}

#[test]
fn hostile_reports_are_refused_without_panic() {
    let mut t = T::new(all_options(), MIB);
    let mem = t.g.mem;
    touch(mem, LOW, MIB);
    let q = t.q(QueueKind::Reporting);
    let cases = [
        r(LOW, 4096),              // device-readable
        w(LOW + MIB - 4096, 8192), // runs past the end of RAM
        w(u64::MAX - 4095, 4096),  // at the top of the address space
        w(LOW + 10, 100),          // less than a page: nothing to drop
    ];
    for d in cases {
        let head = t.g.chain(q, &[d]);
        t.b.process_queue(q);
        assert_eq!(t.g.used(q), vec![(head, 0)]);
    }
    assert_eq!(t.counter("errors"), 3);
    assert_eq!(t.counter("reported_bytes"), 0);
    assert_eq!(resident(mem, LOW, MIB), 256);
}

#[test]
fn corrupted_ring_stops_the_device_until_reset() {
    let mut t = T::new(all_options(), MIB);
    t.take_irq(IrqKind::Config);
    t.g.set_avail_idx(0, 1000);
    t.b.process_queue(0);
    assert!(t.b.needs_reset());
    assert!(t.take_irq(IrqKind::Config));
    // Every queue is stopped.
    let q = t.q(QueueKind::Reporting);
    t.g.chain(q, &[w(LOW, 4096)]);
    assert_eq!(t.b.process_queue(q), 0);
    t.b.reset();
    assert!(!t.b.needs_reset());
    let n = t.b.layout().count;
    t.g = Guest::new(LOW + MIB, n);
    let features = t.b.avail_features();
    t.activate(features);
    touch(t.g.mem, LOW, MIB);
    t.send_pfns(QueueKind::Inflate, &[pfn(LOW)]);
    assert_eq!(resident(t.g.mem, LOW, MIB), 255);
}

#[test]
fn notifications_for_unknown_queues_are_ignored() {
    let mut t = T::new(BalloonConfig::default(), 0);
    assert_eq!(t.b.process_queue(2), 0);
    assert_eq!(t.b.process_queue(usize::MAX), 0);
    t.b.handle_queue_event(7);
}

#[test]
fn an_indirect_pfn_array_is_refused_unfollowed() {
    let mut t = T::new(all_options(), MIB);
    let mem = t.g.mem;
    touch(mem, LOW, MIB);
    // The table (never offered) would inflate the first page.
    let pfns = pfn(LOW).to_le_bytes();
    let buf = t.g.alloc(4);
    t.g.fill(buf, &pfns);
    let table = t.g.alloc(16);
    let entry = virtio_queue::desc::RawDescriptor::from(
        virtio_queue::desc::split::Descriptor::new(buf, 4, 0, 0),
    );
    mem.write_obj(entry, vm_memory::GuestAddress(table))
        .unwrap();
    let q = t.q(QueueKind::Inflate);
    let indirect = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;
    t.g.store_desc(q, 0, table, 16, indirect, 0);
    t.g.make_available(q, 0);
    assert_eq!(t.b.process_queue(q), 1);
    assert_eq!(t.g.used(q), vec![(0, 0)]);
    assert_eq!(t.counter("errors"), 1);
    assert_eq!(t.counter("inflated_pages"), 0);
    assert_eq!(resident(mem, LOW, MIB), 256, "nothing was discarded");
}

#[test]
fn a_full_ring_is_served_in_bounded_batches() {
    use crate::virtio::chain::CHAINS_PER_TURN;
    let mut t = T::new(all_options(), MIB);
    let q = t.q(QueueKind::Deflate);
    let buf = t.g.alloc(4);
    t.g.fill(buf, &pfn(LOW).to_le_bytes());
    let head = t.g.chain(q, &[super::guest::r(buf, 4)]);
    for _ in 1..256 {
        t.g.make_available(q, head);
    }
    for turn in 0..256 / CHAINS_PER_TURN {
        assert_eq!(t.b.process_queue(q), CHAINS_PER_TURN, "turn {turn}");
        let rearmed = t.b.queue_events()[q].read().is_ok();
        assert_eq!(rearmed, turn + 1 < 256 / CHAINS_PER_TURN, "turn {turn}");
    }
    assert_eq!(t.g.used(q).len(), 256);
    assert_eq!(t.b.process_queue(q), 0);
}
