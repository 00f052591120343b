//! Features, queue layout, config space and the run-time API.

use super::*;
use crate::virtio::balloon::config::{
    QueueLayout, VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_FREE_PAGE_HINT,
    VIRTIO_BALLOON_F_REPORTING, VIRTIO_BALLOON_F_STATS_VQ,
};
use crate::virtio::balloon::{BalloonError, BalloonState, TYPE_BALLOON};
use crate::virtio::VIRTIO_F_VERSION_1;

const fn bit(b: u32) -> u64 {
    1 << b
}

#[test]
fn options_select_features_and_queues() {
    let plain = Balloon::new(BalloonConfig::default()).unwrap();
    assert_eq!(plain.device_type(), TYPE_BALLOON);
    assert_eq!(plain.avail_features(), VIRTIO_F_VERSION_1);
    assert_eq!(plain.queue_max_sizes().len(), 2);
    assert_eq!(plain.queue_events().len(), 2);
    let all = Balloon::new(all_options()).unwrap();
    assert_eq!(
        all.avail_features(),
        VIRTIO_F_VERSION_1
            | bit(VIRTIO_BALLOON_F_DEFLATE_ON_OOM)
            | bit(VIRTIO_BALLOON_F_STATS_VQ)
            | bit(VIRTIO_BALLOON_F_FREE_PAGE_HINT)
            | bit(VIRTIO_BALLOON_F_REPORTING)
    );
    assert_eq!(all.queue_max_sizes().len(), 5);
}

#[test]
fn queue_indices_skip_absent_features_like_linux() {
    let l = QueueLayout::new(0);
    assert_eq!(
        (l.stats, l.hint, l.reporting, l.count),
        (None, None, None, 2)
    );
    let l = QueueLayout::new(bit(VIRTIO_BALLOON_F_REPORTING));
    assert_eq!(
        (l.stats, l.hint, l.reporting, l.count),
        (None, None, Some(2), 3)
    );
    let l =
        QueueLayout::new(bit(VIRTIO_BALLOON_F_FREE_PAGE_HINT) | bit(VIRTIO_BALLOON_F_REPORTING));
    assert_eq!((l.hint, l.reporting, l.count), (Some(2), Some(3), 4));
    let l = QueueLayout::new(bit(VIRTIO_BALLOON_F_STATS_VQ) | bit(VIRTIO_BALLOON_F_REPORTING));
    assert_eq!((l.stats, l.hint, l.reporting), (Some(2), None, Some(3)));
    assert_eq!(l.kind(0), Some(QueueKind::Inflate));
    assert_eq!(l.kind(1), Some(QueueKind::Deflate));
    assert_eq!(l.kind(3), Some(QueueKind::Reporting));
    assert_eq!(l.kind(4), None);
}

#[test]
fn driver_accepting_fewer_features_gets_the_compacted_layout() {
    let b = Balloon::new(all_options()).unwrap();
    let mut g = Guest::new(LOW, 5);
    let irq = Arc::new(IrqTrigger::new().unwrap());
    // The driver takes only reporting: queue 2 is the reporting queue.
    let mut b = b;
    b.activate(Activation {
        mem: g.mem.clone(),
        queues: g.all_queues(),
        interrupt: irq,
        acked_features: VIRTIO_F_VERSION_1 | bit(VIRTIO_BALLOON_F_REPORTING),
    })
    .unwrap();
    let head = g.chain(2, &[guest::w(LOW - 0x10_0000, 0x10_0000)]);
    assert_eq!(b.process_queue(2), 1);
    assert_eq!(g.used(2), vec![(head, 0)]);
    assert_eq!(b.balloon_counters().reported_bytes, 0x10_0000);
    // Too few queues for the features is refused.
    let mut b = Balloon::new(all_options()).unwrap();
    let err = b.activate(Activation {
        mem: g.mem.clone(),
        queues: vec![g.queue(0), g.queue(1)],
        interrupt: Arc::new(IrqTrigger::new().unwrap()),
        acked_features: b.avail_features(),
    });
    assert!(err.is_err());
}

#[test]
fn target_change_sets_num_pages_and_raises_a_config_interrupt() {
    let mut idle = Balloon::new(BalloonConfig {
        amount_mib: 16,
        ..Default::default()
    })
    .unwrap();
    let mut cfg = [0u8; 4];
    idle.read_config(0, &mut cfg);
    assert_eq!(u32::from_le_bytes(cfg), 16 * 256);
    // Before activation: no interrupt line yet, the driver reads it at probe.
    idle.set_target_mib(32).unwrap();
    assert_eq!(idle.config().amount_mib, 32);

    let mut t = T::new(all_options(), 0);
    t.take_irq(IrqKind::Config);
    t.b.set_target_mib(4).unwrap();
    assert!(t.take_irq(IrqKind::Config));
    assert_eq!(t.config_u32(0), 1024);
    assert_eq!(t.b.config().amount_mib, 4);
    // Guest RAM is 8 MiB: 9 MiB is refused and changes nothing.
    assert!(matches!(
        t.b.set_target_mib(9),
        Err(BalloonError::TargetTooLarge(9))
    ));
    assert!(matches!(
        t.b.set_target_mib(u32::MAX),
        Err(BalloonError::TargetTooLarge(_))
    ));
    assert_eq!(t.config_u32(0), 1024);
    assert!(!t.take_irq(IrqKind::Config));
}

#[test]
fn guest_writes_actual_and_nothing_else() {
    let mut t = T::new(all_options(), 0);
    t.b.set_target_mib(2).unwrap();
    t.b.write_config(4, &(512u32 + 256).to_le_bytes());
    assert_eq!(t.b.actual_mib(), 3);
    assert_eq!(t.config_u32(4), 768);
    // num_pages, the hint command and poison_val are the host's.
    t.b.write_config(0, &[0xff; 16]);
    assert_eq!(t.config_u32(0), 512);
    assert_eq!(t.config_u32(8), 0);
    assert_eq!(t.config_u32(12), 0);
    assert_eq!(t.config_u32(4), u32::MAX, "actual took its bytes");
    // Out of range or huge offsets are ignored without panicking.
    t.b.write_config(u64::MAX, &[1, 2]);
    t.b.write_config(14, &[1, 2, 3, 4]);
    let mut b = [0xffu8; 8];
    t.b.read_config(12, &mut b);
    assert_eq!(b, [0; 8]);
    let stats = t.b.latest_stats().unwrap();
    assert_eq!((stats.target_pages, stats.target_mib), (512, 2));
}

#[test]
fn stats_interval_cannot_switch_stats_on_or_off() {
    let mut plain = Balloon::new(BalloonConfig::default()).unwrap();
    assert!(matches!(
        plain.update_stats_interval(5),
        Err(BalloonError::StatsDisabled)
    ));
    assert!(matches!(
        plain.latest_stats(),
        Err(BalloonError::StatsDisabled)
    ));
    assert!(matches!(
        plain.start_hinting(),
        Err(BalloonError::HintingDisabled)
    ));
    let mut t = T::new(all_options(), 0);
    assert!(matches!(
        t.b.update_stats_interval(0),
        Err(BalloonError::StatsStateChange)
    ));
    // The guest's buffer is held; a new interval asks for figures now.
    let buf = t.g.alloc(10);
    let q = t.q(QueueKind::Stats);
    let head = t.g.chain(q, &[r(buf, 10)]);
    t.b.process_queue(q);
    assert!(t.g.used(q).is_empty());
    t.b.update_stats_interval(30).unwrap();
    assert_eq!(t.b.config().stats_polling_interval_s, 30);
    assert_eq!(t.g.used(q), vec![(head, 0)]);
}

#[test]
fn state_round_trips_through_serde() {
    let mut t = T::new(all_options(), 0);
    t.b.set_target_mib(3).unwrap();
    t.b.write_config(4, &100u32.to_le_bytes());
    t.b.start_hinting().unwrap();
    let state = t.b.state();
    let json = serde_json::to_string(&state).unwrap();
    let back: BalloonState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
    let restored = Balloon::from_state(back).unwrap();
    assert_eq!(restored.avail_features(), t.b.avail_features());
    assert_eq!(restored.queue_events().len(), 5);
    let mut cfg = [0u8; 16];
    restored.read_config(0, &mut cfg);
    let mut now = [0u8; 16];
    t.b.read_config(0, &mut now);
    assert_eq!(cfg, now);
    // The Firecracker-shaped options parse from the API's JSON.
    let opts: BalloonConfig =
        serde_json::from_str(r#"{"amount_mib": 64, "deflate_on_oom": true}"#).unwrap();
    assert_eq!(opts.stats_polling_interval_s, 0);
    assert!(!opts.free_page_hinting);
}

#[test]
fn reset_forgets_the_queues() {
    let mut t = T::new(all_options(), 0);
    t.b.reset();
    assert!(!t.b.is_activated());
    assert_eq!(t.b.process_queue(0), 0);
    assert!(matches!(
        t.b.start_hinting(),
        Err(BalloonError::NotActivated)
    ));
    let features = t.b.avail_features();
    t.activate(features);
    assert!(t.b.is_activated());
}

/// The sequence Linux's driver goes through: the statistics buffer is
/// posted before DRIVER_OK, then the host sets a target, the guest inflates
/// and reports `actual`.
#[test]
fn driver_sequence_from_probe_to_inflated() {
    let mut b = Balloon::new(all_options()).unwrap();
    let n = b.layout().count;
    let mut g = Guest::new(LOW + (4 << 20), n);
    let stats_q = b.layout().stats.unwrap();
    let buf = g.alloc(10);
    let mut entry = 5u16.to_le_bytes().to_vec();
    entry.extend_from_slice(&(12u64 << 20).to_le_bytes());
    g.fill(buf, &entry);
    let stats_head = g.chain(stats_q, &[r(buf, 10)]);
    let irq = Arc::new(IrqTrigger::new().unwrap());
    b.activate(Activation {
        mem: g.mem.clone(),
        queues: g.all_queues(),
        interrupt: irq.clone(),
        acked_features: b.avail_features(),
    })
    .unwrap();
    // Activation kicked every queue: the early buffer is picked up.
    for i in 0..n {
        assert_eq!(b.queue_events()[i].read().unwrap(), 1);
        b.queue_events()[i].write(1).unwrap();
        b.handle_queue_event(i);
    }
    assert_eq!(b.latest_stats().unwrap().total_memory, Some(12 << 20));
    assert!(g.used(stats_q).is_empty(), "held");
    // The host asks for 1 MiB; the guest inflates 256 pages and says so.
    b.set_target_mib(1).unwrap();
    assert!(irq.status() & IrqKind::Config as u32 != 0);
    let mut cfg = [0u8; 4];
    b.read_config(0, &mut cfg);
    let want = u32::from_le_bytes(cfg);
    assert_eq!(want, 256);
    let first = (LOW / PAGE_SIZE) as u32;
    let pfns: Vec<u8> = (first..first + want)
        .flat_map(|p| p.to_le_bytes())
        .collect();
    let pbuf = g.alloc(pfns.len() as u64);
    g.fill(pbuf, &pfns);
    let head = g.chain(0, &[r(pbuf, pfns.len() as u32)]);
    b.queue_events()[0].write(1).unwrap();
    b.handle_queue_event(0);
    assert_eq!(g.used(0), vec![(head, 0)]);
    b.write_config(4, &want.to_le_bytes());
    assert_eq!(b.actual_mib(), 1);
    let s = b.latest_stats().unwrap();
    assert_eq!((s.target_mib, s.actual_mib, s.actual_pages), (1, 1, 256));
    assert_eq!(b.balloon_counters().returned_bytes(), 1 << 20);
    // The stats timer tick returns the held buffer.
    assert!(b.return_stats_buffer());
    assert_eq!(g.used(stats_q), vec![(stats_head, 0)]);
}

#[test]
fn persist_keeps_target_actual_and_hinting() {
    use crate::persist::Persist;
    let mut t = T::new(all_options(), 0);
    t.b.set_target_mib(3).unwrap();
    t.b.write_config(4, &100u32.to_le_bytes());
    t.b.start_hinting().unwrap();
    let state = t.b.save().unwrap();
    assert_eq!(state.queues.len(), 5);
    let json = serde_json::to_string(&state).unwrap();
    let back: crate::virtio::balloon::BalloonSnapshotState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
    let mut config = all_options();
    let restored = Balloon::restore(config.clone(), &back).unwrap();
    assert_eq!(restored.config().amount_mib, 3);
    assert_eq!(restored.state().actual_pages, 100);
    assert_eq!(
        restored.hinting_status().unwrap(),
        t.b.hinting_status().unwrap()
    );
    // Other options offer other features: refused.
    config.free_page_reporting = false;
    assert!(Balloon::restore(config, &back).is_err());
}

#[test]
fn reset_to_new_forgets_what_a_reset_keeps() {
    let mut t = T::new(all_options(), 0);
    t.b.set_target_mib(2).unwrap();
    t.b.write_config(4, &256u32.to_le_bytes());
    t.b.reset();
    assert_ne!(
        t.b.state(),
        Balloon::new(t.b.state().config).unwrap().state()
    );
    t.b.reset_to_new().unwrap();
    assert!(!t.b.is_activated());
    assert_eq!(
        t.b.state(),
        Balloon::new(t.b.state().config).unwrap().state()
    );
    assert_eq!(t.config_u32(4), 0);
    let features = t.b.avail_features();
    t.activate(features);
    assert!(t.b.is_activated());
}
