//! Free page hinting: command ids, hints acted on only during a run.

use super::guest::w;
use super::*;
use crate::virtio::balloon::config::{VIRTIO_BALLOON_CMD_ID_DONE, VIRTIO_BALLOON_CMD_ID_STOP};
use crate::virtio::balloon::{BalloonError, HintingStatus};

const MIB: u64 = 1 << 20;
/// `free_page_hint_cmd_id` in config space.
const CMD_ID: u64 = 8;

impl T {
    /// The guest sends a command id (a 4-byte device-readable buffer).
    fn send_cmd_id(&mut self, id: u32) {
        let buf = self.g.alloc(4);
        self.g.fill(buf, &id.to_le_bytes());
        let q = self.q(QueueKind::FreePageHint);
        let head = self.g.chain(q, &[r(buf, 4)]);
        self.b.process_queue(q);
        assert_eq!(self.g.used(q), vec![(head, 0)]);
    }

    /// The guest hints a free block (a device-writable buffer over it).
    fn send_hint(&mut self, addr: u64, len: u32) {
        let q = self.q(QueueKind::FreePageHint);
        let head = self.g.chain(q, &[w(addr, len)]);
        self.b.process_queue(q);
        assert_eq!(self.g.used(q), vec![(head, 0)]);
    }
}

#[test]
fn hinting_run_drops_hinted_pages_and_acknowledges_stop() {
    let mut t = T::new(all_options(), 8 * MIB);
    let mem = t.g.mem;
    touch(mem, LOW, 8 * MIB);
    assert_eq!(t.config_u32(CMD_ID), 0);
    t.take_irq(IrqKind::Config);

    let id = t.b.start_hinting().unwrap();
    assert_eq!(id, 2, "ids 0 and 1 are STOP and DONE");
    assert_eq!(t.config_u32(CMD_ID), 2);
    assert!(t.take_irq(IrqKind::Config));
    let status = t.b.hinting_status().unwrap();
    assert_eq!(
        status,
        HintingStatus {
            host_cmd: 2,
            guest_cmd: None
        }
    );

    // The guest answers with the run's id, hints two 4 MiB blocks, stops.
    t.send_cmd_id(2);
    assert_eq!(t.b.hinting_status().unwrap().guest_cmd, Some(2));
    t.send_hint(LOW, 4 << 20);
    t.send_hint(LOW + 4 * MIB, 4 << 20);
    assert_eq!(resident(mem, LOW, 8 * MIB), 0);
    assert_eq!(t.counter("hinted_bytes"), 8 * MIB);
    assert!(!t.take_irq(IrqKind::Config));
    t.send_cmd_id(VIRTIO_BALLOON_CMD_ID_STOP);
    // Acknowledged by itself: DONE, so the guest takes its pages back.
    assert_eq!(t.config_u32(CMD_ID), VIRTIO_BALLOON_CMD_ID_DONE);
    assert!(t.take_irq(IrqKind::Config));
    assert_eq!(
        t.b.hinting_status().unwrap(),
        HintingStatus {
            host_cmd: VIRTIO_BALLOON_CMD_ID_DONE,
            guest_cmd: Some(VIRTIO_BALLOON_CMD_ID_STOP)
        }
    );

    // The next run gets a new id.
    assert_eq!(t.b.start_hinting().unwrap(), 3);
    assert_eq!(t.config_u32(CMD_ID), 3);
}

#[test]
fn hints_outside_a_run_are_not_acted_on() {
    let mut t = T::new(all_options(), 4 * MIB);
    let mem = t.g.mem;
    touch(mem, LOW, 4 * MIB);
    // No run started: a hint is ignored (the guest owns those pages).
    t.send_hint(LOW, MIB as u32);
    // A run started, but the guest has not announced it yet.
    t.b.start_hinting().unwrap();
    t.send_hint(LOW, MIB as u32);
    // The guest announces an old id: still not this run.
    t.send_cmd_id(7);
    t.send_hint(LOW, MIB as u32);
    assert_eq!(resident(mem, LOW, 4 * MIB), 1024);
    // After the host stopped the run, late hints are ignored too.
    t.send_cmd_id(2);
    t.b.stop_hinting().unwrap();
    t.send_hint(LOW, MIB as u32);
    assert_eq!(resident(mem, LOW, 4 * MIB), 1024);
    assert_eq!(t.counter("hinted_bytes"), 0);
    assert_eq!(t.counter("errors"), 0);
}

#[test]
fn without_acknowledge_on_stop_the_host_says_done() {
    let mut t = T::new(all_options(), MIB);
    let id = t.b.start_hinting_with(false).unwrap();
    t.send_cmd_id(id);
    t.send_cmd_id(VIRTIO_BALLOON_CMD_ID_STOP);
    assert_eq!(
        t.config_u32(CMD_ID),
        id,
        "still the run until the host stops it"
    );
    t.take_irq(IrqKind::Config);
    t.b.stop_hinting().unwrap();
    assert_eq!(t.config_u32(CMD_ID), VIRTIO_BALLOON_CMD_ID_DONE);
    assert!(t.take_irq(IrqKind::Config));
}

#[test]
fn hostile_hint_chains_are_refused_without_panic() {
    let mut t = T::new(all_options(), MIB);
    let id = t.b.start_hinting().unwrap();
    t.send_cmd_id(id);
    let q = t.q(QueueKind::FreePageHint);
    // A command id of the wrong size, one outside memory, a hint outside
    // memory, a hint that wraps around the address space.
    let buf = t.g.alloc(8);
    let hostile = [
        r(buf, 8),
        r(u64::MAX - 1, 4),
        w(LOW + 2 * MIB, 4096),
        w(u64::MAX - 4095, 8192),
    ];
    for d in hostile {
        let head = t.g.chain(q, &[d]);
        t.b.process_queue(q);
        assert_eq!(t.g.used(q), vec![(head, 0)]);
    }
    assert_eq!(t.counter("errors"), 4);
    assert_eq!(t.b.hinting_status().unwrap().guest_cmd, Some(id));
    assert!(!t.b.needs_reset());
    // Hinting on a device without the feature is refused.
    let mut plain = T::new(BalloonConfig::default(), 0);
    assert!(matches!(
        plain.b.start_hinting(),
        Err(BalloonError::HintingDisabled)
    ));
    assert!(matches!(
        plain.b.hinting_status(),
        Err(BalloonError::HintingDisabled)
    ));
    plain.take_irq(IrqKind::Config);
}
