//! The legacy port-I/O devices on the real bus: the 16550A UART (COM1), the
//! i8042 and the exit-status port, as a hostile guest kernel pokes them,
//! interleaved with console input from the host.
#![no_main]

use std::sync::atomic::AtomicI32;
use std::sync::{Arc, Mutex};

use devices::legacy::exit_status::EXIT_STATUS_PORT;
use devices::legacy::i8042::{I8042_PORT_BASE, I8042_PORT_LEN};
use devices::legacy::serial::{COM1_PORT_BASE, SERIAL_PORT_LEN};
use devices::legacy::{ExitStatusPort, Serial, I8042};
use devices::{Bus, EventFdTrigger};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (Ok(irq), Ok(reset), Ok(exit)) = (
        EventFdTrigger::new(),
        EventFdTrigger::new(),
        EventFdTrigger::new(),
    ) else {
        return;
    };
    let serial = Arc::new(Mutex::new(Serial::new(irq, Box::new(std::io::sink()))));
    let mut bus = Bus::new();
    let ok = bus.insert(serial.clone(), COM1_PORT_BASE, SERIAL_PORT_LEN).is_ok()
        && bus
            .insert(Arc::new(Mutex::new(I8042::new(reset))), I8042_PORT_BASE, I8042_PORT_LEN)
            .is_ok()
        && bus
            .insert(
                Arc::new(Mutex::new(ExitStatusPort::new(Arc::new(AtomicI32::new(-1)), exit))),
                EXIT_STATUS_PORT,
                1,
            )
            .is_ok();
    if !ok {
        return;
    }
    // Each operation: kind/size byte, port selector byte, value byte.
    for op in data.chunks_exact(3) {
        let size = 1usize << (op[0] >> 6).min(2);
        let port = match op[1] % 4 {
            0 | 1 => COM1_PORT_BASE + u64::from(op[1] / 4 % 10),
            2 => I8042_PORT_BASE + u64::from(op[1] / 4 % 6),
            _ => EXIT_STATUS_PORT + u64::from(op[1] / 4 % 2),
        };
        match op[0] % 3 {
            0 => {
                let mut buf = [0u8; 4];
                bus.read(port, &mut buf[..size]);
            }
            1 => {
                bus.write(port, &[op[2]; 4][..size]);
            }
            _ => {
                let _ = serial.lock().map(|mut s| s.enqueue_input(&[op[2]; 3]));
            }
        }
    }
});
