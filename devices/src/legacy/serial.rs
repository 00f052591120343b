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

/// The boxed writer guest output goes to.
pub type SerialOutput = Box<dyn Write + Send>;

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

impl BusDevice for Serial {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            *byte = self.inner.read(offset);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            if let Err(e) = self.inner.write(offset, *byte) {
                // A console that cannot be written (closed stdout) must not stop the guest.
                log::debug!("serial: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

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
