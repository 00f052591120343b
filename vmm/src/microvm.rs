//! Building a microVM from its configuration, and the running microVM.
//!
//! The order matters and is KVM's: VM, memory, irqchip, devices (irqfds need
//! the irqchip), kernel, vCPUs (their LAPICs need the irqchip), then the
//! threads. The VM's devices join the VMM's event loop; the vCPUs run on
//! their own threads and are paused, resumed and stopped through commands.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use api::VmConfig;
use devices::legacy::serial::SerialOutput;
use devices::virtio::VirtioDevice;
use devices::EventFdTrigger;
use event_manager::{EventManager, SubscriberOps};

use crate::boot::{self, BootError};
use crate::console::ConsoleInput;
use crate::device_manager::{DeviceError, DeviceManager, LegacyIo, Subscriber};
use crate::memory::{self, GuestMemory, MemoryError};
use crate::quirks;
use crate::virtio_devices::{self, VirtioConfigError};
use crate::vstate::vcpu::{
    ExitCounters, Vcpu, VcpuBuses, VcpuError, VcpuEventSender, VcpuHandle, VcpuTimeout,
};
use crate::vstate::vm::{Vm, VmError};

/// Why a microVM could not be built or ended badly.
#[derive(Debug, thiserror::Error)]
pub enum MicroVmError {
    /// Creating the KVM VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Loading the kernel, initrd or boot structures failed.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// A device could not be created.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A configured drive or network interface could not be created.
    #[error(transparent)]
    VirtioConfig(#[from] VirtioConfigError),
    /// A vCPU could not be created, configured or started.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// A vCPU did not answer pause/resume.
    #[error(transparent)]
    VcpuTimeout(#[from] VcpuTimeout),
    /// The event loop failed.
    #[error("event loop: {0}")]
    EventLoop(String),
    /// An eventfd, pipe or signal handler could not be set up.
    #[error("{0}: {1}")]
    Os(&'static str, std::io::Error),
    /// The guest hit a fatal vCPU exit.
    #[error("vCPU {vcpu}: {reason}")]
    GuestFatal {
        /// Which vCPU.
        vcpu: u8,
        /// What happened.
        reason: String,
    },
}

/// What building a microVM needs from the VMM around it.
pub struct BuildContext<'a> {
    /// When flint started (for boot-time figures in the log).
    pub started: Instant,
    /// Where guest console output goes.
    pub console_out: SerialOutput,
    /// Where the second UART's output goes, if the VM gets one.
    pub console2_out: Option<SerialOutput>,
    /// Whether to feed stdin to the guest console.
    pub console_in: bool,
    /// The guest's reset line (watched by the VMM's control loop).
    pub reset_evt: &'a EventFdTrigger,
    /// The exit-status port's event and value (watched by the control loop).
    pub exit_status: (&'a EventFdTrigger, &'a Arc<AtomicI32>),
    /// Where vCPU threads report.
    pub vcpu_events: &'a VcpuEventSender,
    /// The VMM's event loop, which the devices join.
    pub event_manager: &'a mut EventManager<Subscriber>,
}

/// A booted microVM.
pub struct MicroVm {
    // Declared first so they are dropped (stopped and joined) before the VM
    // and the memory they use.
    vcpus: Vec<VcpuHandle>,
    buses: VcpuBuses,
    virtio: Vec<(String, Arc<Mutex<dyn VirtioDevice>>)>,
    paused: bool,
    _mem: GuestMemory,
    _vm: Vm,
}

/// Boot arguments when the config gives none: a serial console, reboot through
/// the i8042 (which flint turns into a clean exit), reboot on panic.
pub const DEFAULT_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=-1";

impl MicroVm {
    /// Builds the VM described by `config` and starts its vCPUs.
    pub fn boot(config: &VmConfig, ctx: BuildContext) -> Result<Self, MicroVmError> {
        let machine = &config.machine_config;
        let vm = Vm::new()?;
        let mem = memory::create_guest_memory(machine.mem_size_mib)?;
        vm.register_memory(&mem)?;
        vm.setup_irqchip()?;
        let os = |what| move |e| MicroVmError::Os(what, e);
        let legacy = LegacyIo {
            console_out: ctx.console_out,
            console2_out: ctx.console2_out,
            reset_evt: ctx.reset_evt.try_clone().map_err(os("reset eventfd"))?,
            exit_evt: ctx.exit_status.0.try_clone().map_err(os("exit eventfd"))?,
            exit_status: ctx.exit_status.1.clone(),
        };
        let mut devices = DeviceManager::new(&vm, legacy)?;
        let root_args = virtio_devices::attach_drives(&mut devices, &vm, &mem, &config.drives)?;
        virtio_devices::attach_nets(&mut devices, &vm, &mem, &config.network_interfaces)?;

        let source = &config.boot_source;
        let kernel = boot::load_kernel(&mem, &source.kernel_image_path)?;
        let initrd = source
            .initrd_path
            .as_deref()
            .map(|path| boot::load_initrd(&mem, path, &kernel, machine.mem_size_mib << 20))
            .transpose()?;
        let boot_args = source.boot_args.as_deref().unwrap_or(DEFAULT_BOOT_ARGS);
        let extra = quirks::extra_boot_args(
            machine.emulation_quirks,
            quirks::host_emulates_guest_code,
            boot_args,
        );
        if let Some(extra) = extra {
            log::info!(
                "this host's KVM emulates guest kernel code (no vmx/svm): adding '{extra}' to the kernel command line (machine-config.emulation_quirks=\"off\" disables this)"
            );
        }
        let mut words: Vec<&str> = devices.cmdline_devices.iter().map(String::as_str).collect();
        words.extend(root_args.as_deref());
        words.extend(extra);
        let cmdline = boot::build_cmdline(boot_args, &words)?;
        boot::configure_system(&mem, &cmdline, &kernel, initrd, machine.vcpu_count)?;

        let buses = VcpuBuses {
            pio: Arc::new(std::mem::take(&mut devices.pio)),
            mmio: Arc::new(std::mem::take(&mut devices.mmio)),
            exits: Arc::new(ExitCounters::default()),
        };
        let template = cpu_template(machine.cpu_template);
        let mut created = Vec::with_capacity(usize::from(machine.vcpu_count));
        for id in 0..machine.vcpu_count {
            let events = ctx
                .vcpu_events
                .try_clone()
                .map_err(|e| MicroVmError::Os("vCPU eventfd", e))?;
            let vcpu = Vcpu::new(id, &vm, buses.clone(), events, ctx.started)?;
            let entry = (id == 0).then_some(kernel.entry);
            vcpu.configure(vm.kvm(), &mem, entry, machine.vcpu_count, template)?;
            created.push(vcpu);
        }

        for device in devices.subscribers.drain(..) {
            ctx.event_manager.add_subscriber(device);
        }
        if ctx.console_in {
            let console = ConsoleInput::from_stdin(devices.serial.clone())
                .map_err(|e| MicroVmError::Os("console input", e))?;
            ctx.event_manager
                .add_subscriber(Arc::new(Mutex::new(console)));
        }

        let mut vcpus = Vec::with_capacity(created.len());
        for vcpu in created {
            vcpus.push(vcpu.start()?);
        }
        log::info!(
            "microVM started: {} vCPU(s), {} MiB, kernel {}",
            machine.vcpu_count,
            machine.mem_size_mib,
            source.kernel_image_path.display()
        );
        Ok(Self {
            vcpus,
            buses,
            virtio: std::mem::take(&mut devices.virtio),
            paused: false,
            _mem: mem,
            _vm: vm,
        })
    }

    /// Whether the vCPUs are paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Takes every vCPU out of the guest; returns once all are out.
    pub fn pause(&mut self) -> Result<(), MicroVmError> {
        for vcpu in &self.vcpus {
            vcpu.pause()?;
        }
        self.paused = true;
        Ok(())
    }

    /// Lets every vCPU run the guest again.
    pub fn resume(&mut self) -> Result<(), MicroVmError> {
        for vcpu in &self.vcpus {
            vcpu.resume()?;
        }
        self.paused = false;
        Ok(())
    }

    /// vCPU exit counters.
    pub fn exits(&self) -> &ExitCounters {
        &self.buses.exits
    }

    /// Accesses that hit no device, as (PIO reads, PIO writes, MMIO reads, MMIO writes).
    pub fn unhandled_accesses(&self) -> [u64; 4] {
        let (pio, mmio) = (self.buses.pio.unhandled(), self.buses.mmio.unhandled());
        [
            pio.reads.load(Ordering::Relaxed),
            pio.writes.load(Ordering::Relaxed),
            mmio.reads.load(Ordering::Relaxed),
            mmio.writes.load(Ordering::Relaxed),
        ]
    }

    /// Each virtio device's counters, by device name.
    pub fn device_metrics(&self) -> BTreeMap<String, BTreeMap<&'static str, u64>> {
        self.virtio
            .iter()
            .map(|(name, device)| {
                let device = device.lock().unwrap_or_else(|p| p.into_inner());
                (name.clone(), device.counters().into_iter().collect())
            })
            .collect()
    }

    /// Stops and joins every vCPU thread.
    pub fn stop(&mut self) {
        for vcpu in &mut self.vcpus {
            vcpu.stop();
        }
        let [pio_r, pio_w, mmio_r, mmio_w] = self.unhandled_accesses();
        log::debug!(
            "unhandled accesses: PIO {pio_r} reads / {pio_w} writes, MMIO {mmio_r} reads / {mmio_w} writes"
        );
    }
}

fn cpu_template(template: api::CpuTemplate) -> arch::cpuid::CpuTemplate {
    match template {
        api::CpuTemplate::None => arch::cpuid::CpuTemplate::None,
        api::CpuTemplate::T2 => arch::cpuid::CpuTemplate::T2,
    }
}
