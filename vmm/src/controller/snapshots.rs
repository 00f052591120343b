//! Snapshots from the control loop: creating them from a paused VM,
//! loading them into a fresh flint, and receiving a live migration.

use std::time::Instant;

use api::{SnapshotCreateParams, SnapshotLoadParams, SnapshotType, VmConfig};

use super::{PendingConfig, Vmm};
use crate::microvm::{MicroVm, MicroVmError, RestoreSource};
use crate::snapshot::format;
use crate::snapshot::memory::{dump, load_copy, map_private, take_dirty_pages, Pages};
use crate::snapshot::{MemoryKind, MicroVmState};

impl Vmm {
    pub(super) fn create_snapshot(&mut self, params: &SnapshotCreateParams) -> Result<(), String> {
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

    pub(super) fn load_snapshot(&mut self, params: &SnapshotLoadParams) -> Result<(), String> {
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
    pub(super) fn migrate_in(
        &mut self,
        address: &str,
    ) -> Result<Option<&'static str>, MicroVmError> {
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
