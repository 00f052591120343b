//! A stand-in VMM for the API tests and the `fake_vmm` example: it keeps the
//! pre-boot configuration, follows the lifecycle (start, pause, resume) and
//! records every request, but runs no VM. It shows the intended wiring: wait
//! on the eventfd, then drain the channel and answer each message.

#![allow(dead_code)]

use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use api::{
    ActionType, ApiError, ApiMessage, ApiRequest, ApiResponse, BootSourceConfig, DriveConfig,
    InstanceInfo, InstanceState, MachineConfig, NetConfig, VmConfig, VmStateRequest, MAX_VCPUS,
};
use vmm_sys_util::eventfd::EventFd;

/// The fake VMM's state.
#[derive(Default)]
pub struct Fake {
    pub started: bool,
    pub paused: bool,
    pub machine: MachineConfig,
    pub boot: Option<BootSourceConfig>,
    pub drives: Vec<DriveConfig>,
    pub nets: Vec<NetConfig>,
}

fn refuse(message: impl Into<String>) -> ApiResponse {
    ApiResponse::Error(ApiError::bad_request(message))
}

impl Fake {
    pub fn answer(&mut self, request: ApiRequest) -> ApiResponse {
        use ApiRequest::*;
        let pre_boot = matches!(
            request,
            PutMachineConfig(_)
                | PatchMachineConfig(_)
                | PutBootSource(_)
                | PutDrive(_)
                | PutNetworkInterface(_)
        );
        if pre_boot && self.started {
            return refuse("not allowed after the instance started");
        }
        match request {
            CreateSnapshot(_) if !self.paused => refuse("the VM must be paused"),
            CreateSnapshot(_) => ApiResponse::Empty,
            LoadSnapshot(_) if self.started => refuse("a VM is already running"),
            LoadSnapshot(_) => refuse("no such snapshot"),
            Migrate(_) => refuse("nothing to migrate"),
            GetInstanceInfo => ApiResponse::InstanceInfo(InstanceInfo {
                id: "fake-vmm".into(),
                state: match (self.started, self.paused) {
                    (false, _) => InstanceState::NotStarted,
                    (true, false) => InstanceState::Running,
                    (true, true) => InstanceState::Paused,
                },
                vmm_version: env!("CARGO_PKG_VERSION").into(),
                app_name: "flint".into(),
            }),
            GetMachineConfig => ApiResponse::MachineConfig(self.machine.clone()),
            PutMachineConfig(config) => self.set_machine(config),
            PatchMachineConfig(patch) => {
                let mut config = self.machine.clone();
                config.vcpu_count = patch.vcpu_count.unwrap_or(config.vcpu_count);
                config.mem_size_mib = patch.mem_size_mib.unwrap_or(config.mem_size_mib);
                config.cpu_template = patch.cpu_template.unwrap_or(config.cpu_template);
                config.emulation_quirks = patch.emulation_quirks.unwrap_or(config.emulation_quirks);
                self.set_machine(config)
            }
            PutBootSource(boot) => {
                self.boot = Some(boot);
                ApiResponse::Empty
            }
            PutDrive(drive) => {
                self.drives.retain(|d| d.drive_id != drive.drive_id);
                self.drives.push(drive);
                ApiResponse::Empty
            }
            PatchDrive(patch) => match self
                .drives
                .iter_mut()
                .find(|d| d.drive_id == patch.drive_id)
            {
                None => ApiResponse::Error(ApiError::not_found(format!(
                    "no drive {:?}",
                    patch.drive_id
                ))),
                Some(drive) => {
                    if let Some(path) = patch.path_on_host {
                        drive.path_on_host = path;
                    }
                    if patch.rate_limiter.is_some() {
                        drive.rate_limiter = patch.rate_limiter;
                    }
                    ApiResponse::Empty
                }
            },
            PutNetworkInterface(net) => {
                self.nets.retain(|n| n.iface_id != net.iface_id);
                self.nets.push(net);
                ApiResponse::Empty
            }
            PatchNetworkInterface(patch) => {
                match self.nets.iter_mut().find(|n| n.iface_id == patch.iface_id) {
                    None => ApiResponse::Error(ApiError::not_found(format!(
                        "no network interface {:?}",
                        patch.iface_id
                    ))),
                    Some(net) => {
                        net.rx_rate_limiter = patch.rx_rate_limiter.or(net.rx_rate_limiter.take());
                        net.tx_rate_limiter = patch.tx_rate_limiter.or(net.tx_rate_limiter.take());
                        ApiResponse::Empty
                    }
                }
            }
            Action(ActionType::InstanceStart) if self.started => refuse("already started"),
            Action(ActionType::InstanceStart) if self.boot.is_none() => refuse("no boot source"),
            Action(ActionType::InstanceStart) => {
                self.started = true;
                ApiResponse::Empty
            }
            Action(ActionType::SendCtrlAltDel) if !self.started => refuse("not started"),
            Action(_) => ApiResponse::Empty,
            PatchVm(_) if !self.started => refuse("not started"),
            PatchVm(state) => {
                self.paused = state == VmStateRequest::Paused;
                ApiResponse::Empty
            }
            GetVmConfig => ApiResponse::VmConfig(VmConfig {
                boot_source: self.boot.clone().unwrap_or(BootSourceConfig {
                    kernel_image_path: "".into(),
                    initrd_path: None,
                    boot_args: None,
                }),
                machine_config: self.machine.clone(),
                drives: self.drives.clone(),
                network_interfaces: self.nets.clone(),
            }),
            PutLogger(_) | PutMetrics(_) => ApiResponse::Empty,
        }
    }

    fn set_machine(&mut self, config: MachineConfig) -> ApiResponse {
        if !(1..=MAX_VCPUS).contains(&config.vcpu_count) {
            return refuse(format!("vcpu_count: {} is out of range", config.vcpu_count));
        }
        self.machine = config;
        ApiResponse::Empty
    }
}

/// The fake VMM's thread and what it saw.
pub struct FakeVmm {
    /// Every request answered, in order.
    pub requests: Arc<Mutex<Vec<ApiRequest>>>,
    wake: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl FakeVmm {
    /// Serves `rx` on a thread, sleeping `delay` before each answer (a busy
    /// VMM). Returns with the eventfd to hand to the server.
    pub fn start(rx: Receiver<ApiMessage>, delay: Duration) -> (FakeVmm, EventFd) {
        let wake = EventFd::new(0).expect("eventfd");
        let server_wake = wake.try_clone().expect("eventfd clone");
        let thread_wake = wake.try_clone().expect("eventfd clone");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        let thread = std::thread::spawn(move || serve(rx, &thread_wake, delay, &seen));
        let vmm = FakeVmm {
            requests,
            wake,
            thread: Some(thread),
        };
        (vmm, server_wake)
    }

    /// Lets the thread see the closed channel and waits for it.
    pub fn join(mut self) {
        let _ = self.wake.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The VMM loop: block on the eventfd, then drain the channel. Returns when
/// the server (the only sender) is gone.
pub fn serve(
    rx: Receiver<ApiMessage>,
    wake: &EventFd,
    delay: Duration,
    seen: &Mutex<Vec<ApiRequest>>,
) {
    let mut fake = Fake::default();
    loop {
        if wake.read().is_err() {
            return;
        }
        loop {
            match rx.try_recv() {
                Ok(ApiMessage { request, reply }) => {
                    std::thread::sleep(delay);
                    if let Ok(mut seen) = seen.lock() {
                        seen.push(request.clone());
                    }
                    let _ = reply.send(fake.answer(request));
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
    }
}
