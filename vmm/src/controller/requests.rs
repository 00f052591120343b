//! The API requests the control loop serves: configuration before boot,
//! lifecycle actions, pause/resume, run-time device updates, logger and
//! metrics.

use api::{ActionType, ApiError, ApiRequest, ApiResponse, InstanceInfo, VmConfig, VmStateRequest};

use super::{PendingConfig, Vmm};
use crate::devices::balloon::{self, BalloonKind, BalloonPatch};
use crate::wakeups::Outcome;

/// A 400 answer whose fault message says why.
pub(super) fn bad_request(message: impl Into<String>) -> ApiResponse {
    ApiResponse::Error(ApiError::bad_request(message))
}

impl Vmm {
    pub(super) fn handle(&mut self, request: ApiRequest) -> ApiResponse {
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
            R::PutMachineConfig(_)
            | R::PatchMachineConfig(_)
            | R::PutBootSource(_)
            | R::PutDrive(_)
            | R::PutNetworkInterface(_)
            | R::PutVsock(_)
            | R::PutEntropy(_)
            | R::PutBalloon(_)
            | R::PutSerial(_)
            | R::PutMmdsConfig(_)
            | R::PutPmem(_)
            | R::PutFs(_)
            | R::PutMemoryHotplug(_)
            | R::PutCpuConfig(_)
                if started =>
            {
                bad_request(
                    "the VM is already running: this can only be configured before InstanceStart",
                )
            }
            R::PutCpuConfig(config) => {
                self.pending.cpu_config = Some(config);
                ApiResponse::Empty
            }
            R::PutMachineConfig(machine) => {
                self.update_section(|p| p.machine = machine, VmConfig::validate_machine_config)
            }
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
                    if let Some(v) = patch.huge_pages {
                        m.huge_pages = v;
                    }
                },
                VmConfig::validate_machine_config,
            ),
            R::PutBootSource(source) => self.update_section(
                |p| p.boot_source = Some(source),
                VmConfig::validate_boot_source,
            ),
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
            // Pre-boot sections of devices the lead wires later: stored in
            // the pending config (so GET /vm/config shows them) and checked
            // like the config file's (including that the devices fit).
            R::PutVsock(vsock) => {
                self.update_section(|p| p.vsock = Some(vsock), VmConfig::validate_vsock)
            }
            R::PutEntropy(entropy) => {
                self.update_section(|p| p.entropy = Some(entropy), VmConfig::validate_entropy)
            }
            R::PutMmdsConfig(config) => self.put_mmds_config(config),
            // The contents are a JSON object (the spec's MmdsContents), so
            // GET always answers one; a patch that is an object keeps it one.
            R::PutMmds(data) | R::PatchMmds(data) if !data.is_object() => {
                bad_request("the MMDS contents must be a JSON object")
            }
            R::PutMmds(data) => match self.mmds_store().put(data) {
                Ok(()) => ApiResponse::Empty,
                Err(e) => bad_request(e.to_string()),
            },
            R::PatchMmds(patch) => match self.mmds_store().patch(&patch) {
                Ok(()) => ApiResponse::Empty,
                Err(e) => bad_request(e.to_string()),
            },
            R::GetMmds => {
                let store = self.mmds_store();
                let data = store.get();
                ApiResponse::Mmds(if data.is_object() {
                    data.clone()
                } else {
                    serde_json::json!({})
                })
            }
            R::PutSerial(serial) => {
                self.update_section(|p| p.serial = Some(serial), VmConfig::validate_serial)
            }
            R::PutBalloon(balloon) => {
                self.update_section(|p| p.balloon = Some(balloon), VmConfig::validate_balloon)
            }
            R::GetBalloon if !started => match &self.pending.balloon {
                Some(balloon) => ApiResponse::Balloon(balloon.clone()),
                None => bad_request("no balloon device is configured (PUT /balloon first)"),
            },
            R::PatchBalloon(update) if !started => {
                if self.pending.balloon.is_none() {
                    return bad_request("no balloon device is configured (PUT /balloon first)");
                }
                self.update_section(
                    |p| {
                        if let Some(b) = p.balloon.as_mut() {
                            b.amount_mib = update.amount_mib;
                        }
                    },
                    VmConfig::validate_balloon,
                )
            }
            R::PatchBalloonStatistics(update) if !started => {
                if self.pending.balloon.is_none() {
                    return bad_request("no balloon device is configured (PUT /balloon first)");
                }
                self.update_section(
                    |p| {
                        if let Some(b) = p.balloon.as_mut() {
                            b.stats_polling_interval_s = update.stats_polling_interval_s;
                        }
                    },
                    VmConfig::validate_balloon,
                )
            }
            R::GetBalloonStatistics
            | R::StartBalloonHinting(_)
            | R::StopBalloonHinting
            | R::GetBalloonHintingStatus
                if !started =>
            {
                bad_request("the VM is not started")
            }
            // Run-time balloon requests, on the running device.
            R::GetBalloon => {
                self.with_balloon(|b| Ok(ApiResponse::Balloon(balloon::api_config(b))))
            }
            R::GetBalloonStatistics => {
                self.with_balloon(|b| balloon::api_stats(b).map(ApiResponse::BalloonStatistics))
            }
            R::PutPmem(pmem) => self.update_section(
                |p| match p.pmem.iter_mut().find(|d| d.id == pmem.id) {
                    Some(existing) => *existing = pmem,
                    None => p.pmem.push(pmem),
                },
                |c| c.validate_devmem().and_then(|()| c.validate_device_count()),
            ),
            R::PutFs(fs) => self.update_section(
                |p| match p.fs.iter_mut().find(|d| d.tag == fs.tag) {
                    Some(existing) => *existing = fs,
                    None => p.fs.push(fs),
                },
                |c| c.validate_fs().and_then(|()| c.validate_device_count()),
            ),
            R::PutMemoryHotplug(hotplug) => self.update_section(
                |p| p.memory_hotplug = Some(hotplug),
                |c| c.validate_devmem().and_then(|()| c.validate_device_count()),
            ),
            R::GetMemoryHotplug | R::PatchMemoryHotplug(_) => self.memory_hotplug(request),
            R::PatchBalloon(update) => {
                let mem = self
                    .vm
                    .as_ref()
                    .map_or(0, |vm| vm.config().machine_config.mem_size_mib);
                if u64::from(update.amount_mib) > mem {
                    return bad_request(format!(
                        "balloon target {} MiB is larger than guest memory ({mem} MiB)",
                        update.amount_mib
                    ));
                }
                self.patch_balloon(BalloonPatch::Target(update.amount_mib))
            }
            R::PatchBalloonStatistics(update) => {
                self.patch_balloon(BalloonPatch::StatsInterval(update.stats_polling_interval_s))
            }
            R::StartBalloonHinting(start) => self.with_balloon(|b| {
                b.start_hinting_with(start.acknowledge_on_stop)
                    .map(|_| ApiResponse::Empty)
                    .map_err(|e| e.to_string())
            }),
            R::StopBalloonHinting => self.with_balloon(|b| {
                b.stop_hinting()
                    .map(|()| ApiResponse::Empty)
                    .map_err(|e| e.to_string())
            }),
            R::GetBalloonHintingStatus => self.with_balloon(|b| {
                b.hinting_status()
                    .map(|s| {
                        ApiResponse::BalloonHintingStatus(api::BalloonHintingStatus {
                            host_cmd: s.host_cmd,
                            guest_cmd: s.guest_cmd,
                        })
                    })
                    .map_err(|e| e.to_string())
            }),
            R::PatchDrive(patch) => {
                let known = self
                    .pending
                    .drives
                    .iter()
                    .any(|d| d.drive_id == patch.drive_id);
                if let (Some(_), false) = (&self.vm, known) {
                    return ApiResponse::Error(ApiError::not_found(format!(
                        "no drive {:?}",
                        patch.drive_id
                    )));
                }
                if self.vm.is_some() {
                    if patch.path_on_host.as_ref().is_some_and(|p| !p.is_file()) {
                        return bad_request(format!(
                            "drives[{}].path_on_host: not a file",
                            patch.drive_id
                        ));
                    }
                    // The image the control thread opened (a confined VMM
                    // thread may not open it itself).
                    let preopened = patch
                        .path_on_host
                        .as_deref()
                        .and_then(|p| self.take_preopened(p));
                    let Some(vm) = self.vm.as_mut() else {
                        return bad_request("the VM is not started");
                    };
                    if let (Some(path), Some(file)) = (&patch.path_on_host, preopened) {
                        let file = match file {
                            Ok(file) => file,
                            Err(e) => {
                                return bad_request(format!(
                                    "drive {}: opening {}: {e}",
                                    patch.drive_id,
                                    path.display()
                                ))
                            }
                        };
                        let handed = vm.with_device::<crate::devices::block::BlockKind, _>(
                            &patch.drive_id,
                            |b| b.preopen(path.clone(), file),
                        );
                        if let Err(e) = handed {
                            return bad_request(e);
                        }
                    }
                    return match vm.update_device::<crate::devices::block::BlockKind>(&patch) {
                        Ok(()) => {
                            self.pending = PendingConfig::from_config(vm.config().clone());
                            ApiResponse::Empty
                        }
                        Err(e) => bad_request(e),
                    };
                }
                let Some(index) = self
                    .pending
                    .drives
                    .iter()
                    .position(|d| d.drive_id == patch.drive_id)
                else {
                    return ApiResponse::Error(ApiError::not_found(format!(
                        "no drive {:?}",
                        patch.drive_id
                    )));
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
                let known = self
                    .pending
                    .nets
                    .iter()
                    .any(|n| n.iface_id == patch.iface_id);
                if let (Some(_), false) = (&self.vm, known) {
                    return ApiResponse::Error(ApiError::not_found(format!(
                        "no network interface {:?}",
                        patch.iface_id
                    )));
                }
                if let Some(vm) = self.vm.as_mut() {
                    return match vm.update_device::<crate::devices::net::NetKind>(&patch) {
                        Ok(()) => {
                            self.pending = PendingConfig::from_config(vm.config().clone());
                            ApiResponse::Empty
                        }
                        Err(e) => bad_request(e),
                    };
                }
                let Some(index) = self
                    .pending
                    .nets
                    .iter()
                    .position(|n| n.iface_id == patch.iface_id)
                else {
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
                    return bad_request(
                        "the VM is not started (send SIGTERM to end a flint that has not booted)",
                    );
                }
                log::info!("stop requested through the API");
                self.end_requested = Some(Outcome::ApiStop);
                ApiResponse::Empty
            }
            R::Action(ActionType::SendCtrlAltDel) => match self.vm.as_ref() {
                None => bad_request("SendCtrlAltDel: the VM is not started"),
                Some(vm) => match vm.send_ctrl_alt_del() {
                    Ok(()) => ApiResponse::Empty,
                    Err(e) => bad_request(format!("SendCtrlAltDel: {e}")),
                },
            },
            R::Action(ActionType::FlushMetrics) => match self.metrics.as_mut() {
                // A failed write is the answer, not a 204.
                Some(sink) if sink.has_path() => match sink.write(self.vm.as_ref()) {
                    Ok(()) => ApiResponse::Empty,
                    Err(e) => bad_request(format!("FlushMetrics: {e}")),
                },
                // As Firecracker: without a metrics file there is nothing to flush.
                _ => ApiResponse::Empty,
            },
            R::PatchVm(state) => self.change_vm_state(state),
            // Served through the control thread before this (offload.rs).
            R::CreateSnapshot(_) | R::Migrate(_) => bad_request("internal: not served here"),
            R::LoadSnapshot(params) => match self.load_snapshot(&params) {
                Ok(()) => ApiResponse::Empty,
                Err(e) => bad_request(e),
            },
            R::PutLogger(config) => {
                let level = match config.level {
                    Some(level) => match crate::logger::parse_level(&format!("{level:?}")) {
                        Some(l) => Some(l),
                        None => return bad_request(format!("unknown log level {level:?}")),
                    },
                    None => None,
                };
                let preopened = config
                    .log_path
                    .as_deref()
                    .and_then(|p| self.take_preopened(p));
                let configured = match (config.log_path.as_deref(), preopened) {
                    (Some(path), Some(Ok(file))) => crate::logger::configure_with_file(
                        Some((path, file)),
                        level,
                        config.show_level,
                        config.show_log_origin,
                    ),
                    (Some(path), Some(Err(source))) => Err(crate::logger::LoggerError::Open {
                        path: path.display().to_string(),
                        source,
                    }),
                    (path, _) => crate::logger::configure(
                        path,
                        level,
                        config.show_level,
                        config.show_log_origin,
                    ),
                };
                match configured {
                    Ok(()) => {
                        if config.module.is_some() {
                            crate::logger::set_module(config.module);
                        }
                        ApiResponse::Empty
                    }
                    Err(e) => bad_request(e.to_string()),
                }
            }
            R::PutMetrics(config) => {
                let Some(sink) = self.metrics.as_mut() else {
                    return bad_request("metrics are unavailable");
                };
                let preopened = match self.preopened.take() {
                    Some((path, file)) if path == config.metrics_path => Some(file),
                    other => {
                        self.preopened = other;
                        None
                    }
                };
                let set = match preopened {
                    Some(file) => sink.set_file(&config.metrics_path, file),
                    None => sink.set_path(&config.metrics_path),
                };
                if let Err(e) = set {
                    return bad_request(e.to_string());
                }
                let id = config.emit_id.then_some(self.options.instance_id.as_str());
                sink.set_labels(id, config.properties.as_ref());
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

    /// The metadata store, locked (a panic elsewhere does not lose it).
    fn mmds_store(&self) -> std::sync::MutexGuard<'_, mmds::Mmds> {
        self.mmds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `PUT /mmds/config` before boot: Firecracker's checks and messages,
    /// then the version applies to the store at once and the interfaces
    /// get MMDS when the VM is built.
    fn put_mmds_config(&mut self, config: api::MmdsConfig) -> ApiResponse {
        if let Err(e) = config.validate() {
            return bad_request(e.to_string());
        }
        if self
            .pending
            .candidate()
            .unknown_mmds_interface(&config)
            .is_some()
        {
            return bad_request(api::MMDS_UNKNOWN_IFACE);
        }
        {
            let mut store = self.mmds_store();
            store.set_version(config.version);
            store.set_imds_compat(config.imds_compat);
        }
        self.pending.mmds = Some(config);
        ApiResponse::Empty
    }

    /// Answers a request on the running VM's balloon (400 if it has none).
    fn with_balloon(
        &mut self,
        f: impl FnOnce(&mut devices::virtio::balloon::Balloon) -> Result<ApiResponse, String>,
    ) -> ApiResponse {
        let Some(vm) = self.vm.as_ref() else {
            return bad_request("the VM is not started");
        };
        match vm.with_device::<BalloonKind, _>(balloon::BALLOON_ID, f) {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => bad_request(e),
            Err(_) => bad_request("no balloon device is configured"),
        }
    }

    /// Applies a run-time balloon change and records it in the config.
    fn patch_balloon(&mut self, patch: BalloonPatch) -> ApiResponse {
        let Some(vm) = self.vm.as_mut() else {
            return bad_request("the VM is not started");
        };
        if vm.config().balloon.is_none() {
            return bad_request("no balloon device is configured");
        }
        match vm.update_device::<BalloonKind>(&patch) {
            Ok(()) => {
                self.pending = PendingConfig::from_config(vm.config().clone());
                ApiResponse::Empty
            }
            Err(e) => bad_request(e),
        }
    }

    /// `GET`/`PATCH /hotplug/memory`: the pending section before boot, the
    /// virtio-mem device after.
    fn memory_hotplug(&mut self, request: ApiRequest) -> ApiResponse {
        use crate::devices::mem::{status, MemKind, ID};
        let Some(config) = self.pending.memory_hotplug.clone() else {
            return bad_request("no memory hotplug is configured (PUT /hotplug/memory first)");
        };
        match (request, self.vm.as_mut()) {
            (ApiRequest::GetMemoryHotplug, Some(vm)) => {
                match vm.with_device::<MemKind, _>(ID, |mem| status(mem)) {
                    Ok(s) => ApiResponse::MemoryHotplugStatus(s),
                    Err(e) => bad_request(e),
                }
            }
            (ApiRequest::GetMemoryHotplug, None) => {
                ApiResponse::MemoryHotplugStatus(api::MemoryHotplugStatus {
                    total_size_mib: config.total_size_mib,
                    slot_size_mib: config.slot_size_mib,
                    block_size_mib: config.block_size_mib,
                    plugged_size_mib: 0,
                    requested_size_mib: 0,
                })
            }
            (ApiRequest::PatchMemoryHotplug(patch), Some(vm)) => {
                match vm.update_device::<MemKind>(&patch) {
                    Ok(()) => ApiResponse::Empty,
                    Err(e) => bad_request(e),
                }
            }
            (ApiRequest::PatchMemoryHotplug(_), None) => bad_request(
                "the VM is not running: PATCH /hotplug/memory works after InstanceStart",
            ),
            _ => bad_request("not a memory hotplug request"),
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
            VmStateRequest::Paused => {
                let started = std::time::Instant::now();
                let paused = vm.pause();
                crate::metrics::record_latency(crate::metrics::Latency::PauseVm, started.elapsed());
                paused
            }
            VmStateRequest::Resumed => {
                let started = std::time::Instant::now();
                let resumed = vm.resume();
                crate::metrics::record_latency(
                    crate::metrics::Latency::ResumeVm,
                    started.elapsed(),
                );
                resumed
            }
        };
        match result {
            Ok(()) => {
                log::info!("VM {}", if vm.is_paused() { "paused" } else { "resumed" });
                ApiResponse::Empty
            }
            Err(e) => bad_request(e.to_string()),
        }
    }
}
