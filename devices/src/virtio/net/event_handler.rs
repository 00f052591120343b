//! The device on the VMM's event loop: queue notifications, the tap and the
//! rate limiters' timers, each registered under its own token.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::{Net, RX_INDEX, TX_INDEX};

const RX_QUEUE: u32 = 0;
const TX_QUEUE: u32 = 1;
const TAP: u32 = 2;
const RX_LIMITER: u32 = 3;
const TX_LIMITER: u32 = 4;
const MMDS_TIMER: u32 = 5;

impl Net {
    /// Clears a queue's notification eventfd.
    fn drain_queue_event(&self, index: usize) {
        if let Some(evt) = self.queue_evts.get(index) {
            // WouldBlock only means it was already clear.
            let _ = evt.read();
        }
    }
}

impl MutEventSubscriber for Net {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let set = events.event_set();
        if set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
            log::warn!(
                "net {}: fd for token {} reported {set:?}",
                self.iface_id,
                events.data()
            );
        }
        match events.data() {
            RX_QUEUE => {
                // The guest posted RX buffers: retry a pending frame.
                self.drain_queue_event(RX_INDEX);
                self.process_rx();
            }
            TX_QUEUE => {
                self.drain_queue_event(TX_INDEX);
                if self.active.is_some() {
                    self.process_tx();
                }
            }
            TAP => self.process_rx(),
            RX_LIMITER => {
                if let Some(rl) = &mut self.rx_limiter {
                    if let Err(e) = rl.event_handler() {
                        log::error!("net {}: RX rate limiter: {e}", self.iface_id);
                    }
                }
                self.process_rx();
            }
            TX_LIMITER => {
                if let Some(rl) = &mut self.tx_limiter {
                    if let Err(e) = rl.event_handler() {
                        log::error!("net {}: TX rate limiter: {e}", self.iface_id);
                    }
                }
                self.process_tx();
            }
            MMDS_TIMER => self.handle_mmds_timer(),
            other => log::warn!("net {}: unexpected event token {other}", self.iface_id),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let mut events = vec![
            Events::with_data(&self.queue_evts[RX_INDEX], RX_QUEUE, EventSet::IN),
            Events::with_data(&self.queue_evts[TX_INDEX], TX_QUEUE, EventSet::IN),
            Events::with_data_raw(
                self.backend.as_raw_fd(),
                TAP,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            ),
        ];
        events.push(Events::with_data(
            self.mmds_timer(),
            MMDS_TIMER,
            EventSet::IN,
        ));
        if let Some(rl) = &self.rx_limiter {
            events.push(Events::with_data(rl, RX_LIMITER, EventSet::IN));
        }
        if let Some(rl) = &self.tx_limiter {
            events.push(Events::with_data(rl, TX_LIMITER, EventSet::IN));
        }
        for event in events {
            if let Err(e) = ops.add(event) {
                log::error!(
                    "net {}: registering fd {} with the event loop: {e}",
                    self.iface_id,
                    event.fd()
                );
            }
        }
    }
}
