//! Building a microVM from its configuration and running it to the end.
//!
//! The order matters and is KVM's: VM, memory, irqchip, devices (irqfds need
//! the irqchip), kernel, vCPUs (their LAPICs need the irqchip), then the
//! threads. The calling thread becomes the VMM's event loop.

use std::os::unix::net::UnixStream;
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use api::VmConfig;
use devices::legacy::serial::SerialOutput;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::boot::{self, BootError};
use crate::console::{ConsoleInput, TerminalMode};
use crate::device_manager::{DeviceError, DeviceManager};
use crate::exit_watcher::{ExitWatcher, Outcome};
use crate::memory::{self, MemoryError};
use crate::quirks;
use crate::vstate::vcpu::{Vcpu, VcpuBuses, VcpuError, VcpuEventSender, VcpuHandle};
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

/// How a run that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The guest reset or shut itself down.
    GuestStopped,
    /// A signal asked flint to stop; the VM was stopped cleanly.
    Signal(&'static str),
}

/// Knobs that are about this process, not the VM.
pub struct RunOptions {
    /// When flint started (for boot-time figures in the log).
    pub started: Instant,
    /// Where guest console output goes.
    pub console_out: SerialOutput,
    /// Whether to read the guest's console input from stdin.
    pub console_in: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            console_out: Box::new(std::io::stdout()),
            console_in: true,
        }
    }
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Builds the VM described by `config`, boots it and runs it until the guest
/// stops, a signal arrives, or a vCPU fails.
pub fn run(config: &VmConfig, options: RunOptions) -> Result<RunEnd, MicroVmError> {
    let machine = &config.machine_config;
    let vm = Vm::new()?;
    let mem = memory::create_guest_memory(machine.mem_size_mib)?;
    vm.register_memory(&mem)?;
    vm.setup_irqchip()?;
    let devices = DeviceManager::new(&vm, options.console_out)?;

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
    let cmdline = boot::build_cmdline(boot_args, extra)?;
    boot::configure_system(&mem, &cmdline, &kernel, initrd, machine.vcpu_count)?;

    let (event_tx, event_rx) = channel();
    let vcpu_wake = EventFd::new(EFD_NONBLOCK).map_err(|e| MicroVmError::Os("vCPU eventfd", e))?;
    let sender = VcpuEventSender::new(
        event_tx,
        vcpu_wake
            .try_clone()
            .map_err(|e| MicroVmError::Os("vCPU eventfd", e))?,
    );
    let buses = VcpuBuses {
        pio: Arc::new(devices.pio),
        mmio: Arc::new(devices.mmio),
    };
    let template = cpu_template(machine.cpu_template);
    let mut vcpus = Vec::with_capacity(usize::from(machine.vcpu_count));
    for id in 0..machine.vcpu_count {
        let events = sender
            .try_clone()
            .map_err(|e| MicroVmError::Os("vCPU eventfd", e))?;
        let vcpu = Vcpu::new(id, &vm, buses.clone(), events, options.started)?;
        let entry = (id == 0).then_some(kernel.entry);
        vcpu.configure(vm.kvm(), &mem, entry, machine.vcpu_count, template)?;
        vcpus.push(vcpu);
    }

    let (sigint_rx, sigterm_rx) = signal_pipes()?;
    let reset_evt =
        EventFd::try_clone(&devices.reset_evt).map_err(|e| MicroVmError::Os("reset eventfd", e))?;
    let watcher = Arc::new(Mutex::new(ExitWatcher::new(
        reset_evt, vcpu_wake, event_rx, sigint_rx, sigterm_rx,
    )));
    let mut event_manager =
        EventManager::<Subscriber>::new().map_err(|e| MicroVmError::EventLoop(e.to_string()))?;
    event_manager.add_subscriber(watcher.clone());
    let _terminal = options.console_in.then(TerminalMode::enter);
    if options.console_in {
        let console = ConsoleInput::from_stdin(devices.serial.clone())
            .map_err(|e| MicroVmError::Os("console input", e))?;
        event_manager.add_subscriber(Arc::new(Mutex::new(console)));
    }

    let mut running: Vec<VcpuHandle> = Vec::with_capacity(vcpus.len());
    for vcpu in vcpus {
        running.push(vcpu.start()?);
    }
    log::info!(
        "microVM started: {} vCPU(s), {} MiB, kernel {}",
        machine.vcpu_count,
        machine.mem_size_mib,
        source.kernel_image_path.display()
    );

    let outcome = loop {
        if let Err(e) = event_manager.run() {
            break Outcome::Fatal {
                vcpu: 0,
                reason: format!("event loop: {e}"),
            };
        }
        let decided = watcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take_outcome();
        if let Some(outcome) = decided {
            break outcome;
        }
    };
    for vcpu in &mut running {
        vcpu.stop();
    }
    let pio = buses.pio.unhandled();
    let mmio = buses.mmio.unhandled();
    log::debug!(
        "unhandled accesses: PIO {} reads / {} writes, MMIO {} reads / {} writes",
        pio.reads.load(std::sync::atomic::Ordering::Relaxed),
        pio.writes.load(std::sync::atomic::Ordering::Relaxed),
        mmio.reads.load(std::sync::atomic::Ordering::Relaxed),
        mmio.writes.load(std::sync::atomic::Ordering::Relaxed),
    );
    match outcome {
        Outcome::GuestStopped => Ok(RunEnd::GuestStopped),
        Outcome::Signal(name) => Ok(RunEnd::Signal(name)),
        Outcome::Fatal { vcpu, reason } => Err(MicroVmError::GuestFatal { vcpu, reason }),
    }
}

/// Boot arguments when the config gives none: a serial console, reboot through
/// the i8042 (which flint turns into a clean exit), reboot on panic.
pub const DEFAULT_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=-1";

fn cpu_template(template: api::CpuTemplate) -> arch::cpuid::CpuTemplate {
    match template {
        api::CpuTemplate::None => arch::cpuid::CpuTemplate::None,
        api::CpuTemplate::T2 => arch::cpuid::CpuTemplate::T2,
    }
}

/// Self-pipes that SIGINT and SIGTERM write into; the read ends go into epoll.
fn signal_pipes() -> Result<(UnixStream, UnixStream), MicroVmError> {
    let mut read_ends = Vec::with_capacity(2);
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let (rx, tx) = UnixStream::pair().map_err(|e| MicroVmError::Os("signal pipe", e))?;
        rx.set_nonblocking(true)
            .map_err(|e| MicroVmError::Os("signal pipe", e))?;
        signal_hook::low_level::pipe::register(signal, tx)
            .map_err(|e| MicroVmError::Os("registering a signal handler", e))?;
        read_ends.push(rx);
    }
    let sigterm = read_ends.pop();
    let sigint = read_ends.pop();
    sigint.zip(sigterm).ok_or(MicroVmError::Os(
        "signal pipe",
        std::io::Error::other("missing pipe"),
    ))
}
