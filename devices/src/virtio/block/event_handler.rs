//! The event-loop side: queue notifications and rate-limiter timer expiry,
//! handled on the VMM's epoll thread.

use std::io::ErrorKind;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::Block;

/// Event data: the driver notified the queue.
const QUEUE_EVENT: u32 = 0;
/// Event data: the rate limiter's timer expired.
const RATE_LIMITER_EVENT: u32 = 1;

impl Block {
    /// The driver notified the queue (its ioeventfd fired): runs the
    /// requests, unless the device is not started, stopped, or throttled
    /// (then the limiter's timer resumes it).
    pub fn handle_queue_event(&mut self) {
        match self.queue_evts[0].read() {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => log::error!("drive {}: reading the queue eventfd: {e}", self.drive_id()),
        }
        if self.active.is_none() {
            crate::guest_debug!(
                "drive {}: queue notified before activation; ignored",
                self.drive_id()
            );
            return;
        }
        if self.rate_limiter.as_ref().is_some_and(|l| l.is_blocked()) {
            return;
        }
        self.process_queue();
    }

    /// The rate limiter's timer expired: resumes the requests it held back.
    pub fn handle_rate_limiter_event(&mut self) {
        let Some(limiter) = self.rate_limiter.as_mut() else {
            return;
        };
        if let Err(e) = limiter.event_handler() {
            log::error!("drive {}: rate limiter timer: {e}", self.state.drive_id);
            return;
        }
        if !limiter.is_blocked() && self.active.is_some() {
            self.process_queue();
        }
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        let queue = Events::with_data(&self.queue_evts[0], QUEUE_EVENT, EventSet::IN);
        if let Err(e) = ops.add(queue) {
            log::error!("drive {}: watching the queue eventfd: {e}", self.drive_id());
        }
        if let Some(limiter) = &self.rate_limiter {
            let timer = Events::with_data(limiter, RATE_LIMITER_EVENT, EventSet::IN);
            if let Err(e) = ops.add(timer) {
                log::error!(
                    "drive {}: watching the rate limiter timer: {e}",
                    self.drive_id()
                );
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            QUEUE_EVENT => self.handle_queue_event(),
            RATE_LIMITER_EVENT => self.handle_rate_limiter_event(),
            other => log::warn!("drive {}: unexpected event {other}", self.drive_id()),
        }
    }
}
