//! virtio-rng driven the way a (possibly hostile) guest driver would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

use super::{Rng, RngState, MAX_REQUEST_BYTES, TYPE_RNG};
use crate::rate_limiter::{BucketConfig, RateLimiter};
use crate::virtio::balloon::tests::guest::{r, w, Guest};
use crate::virtio::{Activation, IrqKind, IrqTrigger, VirtioDevice, VIRTIO_F_VERSION_1};

const MEM_SIZE: u64 = 0x40_0000;

/// A guest with an activated entropy device.
struct T {
    g: Guest,
    rng: Rng,
    irq: Arc<IrqTrigger>,
}

impl T {
    fn new(limiter: Option<RateLimiter>) -> Self {
        let rng = Rng::new(limiter).unwrap();
        let mut t = Self {
            g: Guest::new(MEM_SIZE, 1),
            rng,
            irq: Arc::new(IrqTrigger::new().unwrap()),
        };
        t.activate();
        t
    }

    fn activate(&mut self) {
        self.rng
            .activate(Activation {
                mem: self.g.mem.clone(),
                queues: vec![self.g.queue(0)],
                interrupt: self.irq.clone(),
                acked_features: VIRTIO_F_VERSION_1,
            })
            .unwrap();
        let _ = self.rng.queue_events()[0].read();
    }

    fn counter(&self, name: &str) -> u64 {
        self.rng
            .counters()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1
    }

    /// Proves a normal request is still served.
    fn assert_still_works(&mut self) {
        let _ = self.g.used(0);
        let buf = self.g.alloc(64);
        let head = self.g.chain(0, &[w(buf, 64)]);
        assert_eq!(self.rng.process_queue(), 1);
        assert_eq!(self.g.used(0), vec![(head, 64)]);
        assert!(!self.rng.needs_reset());
    }
}

#[test]
fn offers_version_1_and_no_config() {
    let rng = Rng::new(None).unwrap();
    assert_eq!(rng.device_type(), TYPE_RNG);
    assert_eq!(rng.avail_features(), VIRTIO_F_VERSION_1);
    assert_eq!(rng.queue_max_sizes().len(), 1);
    let mut cfg = [0xffu8; 8];
    rng.read_config(0, &mut cfg);
    assert_eq!(cfg, [0; 8]);
}

#[test]
fn buffer_is_filled_with_randomness() {
    let mut t = T::new(None);
    let (a, b) = (t.g.alloc(4096), t.g.alloc(100));
    let head = t.g.chain(0, &[w(a, 4096), w(b, 100)]);
    assert_eq!(t.rng.process_queue(), 1);
    assert_eq!(t.g.used(0), vec![(head, 4196)]);
    let first = t.g.read_mem(a, 4096);
    let second = t.g.read_mem(b, 100);
    assert!(first.iter().any(|&x| x != 0), "not all zeros");
    assert!(second.iter().any(|&x| x != 0), "second buffer filled too");
    // 4096 random bytes have no long runs of one value.
    assert!(first.windows(16).all(|w| w.iter().any(|&x| x != w[0])));
    // Two requests get different bytes.
    let c = t.g.alloc(64);
    t.g.chain(0, &[w(c, 64)]);
    t.rng.process_queue();
    assert_ne!(t.g.read_mem(c, 64), first[..64].to_vec());
    assert!(t.irq.status() & IrqKind::Vring as u32 != 0);
    assert_eq!(t.counter("requests"), 2);
    assert_eq!(t.counter("bytes"), 4196 + 64);
    assert_eq!(t.counter("errors"), 0);
}

#[test]
fn read_only_descriptor_is_refused() {
    let mut t = T::new(None);
    let (a, b) = (t.g.alloc(64), t.g.alloc(64));
    t.g.fill(a, &[0; 64]);
    t.g.fill(b, &[0; 64]);
    let head = t.g.chain(0, &[w(a, 64), r(b, 64)]);
    assert_eq!(t.rng.process_queue(), 1);
    assert_eq!(t.g.used(0), vec![(head, 0)]);
    assert_eq!(t.g.read_mem(a, 64), vec![0; 64], "nothing written");
    assert_eq!(t.g.read_mem(b, 64), vec![0; 64]);
    assert_eq!(t.counter("errors"), 1);
    t.assert_still_works();
}

#[test]
fn huge_request_is_capped() {
    let mut t = T::new(None);
    // Claims 4 GiB - 1 in a single buffer: outside memory, refused.
    let a = t.g.alloc(16);
    let head = t.g.chain(0, &[w(a, u32::MAX)]);
    t.rng.process_queue();
    assert_eq!(t.g.used(0), vec![(head, 0)]);
    // 1 MiB in guest memory: only MAX_REQUEST_BYTES are served.
    let big = t.g.alloc(1 << 20);
    let head = t.g.chain(0, &[w(big, 1 << 20)]);
    t.rng.process_queue();
    assert_eq!(t.g.used(0), vec![(head, MAX_REQUEST_BYTES as u32)]);
    let tail = t.g.read_mem(big + MAX_REQUEST_BYTES as u64, 4096);
    assert_eq!(tail, vec![0; 4096], "nothing past the cap");
    t.assert_still_works();
}

#[test]
fn hostile_chains_are_refused_without_stopping() {
    let mut t = T::new(None);
    // A buffer past the end of guest memory.
    let head = t.g.chain(0, &[w(MEM_SIZE - 8, 64)]);
    t.rng.process_queue();
    assert_eq!(t.g.used(0), vec![(head, 0)]);
    // A zero-length buffer.
    let a = t.g.alloc(16);
    let head = t.g.chain(0, &[w(a, 0)]);
    t.rng.process_queue();
    assert_eq!(t.g.used(0), vec![(head, 0)]);
    // A descriptor loop (next points back at itself): refused after at
    // most queue-size steps, nothing written.
    let b = t.g.alloc(16);
    let flags = (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16;
    t.g.store_desc(0, 200, b, 16, flags, 200);
    t.g.make_available(0, 200);
    t.rng.process_queue();
    let used = t.g.used(0);
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].0, 200);
    assert_eq!(used[0].1, 0);
    assert_eq!(t.g.read_mem(b, 16), vec![0; 16]);
    t.assert_still_works();
    assert_eq!(t.counter("errors"), 3);
}

#[test]
fn corrupted_ring_stops_the_device_until_reset() {
    let mut t = T::new(None);
    t.g.set_avail_idx(0, 1000);
    t.rng.process_queue();
    assert!(t.rng.needs_reset());
    assert!(t.irq.status() & IrqKind::Config as u32 != 0);
    assert_eq!(t.rng.process_queue(), 0);
    t.rng.reset();
    assert!(!t.rng.needs_reset());
    t.g = Guest::new(MEM_SIZE, 1);
    t.activate();
    t.assert_still_works();
}

/// Lends the test's device to an event manager for a while.
struct Lent<'a>(&'a mut Rng);

impl MutEventSubscriber for Lent<'_> {
    fn init(&mut self, ops: &mut EventOps) {
        self.0.init(ops);
    }
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.0.process(events, ops);
    }
}

#[test]
fn throttled_requests_wait_for_the_limiter_timer() {
    let ops = BucketConfig {
        size: 1,
        one_time_burst: 0,
        refill_time_ms: 100,
    };
    let mut t = T::new(Some(RateLimiter::new(None, Some(ops)).unwrap()));
    let (a, b) = (t.g.alloc(32), t.g.alloc(32));
    let first = t.g.chain(0, &[w(a, 32)]);
    let second = t.g.chain(0, &[w(b, 32)]);
    let notify = t.rng.queue_events()[0].try_clone().unwrap();
    let mut served = Vec::new();
    {
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(Lent(&mut t.rng));
        notify.write(1).unwrap();
        em.run_with_timeout(1000).unwrap();
        served.extend(t.g.used(0));
        assert_eq!(served, vec![(first, 32)], "only the first ran");
        // Notifications while throttled change nothing.
        notify.write(1).unwrap();
        em.run_with_timeout(0).unwrap();
        // The limiter's timer brings the second one through (bounded loop,
        // not a timing assertion).
        let give_up = Instant::now() + Duration::from_secs(30);
        while served.len() < 2 && Instant::now() < give_up {
            em.run_with_timeout(200).unwrap();
            served.extend(t.g.used(0));
        }
    }
    assert_eq!(served, vec![(first, 32), (second, 32)]);
    assert!(t.counter("throttled") >= 1);
    assert!(t.g.read_mem(b, 32).iter().any(|&x| x != 0));
}

#[test]
fn bandwidth_limit_counts_capped_bytes() {
    let bytes = BucketConfig {
        size: 1000,
        one_time_burst: 0,
        refill_time_ms: 60_000,
    };
    let mut t = T::new(Some(RateLimiter::new(Some(bytes), None).unwrap()));
    let (a, b) = (t.g.alloc(600), t.g.alloc(600));
    t.g.chain(0, &[w(a, 600)]);
    t.g.chain(0, &[w(b, 600)]);
    assert_eq!(t.rng.process_queue(), 1, "the second exceeds the budget");
    t.rng.handle_queue_event();
    assert_eq!(t.g.used(0).len(), 1, "still blocked");
}

#[test]
fn state_round_trips_through_serde() {
    let mut t = T::new(None);
    t.assert_still_works();
    let state = t.rng.state();
    let json = serde_json::to_string(&state).unwrap();
    let back: RngState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
    let restored = Rng::from_state(back, None).unwrap();
    assert_eq!(restored.counters(), t.rng.counters());
    assert_eq!(restored.avail_features(), VIRTIO_F_VERSION_1);
}

#[test]
fn persist_restores_the_ring_position_and_limiter() {
    use crate::persist::Persist;
    let mut t = T::new(Some(RateLimiter::new(None, None).unwrap()));
    t.assert_still_works();
    t.assert_still_works();
    let state = t.rng.save().unwrap();
    assert_eq!(state.queue.map(|q| q.next_used), Some(2));
    assert!(state.rate_limiter.is_some());
    let json = serde_json::to_string(&state).unwrap();
    let back: super::RngSnapshotState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
    // Same guest memory (its rings), a new device continuing from there.
    t.rng = Rng::restore(Some(RateLimiter::new(None, None).unwrap()), &back).unwrap();
    t.activate();
    let buf = t.g.alloc(64);
    let head = t.g.chain(0, &[w(buf, 64)]);
    assert_eq!(t.rng.process_queue(), 1, "only the new request is served");
    assert_eq!(t.g.used(0), vec![(head, 64)]);

    let mut bad = back.clone();
    bad.device.acked_features |= 1 << 3;
    assert!(
        Rng::restore(None, &bad).is_err(),
        "acked features never offered"
    );
}
