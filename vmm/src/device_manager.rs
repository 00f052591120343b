//! Creates the guest's devices and puts them on the buses.
//!
//! Legacy devices sit at their fixed ISA ports: the COM1 console (IRQ 4
//! through an irqfd) and the i8042, whose reset line is an eventfd the VMM's
//! event loop watches. virtio devices get a 4 KiB MMIO window and a GSI from
//! allocators, KVM ioeventfds on their queue-notify register and an irqfd for
//! their interrupt, and are announced on the kernel command line.

use std::sync::atomic::AtomicI32;
use std::sync::{Arc, Mutex};

use arch::layout::{
    IRQ_DEVICES_END, IRQ_DEVICES_START, MMIO_DEVICES_SIZE, MMIO_DEVICES_START, SERIAL2_IRQ,
    SERIAL_IRQ,
};
use devices::legacy::exit_status::EXIT_STATUS_PORT;
use devices::legacy::i8042::{I8042_PORT_BASE, I8042_PORT_LEN};
use devices::legacy::serial::{
    SerialOutput, SerialState, COM1_PORT_BASE, COM2_PORT_BASE, SERIAL_PORT_LEN,
};
use devices::legacy::{ExitStatusPort, Serial, I8042};
use devices::virtio::block::Block;
use devices::virtio::mmio::{
    MmioTransport, MmioTransportState, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET,
};
use devices::virtio::net::Net;
use devices::virtio::{IrqTrigger, VirtioDevice};
use devices::{Bus, BusError, EventFdTrigger};
use event_manager::MutEventSubscriber;
use kvm_ioctls::IoEventAddress;
use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator};

use crate::memory::GuestMemory;
use crate::vstate::vm::Vm;

/// Why a device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// An eventfd could not be created.
    #[error("creating an eventfd for {0}: {1}")]
    EventFd(String, std::io::Error),
    /// KVM refused an irqfd or ioeventfd.
    #[error("registering the {1} for {0}: {2}")]
    Kvm(String, &'static str, kvm_ioctls::Error),
    /// A device's range collides with another.
    #[error("placing {0} on the bus: {1}")]
    Bus(String, BusError),
    /// No MMIO window or IRQ left.
    #[error("no {1} left for {0}: {2}")]
    Exhausted(String, &'static str, vm_allocator::Error),
    /// The device model refused its transport.
    #[error("{0}: {1}")]
    Transport(String, virtio_queue::Error),
}

/// The legacy devices' connections to the host and the VMM.
pub struct LegacyIo {
    /// Where the COM1 console's output goes.
    pub console_out: SerialOutput,
    /// Where a second UART's (COM2, IRQ 3) output goes, if the VM has one.
    pub console2_out: Option<SerialOutput>,
    /// The i8042's reset line.
    pub reset_evt: EventFdTrigger,
    /// Signalled when the guest writes the exit-status port.
    pub exit_evt: EventFdTrigger,
    /// The status the guest wrote (-1 until it does).
    pub exit_status: Arc<AtomicI32>,
}

/// A virtio device as the VM has it wired.
#[derive(Clone)]
pub struct VirtioEntry {
    /// "drive ID" or "net ID".
    pub name: String,
    /// The device model.
    pub device: Arc<Mutex<dyn VirtioDevice>>,
    /// Its MMIO transport.
    pub transport: Arc<Mutex<MmioTransport>>,
    /// Where its window is.
    pub base: u64,
    /// Its interrupt line.
    pub gsi: u32,
}

/// A virtio device's place and transport state in a snapshot.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VirtioDeviceState {
    /// "drive ID" or "net ID" (the config section it comes from).
    pub name: String,
    /// Its MMIO window.
    pub base: u64,
    /// Its interrupt line.
    pub gsi: u32,
    /// Registers, queues, ring positions.
    pub transport: MmioTransportState,
}

/// All device state a snapshot holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DevicesState {
    /// The console UART.
    pub serial: SerialState,
    /// Every virtio device.
    pub virtio: Vec<VirtioDeviceState>,
}

/// A device that lives on the event loop.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// The devices of one VM and the buses they sit on.
pub struct DeviceManager {
    /// Port-I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
    /// The console UART (the event loop feeds it stdin).
    pub serial: Arc<Mutex<Serial>>,
    /// Devices whose work runs on the event loop, to be registered with it.
    pub subscribers: Vec<Subscriber>,
    /// `virtio_mmio.device=...` words for the kernel command line, in order.
    pub cmdline_devices: Vec<String>,
    /// The virtio devices, in attach order (for metrics, snapshots and
    /// run-time updates).
    pub virtio: Vec<VirtioEntry>,
    /// The block devices by drive id (run-time `PATCH /drives`).
    pub blocks: Vec<(String, Arc<Mutex<Block>>)>,
    /// The network devices by interface id (run-time `PATCH /network-interfaces`).
    pub nets: Vec<(String, Arc<Mutex<Net>>)>,
    mmio_space: AddressAllocator,
    irqs: IdAllocator,
}

impl DeviceManager {
    /// Creates the legacy devices for `vm` (the console UART in `serial_state`
    /// when restoring a snapshot).
    pub fn new(
        vm: &Vm,
        legacy: LegacyIo,
        serial_state: Option<&SerialState>,
    ) -> Result<Self, DeviceError> {
        let mut pio = Bus::new();
        let serial = Self::add_uart(
            vm,
            &mut pio,
            "serial",
            legacy.console_out,
            COM1_PORT_BASE,
            SERIAL_IRQ,
            serial_state,
        )?;
        if let Some(out) = legacy.console2_out {
            Self::add_uart(
                vm,
                &mut pio,
                "second serial",
                out,
                COM2_PORT_BASE,
                SERIAL2_IRQ,
                None,
            )?;
        }
        pio.insert(
            Arc::new(Mutex::new(I8042::new(legacy.reset_evt))),
            I8042_PORT_BASE,
            I8042_PORT_LEN,
        )
        .map_err(|e| DeviceError::Bus("i8042".into(), e))?;
        pio.insert(
            Arc::new(Mutex::new(ExitStatusPort::new(
                legacy.exit_status,
                legacy.exit_evt,
            ))),
            EXIT_STATUS_PORT,
            1,
        )
        .map_err(|e| DeviceError::Bus("exit-status port".into(), e))?;

        Ok(Self {
            pio,
            mmio: Bus::new(),
            serial,
            subscribers: Vec::new(),
            cmdline_devices: Vec::new(),
            virtio: Vec::new(),
            blocks: Vec::new(),
            nets: Vec::new(),
            mmio_space: AddressAllocator::new(MMIO_DEVICES_START, MMIO_DEVICES_SIZE)
                .map_err(|e| DeviceError::Exhausted("virtio".into(), "MMIO space", e))?,
            irqs: IdAllocator::new(IRQ_DEVICES_START, IRQ_DEVICES_END)
                .map_err(|e| DeviceError::Exhausted("virtio".into(), "IRQ", e))?,
        })
    }

    fn add_uart(
        vm: &Vm,
        pio: &mut Bus,
        name: &str,
        out: SerialOutput,
        base: u64,
        irq_line: u32,
        state: Option<&SerialState>,
    ) -> Result<Arc<Mutex<Serial>>, DeviceError> {
        let irq = EventFdTrigger::new().map_err(|e| DeviceError::EventFd(name.into(), e))?;
        vm.fd()
            .register_irqfd(&irq, irq_line)
            .map_err(|e| DeviceError::Kvm(name.into(), "irqfd", e))?;
        let uart = match state {
            Some(state) => Serial::from_state(state, irq, out)
                .map_err(|e| DeviceError::EventFd(name.into(), e))?,
            None => Serial::new(irq, out),
        };
        let uart = Arc::new(Mutex::new(uart));
        pio.insert(uart.clone(), base, SERIAL_PORT_LEN)
            .map_err(|e| DeviceError::Bus(name.into(), e))?;
        Ok(uart)
    }

    /// Puts a virtio device on the MMIO bus: allocates its window and GSI
    /// (or takes the ones it had, when restoring), wires its queue
    /// notifications (ioeventfds) and interrupt (irqfd), and queues it for
    /// the event loop.
    pub fn attach_virtio<D>(
        &mut self,
        vm: &Vm,
        mem: &GuestMemory,
        name: &str,
        device: D,
        placement: Option<(u64, u32)>,
    ) -> Result<Arc<Mutex<D>>, DeviceError>
    where
        D: VirtioDevice + MutEventSubscriber + 'static,
    {
        let (base, gsi) = match placement {
            Some((base, gsi)) => {
                self.mmio_space
                    .allocate(
                        MMIO_WINDOW_SIZE,
                        MMIO_WINDOW_SIZE,
                        AllocPolicy::ExactMatch(base),
                    )
                    .map_err(|e| DeviceError::Exhausted(name.into(), "MMIO window", e))?;
                if !(IRQ_DEVICES_START..=IRQ_DEVICES_END).contains(&gsi) {
                    return Err(DeviceError::Exhausted(
                        name.into(),
                        "IRQ",
                        vm_allocator::Error::InvalidRange(gsi.into(), gsi.into()),
                    ));
                }
                (base, gsi)
            }
            None => {
                let range = self
                    .mmio_space
                    .allocate(MMIO_WINDOW_SIZE, MMIO_WINDOW_SIZE, AllocPolicy::FirstMatch)
                    .map_err(|e| DeviceError::Exhausted(name.into(), "MMIO window", e))?;
                let gsi = self
                    .irqs
                    .allocate_id()
                    .map_err(|e| DeviceError::Exhausted(name.into(), "IRQ", e))?;
                (range.start(), gsi)
            }
        };
        let interrupt =
            Arc::new(IrqTrigger::new().map_err(|e| DeviceError::EventFd(name.into(), e))?);
        vm.fd()
            .register_irqfd(interrupt.eventfd(), gsi)
            .map_err(|e| DeviceError::Kvm(name.into(), "irqfd", e))?;
        for (queue, evt) in device.queue_events().iter().enumerate() {
            let notify = IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET);
            vm.fd()
                .register_ioevent(evt, &notify, queue as u32)
                .map_err(|e| DeviceError::Kvm(name.into(), "ioeventfd", e))?;
        }
        let device = Arc::new(Mutex::new(device));
        let transport = MmioTransport::new(device.clone(), mem.clone(), interrupt)
            .map_err(|e| DeviceError::Transport(name.into(), e))?;
        let transport = Arc::new(Mutex::new(transport));
        self.mmio
            .insert(transport.clone(), base, MMIO_WINDOW_SIZE)
            .map_err(|e| DeviceError::Bus(name.into(), e))?;
        self.virtio.push(VirtioEntry {
            name: name.to_string(),
            device: device.clone(),
            transport,
            base,
            gsi,
        });
        self.subscribers.push(device.clone());
        self.cmdline_devices
            .push(format!("virtio_mmio.device=4K@{base:#x}:{gsi}"));
        log::debug!("{name}: virtio-mmio at {base:#x}, GSI {gsi}");
        Ok(device)
    }
}
