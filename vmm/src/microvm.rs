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
use devices::persist::Persist;
use devices::EventFdTrigger;
use event_manager::{EventManager, SubscriberOps};

use crate::boot::{self, BootError};
use crate::console::ConsoleInput;
use crate::device_manager::{DeviceError, DeviceManager, DeviceManagerArgs, LegacyIo, Subscriber};
use crate::devices::DeviceKind;
use crate::memory::{self, GuestMemory, MemoryError};
use crate::quirks;
use crate::snapshot::{MemoryKind, MemoryLayout, MicroVmState};
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
    /// A custom CPU template's CPUID changes (`PUT /cpu-config`), applied
    /// to every vCPU after normalization at boot (a restore keeps the
    /// snapshot's CPUID).
    pub cpuid_modifiers: Vec<arch::cpuid::CpuidModifier>,
    /// The template's MSR changes, applied to every vCPU after its boot
    /// MSRs (a restore keeps the snapshot's MSRs).
    pub msr_modifiers: Vec<api::MsrModifier>,
}

/// A booted (or restored) microVM.
pub struct MicroVm {
    // Declared first so they are dropped (stopped and joined) before the VM
    // and the memory they use.
    vcpus: Vec<VcpuHandle>,
    buses: VcpuBuses,
    devices: DeviceManager,
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
}

/// Creates the VM with its memory and irqchip, puts saved VM state back when
/// restoring (before any device can raise an interrupt into the irqchip),
/// then creates or restores the devices.
fn build_skeleton(
    config: &VmConfig,
    mem: GuestMemory,
    ctx: &mut BuildContext,
    restoring: Option<&MicroVmState>,
) -> Result<Skeleton, MicroVmError> {
    let vm = Vm::new()?;
    vm.register_memory(&mem, config.machine_config.track_dirty_pages)?;
    vm.setup_irqchip()?;
    let vm = match restoring {
        Some(state) => {
            // Every vCPU state is checked against this host before any
            // saved state reaches KVM.
            let caps = StateCaps::query(vm.kvm(), vm.fd()).map_err(MicroVmError::VcpuState)?;
            for (id, vcpu) in state.vcpus.iter().enumerate() {
                vcpu.validate(&caps)
                    .map_err(|e| MicroVmError::Snapshot(format!("vCPU {id}: {e}")))?;
            }
            Vm::restore(vm, &state.vm)?
        }
        None => vm,
    };
    let os = |what| move |e| MicroVmError::Os(what, e);
    let legacy = LegacyIo {
        console_out: match config
            .serial
            .as_ref()
            .and_then(|s| s.serial_out_path.as_deref())
        {
            // The `serial` section sends the console to a file instead.
            Some(path) => crate::console::output_to_path(path).map_err(|e| {
                MicroVmError::Os("serial output", std::io::Error::other(e.to_string()))
            })?,
            None => std::mem::replace(&mut ctx.console_out, Box::new(std::io::sink())),
        },
        console2_out: ctx.console2_out.take(),
        reset_evt: ctx.reset_evt.try_clone().map_err(os("reset eventfd"))?,
        exit_evt: ctx.exit_status.0.try_clone().map_err(os("exit eventfd"))?,
        exit_status: ctx.exit_status.1.clone(),
    };
    let args = DeviceManagerArgs {
        vm: &vm,
        mem: &mem,
        config,
        legacy,
    };
    let devices = match restoring {
        Some(state) => DeviceManager::restore(args, &state.devices)?,
        None => DeviceManager::create(args)?,
    };
    Ok(Skeleton { vm, mem, devices })
}

impl MicroVm {
    /// Builds the VM described by `config`, loads its kernel and starts its vCPUs.
    pub fn boot(config: &VmConfig, mut ctx: BuildContext) -> Result<Self, MicroVmError> {
        let machine = &config.machine_config;
        let mem = memory::create_guest_memory_backed(
            machine.mem_size_mib,
            config.memory_hotplug.as_ref(),
            memory::MemoryBacking::for_config(config),
        )?;
        let Skeleton {
            vm,
            mem,
            mut devices,
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
        words.extend(devices.boot_args.iter().map(String::as_str));
        words.extend(extra);
        let cmdline = boot::build_cmdline(boot_args, &words)?;
        boot::configure_system(
            &mem,
            machine.mem_size_mib << 20,
            &cmdline,
            &kernel,
            initrd,
            machine.vcpu_count,
        )?;

        let buses = take_buses(&mut devices);
        let caps = Arc::new(StateCaps::query(vm.kvm(), vm.fd()).map_err(MicroVmError::VcpuState)?);
        let template = cpu_template(machine.cpu_template);
        let mut created = Vec::with_capacity(usize::from(machine.vcpu_count));
        for id in 0..machine.vcpu_count {
            let vcpu = new_vcpu(id, &vm, &buses, &ctx, &caps)?;
            let entry = (id == 0).then_some(kernel.entry);
            vcpu.configure(
                vm.kvm(),
                &mem,
                entry,
                machine.vcpu_count,
                template,
                &ctx.cpuid_modifiers,
            )?;
            vcpu.apply_msr_modifiers(&ctx.msr_modifiers)?;
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
        } = build_skeleton(config, mem, &mut ctx, Some(&state))?;
        let buses = take_buses(&mut devices);
        let caps = Arc::new(StateCaps::query(vm.kvm(), vm.fd()).map_err(MicroVmError::VcpuState)?);
        let mut created = Vec::with_capacity(state.vcpus.len());
        for (id, saved) in state.vcpus.iter().enumerate() {
            let vcpu = new_vcpu(id as u8, &vm, &buses, &ctx, &caps)?;
            created.push(Vcpu::restore(vcpu, saved)?);
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
            devices,
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

    /// Applies a run-time update (`PATCH /drives`, `PATCH
    /// /network-interfaces`) to the device of kind `K` it names, and records
    /// it in the VM's configuration.
    pub fn update_device<K: DeviceKind>(&mut self, patch: &K::Patch) -> Result<(), String> {
        crate::devices::update::<K>(&self.devices.virtio, &mut self.config, patch)
    }

    /// The virtio devices, in attach order (for wiring that is not a
    /// config-space patch, e.g. MMDS on net devices).
    pub fn virtio_devices(&self) -> &[crate::device_manager::VirtioEntry] {
        &self.devices.virtio
    }

    /// Runs `f` on the device of kind `K` with id `id` (e.g. to read the
    /// balloon's statistics); an error if the VM has no such device.
    pub fn with_device<K: DeviceKind, R>(
        &self,
        id: &str,
        f: impl FnOnce(&mut K::Device) -> R,
    ) -> Result<R, String> {
        crate::devices::with_device::<K, R>(&self.devices.virtio, id, f)
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
        Ok(MicroVmState {
            config: self.config.clone(),
            memory: MemoryLayout::of(&self.mem),
            memory_kind,
            snapshot_id: crate::snapshot::memory::new_snapshot_id(),
            vm: self.vm.save()?,
            vcpus,
            devices: self.devices.save()?,
        })
    }

    /// Presses Ctrl+Alt+Del on the guest's i8042 keyboard (Firecracker's
    /// `SendCtrlAltDel`); what follows is the guest's to decide.
    pub fn send_ctrl_alt_del(&self) -> Result<(), devices::legacy::i8042::I8042Error> {
        lock(&self.devices.i8042).send_ctrl_alt_del()
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
        self.devices
            .virtio
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

/// The CPUID part of a checked custom CPU template, in arch's terms.
pub fn cpuid_modifiers(config: &api::CpuConfig) -> Vec<arch::cpuid::CpuidModifier> {
    use api::CpuidRegisterName as N;
    use arch::cpuid::CpuidRegister as R;
    config
        .cpuid_modifiers
        .iter()
        .map(|m| arch::cpuid::CpuidModifier {
            leaf: m.leaf,
            subleaf: m.subleaf,
            flags: m.flags,
            registers: m
                .modifiers
                .iter()
                .map(|(name, f)| {
                    let register = match name {
                        N::Eax => R::Eax,
                        N::Ebx => R::Ebx,
                        N::Ecx => R::Ecx,
                        N::Edx => R::Edx,
                    };
                    let filter = arch::cpuid::BitFilter {
                        mask: f.mask,
                        value: f.value,
                    };
                    (register, filter)
                })
                .collect(),
        })
        .collect()
}

fn cpu_template(template: api::CpuTemplate) -> arch::cpuid::CpuTemplate {
    match template {
        api::CpuTemplate::None => arch::cpuid::CpuTemplate::None,
        api::CpuTemplate::T2 => arch::cpuid::CpuTemplate::T2,
    }
}
