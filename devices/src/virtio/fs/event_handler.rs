//! The event-loop side: the daemon's call eventfds and its socket hanging
//! up, handled on the VMM's epoll thread. The kick eventfds are not here:
//! the daemon reads them.

use std::os::unix::io::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::Fs;

/// Event data of the socket (calls use their queue index).
const SOCKET_EVENT: u32 = u32::MAX;

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, call) in self.calls.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(call, i as u32, EventSet::IN)) {
                log::error!("virtio-fs {}: watching call eventfd {i}: {e}", self.tag);
            }
        }
        if let Some(backend) = &self.backend {
            // Only the hang-up: replies are read by the requests that wait
            // for them.
            let fd = backend.as_raw_fd();
            let set = EventSet::READ_HANG_UP | EventSet::HANG_UP;
            if let Err(e) = ops.add(Events::with_data_raw(fd, SOCKET_EVENT, set)) {
                log::error!("virtio-fs {}: watching the backend socket: {e}", self.tag);
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            SOCKET_EVENT => {
                // Off the event loop first, so a closed socket cannot wake
                // it again and again.
                let _ = ops.remove(events);
                self.handle_disconnect();
            }
            i => self.handle_call(i as usize),
        }
    }
}
