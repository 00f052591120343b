//! The event-loop side: queue notifications and the statistics timer,
//! handled on the VMM's epoll thread.

use std::io::ErrorKind;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::Balloon;

/// Event data of the statistics timer (queue events use their index).
const STATS_TIMER_EVENT: u32 = 0x100;

impl Balloon {
    /// The driver notified queue `index` (its ioeventfd fired).
    pub fn handle_queue_event(&mut self, index: usize) {
        let Some(evt) = self.queue_evts.get(index) else {
            return;
        };
        match evt.read() {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => log::error!("balloon: reading queue {index}'s eventfd: {e}"),
        }
        if self.active.is_none() {
            log::debug!("balloon: queue {index} notified before activation; ignored");
            return;
        }
        self.process_queue(index);
    }

    /// The statistics timer fired: gives the guest its buffer back so it
    /// sends fresh figures.
    pub fn handle_stats_timer(&mut self) {
        // The timerfd is non-blocking: a wake-up before expiry reads nothing.
        match self.stats_timer.wait() {
            Ok(_) => {}
            Err(e) if e.errno() == libc::EAGAIN => return,
            Err(e) => {
                log::error!("balloon: reading the statistics timer: {e}");
                return;
            }
        }
        self.return_stats_buffer();
    }
}

impl MutEventSubscriber for Balloon {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            let events = Events::with_data(evt, i as u32, EventSet::IN);
            if let Err(e) = ops.add(events) {
                log::error!("balloon: watching queue {i}'s eventfd: {e}");
            }
        }
        if self.layout().stats.is_some() {
            let timer = Events::with_data(&self.stats_timer, STATS_TIMER_EVENT, EventSet::IN);
            if let Err(e) = ops.add(timer) {
                log::error!("balloon: watching the statistics timer: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            STATS_TIMER_EVENT => self.handle_stats_timer(),
            i if (i as usize) < self.queue_evts.len() => self.handle_queue_event(i as usize),
            other => log::warn!("balloon: unexpected event {other}"),
        }
    }
}
