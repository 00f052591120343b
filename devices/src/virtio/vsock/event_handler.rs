//! The device on the VMM's event loop: the three queue notifications and
//! the host sockets' epoll set, each under its own token.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::{Vsock, EVQ_INDEX, RX_INDEX, TX_INDEX};

const RX_QUEUE: u32 = 0;
const TX_QUEUE: u32 = 1;
const EVENT_QUEUE: u32 = 2;
const HOST_SOCKETS: u32 = 3;

impl Vsock {
    /// Clears a queue's notification eventfd.
    fn drain_queue_event(&self, index: usize) {
        // WouldBlock only means it was already clear.
        let _ = self.queue_evts[index].read();
    }

    /// The driver posted RX buffers: deliver what is owed.
    pub fn handle_rx_queue(&mut self) {
        self.drain_queue_event(RX_INDEX);
        self.process_rx();
    }

    /// The driver queued packets: act on them, then answer.
    pub fn handle_tx_queue(&mut self) {
        self.drain_queue_event(TX_INDEX);
        self.process_tx();
        self.process_rx();
    }

    /// The driver posted event buffers.
    pub fn handle_event_queue(&mut self) {
        self.drain_queue_event(EVQ_INDEX);
        self.process_event_queue();
    }

    /// A host socket has news (accept, data, room, hang-up, timer).
    pub fn handle_host_events(&mut self) {
        self.muxer.process_host_events();
        self.process_rx();
    }
}

impl MutEventSubscriber for Vsock {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            RX_QUEUE => self.handle_rx_queue(),
            TX_QUEUE => self.handle_tx_queue(),
            EVENT_QUEUE => self.handle_event_queue(),
            HOST_SOCKETS => self.handle_host_events(),
            other => log::warn!("vsock: unexpected event token {other}"),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let events = [
            Events::with_data(&self.queue_evts[RX_INDEX], RX_QUEUE, EventSet::IN),
            Events::with_data(&self.queue_evts[TX_INDEX], TX_QUEUE, EventSet::IN),
            Events::with_data(&self.queue_evts[EVQ_INDEX], EVENT_QUEUE, EventSet::IN),
            Events::with_data_raw(self.muxer.epoll_fd(), HOST_SOCKETS, EventSet::IN),
        ];
        for event in events {
            if let Err(e) = ops.add(event) {
                log::error!(
                    "vsock: registering fd {} with the event loop: {e}",
                    event.fd()
                );
            }
        }
    }
}
