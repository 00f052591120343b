//! The VMM thread's side of the control thread: starting snapshot and
//! migration jobs (the quick part: pause, collect state, read the dirty
//! log) and answering the control thread's events.

use api::{ApiMessage, ApiRequest, ApiResponse, MigrateParams, SnapshotCreateParams, SnapshotType};

use super::control::{Event, Job, MigrateJob, OpenHow, OpenJob, SnapshotJob};
use super::requests::bad_request;
use super::snapshots::same_file;
use super::Vmm;
use crate::migration::MigrationError;
use crate::snapshot::memory::take_dirty_pages;
use crate::snapshot::MemoryKind;
use crate::wakeups::Outcome;

impl Vmm {
    /// Starts the requests the control thread serves (snapshot creation,
    /// migration) and refuses those that would disturb a running job;
    /// gives every other request back.
    pub(super) fn hand_to_control(&mut self, message: ApiMessage) -> Option<ApiMessage> {
        let ApiMessage { request, reply } = message;
        let disturbs = matches!(
            request,
            ApiRequest::CreateSnapshot(_)
                | ApiRequest::Migrate(_)
                | ApiRequest::PatchVm(_)
                | ApiRequest::LoadSnapshot(_)
        );
        if let Some(busy) = self.control_busy.filter(|_| disturbs) {
            let _ = reply.send(bad_request(format!("{busy}; try again when it is done")));
            return None;
        }
        let refused = match (&request, self.vm.as_ref()) {
            (ApiRequest::CreateSnapshot(_), Some(vm)) => {
                crate::devices::fs::refuse_snapshot(vm.config(), "snapshotted").err()
            }
            (ApiRequest::Migrate(_), Some(vm)) => {
                crate::devices::fs::refuse_snapshot(vm.config(), "migrated").err()
            }
            _ => None,
        };
        if let Some(why) = refused {
            let _ = reply.send(bad_request(why));
            return None;
        }
        let request = self.open_elsewhere(request, &reply)?;
        let started = match request {
            ApiRequest::CreateSnapshot(params) => self.start_snapshot(&params, reply.clone()),
            ApiRequest::Migrate(params) => self.start_migration(&params, reply.clone()),
            request => return Some(ApiMessage { request, reply }),
        };
        if let Err(e) = started {
            let _ = reply.send(bad_request(e));
        }
        None
    }

    /// Once the VMM thread is confined (no `open` in its filter), a request
    /// that names a file to open goes to the control thread first, which
    /// opens it and sends it back with the request (served then with the
    /// file in `self.preopened`). Other requests are given back.
    fn open_elsewhere(
        &mut self,
        request: ApiRequest,
        reply: &std::sync::mpsc::Sender<ApiResponse>,
    ) -> Option<ApiRequest> {
        if !self.confined {
            return Some(request);
        }
        let (path, how) = match &request {
            ApiRequest::PatchDrive(patch) => {
                let Some(path) = &patch.path_on_host else {
                    return Some(request);
                };
                let drive = self.vm.as_ref().and_then(|vm| {
                    vm.config()
                        .drives
                        .iter()
                        .find(|d| d.drive_id == patch.drive_id)
                });
                // An unknown drive: the usual answer (404), no open.
                let Some(drive) = drive else {
                    return Some(request);
                };
                (
                    path.clone(),
                    OpenHow::Image {
                        read_only: drive.is_read_only,
                    },
                )
            }
            ApiRequest::PutLogger(config) => match &config.log_path {
                Some(path) => (path.clone(), OpenHow::Output),
                None => return Some(request),
            },
            ApiRequest::PutMetrics(config) => (config.metrics_path.clone(), OpenHow::Output),
            _ => return Some(request),
        };
        let job = Job::Open(OpenJob {
            path,
            how,
            request,
            reply: reply.clone(),
        });
        let submitted = self.control.as_ref().is_some_and(|c| c.submit(job));
        if !submitted {
            let _ = reply.send(bad_request("the control thread is gone"));
        }
        None
    }

    /// The file opened for `path` by the control thread, if the request
    /// being served came with one (see `open_elsewhere`).
    pub(super) fn take_preopened(
        &mut self,
        path: &std::path::Path,
    ) -> Option<std::io::Result<std::fs::File>> {
        match self.preopened.take() {
            Some((opened, file)) if opened == path => Some(file),
            other => {
                self.preopened = other;
                None
            }
        }
    }

    fn submit(&mut self, job: Job, busy: &'static str) -> Result<(), String> {
        let control = self.control.as_ref().ok_or("no control thread")?;
        if !control.submit(job) {
            return Err("the control thread is gone".into());
        }
        self.control_busy = Some(busy);
        Ok(())
    }

    /// Collects a paused VM's state and dirty pages and has the control
    /// thread write the files; the answer comes when they are written.
    fn start_snapshot(
        &mut self,
        params: &SnapshotCreateParams,
        reply: std::sync::mpsc::Sender<ApiResponse>,
    ) -> Result<(), String> {
        let Some(vm) = self.vm.as_mut() else {
            return Err("the VM is not started".into());
        };
        if !vm.is_paused() {
            return Err("pause the VM first (PATCH /vm {\"state\": \"Paused\"})".into());
        }
        if same_file(&params.snapshot_path, &params.mem_file_path) {
            return Err(format!(
                "snapshot_path and mem_file_path are the same file ({})",
                params.snapshot_path.display()
            ));
        }
        let kind = match params.snapshot_type {
            SnapshotType::Full => MemoryKind::Full,
            SnapshotType::Diff if !vm.dirty_logging() => {
                return Err("diff snapshots need dirty page tracking: boot with machine-config.track_dirty_pages or load with enable_diff_snapshots".into())
            }
            SnapshotType::Diff => MemoryKind::Diff,
        };
        let state = vm.save_state(kind).map_err(|e| e.to_string())?;
        let state_bytes = crate::snapshot::encode_state(&state).map_err(|e| e.to_string())?;
        // Either way the dirty log restarts here: the next diff is relative
        // to this snapshot. The files go to temporary names first (see
        // control::write_snapshot), so a failure leaves the previous pair.
        let dirty = if vm.dirty_logging() {
            let dirty = take_dirty_pages(vm.vm().fd(), vm.memory()).map_err(|e| e.to_string())?;
            (kind == MemoryKind::Diff).then_some(dirty)
        } else {
            None
        };
        let job = Job::WriteSnapshot(SnapshotJob {
            mem: vm.memory().clone(),
            dirty,
            mem_path: params.mem_file_path.clone(),
            state_path: params.snapshot_path.clone(),
            state_bytes,
            id: state.snapshot_id,
            kind: match kind {
                MemoryKind::Full => "Full",
                MemoryKind::Diff => "Diff",
            },
            reply,
        });
        self.submit(job, "a snapshot is being written")
    }

    /// Turns dirty logging on and has the control thread stream the VM.
    fn start_migration(
        &mut self,
        params: &MigrateParams,
        reply: std::sync::mpsc::Sender<ApiResponse>,
    ) -> Result<(), String> {
        let Some(vm) = self.vm.as_mut() else {
            return Err("the VM is not started".into());
        };
        crate::migration::Address::parse(&params.destination).map_err(|e| e.to_string())?;
        self.migration_undo = (vm.is_paused(), vm.dirty_logging());
        vm.set_dirty_logging(true).map_err(|e| e.to_string())?;
        let job = Job::Migrate(MigrateJob {
            mem: vm.memory().clone(),
            destination: params.destination.clone(),
            key_path: params.key_path.clone(),
            reply,
        });
        let submitted = self.submit(job, "a migration is in progress");
        if submitted.is_err() {
            self.undo_migration();
        }
        submitted
    }

    /// After a migration failed before COMMIT: the VM runs here again as
    /// it did before.
    fn undo_migration(&mut self) {
        let (was_paused, logging_before) = self.migration_undo;
        let Some(vm) = self.vm.as_mut() else {
            return;
        };
        if !was_paused && vm.is_paused() {
            if let Err(e) = vm.resume() {
                log::error!("migration failed and the VM could not be resumed: {e}");
            }
        }
        if !logging_before {
            if let Err(e) = vm.set_dirty_logging(false) {
                log::warn!("turning dirty logging off again: {e}");
            }
        }
    }

    /// Answers what the control thread asked or reported.
    pub(super) fn serve_control(&mut self) {
        let mut events = Vec::new();
        if let Some(control) = &self.control {
            while let Some(event) = control.next_event() {
                events.push(event);
            }
        }
        for event in events {
            self.on_control_event(event);
        }
    }

    fn on_control_event(&mut self, event: Event) {
        match event {
            Event::SnapshotWritten { result, reply } => {
                self.control_busy = None;
                let _ = reply.send(match result {
                    Ok(()) => ApiResponse::Empty,
                    Err(e) => bad_request(e),
                });
            }
            Event::DirtyPages { answer } => {
                let dirty = match self.vm.as_ref() {
                    Some(vm) => {
                        take_dirty_pages(vm.vm().fd(), vm.memory()).map_err(|e| e.to_string())
                    }
                    None => Err("the VM is gone".into()),
                };
                let _ = answer.send(dirty);
            }
            Event::PauseAndCollect { answer } => {
                let collected = match self.vm.as_mut() {
                    Some(vm) => (|| {
                        if !vm.is_paused() {
                            vm.pause().map_err(|e| e.to_string())?;
                        }
                        let dirty = take_dirty_pages(vm.vm().fd(), vm.memory())
                            .map_err(|e| e.to_string())?;
                        let state = vm.save_state(MemoryKind::Full).map_err(|e| e.to_string())?;
                        let encoded =
                            crate::snapshot::encode_state(&state).map_err(|e| e.to_string())?;
                        Ok((dirty, encoded))
                    })(),
                    None => Err("the VM is gone".into()),
                };
                let _ = answer.send(collected);
            }
            Event::Opened {
                path,
                file,
                request,
                reply,
            } => {
                self.preopened = Some((path, file));
                let response = self.handle(request);
                self.preopened = None;
                let _ = reply.send(response);
            }
            Event::MigrationEnded {
                result,
                destination,
                reply,
            } => {
                self.control_busy = None;
                let response = match result {
                    Ok(report) => {
                        log::info!(
                            "migration to {destination} complete: {} rounds, {:.1} MiB of memory and {} KiB of state sent, total {} ms, downtime {} ms",
                            report.rounds,
                            report.bytes as f64 / (1 << 20) as f64,
                            report.state_bytes / 1024,
                            report.total.as_millis(),
                            report.downtime.as_millis()
                        );
                        self.end_requested = Some(Outcome::Migrated);
                        ApiResponse::Empty
                    }
                    Err(e @ MigrationError::AfterCommit(_)) => {
                        log::error!("migration to {destination}: {e}");
                        self.end_requested = Some(Outcome::Fatal {
                            vcpu: 0,
                            reason: format!("migration to {destination}: {e}"),
                        });
                        bad_request(format!("migration: {e}"))
                    }
                    Err(e) => {
                        self.undo_migration();
                        log::error!("migration to {destination} failed, the VM stays here: {e}");
                        bad_request(format!("migration failed (the VM keeps running here): {e}"))
                    }
                };
                let _ = reply.send(response);
            }
        }
    }
}
