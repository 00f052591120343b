//! Just enough of the i8042 keyboard controller to reboot the guest, and to
//! press Ctrl+Alt+Del on its keyboard (Firecracker's `SendCtrlAltDel`).
//!
//! A guest booted with `reboot=k` resets the machine by writing 0xFE (pulse the
//! reset line) to the command port 0x64, after polling the status register
//! there until its input-buffer-full bit is clear. The reset is delivered to
//! the VMM as an eventfd so its event loop, not the vCPU thread, decides what
//! a guest reset means.
//!
//! For the keyboard, the controller keeps a small output buffer the guest
//! reads at port 0x60 (status bit 0 says it holds data), raises IRQ 1 when
//! data arrives and its control byte enables the keyboard interrupt, and
//! answers the few controller and keyboard commands Linux's i8042/atkbd
//! drivers send while probing. Ctrl+Alt+Del is the key presses in scan-code
//! set 2, untranslated: a guest whose keyboard driver reads them runs its
//! Ctrl+Alt+Del action (Linux: `ctrl_alt_del()`, by default a reboot that
//! flint sees as the reset above). A guest without such a driver ignores them.

use std::collections::VecDeque;

use vm_superio::Trigger;

use crate::bus::BusDevice;
use crate::trigger::EventFdTrigger;

/// First port of the i8042 (data port 0x60; command/status port is 0x64).
pub const I8042_PORT_BASE: u64 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_PORT_LEN: u64 = 5;
/// The keyboard's ISA interrupt line.
pub const I8042_KBD_IRQ: u32 = 1;

const DATA: u8 = 0;
const COMMAND: u8 = 4;

/// Status: the output buffer holds a byte for the guest.
const STATUS_OUTPUT_FULL: u8 = 0x01;
/// Status: the last write to port 0x64 was a command awaiting a data byte.
const STATUS_COMMAND: u8 = 0x08;
/// Status: the keyboard is not inhibited.
const STATUS_KBD_UNLOCKED: u8 = 0x10;

/// Control byte: raise IRQ 1 when keyboard data arrives.
const CONTROL_KBD_INT: u8 = 0x01;
/// Control byte: the power-on self test passed.
const CONTROL_POST_OK: u8 = 0x04;
/// Control byte: the keyboard clock is off (keyboard disabled).
const CONTROL_KBD_DISABLED: u8 = 0x10;

/// Keyboard acknowledgement.
const KBD_ACK: u8 = 0xfa;

/// Ctrl, Alt and Del pressed, in scan-code set 2 (Del is an extended key).
const CTRL_ALT_DEL: [u8; 4] = [0x14, 0x11, 0xe0, 0x71];

/// Bytes the output buffer holds at most (a guest that never reads cannot
/// make flint hold more).
const BUFFER_LEN: usize = 16;

/// Why a key sequence could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum I8042Error {
    /// The guest has not read what was sent before.
    #[error("the i8042 output buffer is full (the guest is not reading its keyboard)")]
    BufferFull,
    /// The VM was built without a keyboard interrupt.
    #[error("this i8042 has no keyboard interrupt")]
    NoKeyboard,
    /// Raising IRQ 1 failed.
    #[error("raising the keyboard interrupt: {0}")]
    Interrupt(std::io::Error),
}

/// The i8042 on the port-I/O bus.
pub struct I8042 {
    reset_evt: EventFdTrigger,
    kbd_irq: Option<EventFdTrigger>,
    status: u8,
    control: u8,
    output_port: u8,
    /// A command written to 0x64 that waits for its data byte at 0x60.
    pending: Option<u8>,
    buffer: VecDeque<u8>,
}

impl I8042 {
    /// An i8042 that signals `reset_evt` when the guest asks for a CPU reset
    /// (and has no keyboard interrupt).
    pub fn new(reset_evt: EventFdTrigger) -> Self {
        Self {
            reset_evt,
            kbd_irq: None,
            status: STATUS_KBD_UNLOCKED,
            control: CONTROL_POST_OK | CONTROL_KBD_INT,
            output_port: 0,
            pending: None,
            buffer: VecDeque::with_capacity(BUFFER_LEN),
        }
    }

    /// As [`I8042::new`], raising `kbd_irq` (an irqfd on IRQ 1) when
    /// keyboard data is waiting.
    pub fn with_keyboard(reset_evt: EventFdTrigger, kbd_irq: EventFdTrigger) -> Self {
        Self {
            kbd_irq: Some(kbd_irq),
            ..Self::new(reset_evt)
        }
    }

    /// Presses Ctrl+Alt+Del on the guest's keyboard.
    pub fn send_ctrl_alt_del(&mut self) -> Result<(), I8042Error> {
        if self.kbd_irq.is_none() {
            return Err(I8042Error::NoKeyboard);
        }
        if self.buffer.len() + CTRL_ALT_DEL.len() > BUFFER_LEN {
            return Err(I8042Error::BufferFull);
        }
        for byte in CTRL_ALT_DEL {
            self.buffer.push_back(byte);
        }
        self.status |= STATUS_OUTPUT_FULL;
        self.interrupt()
    }

    fn interrupt(&self) -> Result<(), I8042Error> {
        match &self.kbd_irq {
            Some(irq) if self.control & CONTROL_KBD_INT != 0 => {
                irq.trigger().map_err(I8042Error::Interrupt)
            }
            _ => Ok(()),
        }
    }

    /// Queues an answer for the guest (dropped when the buffer is full).
    fn answer(&mut self, bytes: &[u8]) {
        for byte in bytes {
            if self.buffer.len() < BUFFER_LEN {
                self.buffer.push_back(*byte);
            }
        }
        if !self.buffer.is_empty() {
            self.status |= STATUS_OUTPUT_FULL;
            if let Err(e) = self.interrupt() {
                crate::guest_error!("i8042: {e}");
            }
        }
    }

    fn read_data(&mut self) -> u8 {
        let byte = self.buffer.pop_front().unwrap_or(0);
        if self.buffer.is_empty() {
            self.status &= !STATUS_OUTPUT_FULL;
        } else if let Err(e) = self.interrupt() {
            crate::guest_error!("i8042: {e}");
        }
        byte
    }

    fn write_command(&mut self, command: u8) {
        match command {
            // Read the control byte / the output port.
            0x20 => self.answer(&[self.control]),
            0xd0 => self.answer(&[self.output_port]),
            // Commands whose data byte follows at port 0x60.
            0x60 | 0xd1 | 0xd2 | 0xd3 | 0xd4 => {
                self.pending = Some(command);
                self.status |= STATUS_COMMAND;
            }
            // Controller self test passed; keyboard interface test passed.
            0xaa => self.answer(&[0x55]),
            0xab => self.answer(&[0x00]),
            // No auxiliary (mouse) port: its test reports a clock fault.
            0xa9 => self.answer(&[0x01]),
            0xad => self.control |= CONTROL_KBD_DISABLED,
            0xae => self.control &= !CONTROL_KBD_DISABLED,
            0xfe => {
                super::LegacyCounters::inc(&I8042_COUNTERS.reset_count);
                if let Err(e) = self.reset_evt.trigger() {
                    super::LegacyCounters::inc(&I8042_COUNTERS.error_count);
                    crate::guest_error!("i8042: signalling the reset event failed: {e}");
                }
            }
            // Everything else (aux enable/disable, pulses other than reset).
            _ => {}
        }
    }

    fn write_data(&mut self, byte: u8) {
        self.status &= !STATUS_COMMAND;
        match self.pending.take() {
            Some(0x60) => self.control = byte,
            Some(0xd1) => self.output_port = byte,
            // Write to the keyboard output buffer: echoed as keyboard data.
            Some(0xd2) => self.answer(&[byte]),
            // Bytes for the absent mouse.
            Some(_) => {}
            // A command for the keyboard itself.
            None => match byte {
                // Reset: acknowledged, then the self test passed.
                0xff => self.answer(&[KBD_ACK, 0xaa]),
                // Identify: an MF2 keyboard.
                0xf2 => self.answer(&[KBD_ACK, 0xab, 0x83]),
                0xee => self.answer(&[0xee]),
                _ => self.answer(&[KBD_ACK]),
            },
        }
    }
}

/// The i8042's access counters (Firecracker's `i8042` metrics group).
pub static I8042_COUNTERS: super::LegacyCounters = super::LegacyCounters::new();

impl BusDevice for I8042 {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let c = &I8042_COUNTERS;
        match (u8::try_from(offset), data) {
            (Ok(DATA), [byte]) => *byte = self.read_data(),
            (Ok(COMMAND), [byte]) => *byte = self.status,
            (_, data) => {
                data.fill(0);
                super::LegacyCounters::inc(&c.missed_read_count);
                return;
            }
        }
        super::LegacyCounters::inc(&c.read_count);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let c = &I8042_COUNTERS;
        match (u8::try_from(offset), data) {
            (Ok(DATA), [byte]) => self.write_data(*byte),
            (Ok(COMMAND), [byte]) => self.write_command(*byte),
            _ => {
                super::LegacyCounters::inc(&c.missed_write_count);
                return;
            }
        }
        super::LegacyCounters::inc(&c.write_count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut byte = [0xffu8];
        dev.read(I8042_PORT_BASE, offset, &mut byte);
        byte[0]
    }

    #[test]
    fn status_has_no_input_pending_and_0xfe_resets() {
        let evt = EventFdTrigger::new().unwrap();
        let mut dev = I8042::new(evt.try_clone().unwrap());
        // `reboot=k` waits for bit 1 (input buffer full) to clear.
        assert_eq!(read(&mut dev, 4) & 0x02, 0);
        dev.write(I8042_PORT_BASE, 4, &[0xd1]);
        assert!(evt.read().is_err(), "other commands do not reset");
        dev.write(I8042_PORT_BASE, 0, &[0xfe]);
        assert!(evt.read().is_err(), "0xfe on the data port is not a reset");
        dev.write(I8042_PORT_BASE, 4, &[0xfe, 0xfe]);
        assert!(evt.read().is_err(), "wide accesses are ignored");
        dev.write(I8042_PORT_BASE, 4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn ctrl_alt_del_reaches_the_guest_with_an_interrupt() {
        let reset = EventFdTrigger::new().unwrap();
        let irq = EventFdTrigger::new().unwrap();
        let mut dev = I8042::with_keyboard(reset.try_clone().unwrap(), irq.try_clone().unwrap());
        assert_eq!(read(&mut dev, 4) & STATUS_OUTPUT_FULL, 0);
        dev.send_ctrl_alt_del().unwrap();
        assert!(irq.read().unwrap() >= 1, "IRQ 1 raised");
        let mut got = Vec::new();
        while read(&mut dev, 4) & STATUS_OUTPUT_FULL != 0 {
            got.push(read(&mut dev, 0));
        }
        assert_eq!(got, CTRL_ALT_DEL);
        assert!(reset.read().is_err(), "no reset by itself");

        // A guest that never reads: a bounded buffer, then an error.
        while dev.send_ctrl_alt_del().is_ok() {}
        assert!(matches!(
            dev.send_ctrl_alt_del(),
            Err(I8042Error::BufferFull)
        ));
        // Without a keyboard interrupt there is no keyboard.
        let mut plain = I8042::new(reset);
        assert!(matches!(
            plain.send_ctrl_alt_del(),
            Err(I8042Error::NoKeyboard)
        ));
    }

    #[test]
    fn linux_probe_commands_are_answered() {
        let irq = EventFdTrigger::new().unwrap();
        let mut dev = I8042::with_keyboard(EventFdTrigger::new().unwrap(), irq);
        // Read the control byte, write it back without the interrupt.
        dev.write(I8042_PORT_BASE, 4, &[0x20]);
        let control = read(&mut dev, 0);
        assert_eq!(control, CONTROL_POST_OK | CONTROL_KBD_INT);
        dev.write(I8042_PORT_BASE, 4, &[0x60]);
        assert_ne!(read(&mut dev, 4) & STATUS_COMMAND, 0);
        dev.write(I8042_PORT_BASE, 0, &[control & !CONTROL_KBD_INT]);
        dev.write(I8042_PORT_BASE, 4, &[0x20]);
        assert_eq!(read(&mut dev, 0), CONTROL_POST_OK);
        // Self test, keyboard reset and identify.
        dev.write(I8042_PORT_BASE, 4, &[0xaa]);
        assert_eq!(read(&mut dev, 0), 0x55);
        dev.write(I8042_PORT_BASE, 0, &[0xff]);
        assert_eq!((read(&mut dev, 0), read(&mut dev, 0)), (KBD_ACK, 0xaa));
        dev.write(I8042_PORT_BASE, 0, &[0xf2]);
        let id = [read(&mut dev, 0), read(&mut dev, 0), read(&mut dev, 0)];
        assert_eq!(id, [KBD_ACK, 0xab, 0x83]);
        assert_eq!(read(&mut dev, 4) & STATUS_OUTPUT_FULL, 0);
    }
}
