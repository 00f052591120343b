//! The VMM's control loop: an explicit state machine driven by the event
//! loop, the vCPU threads and the API.
//!
//! ```text
//!   NotStarted --InstanceStart--> Running <--Paused/Resumed--> Paused
//!        |                           |                            |
//!        +------- signal ------------+---- guest reset / fatal ---+--> end
//! ```
//!
//! Pre-boot, the API (or the config file) fills a pending configuration;
//! `InstanceStart` validates it and boots. The calling thread runs the epoll
//! loop; API requests arrive over a channel plus an eventfd and are handled
//! here, between epoll rounds, with full access to the VMM.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::AtomicI32;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use api::{
    ApiMessage, BootSourceConfig, InstanceState, MachineConfig, SnapshotLoadParams, VmConfig,
};
use devices::legacy::serial::SerialOutput;
use devices::EventFdTrigger;
use event_manager::{EventManager, SubscriberOps};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device_manager::Subscriber;
use crate::metrics::MetricsSink;
use crate::microvm::{BuildContext, MicroVm, MicroVmError};
use crate::vstate::vcpu::VcpuEventSender;
use crate::wakeups::{Outcome, WakeupSources, Wakeups};

mod control;
mod offload;
mod requests;
mod snapshots;

/// The VMM's end of the API: requests, and the eventfd the server writes
/// after queueing one.
pub struct ApiEndpoint {
    /// Queued requests.
    pub requests: Receiver<ApiMessage>,
    /// Written by the server after each request.
    pub wake: EventFd,
    /// The API server's own counters, for the metrics file.
    pub metrics: Box<dyn Fn() -> serde_json::Value + Send>,
}

/// Knobs that are about this process, not the VM.
pub struct VmmOptions {
    /// When flint started (for boot-time figures in the log).
    pub started: Instant,
    /// Where guest console output goes (default: stdout).
    pub console_out: Option<SerialOutput>,
    /// Give the VM a second UART (COM2, IRQ 3, the guest's ttyS1) writing here.
    pub console2_out: Option<SerialOutput>,
    /// Whether to feed stdin to the guest console.
    pub console_in: bool,
    /// The instance id reported by `GET /`.
    pub instance_id: String,
    /// The API, if flint serves one.
    pub api: Option<ApiEndpoint>,
    /// Confine the VMM and vCPU threads with seccomp filters (on by default;
    /// off only for debugging).
    pub seccomp: bool,
    /// Initial MMDS contents (Firecracker's `--metadata` file, parsed), put
    /// in the store before anything else (as a `PUT /mmds`).
    pub mmds_metadata: Option<serde_json::Value>,
    /// MMDS data store limit in bytes (`--mmds-size-limit`); Firecracker's
    /// default (`mmds::DEFAULT_SIZE_LIMIT`) when absent.
    pub mmds_size_limit: Option<usize>,
    /// A custom CPU template from the config file (`cpu-config`), as a
    /// `PUT /cpu-config` before anything else.
    pub cpu_config: Option<api::CpuConfig>,
}

impl Default for VmmOptions {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            console_out: None,
            console2_out: None,
            console_in: true,
            instance_id: "flint".into(),
            api: None,
            seccomp: true,
            mmds_metadata: None,
            mmds_size_limit: None,
            cpu_config: None,
        }
    }
}

/// How a run that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The guest reset or shut itself down.
    GuestStopped,
    /// A signal asked flint to stop; the VM was stopped cleanly.
    Signal(&'static str),
    /// The API's `Stop` action ended the run; the VM was stopped cleanly.
    ApiStop,
    /// The guest reported this exit status through the exit-status port.
    GuestExit(u8),
    /// The VM now runs in another flint (live migration).
    Migrated,
}

/// How a run begins.
// One value per run, moved once: boxing the config would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Start {
    /// Boot this configuration right away.
    Boot(VmConfig),
    /// Restore a snapshot right away.
    Restore(SnapshotLoadParams),
    /// Wait for a live migration from a source holding the key.
    MigrateListen(MigrateListen),
    /// Wait for the API to configure and start the VM.
    Api,
}

/// What `flint run --migrate-listen` waits for and allows.
pub struct MigrateListen {
    /// `unix:PATH` or `tcp:IP:PORT`.
    pub address: String,
    /// The pre-shared key the source must prove it holds (read before
    /// seccomp is on).
    pub key: crate::migration::MigrationKey,
    /// The limits and host paths the incoming VM gets.
    pub policy: crate::migration::IncomingPolicy,
}

/// The configuration being assembled before boot (and kept after it, for
/// `GET /vm/config`).
#[derive(Debug, Clone, Default)]
struct PendingConfig {
    boot_source: Option<BootSourceConfig>,
    machine: MachineConfig,
    drives: Vec<api::DriveConfig>,
    nets: Vec<api::NetConfig>,
    vsock: Option<api::VsockConfig>,
    entropy: Option<api::EntropyConfig>,
    balloon: Option<api::BalloonConfig>,
    serial: Option<api::SerialConfig>,
    mmds: Option<api::MmdsConfig>,
    pmem: Vec<api::PmemConfig>,
    memory_hotplug: Option<api::MemoryHotplugConfig>,
    fs: Vec<api::FsConfig>,
    /// `PUT /cpu-config`'s template, applied at boot.
    cpu_config: Option<api::CpuConfig>,
}

impl PendingConfig {
    fn from_config(config: VmConfig) -> Self {
        Self {
            boot_source: Some(config.boot_source),
            machine: config.machine_config,
            drives: config.drives,
            nets: config.network_interfaces,
            vsock: config.vsock,
            entropy: config.entropy,
            balloon: config.balloon,
            serial: config.serial,
            mmds: config.mmds_config,
            pmem: config.pmem,
            memory_hotplug: config.memory_hotplug,
            fs: config.fs,
            cpu_config: None,
        }
    }

    /// The config as it stands, with an empty kernel path when none was set
    /// (section checks of other sections do not look at it).
    fn candidate(&self) -> VmConfig {
        VmConfig {
            boot_source: self.boot_source.clone().unwrap_or(BootSourceConfig {
                kernel_image_path: PathBuf::new(),
                initrd_path: None,
                boot_args: None,
            }),
            machine_config: self.machine.clone(),
            drives: self.drives.clone(),
            network_interfaces: self.nets.clone(),
            vsock: self.vsock.clone(),
            entropy: self.entropy.clone(),
            balloon: self.balloon.clone(),
            serial: self.serial.clone(),
            mmds_config: self.mmds.clone(),
            pmem: self.pmem.clone(),
            memory_hotplug: self.memory_hotplug.clone(),
            fs: self.fs.clone(),
        }
    }

    fn complete(&self) -> Result<VmConfig, String> {
        if self.boot_source.is_none() {
            return Err("boot-source is not configured (PUT /boot-source first)".into());
        }
        Ok(self.candidate())
    }
}

/// Runs flint's VMM: starts as `start` says, serves the API if configured,
/// and returns when the guest stops, a signal arrives, the VM migrates away,
/// or a vCPU fails.
pub fn run(start: Start, options: VmmOptions) -> Result<RunEnd, MicroVmError> {
    crate::seccomp::set_enabled(options.seccomp);
    crate::seccomp::confine_device_helpers();
    Vmm::new(options)?.run(start)
}

struct Vmm {
    options: VmmOptions,
    event_manager: EventManager<Subscriber>,
    wakeups: Arc<Mutex<Wakeups>>,
    reset_evt: EventFdTrigger,
    exit_evt: EventFdTrigger,
    exit_status: Arc<AtomicI32>,
    vcpu_events: VcpuEventSender,
    pending: PendingConfig,
    vm: Option<MicroVm>,
    metrics: Option<MetricsSink>,
    api_requests: Option<Receiver<ApiMessage>>,
    end_requested: Option<Outcome>,
    confined: bool,
    /// The control thread (snapshot writing, migration streaming).
    control: Option<control::Control>,
    /// What the control thread is doing for this VM, if anything; requests
    /// that would disturb it are refused meanwhile.
    control_busy: Option<&'static str>,
    /// For an outgoing migration: whether the VM was paused and dirty
    /// logging on before it started (what a failure restores).
    migration_undo: (bool, bool),
    /// A file the control thread opened for the request being served
    /// (`offload::open_elsewhere`): the VMM thread may not open files
    /// once confined.
    preopened: Option<(PathBuf, std::io::Result<std::fs::File>)>,
    /// The metadata store, shared by the API handlers and every net device
    /// MMDS listens on; its data outlives VMs (not in snapshots).
    mmds: Arc<Mutex<mmds::Mmds>>,
    /// A VM restored with `mem_backend` `Uffd`: flint's hold on the
    /// userfaultfd and the handler's connection, kept while the VM may run.
    uffd: Option<crate::snapshot::uffd::UffdBackend>,
}

impl Vmm {
    fn new(mut options: VmmOptions) -> Result<Self, MicroVmError> {
        let os = |what| move |e| MicroVmError::Os(what, e);
        let reset_evt = EventFdTrigger::new().map_err(os("reset eventfd"))?;
        let exit_evt = EventFdTrigger::new().map_err(os("exit eventfd"))?;
        let exit_status = Arc::new(AtomicI32::new(-1));
        let (event_tx, event_rx) = channel();
        let vcpu_wake = EventFd::new(EFD_NONBLOCK).map_err(os("vCPU eventfd"))?;
        let vcpu_events =
            VcpuEventSender::new(event_tx, vcpu_wake.try_clone().map_err(os("vCPU eventfd"))?);
        let (sigint, sigterm) = signal_pipes()?;
        let cpu_config = options.cpu_config.take();
        let (api_requests, api_wake, api_metrics) = match options.api.take() {
            Some(api) => (Some(api.requests), api.wake, Some(api.metrics)),
            None => (
                None,
                EventFd::new(EFD_NONBLOCK).map_err(os("API eventfd"))?,
                None,
            ),
        };
        let control_wake = api_wake.try_clone().map_err(os("API eventfd"))?;
        let control = match control::Control::spawn(control_wake, options.seccomp) {
            Ok(control) => Some(control),
            Err(e) => {
                log::warn!("no control thread ({e}): snapshots and migration are unavailable");
                None
            }
        };
        let wakeups = Wakeups::new(WakeupSources {
            reset_evt: reset_evt
                .try_clone()
                .map_err(os("reset eventfd"))?
                .into_eventfd(),
            vcpu_wake,
            vcpu_events: event_rx,
            sigint,
            sigterm,
            api_wake,
            exit_evt: exit_evt
                .try_clone()
                .map_err(os("exit eventfd"))?
                .into_eventfd(),
            exit_status: exit_status.clone(),
        })
        .map_err(os("metrics timer"))?;
        let wakeups = Arc::new(Mutex::new(wakeups));
        let mut store =
            mmds::Mmds::new(options.mmds_size_limit.unwrap_or(mmds::DEFAULT_SIZE_LIMIT));
        if let Some(metadata) = options.mmds_metadata.take() {
            store
                .put(metadata)
                .map_err(|e| MicroVmError::EventLoop(format!("--metadata: {e}")))?;
        }
        let mut event_manager = EventManager::<Subscriber>::new()
            .map_err(|e| MicroVmError::EventLoop(e.to_string()))?;
        event_manager.add_subscriber(wakeups.clone());
        Ok(Self {
            options,
            event_manager,
            wakeups,
            reset_evt,
            exit_evt,
            exit_status,
            vcpu_events,
            pending: PendingConfig {
                cpu_config,
                ..PendingConfig::default()
            },
            vm: None,
            metrics: Some(MetricsSink::new(api_metrics)),
            api_requests,
            end_requested: None,
            confined: false,
            control,
            control_busy: None,
            migration_undo: (false, false),
            preopened: None,
            mmds: Arc::new(Mutex::new(store)),
            uffd: None,
        })
    }

    fn state(&self) -> InstanceState {
        match &self.vm {
            None => InstanceState::NotStarted,
            Some(vm) if vm.is_paused() => InstanceState::Paused,
            Some(_) => InstanceState::Running,
        }
    }

    fn run(mut self, start: Start) -> Result<RunEnd, MicroVmError> {
        match start {
            Start::Boot(config) => {
                let cpu_config = self.pending.cpu_config.take();
                self.pending = PendingConfig::from_config(config.clone());
                self.pending.cpu_config = cpu_config;
                self.boot(&config)?;
            }
            Start::Restore(params) => self
                .load_snapshot(&params)
                .map_err(MicroVmError::Snapshot)?,
            Start::MigrateListen(listen) => {
                if let Some(signal) = self.migrate_in(&listen)? {
                    return Ok(RunEnd::Signal(signal));
                }
            }
            Start::Api if self.api_requests.is_none() => {
                return Err(MicroVmError::EventLoop(
                    "nothing to run: no config and no API".into(),
                ))
            }
            Start::Api => {}
        }
        self.confine_if_running()?;
        let outcome = loop {
            if let Err(e) = self.event_manager.run() {
                break Outcome::Fatal {
                    vcpu: 0,
                    reason: format!("event loop: {e}"),
                };
            }
            let (outcome, api_pending, metrics_due) = {
                let mut w = self.wakeups.lock().unwrap_or_else(|p| p.into_inner());
                (w.take_outcome(), w.take_api_pending(), w.take_metrics_due())
            };
            if let Some(outcome) = outcome {
                break outcome;
            }
            if api_pending {
                self.serve_control();
                self.serve_api();
                if let Err(e) = self.confine_if_running() {
                    break Outcome::Fatal {
                        vcpu: 0,
                        reason: e.to_string(),
                    };
                }
                if let Some(outcome) = self.end_requested.take() {
                    break outcome;
                }
            }
            if metrics_due {
                self.flush_metrics();
            }
        };
        if let Some(vm) = &mut self.vm {
            vm.stop();
        }
        self.flush_metrics();
        match outcome {
            Outcome::GuestStopped => Ok(RunEnd::GuestStopped),
            Outcome::Signal(name) => Ok(RunEnd::Signal(name)),
            Outcome::ApiStop => Ok(RunEnd::ApiStop),
            Outcome::GuestExit(code) => Ok(RunEnd::GuestExit(code)),
            Outcome::Migrated => Ok(RunEnd::Migrated),
            Outcome::Fatal { vcpu, reason } => Err(MicroVmError::GuestFatal { vcpu, reason }),
        }
    }

    fn boot(&mut self, config: &VmConfig) -> Result<(), MicroVmError> {
        let vm = MicroVm::boot(config, self.build_context())?;
        self.vm = Some(vm);
        self.wire_mmds()
    }

    /// Puts MMDS on the net devices the VM's `mmds-config` lists (after a
    /// boot or restore, before the event loop runs their queues, so no
    /// guest frame misses it) and applies its version to the store.
    fn wire_mmds(&mut self) -> Result<(), MicroVmError> {
        let Some(vm) = &self.vm else {
            return Ok(());
        };
        let Some(config) = &vm.config().mmds_config else {
            return Ok(());
        };
        {
            let mut store = self.mmds.lock().unwrap_or_else(|p| p.into_inner());
            store.set_version(config.version);
            store.set_imds_compat(config.imds_compat);
        }
        crate::devices::net::attach_mmds(vm.virtio_devices(), &self.mmds, config)
            .map_err(|e| MicroVmError::EventLoop(format!("wiring MMDS: {e}")))
    }

    /// Once a VM exists, the VMM thread only needs the run-time allow-list:
    /// install it (before the event loop serves the guest's devices).
    fn confine_if_running(&mut self) -> Result<(), MicroVmError> {
        if self.vm.is_none() || self.confined || !self.options.seccomp {
            return Ok(());
        }
        crate::seccomp::install(crate::seccomp::ThreadKind::Vmm).map_err(|e| {
            MicroVmError::Os(
                "installing the VMM thread's seccomp filter",
                std::io::Error::other(e.to_string()),
            )
        })?;
        self.confined = true;
        log::debug!("seccomp filter installed on the VMM thread");
        Ok(())
    }

    /// What building or restoring a VM needs from the VMM (the console
    /// writers are handed over once).
    fn build_context(&mut self) -> BuildContext<'_> {
        BuildContext {
            started: self.options.started,
            console_out: self
                .options
                .console_out
                .take()
                .unwrap_or_else(crate::console::stdout_output),
            console2_out: self.options.console2_out.take(),
            console_in: self.options.console_in,
            seccomp: self.options.seccomp,
            reset_evt: &self.reset_evt,
            exit_status: (&self.exit_evt, &self.exit_status),
            vcpu_events: &self.vcpu_events,
            event_manager: &mut self.event_manager,
            cpuid_modifiers: self
                .pending
                .cpu_config
                .as_ref()
                .map(crate::microvm::cpuid_modifiers)
                .unwrap_or_default(),
            msr_modifiers: self
                .pending
                .cpu_config
                .as_ref()
                .map(|c| c.msr_modifiers.clone())
                .unwrap_or_default(),
        }
    }

    fn serve_api(&mut self) {
        let Some(requests) = self.api_requests.take() else {
            return;
        };
        while let Ok(message) = requests.try_recv() {
            let Some(message) = self.hand_to_control(message) else {
                continue;
            };
            let response = self.handle(message.request);
            // The client may have given up (timeout); nothing to do then.
            let _ = message.reply.send(response);
        }
        self.api_requests = Some(requests);
    }

    fn flush_metrics(&mut self) {
        let Some(sink) = self.metrics.as_mut() else {
            return;
        };
        if let Err(e) = sink.write(self.vm.as_ref()) {
            log::warn!("writing metrics: {e}");
        }
    }
}

/// Self-pipes that SIGINT and SIGTERM write into; the read ends go into epoll.
fn signal_pipes() -> Result<(UnixStream, UnixStream), MicroVmError> {
    let pipe = |signal| -> Result<UnixStream, MicroVmError> {
        let (rx, tx) = UnixStream::pair().map_err(|e| MicroVmError::Os("signal pipe", e))?;
        rx.set_nonblocking(true)
            .map_err(|e| MicroVmError::Os("signal pipe", e))?;
        signal_hook::low_level::pipe::register(signal, tx)
            .map_err(|e| MicroVmError::Os("registering a signal handler", e))?;
        Ok(rx)
    };
    Ok((
        pipe(signal_hook::consts::SIGINT)?,
        pipe(signal_hook::consts::SIGTERM)?,
    ))
}
