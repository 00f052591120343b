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
use devices::legacy::i8042::{I8042_KBD_IRQ, I8042_PORT_BASE, I8042_PORT_LEN};
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
    /// `"<kind> <id>"`, e.g. "drive rootfs": its name in snapshots and metrics.
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
    /// `"<kind> <id>"` (must match a configured device).
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
    /// The i8042 (the API's `SendCtrlAltDel` presses keys on it).
    pub i8042: Arc<Mutex<I8042>>,
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
        let kbd_irq = EventFdTrigger::new().map_err(|e| DeviceError::EventFd("i8042".into(), e))?;
        vm.fd()
            .register_irqfd(&kbd_irq, I8042_KBD_IRQ)
            .map_err(|e| DeviceError::Kvm("i8042".into(), "irqfd", e))?;
        let i8042 = Arc::new(Mutex::new(I8042::with_keyboard(legacy.reset_evt, kbd_irq)));
        pio.insert(i8042.clone(), I8042_PORT_BASE, I8042_PORT_LEN)
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
            i8042,
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

#[cfg(test)]
mod tests {
    //! Saving and restoring the VM, a vCPU and the devices against the
    //! host's KVM (no guest runs).

    use std::io::Write;
    use std::sync::atomic::AtomicI32;
    use std::time::Instant;

    use kvm_ioctls::Kvm;
    use vm_memory::GuestAddress;

    use super::*;
    use crate::memory::create_guest_memory;
    use crate::snapshot::format::to_bytes;
    use crate::vstate::vcpu::{ExitCounters, Vcpu, VcpuBuses, VcpuEventSender};
    use crate::vstate::vcpu_state::StateCaps;

    /// Whether KVM is usable; in CI its absence fails the test.
    fn kvm_available() -> bool {
        if Kvm::new().is_ok() {
            return true;
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "/dev/kvm is not available in CI"
        );
        eprintln!("skipped: /dev/kvm not available");
        false
    }

    fn vm_with(mem: &GuestMemory) -> Vm {
        let vm = Vm::new().unwrap();
        vm.register_memory(mem, false).unwrap();
        vm.setup_irqchip().unwrap();
        vm
    }

    fn legacy() -> LegacyIo {
        LegacyIo {
            console_out: Box::new(std::io::sink()),
            console2_out: None,
            reset_evt: EventFdTrigger::new().unwrap(),
            exit_evt: EventFdTrigger::new().unwrap(),
            exit_status: Arc::new(AtomicI32::new(-1)),
        }
    }

    #[test]
    fn vm_and_vcpu_round_trip_through_persist() {
        if !kvm_available() {
            return;
        }
        let mem = create_guest_memory(16).unwrap();
        let vm = vm_with(&mem);
        let saved_vm = vm.save().unwrap();
        let buses = VcpuBuses {
            pio: Arc::new(Bus::new()),
            mmio: Arc::new(Bus::new()),
            exits: Arc::new(ExitCounters::default()),
        };
        let events = || {
            let (tx, _rx) = std::sync::mpsc::channel();
            VcpuEventSender::new(tx, vmm_sys_util::eventfd::EventFd::new(0).unwrap())
        };
        let caps = Arc::new(StateCaps::query(vm.kvm(), vm.fd()).unwrap());
        let vcpu = Vcpu::new(0, &vm, buses.clone(), events(), caps, Instant::now()).unwrap();
        vcpu.configure(
            vm.kvm(),
            &mem,
            Some(GuestAddress(0x100_0000)),
            1,
            arch::cpuid::CpuTemplate::None,
            &[],
        )
        .unwrap();
        let saved_vcpu = vcpu.save().unwrap();
        assert!(!saved_vcpu.cpuid.is_empty());

        let vm2 = Vm::restore(vm_with(&mem), &saved_vm).unwrap();
        let again = vm2.save().unwrap();
        assert_eq!(
            to_bytes(&again.ioapic).unwrap(),
            to_bytes(&saved_vm.ioapic).unwrap()
        );
        assert_eq!(
            to_bytes(&again.pic_master).unwrap(),
            to_bytes(&saved_vm.pic_master).unwrap()
        );
        assert!(
            again.clock.clock >= saved_vm.clock.clock,
            "the clock goes on"
        );

        let caps = Arc::new(StateCaps::query(vm2.kvm(), vm2.fd()).unwrap());
        let fresh = Vcpu::new(0, &vm2, buses, events(), caps, Instant::now()).unwrap();
        let restored = Vcpu::restore(fresh, &saved_vcpu).unwrap();
        let back = restored.save().unwrap();
        assert_eq!(back.regs.rip, saved_vcpu.regs.rip);
        assert_eq!(
            to_bytes(&back.sregs).unwrap(),
            to_bytes(&saved_vcpu.sregs).unwrap()
        );
        assert_eq!(back.cpuid.len(), saved_vcpu.cpuid.len());
        assert_eq!(back.fpu.0, saved_vcpu.fpu.0);

        // A state this host cannot take never reaches KVM.
        let mut bad = saved_vcpu.clone();
        bad.cpuid.clear();
        let caps = Arc::new(StateCaps::query(vm2.kvm(), vm2.fd()).unwrap());
        let fresh = Vcpu::new(1, &vm2, restored_buses(), events(), caps, Instant::now()).unwrap();
        let err = Vcpu::restore(fresh, &bad).err().unwrap().to_string();
        assert!(err.contains("CPUID table is empty"), "{err}");
    }

    fn restored_buses() -> VcpuBuses {
        VcpuBuses {
            pio: Arc::new(Bus::new()),
            mmio: Arc::new(Bus::new()),
            exits: Arc::new(ExitCounters::default()),
        }
    }

    #[test]
    fn device_manager_round_trips_its_devices_at_their_places() {
        if !kvm_available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut image = std::fs::File::create(dir.path().join("disk")).unwrap();
        image.write_all(&vec![0u8; 64 << 10]).unwrap();
        let config: VmConfig = serde_json::from_value(serde_json::json!({
            "boot-source": {"kernel_image_path": "/vmlinux"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 16},
            "drives": [
                {"drive_id": "data", "path_on_host": dir.path().join("disk"), "is_root_device": false},
                {"drive_id": "root", "path_on_host": dir.path().join("disk"), "is_root_device": true, "is_read_only": true},
            ],
        }))
        .unwrap();
        let mem = create_guest_memory(16).unwrap();
        let vm = vm_with(&mem);
        let dm = DeviceManager::create(DeviceManagerArgs {
            vm: &vm,
            mem: &mem,
            config: &config,
            legacy: legacy(),
        })
        .unwrap();
        assert_eq!(dm.boot_args, vec!["root=/dev/vda ro".to_string()]);
        let names: Vec<&str> = dm.virtio.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["drive root", "drive data"], "the root drive first");
        let saved = dm.save().unwrap();
        assert_eq!(saved.virtio.len(), 2);

        let vm2 = vm_with(&mem);
        let restored = DeviceManager::restore(
            DeviceManagerArgs {
                vm: &vm2,
                mem: &mem,
                config: &config,
                legacy: legacy(),
            },
            &saved,
        )
        .unwrap();
        assert_eq!(restored.save().unwrap(), saved, "same places, same states");
        assert_eq!(restored.cmdline_devices, dm.cmdline_devices);

        // A state for a device that is not configured, and a configured
        // device without state, are refused by name.
        let restore = |state: &DevicesState| {
            let vm = vm_with(&mem);
            DeviceManager::restore(
                DeviceManagerArgs {
                    vm: &vm,
                    mem: &mem,
                    config: &config,
                    legacy: legacy(),
                },
                state,
            )
            .err()
            .unwrap()
            .to_string()
        };
        let mut extra = saved.clone();
        let mut ghost = extra.virtio[0].clone();
        ghost.name = "drive ghost".into();
        ghost.base += 0x1000;
        extra.virtio.push(ghost);
        assert!(restore(&extra).contains("drive ghost"));
        let mut missing = saved.clone();
        missing.virtio.remove(1);
        assert!(restore(&missing).contains("drive data"));
        let mut wrong_kind = saved.clone();
        wrong_kind.virtio[0].kind = "net".into();
        assert!(restore(&wrong_kind).contains("saved as a \"net\" device"));
    }

    #[test]
    fn run_time_updates_reach_their_device_by_kind_and_id() {
        use crate::devices::block::BlockKind;
        use crate::devices::net::NetKind;
        if !kvm_available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old"), dir.path().join("new"));
        std::fs::write(&old, vec![0u8; 8 << 10]).unwrap();
        std::fs::write(&new, vec![0u8; 16 << 10]).unwrap();
        let mut config: VmConfig = serde_json::from_value(serde_json::json!({
            "boot-source": {"kernel_image_path": "/vmlinux"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 16},
            "drives": [{"drive_id": "data", "path_on_host": old, "is_root_device": false}],
        }))
        .unwrap();
        let mem = create_guest_memory(16).unwrap();
        let vm = vm_with(&mem);
        let dm = DeviceManager::create(DeviceManagerArgs {
            vm: &vm,
            mem: &mem,
            config: &config.clone(),
            legacy: legacy(),
        })
        .unwrap();
        let patch: api::DrivePatch = serde_json::from_value(serde_json::json!({
            "drive_id": "data",
            "path_on_host": new,
            "rate_limiter": {"ops": {"size": 10, "refill_time": 100}},
        }))
        .unwrap();
        crate::devices::update::<BlockKind>(&dm.virtio, &mut config, &patch).unwrap();
        let entry = &dm.virtio[0];
        assert_eq!(
            lock(&entry.transport).registers().config_generation,
            1,
            "guest told"
        );
        let mut capacity = [0u8; 8];
        lock(&entry.device).read_config(0, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), 32, "16 KiB in sectors");
        assert_eq!(config.drives[0].path_on_host, new);
        assert!(config.drives[0].rate_limiter.is_some());

        let missing: api::DrivePatch =
            serde_json::from_value(serde_json::json!({"drive_id": "nope"})).unwrap();
        let err = crate::devices::update::<BlockKind>(&dm.virtio, &mut config, &missing);
        assert_eq!(err.unwrap_err(), "no drive \"nope\"");
        // The drive is not a network interface of the same id.
        let net: api::NetPatch =
            serde_json::from_value(serde_json::json!({"iface_id": "data"})).unwrap();
        let err = crate::devices::update::<NetKind>(&dm.virtio, &mut config, &net);
        assert_eq!(err.unwrap_err(), "no net \"data\"");
    }
}
