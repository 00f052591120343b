//! Just enough of the i8042 keyboard controller to reboot the guest.
//!
//! A guest booted with `reboot=k` resets the machine by writing 0xFE (pulse the
//! reset line) to the command port 0x64, after polling the status register
//! there until it reads 0. The reset is delivered to the VMM as an eventfd so
//! its event loop, not the vCPU thread, decides what a guest reset means.

use vm_superio::I8042Device;

use crate::bus::BusDevice;
use crate::trigger::EventFdTrigger;

/// First port of the i8042 (data port 0x60; command/status port is 0x64).
pub const I8042_PORT_BASE: u64 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_PORT_LEN: u64 = 5;

/// The i8042 on the port-I/O bus.
pub struct I8042 {
    inner: I8042Device<EventFdTrigger>,
}

impl I8042 {
    /// An i8042 that signals `reset_evt` when the guest asks for a CPU reset.
    pub fn new(reset_evt: EventFdTrigger) -> Self {
        Self {
            inner: I8042Device::new(reset_evt),
        }
    }
}

/// The i8042's access counters (Firecracker's `i8042` metrics group).
pub static I8042_COUNTERS: super::LegacyCounters = super::LegacyCounters::new();

impl BusDevice for I8042 {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let c = &I8042_COUNTERS;
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            *byte = self.inner.read(offset);
            super::LegacyCounters::inc(&c.read_count);
        } else {
            super::LegacyCounters::inc(&c.missed_read_count);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let c = &I8042_COUNTERS;
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            super::LegacyCounters::inc(&c.write_count);
            if offset == 4 && *byte == 0xfe {
                super::LegacyCounters::inc(&c.reset_count);
            }
            if let Err(e) = self.inner.write(offset, *byte) {
                super::LegacyCounters::inc(&c.error_count);
                crate::guest_error!("i8042: signalling the reset event failed: {e}");
            }
        } else {
            super::LegacyCounters::inc(&c.missed_write_count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reads_zero_and_0xfe_resets() {
        let evt = EventFdTrigger::new().unwrap();
        let mut dev = I8042::new(evt.try_clone().unwrap());
        let mut status = [0xffu8];
        dev.read(I8042_PORT_BASE, 4, &mut status);
        assert_eq!(status, [0]);
        dev.write(I8042_PORT_BASE, 4, &[0xd1]);
        assert!(evt.read().is_err(), "other commands do not reset");
        dev.write(I8042_PORT_BASE, 0, &[0xfe]);
        assert!(evt.read().is_err(), "0xfe on the data port is not a reset");
        dev.write(I8042_PORT_BASE, 4, &[0xfe, 0xfe]);
        assert!(evt.read().is_err(), "wide accesses are ignored");
        dev.write(I8042_PORT_BASE, 4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
