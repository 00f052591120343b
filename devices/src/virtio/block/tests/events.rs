//! The event-loop side: notifications before activation, a real
//! `EventManager` driving the queue, and rate limiting.

use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};

use super::*;
use crate::rate_limiter::BucketConfig;

/// Lends the test's device to an event manager for a while.
struct Lent<'a>(&'a mut Block);

impl MutEventSubscriber for Lent<'_> {
    fn init(&mut self, ops: &mut EventOps) {
        self.0.init(ops);
    }
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.0.process(events, ops);
    }
}

#[test]
fn notification_before_activation_is_drained_and_ignored() {
    let image = image(8 * 512);
    let blk = Block::new(BlockConfig {
        drive_id: "early".into(),
        path: image.path().into(),
        read_only: false,
        rate_limiter: None,
    })
    .unwrap();
    let mut t = T::unactivated(blk, image);
    let buf = t.alloc(512);
    let req = t.request(VIRTIO_BLK_T_IN, 3, &[w(buf, 512)]);
    t.blk.queue_events()[0].write(1).unwrap();
    t.blk.handle_queue_event();
    assert!(t.used().is_empty());
    assert!(t.blk.queue_events()[0].read().is_err(), "drained");
    // Processing the queue directly before activation does nothing either.
    assert_eq!(t.run(), 0);
    // Activation looks at the ring once: the early request is served.
    t.blk
        .activate(Activation {
            mem: t.mem.clone(),
            queues: vec![t.queue()],
            interrupt: t.irq.clone(),
            acked_features: t.blk.avail_features(),
        })
        .unwrap();
    t.blk.handle_queue_event();
    assert_eq!(t.used(), vec![(req.head, 513)]);
    assert_eq!(t.read_mem(buf, 512), vec![3; 512]);
    assert!(t.take_vring_irq());
}

#[test]
fn event_manager_drives_the_queue() {
    let mut t = T::new();
    let buf = t.alloc(512);
    let req = t.request(VIRTIO_BLK_T_IN, 9, &[w(buf, 512)]);
    // What KVM's ioeventfd would write when the guest notifies.
    let notify = t.blk.queue_events()[0].try_clone().unwrap();
    {
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(Lent(&mut t.blk));
        // Nothing pending: the loop times out.
        assert_eq!(em.run_with_timeout(10).unwrap(), 0);
        notify.write(1).unwrap();
        assert_eq!(em.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(
            em.run_with_timeout(10).unwrap(),
            0,
            "the eventfd was drained"
        );
    }
    assert_eq!(t.used(), vec![(req.head, 513)]);
    assert_eq!(t.read_mem(buf, 512), vec![9; 512]);
    assert!(t.take_vring_irq());
}

#[test]
fn ops_limit_makes_the_second_request_wait_for_the_timer() {
    let ops = BucketConfig {
        size: 1,
        one_time_burst: 0,
        refill_time_ms: 1000,
    };
    let limiter = RateLimiter::new(None, Some(ops)).unwrap();
    let mut t = T::build(64 * 512, false, Some(limiter), "slow");
    let (a, b) = (t.alloc(512), t.alloc(512));
    let first = t.request(VIRTIO_BLK_T_IN, 1, &[w(a, 512)]);
    let second = t.request(VIRTIO_BLK_T_IN, 2, &[w(b, 512)]);
    let notify = t.blk.queue_events()[0].try_clone().unwrap();
    let mem = t.mem;
    let start = Instant::now();
    {
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(Lent(&mut t.blk));
        notify.write(1).unwrap();
        assert_eq!(em.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(used_idx(mem), 1, "only the first request ran");
        // More notifications while throttled change nothing.
        notify.write(1).unwrap();
        assert_eq!(em.run_with_timeout(100).unwrap(), 1);
        assert_eq!(used_idx(mem), 1);
        // The limiter's timer brings the second one through.
        while used_idx(mem) < 2 && start.elapsed() < Duration::from_secs(5) {
            em.run_with_timeout(100).unwrap();
        }
    }
    let waited = start.elapsed();
    assert_eq!(t.used(), vec![(first.head, 513), (second.head, 513)]);
    assert!(
        waited >= Duration::from_millis(900),
        "waited only {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
    assert_eq!(t.read_mem(a, 512), vec![1; 512]);
    assert_eq!(t.read_mem(b, 512), vec![2; 512]);
    assert_eq!(t.read_mem(second.status, 1), vec![VIRTIO_BLK_S_OK as u8]);
}

#[test]
fn bandwidth_limit_spaces_out_large_requests() {
    let bytes = BucketConfig {
        size: 4096,
        one_time_burst: 0,
        refill_time_ms: 200,
    };
    let limiter = RateLimiter::new(Some(bytes), None).unwrap();
    let mut t = T::build(64 * 512, false, Some(limiter), "narrow");
    let bufs: Vec<u64> = (0..3).map(|_| t.alloc(4096)).collect();
    for (i, &buf) in bufs.iter().enumerate() {
        t.request(VIRTIO_BLK_T_IN, 8 * i as u64, &[w(buf, 4096)]);
    }
    let mem = t.mem;
    let start = Instant::now();
    assert_eq!(t.run(), 1, "the first fills the bucket's budget");
    while used_idx(mem) < 3 && start.elapsed() < Duration::from_secs(5) {
        // Wait for the timer by hand, as the event loop would.
        std::thread::sleep(Duration::from_millis(20));
        t.blk.handle_rate_limiter_event();
    }
    let waited = start.elapsed();
    assert_eq!(t.used().len(), 3);
    assert!(
        waited >= Duration::from_millis(350),
        "waited only {waited:?}"
    );
    for (i, &buf) in bufs.iter().enumerate() {
        assert_eq!(t.read_mem(buf, 4096)[..512], vec![8 * i as u8; 512]);
    }
}
