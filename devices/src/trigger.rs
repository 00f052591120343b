//! Interrupt and event lines backed by eventfds.
//!
//! Devices signal "interrupt" or "reset" by writing an eventfd. For interrupts
//! the eventfd is registered with KVM as an irqfd, so the guest gets its IRQ
//! without the VMM being in the loop; for events the VMM's epoll loop watches it.

use std::io;
use std::ops::Deref;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// An [`EventFd`] usable as a vm-superio [`Trigger`].
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// A new non-blocking trigger.
    pub fn new() -> io::Result<Self> {
        Ok(Self(EventFd::new(EFD_NONBLOCK)?))
    }

    /// The underlying eventfd (e.g. for an epoll loop to watch).
    pub fn into_eventfd(self) -> EventFd {
        self.0
    }

    /// Another handle on the same eventfd (e.g. one for KVM, one for the device).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self(self.0.try_clone()?))
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

impl Deref for EventFdTrigger {
    type Target = EventFd;

    fn deref(&self) -> &EventFd {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_is_seen_through_a_clone() {
        let t = EventFdTrigger::new().unwrap();
        let c = t.try_clone().unwrap();
        t.trigger().unwrap();
        t.trigger().unwrap();
        assert_eq!(c.read().unwrap(), 2);
        assert!(
            c.read().is_err(),
            "non-blocking read of an empty eventfd fails"
        );
    }
}
