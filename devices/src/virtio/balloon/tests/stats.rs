//! Statistics: the buffer is held and given back on the timer; parsing
//! never trusts the guest's lengths.

use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};

use super::guest::w;
use super::*;
use crate::virtio::balloon::stats::{parse, MAX_STATS_BYTES, STAT_LEN};

/// Packed `(le16 tag, le64 value)` entries.
fn entries(stats: &[(u16, u64)]) -> Vec<u8> {
    stats
        .iter()
        .flat_map(|&(tag, v)| tag.to_le_bytes().into_iter().chain(v.to_le_bytes()))
        .collect()
}

impl T {
    /// The guest puts a statistics buffer on the stats queue.
    fn send_stats(&mut self, bytes: &[u8]) -> u16 {
        let buf = self.g.alloc(bytes.len().max(1) as u64);
        self.g.fill(buf, bytes);
        let q = self.q(QueueKind::Stats);
        let head = self.g.chain(q, &[r(buf, bytes.len() as u32)]);
        self.b.process_queue(q);
        head
    }
}

#[test]
fn stats_buffer_is_parsed_held_and_given_back() {
    let mut t = T::new(all_options(), 0);
    t.b.set_target_mib(2).unwrap();
    t.b.write_config(4, &256u32.to_le_bytes());
    let head = t.send_stats(&entries(&[
        (0, 11),
        (1, 22),
        (4, 4 << 20),
        (5, 8 << 20),
        (10, 3),
    ]));
    let q = t.q(QueueKind::Stats);
    assert!(t.g.used(q).is_empty(), "held until the next poll");
    let s = t.b.latest_stats().unwrap();
    assert_eq!(
        (s.target_pages, s.actual_pages, s.target_mib, s.actual_mib),
        (512, 256, 2, 1)
    );
    assert_eq!(s.swap_in, Some(11));
    assert_eq!(s.swap_out, Some(22));
    assert_eq!(s.free_memory, Some(4 << 20));
    assert_eq!(s.total_memory, Some(8 << 20));
    assert_eq!(s.oom_kill, Some(3));
    assert_eq!(s.major_faults, None);
    // Firecracker's JSON shape: absent tags are left out.
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["target_pages"], 512);
    assert_eq!(json["actual_mib"], 1);
    assert_eq!(json["swap_in"], 11);
    assert_eq!(json["total_memory"], 8 << 20);
    assert!(json.get("major_faults").is_none());
    // The poll gives the buffer back; the guest refills it.
    assert!(t.b.return_stats_buffer());
    assert_eq!(t.g.used(q), vec![(head, 0)]);
    assert!(t.take_irq(IrqKind::Vring));
    assert!(!t.b.return_stats_buffer(), "nothing held now");
    t.send_stats(&entries(&[(3, 99)]));
    let s = t.b.latest_stats().unwrap();
    assert_eq!(
        (s.minor_faults, s.swap_in),
        (Some(99), None),
        "fresh figures only"
    );
    assert_eq!(t.counter("stats_updates"), 2);
}

#[test]
fn a_second_buffer_frees_the_first() {
    let mut t = T::new(all_options(), 0);
    let first = t.send_stats(&entries(&[(0, 1)]));
    let second = t.send_stats(&entries(&[(0, 2)]));
    let q = t.q(QueueKind::Stats);
    assert_eq!(t.g.used(q), vec![(first, 0)]);
    assert_eq!(t.b.latest_stats().unwrap().swap_in, Some(2));
    t.b.return_stats_buffer();
    assert_eq!(t.g.used(q), vec![(second, 0)], "a snapshot holds nothing");
}

#[test]
fn hostile_stats_buffers_are_parsed_safely() {
    let mut t = T::new(all_options(), 0);
    let mem = t.g.mem;
    // A trailing partial entry and unknown tags are ignored.
    let mut bytes = entries(&[(6, 5), (999, 1), (u16::MAX, 2)]);
    bytes.extend_from_slice(&[7, 0, 1]);
    t.send_stats(&bytes);
    let s = t.b.latest_stats().unwrap();
    assert_eq!(s.available_memory, Some(5));
    assert_eq!(s.disk_caches, None);
    // Zero-length, device-writable, outside memory, longer than memory.
    let buf = t.g.alloc(64);
    t.g.fill(buf, &entries(&[(7, 1)]));
    let q = t.q(QueueKind::Stats);
    for d in [r(buf, 0), w(buf, 10), r(u64::MAX - 9, 10), r(buf, u32::MAX)] {
        t.g.chain(q, &[d]);
        t.b.process_queue(q);
        assert_eq!(t.b.latest_stats().unwrap().disk_caches, None);
    }
    // The parser directly: a long buffer is capped, partial entries counted.
    let big = t.g.alloc(4096);
    t.g.fill(big, &entries(&[(2, 7); 400]));
    let parsed = parse(mem, [(big, 4000, false)]);
    assert_eq!(parsed.stats.major_faults, Some(7));
    assert_eq!(parsed.ignored_bytes, 4000 - MAX_STATS_BYTES as u64);
    let parsed = parse(mem, [(big, 15, false)]);
    assert_eq!(parsed.ignored_bytes, 15 - STAT_LEN as u64);
    // Entries split across two descriptors are read as one stream.
    let parsed = parse(mem, [(big, 4, false), (big + 4, 6, false)]);
    assert_eq!(parsed.stats.major_faults, Some(7));
    assert!(!t.b.needs_reset());
}

/// Lends the test's device to an event manager for a while.
struct Lent<'a>(&'a mut Balloon);

impl MutEventSubscriber for Lent<'_> {
    fn init(&mut self, ops: &mut EventOps) {
        self.0.init(ops);
    }
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.0.process(events, ops);
    }
}

#[test]
fn event_loop_returns_the_buffer_every_interval() {
    let mut t = T::new(all_options(), 0);
    let q = t.q(QueueKind::Stats);
    let head = {
        let buf = t.g.alloc(10);
        t.g.fill(buf, &entries(&[(4, 1234)]));
        t.g.chain(q, &[r(buf, 10)])
    };
    let notify = t.b.queue_events()[q].try_clone().unwrap();
    let mut returned = Vec::new();
    {
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(Lent(&mut t.b));
        notify.write(1).unwrap();
        em.run_with_timeout(1000).unwrap();
        // The 1 s timer gives it back (bounded loop, no timing assertion).
        let give_up = Instant::now() + Duration::from_secs(30);
        while returned.is_empty() && Instant::now() < give_up {
            em.run_with_timeout(500).unwrap();
            returned.extend(t.g.used(q));
        }
    }
    assert_eq!(returned, vec![(head, 0)]);
    assert_eq!(t.b.latest_stats().unwrap().free_memory, Some(1234));
    assert!(t.take_irq(IrqKind::Vring));
    // A timer event with nothing held, or before expiry, does nothing.
    t.b.handle_stats_timer();
    assert!(t.g.used(q).is_empty());
}
