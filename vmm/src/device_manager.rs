//! Creates the guest's devices and puts them on the buses.
//!
//! For now the legacy devices a Linux guest without ACPI needs: the COM1
//! serial console (IRQ 4 through an irqfd) and the i8042, whose reset line is
//! an eventfd the VMM's event loop watches.

use std::sync::{Arc, Mutex};

use arch::layout::SERIAL_IRQ;
use devices::legacy::i8042::{I8042_PORT_BASE, I8042_PORT_LEN};
use devices::legacy::serial::{SerialOutput, COM1_PORT_BASE, SERIAL_PORT_LEN};
use devices::legacy::{Serial, I8042};
use devices::{Bus, BusError, EventFdTrigger};

use crate::vstate::vm::Vm;

/// Why a device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// An eventfd could not be created.
    #[error("creating an eventfd for {0}: {1}")]
    EventFd(&'static str, std::io::Error),
    /// KVM refused an irqfd.
    #[error("registering the irqfd for {0}: {1}")]
    Irqfd(&'static str, kvm_ioctls::Error),
    /// A device's range collides with another.
    #[error("placing {0} on the bus: {1}")]
    Bus(&'static str, BusError),
}

/// The devices of one VM and the buses they sit on.
pub struct DeviceManager {
    /// Port-I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
    /// The console UART (the event loop feeds it stdin).
    pub serial: Arc<Mutex<Serial>>,
    /// Signalled when the guest resets itself through the i8042.
    pub reset_evt: EventFdTrigger,
}

impl DeviceManager {
    /// Creates the legacy devices for `vm`, the console writing to `console_out`.
    pub fn new(vm: &Vm, console_out: SerialOutput) -> Result<Self, DeviceError> {
        let mut pio = Bus::new();

        let irq = EventFdTrigger::new().map_err(|e| DeviceError::EventFd("serial", e))?;
        vm.fd()
            .register_irqfd(&irq, SERIAL_IRQ)
            .map_err(|e| DeviceError::Irqfd("serial", e))?;
        let serial = Arc::new(Mutex::new(Serial::new(irq, console_out)));
        pio.insert(serial.clone(), COM1_PORT_BASE, SERIAL_PORT_LEN)
            .map_err(|e| DeviceError::Bus("serial", e))?;

        let reset_evt = EventFdTrigger::new().map_err(|e| DeviceError::EventFd("i8042", e))?;
        let reset_for_device = reset_evt
            .try_clone()
            .map_err(|e| DeviceError::EventFd("i8042", e))?;
        pio.insert(
            Arc::new(Mutex::new(I8042::new(reset_for_device))),
            I8042_PORT_BASE,
            I8042_PORT_LEN,
        )
        .map_err(|e| DeviceError::Bus("i8042", e))?;

        Ok(Self {
            pio,
            mmio: Bus::new(),
            serial,
            reset_evt,
        })
    }
}
