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
use devices::legacy::Serial;
use devices::virtio::block::Block;
use devices::virtio::net::Net;
use devices::EventFdTrigger;
use event_manager::{EventManager, SubscriberOps};

use crate::boot::{self, BootError};
use crate::console::ConsoleInput;
use crate::device_manager::{
    DeviceError, DeviceManager, DevicesState, LegacyIo, Subscriber, VirtioDeviceState, VirtioEntry,
};
use crate::memory::{self, GuestMemory, MemoryError};
use crate::quirks;
use crate::snapshot::{MemoryKind, MemoryLayout, MicroVmState};
use crate::virtio_devices::Placements;
use crate::virtio_devices::{self, VirtioConfigError};
use crate::vstate::vcpu::{
    ExitCounters, Vcpu, VcpuBuses, VcpuError, VcpuEventSender, VcpuHandle, VcpuTimeout,
};
use crate::vstate::vcpu_state::StateCaps;
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
    /// Not every vCPU paused (the VM was resumed) or resumed.
    #[error(transparent)]
    Pause(#[from] crate::vstate::vcpu::PauseError),
    /// The event loop failed.
    #[error("event loop: {0}")]
    EventLoop(String),
    /// A snapshot could not be taken or restored.
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// A vCPU's state could not be read or written.
    #[error(transparent)]
    VcpuState(#[from] crate::vstate::vcpu_state::VcpuStateError),
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
    /// Whether vCPU threads install their seccomp filter.
    pub seccomp: bool,
    /// The guest's reset line (watched by the VMM's control loop).
    pub reset_evt: &'a EventFdTrigger,
    /// The exit-status port's event and value (watched by the control loop).
    pub exit_status: (&'a EventFdTrigger, &'a Arc<AtomicI32>),
    /// Where vCPU threads report.
    pub vcpu_events: &'a VcpuEventSender,
    /// The VMM's event loop, which the devices join.
    pub event_manager: &'a mut EventManager<Subscriber>,
}

/// A booted (or restored) microVM.
pub struct MicroVm {
    // Declared first so they are dropped (stopped and joined) before the VM
    // and the memory they use.
    vcpus: Vec<VcpuHandle>,
    buses: VcpuBuses,
    virtio: Vec<VirtioEntry>,
    blocks: Vec<(String, Arc<Mutex<Block>>)>,
    nets: Vec<(String, Arc<Mutex<Net>>)>,
    serial: Arc<Mutex<Serial>>,
    config: VmConfig,
    paused: bool,
    dirty_logging: bool,
    mem: GuestMemory,
    vm: Vm,
}

/// Boot arguments when the config gives none: a serial console, reboot through
/// the i8042 (which flint turns into a clean exit), reboot on panic.
pub const DEFAULT_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=-1";

/// Where a restored VM's state and memory come from.
pub struct RestoreSource {
    /// The decoded state file.
    pub state: MicroVmState,
    /// Guest RAM, already loaded or mapped.
    pub mem: GuestMemory,
}

/// The VM, memory, irqchip and devices common to booting and restoring.
struct Skeleton {
    vm: Vm,
    mem: GuestMemory,
    devices: DeviceManager,
    root_args: Option<String>,
}

fn build_skeleton(
    config: &VmConfig,
    mem: GuestMemory,
    ctx: &mut BuildContext,
    restoring: Option<&DevicesState>,
) -> Result<Skeleton, MicroVmError> {
    let vm = Vm::new()?;
    vm.register_memory(&mem, config.machine_config.track_dirty_pages)?;
    vm.setup_irqchip()?;
    let os = |what| move |e| MicroVmError::Os(what, e);
    let legacy = LegacyIo {
        console_out: std::mem::replace(&mut ctx.console_out, Box::new(std::io::sink())),
        console2_out: ctx.console2_out.take(),
        reset_evt: ctx.reset_evt.try_clone().map_err(os("reset eventfd"))?,
        exit_evt: ctx.exit_status.0.try_clone().map_err(os("exit eventfd"))?,
        exit_status: ctx.exit_status.1.clone(),
    };
    let mut devices = DeviceManager::new(&vm, legacy, restoring.map(|d| &d.serial))?;
    let placements: Placements = restoring
        .map(|d| {
            d.virtio
                .iter()
                .map(|v| (v.name.clone(), (v.base, v.gsi)))
                .collect()
        })
        .unwrap_or_default();
    let root_args =
        virtio_devices::attach_drives(&mut devices, &vm, &mem, &config.drives, &placements)?;
    virtio_devices::attach_nets(
        &mut devices,
        &vm,
        &mem,
        &config.network_interfaces,
        &placements,
    )?;
    Ok(Skeleton {
        vm,
        mem,
        devices,
        root_args,
    })
}

impl MicroVm {
    /// Builds the VM described by `config`, loads its kernel and starts its vCPUs.
    pub fn boot(config: &VmConfig, mut ctx: BuildContext) -> Result<Self, MicroVmError> {
        let machine = &config.machine_config;
        let mem = memory::create_guest_memory(machine.mem_size_mib)?;
        let Skeleton {
            vm,
            mem,
            mut devices,
            root_args,
        } = build_skeleton(config, mem, &mut ctx, None)?;

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

        let buses = take_buses(&mut devices);
        let caps = Arc::new(StateCaps::query(vm.kvm(), vm.fd()).map_err(MicroVmError::VcpuState)?);
        let template = cpu_template(machine.cpu_template);
        let mut created = Vec::with_capacity(usize::from(machine.vcpu_count));
        for id in 0..machine.vcpu_count {
            let vcpu = new_vcpu(id, &vm, &buses, &ctx, &caps)?;
            let entry = (id == 0).then_some(kernel.entry);
            vcpu.configure(vm.kvm(), &mem, entry, machine.vcpu_count, template)?;
            created.push(vcpu);
        }
        let microvm = Self::start(config, vm, mem, devices, buses, created, ctx, false)?;
        log::info!(
            "microVM started: {} vCPU(s), {} MiB, kernel {}",
            machine.vcpu_count,
            machine.mem_size_mib,
            source.kernel_image_path.display()
        );
        Ok(microvm)
    }

    /// Rebuilds a VM from a snapshot: devices re-opened from the saved
    /// configuration (overrides already applied) and put back in their saved
    /// state at their saved addresses, vCPUs and interrupt controllers
    /// restored. The vCPUs start paused; [`MicroVm::resume`] runs them.
    pub fn restore(source: RestoreSource, mut ctx: BuildContext) -> Result<Self, MicroVmError> {
        let RestoreSource { state, mem } = source;
        let config = &state.config;
        if state.vcpus.len() != usize::from(config.machine_config.vcpu_count) {
            return Err(MicroVmError::Snapshot(format!(
                "the snapshot has {} vCPU states for {} vCPUs",
                state.vcpus.len(),
                config.machine_config.vcpu_count
            )));
        }
        let Skeleton {
            vm,
            mem,
            mut devices,
            ..
        } = build_skeleton(config, mem, &mut ctx, Some(&state.devices))?;
        vm.restore_state(&state.vm)?;
        for saved in &state.devices.virtio {
            let entry = devices
                .virtio
                .iter()
                .find(|e| e.name == saved.name)
                .ok_or_else(|| {
                    MicroVmError::Snapshot(format!(
                        "no device {:?} in the configuration",
                        saved.name
                    ))
                })?;
            lock(&entry.transport)
                .restore(&saved.transport)
                .map_err(|e| MicroVmError::Snapshot(format!("{}: {e}", saved.name)))?;
        }
        let buses = take_buses(&mut devices);
        let caps = Arc::new(StateCaps::query(vm.kvm(), vm.fd()).map_err(MicroVmError::VcpuState)?);
        let mut created = Vec::with_capacity(state.vcpus.len());
        for (id, saved) in state.vcpus.iter().enumerate() {
            let vcpu = new_vcpu(id as u8, &vm, &buses, &ctx, &caps)?;
            vcpu.restore_state(saved).map_err(MicroVmError::VcpuState)?;
            created.push(vcpu);
        }
        let microvm = Self::start(config, vm, mem, devices, buses, created, ctx, true)?;
        log::info!(
            "microVM restored: {} vCPU(s), {} MiB (paused)",
            config.machine_config.vcpu_count,
            config.machine_config.mem_size_mib
        );
        Ok(microvm)
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        config: &VmConfig,
        vm: Vm,
        mem: GuestMemory,
        mut devices: DeviceManager,
        buses: VcpuBuses,
        created: Vec<Vcpu>,
        ctx: BuildContext,
        paused: bool,
    ) -> Result<Self, MicroVmError> {
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
            vcpus.push(vcpu.start(paused, ctx.seccomp)?);
        }
        Ok(Self {
            vcpus,
            buses,
            virtio: std::mem::take(&mut devices.virtio),
            blocks: std::mem::take(&mut devices.blocks),
            nets: std::mem::take(&mut devices.nets),
            serial: devices.serial.clone(),
            config: config.clone(),
            paused,
            dirty_logging: config.machine_config.track_dirty_pages,
            mem,
            vm,
        })
    }

    /// Whether the vCPUs are paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The configuration the VM runs with.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// The KVM VM.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// Takes every vCPU out of the guest; returns once all are out.
    pub fn pause(&mut self) -> Result<(), MicroVmError> {
        crate::vstate::vcpu::pause_all(&self.vcpus)?;
        self.paused = true;
        Ok(())
    }

    /// Lets every vCPU run the guest again.
    pub fn resume(&mut self) -> Result<(), MicroVmError> {
        crate::vstate::vcpu::resume_all(&self.vcpus)?;
        self.paused = false;
        Ok(())
    }

    /// Applies a run-time `PATCH /drives/{id}`: a new backing file (the guest
    /// is told its disk changed) and/or new rate limits.
    pub fn update_drive(&mut self, patch: &api::DrivePatch) -> Result<(), String> {
        let block = self
            .blocks
            .iter()
            .find(|(id, _)| *id == patch.drive_id)
            .map(|(_, b)| b.clone())
            .ok_or_else(|| format!("no drive {:?}", patch.drive_id))?;
        if let Some(path) = &patch.path_on_host {
            lock(&block)
                .update_path(path.clone())
                .map_err(|e| e.to_string())?;
            let name = crate::virtio_devices::drive_name(&patch.drive_id);
            if let Some(entry) = self.virtio.iter().find(|e| e.name == name) {
                lock(&entry.transport).notify_config_change();
            }
        }
        if patch.rate_limiter.is_some() {
            let (bandwidth, ops) = crate::virtio_devices::limits(&patch.rate_limiter);
            if !lock(&block).update_rate_limiter(bandwidth, ops) {
                return Err("this drive has no rate limiter to update".into());
            }
        }
        if let Some(drive) = self
            .config
            .drives
            .iter_mut()
            .find(|d| d.drive_id == patch.drive_id)
        {
            if let Some(path) = &patch.path_on_host {
                drive.path_on_host = path.clone();
            }
            if patch.rate_limiter.is_some() {
                drive.rate_limiter = patch.rate_limiter.clone();
            }
        }
        Ok(())
    }

    /// Applies a run-time `PATCH /network-interfaces/{id}` (rate limits).
    pub fn update_net(&mut self, patch: &api::NetPatch) -> Result<(), String> {
        let net = self
            .nets
            .iter()
            .find(|(id, _)| *id == patch.iface_id)
            .map(|(_, n)| n.clone())
            .ok_or_else(|| format!("no network interface {:?}", patch.iface_id))?;
        let rx = patch
            .rx_rate_limiter
            .is_some()
            .then(|| crate::virtio_devices::limits(&patch.rx_rate_limiter));
        let tx = patch
            .tx_rate_limiter
            .is_some()
            .then(|| crate::virtio_devices::limits(&patch.tx_rate_limiter));
        if !lock(&net).update_rate_limiters(rx, tx) {
            return Err("this interface has no rate limiter to update".into());
        }
        if let Some(iface) = self
            .config
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == patch.iface_id)
        {
            if patch.rx_rate_limiter.is_some() {
                iface.rx_rate_limiter = patch.rx_rate_limiter.clone();
            }
            if patch.tx_rate_limiter.is_some() {
                iface.tx_rate_limiter = patch.tx_rate_limiter.clone();
            }
        }
        Ok(())
    }

    /// Whether KVM logs dirty pages (diff snapshots, migration).
    pub fn dirty_logging(&self) -> bool {
        self.dirty_logging
    }

    /// Turns KVM's dirty page log on or off.
    pub fn set_dirty_logging(&mut self, on: bool) -> Result<(), MicroVmError> {
        self.vm.register_memory(&self.mem, on)?;
        self.dirty_logging = on;
        Ok(())
    }

    /// Everything but RAM, from a paused VM. `memory_kind` says what the
    /// memory file written alongside holds.
    pub fn save_state(&self, memory_kind: MemoryKind) -> Result<MicroVmState, MicroVmError> {
        if !self.paused {
            return Err(MicroVmError::Snapshot("the VM must be paused".into()));
        }
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for vcpu in &self.vcpus {
            vcpus.push(vcpu.save_state().map_err(MicroVmError::Snapshot)?);
        }
        let vm = self.vm.save_state()?;
        let virtio = self
            .virtio
            .iter()
            .map(|e| VirtioDeviceState {
                name: e.name.clone(),
                base: e.base,
                gsi: e.gsi,
                transport: lock(&e.transport).save(),
            })
            .collect();
        Ok(MicroVmState {
            config: self.config.clone(),
            memory: MemoryLayout::of(&self.mem),
            memory_kind,
            vm,
            vcpus,
            devices: DevicesState {
                serial: lock(&self.serial).state(),
                virtio,
            },
        })
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
            .map(|e| {
                (
                    e.name.clone(),
                    lock(&e.device).counters().into_iter().collect(),
                )
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

fn take_buses(devices: &mut DeviceManager) -> VcpuBuses {
    VcpuBuses {
        pio: Arc::new(std::mem::take(&mut devices.pio)),
        mmio: Arc::new(std::mem::take(&mut devices.mmio)),
        exits: Arc::new(ExitCounters::default()),
    }
}

fn new_vcpu(
    id: u8,
    vm: &Vm,
    buses: &VcpuBuses,
    ctx: &BuildContext,
    caps: &Arc<StateCaps>,
) -> Result<Vcpu, MicroVmError> {
    let events = ctx
        .vcpu_events
        .try_clone()
        .map_err(|e| MicroVmError::Os("vCPU eventfd", e))?;
    Ok(Vcpu::new(
        id,
        vm,
        buses.clone(),
        events,
        caps.clone(),
        ctx.started,
    )?)
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn cpu_template(template: api::CpuTemplate) -> arch::cpuid::CpuTemplate {
    match template {
        api::CpuTemplate::None => arch::cpuid::CpuTemplate::None,
        api::CpuTemplate::T2 => arch::cpuid::CpuTemplate::T2,
    }
}
