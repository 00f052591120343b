//! A one-byte port through which a guest reports its exit status.
//!
//! flint's own guest init (for `flint container run`) writes the container
//! command's exit status here just before it stops, so flint can exit with
//! the command's status rather than just "the guest stopped". Any other guest
//! never touches it. It sits at port 0xf4, the port QEMU's `isa-debug-exit`
//! uses by default (flint reports the byte as written, unshifted).

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use vm_superio::Trigger;

use crate::bus::BusDevice;
use crate::trigger::EventFdTrigger;

/// The port.
pub const EXIT_STATUS_PORT: u64 = 0xf4;

/// The exit-status port on the PIO bus.
pub struct ExitStatusPort {
    status: Arc<AtomicI32>,
    evt: EventFdTrigger,
}

impl ExitStatusPort {
    /// A port that stores the written byte in `status` and signals `evt`.
    /// `status` holds -1 until the guest writes.
    pub fn new(status: Arc<AtomicI32>, evt: EventFdTrigger) -> Self {
        Self { status, evt }
    }
}

impl BusDevice for ExitStatusPort {
    fn read(&mut self, _base: u64, _offset: u64, _data: &mut [u8]) {}

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let (0, [code]) = (offset, data) {
            self.status.store(i32::from(*code), Ordering::SeqCst);
            if let Err(e) = self.evt.trigger() {
                crate::guest_error!("exit-status port: signalling the VMM: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_write_records_the_status_and_signals() {
        let status = Arc::new(AtomicI32::new(-1));
        let evt = EventFdTrigger::new().unwrap();
        let mut port = ExitStatusPort::new(status.clone(), evt.try_clone().unwrap());
        port.write(EXIT_STATUS_PORT, 0, &[1, 2]);
        port.write(EXIT_STATUS_PORT, 1, &[3]);
        assert!(evt.read().is_err(), "wide or offset writes are ignored");
        assert_eq!(status.load(Ordering::SeqCst), -1);
        port.write(EXIT_STATUS_PORT, 0, &[42]);
        assert_eq!(evt.read().unwrap(), 1);
        assert_eq!(status.load(Ordering::SeqCst), 42);
    }
}
