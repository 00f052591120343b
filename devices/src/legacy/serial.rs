//! The 16550A UART on COM1: the guest's console.
//!
//! Guest output goes to a host writer (flint's stdout), host input (flint's
//! stdin) is queued into the receive FIFO, and the UART's interrupt is an
//! eventfd that KVM injects as IRQ 4 (an irqfd).

use std::io::{self, Write};

use vm_superio::serial::NoEvents;

use crate::bus::BusDevice;
use crate::trigger::EventFdTrigger;

/// COM1's first port.
pub const COM1_PORT_BASE: u64 = 0x3f8;
/// COM2's first port (IRQ 3).
pub const COM2_PORT_BASE: u64 = 0x2f8;
/// A UART has 8 registers.
pub const SERIAL_PORT_LEN: u64 = 8;

/// The 16550A receive FIFO's size.
pub const SERIAL_FIFO_SIZE: usize = 64;

/// The boxed writer guest output goes to. It is called on a vCPU thread
/// with the UART locked, so it must never block on the host: flint passes
/// `vmm::console`'s bounded writer (to stdout or a file), which drops and
/// counts what a stalled host reader cannot take.
pub type SerialOutput = Box<dyn Write + Send>;

/// A UART's registers and pending input, as a snapshot saves them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialState {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// SCR.
    pub scratch: u8,
    /// Received bytes the guest has not read yet.
    pub in_buffer: Vec<u8>,
}

/// A 16550A UART on the port-I/O bus.
pub struct Serial {
    inner: vm_superio::Serial<EventFdTrigger, NoEvents, SerialOutput>,
}

impl Serial {
    /// A UART writing guest output to `out` and raising `interrupt` for IRQs.
    pub fn new(interrupt: EventFdTrigger, out: SerialOutput) -> Self {
        Self {
            inner: vm_superio::Serial::new(interrupt, out),
        }
    }

    /// A UART in a saved state (for restoring a snapshot). Input beyond the
    /// 64-byte FIFO (only a hostile state file has it) is dropped.
    pub fn from_state(
        state: &SerialState,
        interrupt: EventFdTrigger,
        out: SerialOutput,
    ) -> io::Result<Self> {
        let mut in_buffer = state.in_buffer.clone();
        in_buffer.truncate(SERIAL_FIFO_SIZE);
        let s = vm_superio::serial::SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer,
        };
        let inner = vm_superio::Serial::from_state(&s, interrupt, NoEvents, out)
            .map_err(|e| io::Error::other(format!("restoring the UART: {e}")))?;
        Ok(Self { inner })
    }

    /// The UART's state for a snapshot.
    pub fn state(&self) -> SerialState {
        let s = self.inner.state();
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// How many bytes of host input the receive FIFO can take now.
    pub fn input_capacity(&self) -> usize {
        self.inner.fifo_capacity()
    }

    /// Queues host input for the guest; returns how many bytes were taken
    /// (the rest must be offered again once the guest drained the FIFO).
    pub fn enqueue_input(&mut self, input: &[u8]) -> io::Result<usize> {
        let take = input.len().min(self.inner.fifo_capacity());
        if take == 0 {
            return Ok(0);
        }
        self.inner
            .enqueue_raw_bytes(&input[..take])
            .map_err(|e| io::Error::other(e.to_string()))
    }
}

/// The UARTs' access counters (Firecracker's `uart` group: reads and
/// writes of the data register, ignored accesses, failed writes).
pub static UART_COUNTERS: super::LegacyCounters = super::LegacyCounters::new();

impl BusDevice for Serial {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let c = &UART_COUNTERS;
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            *byte = self.inner.read(offset);
            if offset == 0 {
                super::LegacyCounters::inc(&c.read_count);
            }
        } else {
            super::LegacyCounters::inc(&c.missed_read_count);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let c = &UART_COUNTERS;
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            if offset == 0 {
                super::LegacyCounters::inc(&c.write_count);
            }
            if let Err(e) = self.inner.write(offset, *byte) {
                super::LegacyCounters::inc(&c.error_count);
                // A console that cannot be written (closed stdout) must not stop the guest.
                crate::guest_debug!("serial: {e}");
            }
        } else {
            super::LegacyCounters::inc(&c.missed_write_count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn state_round_trips_and_oversize_input_is_trimmed() {
        let mut uart = Serial::new(EventFdTrigger::new().unwrap(), Box::new(io::sink()));
        uart.write(COM1_PORT_BASE, 3, &[0x03]); // LCR: 8N1
        uart.enqueue_input(b"abc").unwrap();
        let state = uart.state();
        assert_eq!(state.line_control, 3);
        assert_eq!(state.in_buffer, b"abc");
        let restored =
            Serial::from_state(&state, EventFdTrigger::new().unwrap(), Box::new(io::sink()))
                .unwrap();
        assert_eq!(restored.state(), state);
        let hostile = SerialState {
            in_buffer: vec![b'x'; 10_000],
            ..state
        };
        let restored = Serial::from_state(
            &hostile,
            EventFdTrigger::new().unwrap(),
            Box::new(io::sink()),
        )
        .unwrap();
        assert_eq!(restored.state().in_buffer.len(), SERIAL_FIFO_SIZE);
    }

    /// A writer tests can look into.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;

    #[test]
    fn guest_output_reaches_the_writer() {
        let sink = Sink::default();
        let mut uart = Serial::new(EventFdTrigger::new().unwrap(), Box::new(sink.clone()));
        for b in b"hi\n" {
            uart.write(COM1_PORT_BASE, THR, &[*b]);
        }
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"hi\n");
    }

    #[test]
    fn host_input_is_readable_and_interrupts() {
        let irq = EventFdTrigger::new().unwrap();
        let mut uart = Serial::new(irq.try_clone().unwrap(), Box::new(io::sink()));
        // Enable the "received data available" interrupt.
        uart.write(COM1_PORT_BASE, IER, &[0x01]);
        assert_eq!(uart.enqueue_input(b"ls\r").unwrap(), 3);
        assert!(irq.read().unwrap() >= 1);
        let mut lsr = [0u8];
        uart.read(COM1_PORT_BASE, LSR, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut got = Vec::new();
        for _ in 0..3 {
            let mut b = [0u8];
            uart.read(COM1_PORT_BASE, THR, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, b"ls\r");
    }

    #[test]
    fn input_beyond_the_fifo_is_left_for_later() {
        let mut uart = Serial::new(EventFdTrigger::new().unwrap(), Box::new(io::sink()));
        let cap = uart.input_capacity();
        let big = vec![b'x'; cap + 10];
        assert_eq!(uart.enqueue_input(&big).unwrap(), cap);
        assert_eq!(uart.enqueue_input(b"y").unwrap(), 0);
    }

    #[test]
    fn wide_or_out_of_range_accesses_are_ignored() {
        let sink = Sink::default();
        let mut uart = Serial::new(EventFdTrigger::new().unwrap(), Box::new(sink.clone()));
        uart.write(COM1_PORT_BASE, THR, b"ab");
        uart.write(COM1_PORT_BASE, 1 << 40, b"a");
        let mut wide = [0u8; 2];
        uart.read(COM1_PORT_BASE, LSR, &mut wide);
        assert!(sink.0.lock().unwrap().is_empty());
    }
}
