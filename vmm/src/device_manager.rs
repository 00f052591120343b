//! Creates the guest's devices and puts them on the buses.
//!
//! Legacy devices sit at their fixed ISA ports: the COM1 console (IRQ 4
//! through an irqfd) and the i8042, whose reset line is an eventfd the VMM's
//! event loop watches. virtio devices get a 4 KiB MMIO window and a GSI from
//! allocators, KVM ioeventfds on their queue-notify register and an irqfd for
//! their interrupt, and are announced on the kernel command line.
//!
//! The manager keeps **one** list of virtio devices, whatever their kind
//! ([`VirtioEntry`]); which kinds exist and how each is built is in
//! [`crate::devices`]. It saves and restores itself, the console UART and
//! every virtio device through [`Persist`].

use std::any::Any;
use std::collections::HashSet;
use std::sync::atomic::AtomicI32;
use std::sync::{Arc, Mutex};

use api::VmConfig;
use devices::persist::{Persist, SerialConstructorArgs};

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
use devices::virtio::mmio::{
    MmioTransport, MmioTransportArgs, MmioTransportState, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET,
};
use devices::virtio::{IrqTrigger, VirtioDevice};
use devices::{Bus, BusError, EventFdTrigger};
use event_manager::MutEventSubscriber;
use kvm_ioctls::IoEventAddress;
use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator};

use crate::devices::SaveFn;
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
    /// A configured device could not be built (bad image, missing tap...).
    #[error("{section}[{id}]: {message}")]
    Setup {
        /// The config section ("drives").
        section: &'static str,
        /// The entry's id.
        id: String,
        /// What went wrong.
        message: String,
    },
    /// A device's saved state was refused or could not be produced.
    #[error("device {0:?}: {1}")]
    State(String, String),
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
    /// "<kind> <id>", e.g. "drive rootfs": its name in snapshots and metrics.
    pub name: String,
    /// Its kind ([`crate::devices::DeviceKind::KIND`]).
    pub kind: &'static str,
    /// Its id in its config section.
    pub id: String,
    /// The device model.
    pub device: Arc<Mutex<dyn VirtioDevice>>,
    /// The same device, typed (a `Mutex<K::Device>`), for run-time updates
    /// and saving; see [`crate::devices`].
    pub handle: Arc<dyn Any + Send + Sync>,
    /// Saves the device behind `handle`.
    pub save: SaveFn,
    /// Its MMIO transport.
    pub transport: Arc<Mutex<MmioTransport>>,
    /// Where its window is.
    pub base: u64,
    /// Its interrupt line.
    pub gsi: u32,
}

/// A virtio device in a snapshot: its place, its transport and its own state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VirtioDeviceState {
    /// "<kind> <id>" (must match a configured device).
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Its MMIO window.
    pub base: u64,
    /// Its interrupt line.
    pub gsi: u32,
    /// The transport's registers.
    pub transport: MmioTransportState,
    /// The version of the device's state layout.
    pub version: u16,
    /// The device's own state, encoded (the device kind decodes it).
    pub state: Vec<u8>,
}

/// All device state a snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DevicesState {
    /// The console UART.
    pub serial: SerialState,
    /// Every virtio device, in attach order.
    pub virtio: Vec<VirtioDeviceState>,
}

/// What building (or restoring) the devices needs.
pub struct DeviceManagerArgs<'a> {
    /// The VM whose irqfds and ioeventfds the devices use.
    pub vm: &'a Vm,
    /// Guest memory.
    pub mem: &'a GuestMemory,
    /// The configuration naming the devices.
    pub config: &'a VmConfig,
    /// The legacy devices' host connections.
    pub legacy: LegacyIo,
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
    /// Extra kernel command-line words the devices need (`root=`).
    pub boot_args: Vec<String>,
    /// The virtio devices, in attach order (for metrics, snapshots and
    /// run-time updates).
    pub virtio: Vec<VirtioEntry>,
    mmio_space: AddressAllocator,
    irqs: IdAllocator,
}

impl DeviceManager {
    /// Creates every device of a new VM: the legacy devices and each
    /// virtio device in `args.config`.
    pub fn create(args: DeviceManagerArgs) -> Result<Self, DeviceError> {
        let DeviceManagerArgs {
            vm,
            mem,
            config,
            legacy,
        } = args;
        let mut dm = Self::new(vm, legacy, None)?;
        dm.boot_args = crate::devices::attach_all(&mut dm, vm, mem, config, None)?;
        Ok(dm)
    }

    /// Creates the legacy devices for `vm` (the console UART in `serial_state`
    /// when restoring a snapshot).
    fn new(
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
            boot_args: Vec::new(),
            virtio: Vec::new(),
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
            Some(state) => {
                let args = SerialConstructorArgs {
                    interrupt: irq,
                    out,
                };
                Serial::restore(args, state).map_err(|e| DeviceError::EventFd(name.into(), e))?
            }
            None => Serial::new(irq, out),
        };
        let uart = Arc::new(Mutex::new(uart));
        pio.insert(uart.clone(), base, SERIAL_PORT_LEN)
            .map_err(|e| DeviceError::Bus(name.into(), e))?;
        Ok(uart)
    }

    /// Puts a virtio device on the MMIO bus: allocates its window and GSI
    /// (or takes the ones it had, when `saved`), wires its queue
    /// notifications (ioeventfds) and interrupt (irqfd), restores its
    /// transport, and queues it for the event loop. Called by
    /// [`crate::devices::attach`].
    #[allow(clippy::too_many_arguments)]
    pub fn attach_virtio<D>(
        &mut self,
        vm: &Vm,
        mem: &GuestMemory,
        name: &str,
        kind: &'static str,
        id: &str,
        device: D,
        saved: Option<&VirtioDeviceState>,
        save: SaveFn,
    ) -> Result<Arc<Mutex<D>>, DeviceError>
    where
        D: VirtioDevice + MutEventSubscriber + 'static,
    {
        let (base, gsi) = match saved {
            Some(&VirtioDeviceState { base, gsi, .. }) => {
                self.mmio_space
                    .allocate(
                        MMIO_WINDOW_SIZE,
                        MMIO_WINDOW_SIZE,
                        AllocPolicy::ExactMatch(base),
                    )
                    .map_err(|e| DeviceError::Exhausted(name.into(), "MMIO window", e))?;
                if !(IRQ_DEVICES_START..=IRQ_DEVICES_END).contains(&gsi)
                    || self.virtio.iter().any(|e| e.gsi == gsi)
                {
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
        let transport = match saved {
            None => MmioTransport::new(device.clone(), mem.clone(), interrupt)
                .map_err(|e| DeviceError::Transport(name.into(), e))?,
            Some(saved) => {
                let args = MmioTransportArgs {
                    device: device.clone(),
                    mem: mem.clone(),
                    interrupt,
                };
                MmioTransport::restore(args, &saved.transport)
                    .map_err(|e| DeviceError::State(name.into(), e.to_string()))?
            }
        };
        let transport = Arc::new(Mutex::new(transport));
        self.mmio
            .insert(transport.clone(), base, MMIO_WINDOW_SIZE)
            .map_err(|e| DeviceError::Bus(name.into(), e))?;
        self.virtio.push(VirtioEntry {
            name: name.to_string(),
            kind,
            id: id.to_string(),
            device: device.clone(),
            handle: device.clone(),
            save,
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

impl<'a> Persist<'a> for DeviceManager {
    type State = DevicesState;
    type ConstructorArgs = DeviceManagerArgs<'a>;
    type Error = DeviceError;

    /// The UART and every virtio device (the vCPUs must be paused).
    fn save(&self) -> Result<DevicesState, DeviceError> {
        let serial = lock(&self.serial)
            .save()
            .map_err(|e| DeviceError::State("serial".into(), e.to_string()))?;
        let mut virtio = Vec::with_capacity(self.virtio.len());
        for e in &self.virtio {
            let (version, state) = (e.save)(e.handle.as_ref())
                .map_err(|why| DeviceError::State(e.name.clone(), why))?;
            let transport = lock(&e.transport)
                .save()
                .map_err(|why| DeviceError::State(e.name.clone(), why.to_string()))?;
            virtio.push(VirtioDeviceState {
                name: e.name.clone(),
                kind: e.kind.to_string(),
                base: e.base,
                gsi: e.gsi,
                transport,
                version,
                state,
            });
        }
        Ok(DevicesState { serial, virtio })
    }

    /// Every configured device, each put back in its saved state at its
    /// saved place. A saved device that is not configured, or a configured
    /// one without saved state, is refused.
    fn restore(args: DeviceManagerArgs<'a>, state: &DevicesState) -> Result<Self, DeviceError> {
        let mut seen = HashSet::new();
        if let Some(dup) = state.virtio.iter().find(|d| !seen.insert(&d.name)) {
            return Err(DeviceError::State(
                dup.name.clone(),
                "the snapshot has two states for it".into(),
            ));
        }
        let DeviceManagerArgs {
            vm,
            mem,
            config,
            legacy,
        } = args;
        let mut dm = Self::new(vm, legacy, Some(&state.serial))?;
        dm.boot_args = crate::devices::attach_all(&mut dm, vm, mem, config, Some(&state.virtio))?;
        if let Some(extra) = state
            .virtio
            .iter()
            .find(|d| !dm.virtio.iter().any(|e| e.name == d.name))
        {
            return Err(DeviceError::State(
                extra.name.clone(),
                "the snapshot has state for a device that is not configured".into(),
            ));
        }
        Ok(dm)
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
