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
    ActionType, ApiError, ApiMessage, ApiRequest, ApiResponse, BootSourceConfig, InstanceInfo,
    InstanceState, MachineConfig, SnapshotCreateParams, SnapshotLoadParams, SnapshotType, VmConfig,
    VmStateRequest,
};
use devices::legacy::serial::SerialOutput;
use devices::EventFdTrigger;
use event_manager::{EventManager, SubscriberOps};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device_manager::Subscriber;
use crate::metrics::MetricsSink;
use crate::microvm::{BuildContext, MicroVm, MicroVmError, RestoreSource};
use crate::snapshot::format;
use crate::snapshot::memory::{dump, load_copy, map_private, take_dirty_pages, Pages};
use crate::snapshot::{MemoryKind, MicroVmState};
use crate::vstate::vcpu::VcpuEventSender;
use crate::wakeups::{Outcome, WakeupSources, Wakeups};

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
pub enum Start {
    /// Boot this configuration right away.
    Boot(VmConfig),
    /// Restore a snapshot right away.
    Restore(SnapshotLoadParams),
    /// Wait for a live migration on this address (`unix:PATH`, `tcp:HOST:PORT`).
    MigrateListen(String),
    /// Wait for the API to configure and start the VM.
    Api,
}

/// The configuration being assembled before boot (and kept after it, for
/// `GET /vm/config`).
#[derive(Debug, Clone, Default)]
struct PendingConfig {
    boot_source: Option<BootSourceConfig>,
    machine: MachineConfig,
    drives: Vec<api::DriveConfig>,
    nets: Vec<api::NetConfig>,
}

impl PendingConfig {
    fn from_config(config: VmConfig) -> Self {
        Self {
            boot_source: Some(config.boot_source),
            machine: config.machine_config,
            drives: config.drives,
            nets: config.network_interfaces,
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
        }
    }

    fn complete(&self) -> Result<VmConfig, String> {
        if self.boot_source.is_none() {
            return Err("boot-source is not configured (PUT /boot-source first)".into());
        }
        Ok(self.candidate())
    }
}

fn bad_request(message: impl Into<String>) -> ApiResponse {
    ApiResponse::Error(ApiError {
        status: 400,
        fault_message: message.into(),
    })
}

/// Runs flint's VMM: starts as `start` says, serves the API if configured,
/// and returns when the guest stops, a signal arrives, the VM migrates away,
/// or a vCPU fails.
pub fn run(start: Start, options: VmmOptions) -> Result<RunEnd, MicroVmError> {
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
        let (api_requests, api_wake, api_metrics) = match options.api.take() {
            Some(api) => (Some(api.requests), api.wake, Some(api.metrics)),
            None => (
                None,
                EventFd::new(EFD_NONBLOCK).map_err(os("API eventfd"))?,
                None,
            ),
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
            pending: PendingConfig::default(),
            vm: None,
            metrics: Some(MetricsSink::new(api_metrics)),
            api_requests,
            end_requested: None,
            confined: false,
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
                self.pending = PendingConfig::from_config(config.clone());
                self.boot(&config)?;
            }
            Start::Restore(params) => self
                .load_snapshot(&params)
                .map_err(MicroVmError::Snapshot)?,
            Start::MigrateListen(address) => {
                if let Some(signal) = self.migrate_in(&address)? {
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
        Ok(())
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
                .unwrap_or_else(|| Box::new(std::io::stdout())),
            console2_out: self.options.console2_out.take(),
            console_in: self.options.console_in,
            seccomp: self.options.seccomp,
            reset_evt: &self.reset_evt,
            exit_status: (&self.exit_evt, &self.exit_status),
            vcpu_events: &self.vcpu_events,
            event_manager: &mut self.event_manager,
        }
    }

    fn serve_api(&mut self) {
        let Some(requests) = self.api_requests.take() else {
            return;
        };
        while let Ok(message) = requests.try_recv() {
            let response = self.handle(message.request);
            // The client may have given up (timeout); nothing to do then.
            let _ = message.reply.send(response);
        }
        self.api_requests = Some(requests);
    }

    fn handle(&mut self, request: ApiRequest) -> ApiResponse {
        use ApiRequest as R;
        let started = self.vm.is_some();
        match request {
            R::GetInstanceInfo => ApiResponse::InstanceInfo(InstanceInfo {
                id: self.options.instance_id.clone(),
                state: self.state(),
                vmm_version: env!("CARGO_PKG_VERSION").into(),
                app_name: "flint".into(),
            }),
            R::GetMachineConfig => ApiResponse::MachineConfig(self.pending.machine.clone()),
            // Before PUT /boot-source the kernel path is empty.
            R::GetVmConfig => ApiResponse::VmConfig(self.pending.candidate()),
            R::PutMachineConfig(_) | R::PatchMachineConfig(_) | R::PutBootSource(_) | R::PutDrive(_)
            | R::PutNetworkInterface(_)
                if started =>
            {
                bad_request("the VM is already running: this can only be configured before InstanceStart")
            }
            R::PutMachineConfig(machine) => self.update_section(|p| p.machine = machine, VmConfig::validate_machine_config),
            R::PatchMachineConfig(patch) => self.update_section(
                |p| {
                    let m = &mut p.machine;
                    if let Some(v) = patch.vcpu_count {
                        m.vcpu_count = v;
                    }
                    if let Some(v) = patch.mem_size_mib {
                        m.mem_size_mib = v;
                    }
                    if let Some(v) = patch.cpu_template {
                        m.cpu_template = v;
                    }
                    if let Some(v) = patch.emulation_quirks {
                        m.emulation_quirks = v;
                    }
                    if let Some(v) = patch.track_dirty_pages {
                        m.track_dirty_pages = v;
                    }
                },
                VmConfig::validate_machine_config,
            ),
            R::PutBootSource(source) => {
                self.update_section(|p| p.boot_source = Some(source), VmConfig::validate_boot_source)
            }
            R::PutDrive(drive) => self.update_section(
                |p| match p.drives.iter_mut().find(|d| d.drive_id == drive.drive_id) {
                    Some(existing) => *existing = drive,
                    None => p.drives.push(drive),
                },
                VmConfig::validate_drives,
            ),
            R::PutNetworkInterface(net) => self.update_section(
                |p| match p.nets.iter_mut().find(|n| n.iface_id == net.iface_id) {
                    Some(existing) => *existing = net,
                    None => p.nets.push(net),
                },
                VmConfig::validate_network,
            ),
            R::PatchDrive(patch) => {
                let known = self.pending.drives.iter().any(|d| d.drive_id == patch.drive_id);
                if let (Some(_), false) = (&self.vm, known) {
                    return ApiResponse::Error(ApiError::not_found(format!("no drive {:?}", patch.drive_id)));
                }
                if let Some(vm) = self.vm.as_mut() {
                    if patch.path_on_host.as_ref().is_some_and(|p| !p.is_file()) {
                        return bad_request(format!("drives[{}].path_on_host: not a file", patch.drive_id));
                    }
                    return match vm.update_drive(&patch) {
                        Ok(()) => {
                            self.pending = PendingConfig::from_config(vm.config().clone());
                            ApiResponse::Empty
                        }
                        Err(e) => bad_request(e),
                    };
                }
                let Some(index) = self.pending.drives.iter().position(|d| d.drive_id == patch.drive_id) else {
                    return ApiResponse::Error(ApiError::not_found(format!("no drive {:?}", patch.drive_id)));
                };
                self.update_section(
                    |p| {
                        let d = &mut p.drives[index];
                        if let Some(path) = patch.path_on_host {
                            d.path_on_host = path;
                        }
                        if patch.rate_limiter.is_some() {
                            d.rate_limiter = patch.rate_limiter;
                        }
                    },
                    VmConfig::validate_drives,
                )
            }
            R::PatchNetworkInterface(patch) => {
                let known = self.pending.nets.iter().any(|n| n.iface_id == patch.iface_id);
                if let (Some(_), false) = (&self.vm, known) {
                    return ApiResponse::Error(ApiError::not_found(format!(
                        "no network interface {:?}",
                        patch.iface_id
                    )));
                }
                if let Some(vm) = self.vm.as_mut() {
                    return match vm.update_net(&patch) {
                        Ok(()) => {
                            self.pending = PendingConfig::from_config(vm.config().clone());
                            ApiResponse::Empty
                        }
                        Err(e) => bad_request(e),
                    };
                }
                let Some(index) = self.pending.nets.iter().position(|n| n.iface_id == patch.iface_id) else {
                    return ApiResponse::Error(ApiError::not_found(format!(
                        "no network interface {:?}",
                        patch.iface_id
                    )));
                };
                self.update_section(
                    |p| {
                        let n = &mut p.nets[index];
                        if patch.rx_rate_limiter.is_some() {
                            n.rx_rate_limiter = patch.rx_rate_limiter;
                        }
                        if patch.tx_rate_limiter.is_some() {
                            n.tx_rate_limiter = patch.tx_rate_limiter;
                        }
                    },
                    VmConfig::validate_network,
                )
            }
            R::Action(ActionType::InstanceStart) => self.instance_start(),
            R::Action(ActionType::Stop) => {
                if !started {
                    return bad_request("the VM is not started (send SIGTERM to end a flint that has not booted)");
                }
                log::info!("stop requested through the API");
                self.end_requested = Some(Outcome::ApiStop);
                ApiResponse::Empty
            }
            R::Action(ActionType::SendCtrlAltDel) => {
                bad_request("SendCtrlAltDel: this VM has no i8042 keyboard for the guest to read; use the guest's own reboot")
            }
            R::Action(ActionType::FlushMetrics) => match self.metrics.as_ref().map(|m| m.has_path()) {
                Some(true) => {
                    self.flush_metrics();
                    ApiResponse::Empty
                }
                _ => bad_request("no metrics file configured (PUT /metrics first)"),
            },
            R::PatchVm(state) => self.change_vm_state(state),
            R::CreateSnapshot(params) => match self.create_snapshot(&params) {
                Ok(()) => ApiResponse::Empty,
                Err(e) => bad_request(e),
            },
            R::LoadSnapshot(params) => match self.load_snapshot(&params) {
                Ok(()) => ApiResponse::Empty,
                Err(e) => bad_request(e),
            },
            R::Migrate(params) => {
                let Some(vm) = self.vm.as_mut() else {
                    return bad_request("the VM is not started");
                };
                match crate::migration::migrate_out(vm, &params.destination) {
                    Ok(report) => {
                        log::info!(
                            "migration to {} complete: {} rounds, {:.1} MiB of memory and {} KiB of state sent, total {} ms, downtime {} ms",
                            params.destination,
                            report.rounds,
                            report.bytes as f64 / (1 << 20) as f64,
                            report.state_bytes / 1024,
                            report.total.as_millis(),
                            report.downtime.as_millis()
                        );
                        self.end_requested = Some(Outcome::Migrated);
                        ApiResponse::Empty
                    }
                    Err(e) => {
                        log::error!("migration to {} failed, the VM stays here: {e}", params.destination);
                        bad_request(format!("migration failed (the VM keeps running here): {e}"))
                    }
                }
            }
            R::PutLogger(config) => {
                let level = match config.level {
                    Some(level) => match crate::logger::parse_level(&format!("{level:?}")) {
                        Some(l) => Some(l),
                        None => return bad_request(format!("unknown log level {level:?}")),
                    },
                    None => None,
                };
                match crate::logger::configure(
                    config.log_path.as_deref(),
                    level,
                    config.show_level,
                    config.show_log_origin,
                ) {
                    Ok(()) => ApiResponse::Empty,
                    Err(e) => bad_request(e.to_string()),
                }
            }
            R::PutMetrics(config) => {
                let Some(sink) = self.metrics.as_mut() else {
                    return bad_request("metrics are unavailable");
                };
                if let Err(e) = sink.set_path(&config.metrics_path) {
                    return bad_request(e.to_string());
                }
                let timer = self
                    .wakeups
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .start_metrics_timer();
                match timer {
                    Ok(()) => ApiResponse::Empty,
                    Err(e) => bad_request(format!("starting the metrics timer: {e}")),
                }
            }
        }
    }

    /// Applies `change` to the pending config if `check` accepts the result.
    fn update_section(
        &mut self,
        change: impl FnOnce(&mut PendingConfig),
        check: impl Fn(&VmConfig) -> Result<(), api::ConfigError>,
    ) -> ApiResponse {
        let mut candidate = self.pending.clone();
        change(&mut candidate);
        match check(&candidate.candidate()) {
            Ok(()) => {
                self.pending = candidate;
                ApiResponse::Empty
            }
            Err(e) => bad_request(e.to_string()),
        }
    }

    fn instance_start(&mut self) -> ApiResponse {
        if self.vm.is_some() {
            return bad_request("the VM is already started");
        }
        let config = match self.pending.complete() {
            Ok(config) => config,
            Err(e) => return bad_request(e),
        };
        if let Err(e) = config.validate() {
            return bad_request(e.to_string());
        }
        match self.boot(&config) {
            Ok(()) => ApiResponse::Empty,
            Err(e) => {
                log::error!("InstanceStart failed: {e}");
                bad_request(format!("InstanceStart failed: {e}"))
            }
        }
    }

    fn change_vm_state(&mut self, state: VmStateRequest) -> ApiResponse {
        let Some(vm) = self.vm.as_mut() else {
            return bad_request("the VM is not started");
        };
        let result = match state {
            VmStateRequest::Paused if vm.is_paused() => {
                return bad_request("the VM is already paused")
            }
            VmStateRequest::Resumed if !vm.is_paused() => {
                return bad_request("the VM is not paused")
            }
            VmStateRequest::Paused => vm.pause(),
            VmStateRequest::Resumed => vm.resume(),
        };
        match result {
            Ok(()) => {
                log::info!("VM {}", if vm.is_paused() { "paused" } else { "resumed" });
                ApiResponse::Empty
            }
            Err(e) => bad_request(e.to_string()),
        }
    }

    fn create_snapshot(&mut self, params: &SnapshotCreateParams) -> Result<(), String> {
        let Some(vm) = self.vm.as_mut() else {
            return Err("the VM is not started".into());
        };
        if !vm.is_paused() {
            return Err("pause the VM first (PATCH /vm {\"state\": \"Paused\"})".into());
        }
        let started = Instant::now();
        let kind = match params.snapshot_type {
            SnapshotType::Full => MemoryKind::Full,
            SnapshotType::Diff if !vm.dirty_logging() => {
                return Err("diff snapshots need dirty page tracking: boot with machine-config.track_dirty_pages or load with enable_diff_snapshots".into())
            }
            SnapshotType::Diff => MemoryKind::Diff,
        };
        let state = vm.save_state(kind).map_err(|e| e.to_string())?;
        let tmp = format::temp_path(&params.mem_file_path);
        let written = if vm.dirty_logging() {
            // Either way the dirty log restarts here: the next diff is
            // relative to this snapshot.
            let dirty = take_dirty_pages(vm.vm().fd(), vm.memory()).map_err(|e| e.to_string())?;
            let pages = match kind {
                MemoryKind::Full => Pages::All,
                MemoryKind::Diff => Pages::Dirty(&dirty),
            };
            dump(vm.memory(), &tmp, pages)
        } else {
            dump(vm.memory(), &tmp, Pages::All)
        }
        .map_err(|e| e.to_string())?;
        format::commit(&tmp, &params.mem_file_path).map_err(|e| e.to_string())?;
        format::save(&params.snapshot_path, &state).map_err(|e| e.to_string())?;
        log::info!(
            "{:?} snapshot written in {} ms: state {}, memory {} ({:.1} MiB of data)",
            kind,
            started.elapsed().as_millis(),
            params.snapshot_path.display(),
            params.mem_file_path.display(),
            written as f64 / (1 << 20) as f64
        );
        Ok(())
    }

    fn load_snapshot(&mut self, params: &SnapshotLoadParams) -> Result<(), String> {
        if self.vm.is_some() {
            return Err(
                "a VM is already running in this flint; load snapshots into a fresh one".into(),
            );
        }
        let started = Instant::now();
        let mut state: MicroVmState =
            format::load(&params.snapshot_path).map_err(|e| e.to_string())?;
        apply_overrides(&mut state.config, params)?;
        let config = &state.config;
        config.validate_drives().map_err(|e| e.to_string())?;
        config.validate_network().map_err(|e| e.to_string())?;
        if state.memory.total() > crate::memory::MAX_GUEST_MEMORY {
            return Err("the snapshot's guest memory is implausibly large".into());
        }
        if params.enable_diff_snapshots {
            state.config.machine_config.track_dirty_pages = true;
        }
        let mem = if params.copy_memory {
            load_copy(&params.mem_file_path, &state.memory)
        } else {
            map_private(&params.mem_file_path, &state.memory)
        }
        .map_err(|e| e.to_string())?;
        let config = state.config.clone();
        self.restore(state, mem).map_err(|e| e.to_string())?;
        self.pending = PendingConfig::from_config(config);
        log::info!(
            "snapshot {} restored in {} ms ({} memory)",
            params.snapshot_path.display(),
            started.elapsed().as_millis(),
            if params.copy_memory {
                "copied"
            } else {
                "lazily mapped"
            }
        );
        if params.resume_vm {
            if let Some(vm) = self.vm.as_mut() {
                vm.resume().map_err(|e| e.to_string())?;
                log::info!(
                    "restored VM resumed {} ms after load started",
                    started.elapsed().as_millis()
                );
            }
        }
        Ok(())
    }

    fn restore(
        &mut self,
        state: MicroVmState,
        mem: crate::memory::GuestMemory,
    ) -> Result<(), MicroVmError> {
        let vm = MicroVm::restore(RestoreSource { state, mem }, self.build_context())?;
        self.vm = Some(vm);
        Ok(())
    }

    /// Receives a migrating VM and runs it; `Some(signal)` if a signal ended
    /// the wait first.
    fn migrate_in(&mut self, address: &str) -> Result<Option<&'static str>, MicroVmError> {
        let wakeups = self.wakeups.clone();
        let mut received = None;
        let mut cancelled = || {
            received = wakeups
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .poll_signals();
            received.is_some()
        };
        let incoming = crate::migration::accept_incoming(address, &mut cancelled);
        let (mem, state, mut stream) = match incoming {
            Ok(incoming) => incoming,
            Err(crate::migration::MigrationError::Cancelled) => return Ok(received),
            Err(e) => return Err(MicroVmError::Snapshot(format!("incoming migration: {e}"))),
        };
        let config = state.config.clone();
        let result = self
            .restore(state, mem)
            .and_then(|()| match self.vm.as_mut() {
                Some(vm) => vm.resume(),
                None => Ok(()),
            });
        crate::migration::acknowledge(
            &mut stream,
            result.as_ref().map(|_| ()).map_err(|e| e.to_string()),
        );
        result?;
        self.pending = PendingConfig::from_config(config);
        log::info!("incoming migration complete: the VM runs here");
        Ok(None)
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

/// Applies a snapshot load's drive and tap overrides to the saved config.
fn apply_overrides(config: &mut VmConfig, params: &SnapshotLoadParams) -> Result<(), String> {
    for o in &params.drive_overrides {
        let drive = config
            .drives
            .iter_mut()
            .find(|d| d.drive_id == o.drive_id)
            .ok_or_else(|| {
                format!(
                    "drive_overrides: the snapshot has no drive {:?}",
                    o.drive_id
                )
            })?;
        drive.path_on_host = o.path_on_host.clone();
    }
    for o in &params.net_overrides {
        let net = config
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == o.iface_id)
            .ok_or_else(|| {
                format!(
                    "net_overrides: the snapshot has no interface {:?}",
                    o.iface_id
                )
            })?;
        net.host_dev_name = o.host_dev_name.clone();
    }
    Ok(())
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
