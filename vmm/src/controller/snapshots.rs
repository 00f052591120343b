//! Snapshots from the control loop: loading them into a fresh flint and
//! receiving a live migration (creating them and migrating away go through
//! the control thread: see `offload`).

use std::time::Instant;

use api::{MemBackendType, SnapshotLoadParams, VmConfig};

use super::{PendingConfig, Vmm};
use crate::microvm::{MicroVm, MicroVmError, RestoreSource};
use crate::snapshot::memory::{load_copy, map_private};
use crate::snapshot::MicroVmState;

/// Whether two paths name the same file: the same inode when both exist,
/// else the same spelling once `.` components are dropped. (Only `stat` is
/// used: the VMM thread's seccomp filter has no `readlink`/`getcwd`.)
pub(super) fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        return ma.dev() == mb.dev() && ma.ino() == mb.ino();
    }
    let plain = |p: &std::path::Path| -> std::path::PathBuf {
        p.components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect()
    };
    plain(a) == plain(b)
}

impl Vmm {
    pub(super) fn load_snapshot(&mut self, params: &SnapshotLoadParams) -> Result<(), String> {
        if self.vm.is_some() {
            return Err(
                "a VM is already running in this flint; load snapshots into a fresh one".into(),
            );
        }
        let started = Instant::now();
        let mut state: MicroVmState =
            crate::snapshot::load_state(&params.snapshot_path).map_err(|e| e.to_string())?;
        apply_overrides(&mut state.config, params)?;
        let config = &state.config;
        config.validate_drives().map_err(|e| e.to_string())?;
        config.validate_network().map_err(|e| e.to_string())?;
        if state.memory.total() > crate::memory::MAX_GUEST_MEMORY {
            return Err("the snapshot's guest memory is implausibly large".into());
        }
        state.validate(crate::snapshot::memory::host_ram())?;
        if params.enable_diff_snapshots {
            state.config.machine_config.track_dirty_pages = true;
        }
        let (mem, uffd, how) = match params.mem_backend {
            // The handler gets the regions before anything touches them.
            MemBackendType::Uffd => {
                let (mem, backend) = crate::snapshot::uffd::memory_from_handler(
                    &params.mem_file_path,
                    &state.memory,
                )
                .map_err(|e| e.to_string())?;
                (mem, Some(backend), "served by a page-fault handler")
            }
            MemBackendType::File if params.copy_memory => (
                load_copy(&params.mem_file_path, &state.memory, state.snapshot_id)
                    .map_err(|e| e.to_string())?,
                None,
                "copied",
            ),
            MemBackendType::File => (
                map_private(&params.mem_file_path, &state.memory, state.snapshot_id)
                    .map_err(|e| e.to_string())?,
                None,
                "lazily mapped",
            ),
        };
        let config = state.config.clone();
        // On failure the VM and `uffd` are dropped: the handler sees its
        // connection close.
        self.restore(state, mem).map_err(|e| e.to_string())?;
        self.uffd = uffd;
        self.pending = PendingConfig::from_config(config);
        crate::metrics::record_latency(crate::metrics::Latency::LoadSnapshot, started.elapsed());
        log::info!(
            "snapshot {} restored in {} ms (memory {how})",
            params.snapshot_path.display(),
            started.elapsed().as_millis(),
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
        self.wire_mmds()
    }

    /// Receives a migrating VM and runs it; `Some(signal)` if a signal ended
    /// the wait first. The VM is restored paused and only resumed once the
    /// source has committed (see `migration::handoff`); on any failure
    /// before that it is discarded.
    pub(super) fn migrate_in(
        &mut self,
        listen: &super::MigrateListen,
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
        let incoming = crate::migration::accept_incoming(
            &listen.address,
            &listen.key,
            &listen.policy,
            &mut cancelled,
        );
        let crate::migration::Incoming {
            mem,
            state,
            mut channel,
        } = match incoming {
            Ok(incoming) => incoming,
            Err(crate::migration::MigrationError::Cancelled) => return Ok(received),
            Err(e) => return Err(MicroVmError::Snapshot(format!("incoming migration: {e}"))),
        };
        let config = state.config.clone();
        let restored = self.restore(state, mem).map_err(|e| e.to_string());
        let vm = &mut self.vm;
        let finished =
            crate::migration::finish_incoming(&mut channel, restored, &mut || match vm.as_mut() {
                Some(vm) => vm.resume().map_err(|e| e.to_string()),
                None => Err("no VM was restored".into()),
            });
        if let Err(e) = finished {
            // Not committed (or lost): this flint must not run the guest.
            if let Some(mut vm) = self.vm.take() {
                vm.stop();
            }
            return Err(MicroVmError::Snapshot(format!(
                "incoming migration, restored VM discarded: {e}"
            )));
        }
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

#[cfg(test)]
mod tests {
    use super::same_file;

    #[test]
    fn state_and_memory_paths_naming_one_file_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        assert!(
            same_file(&a, &dir.path().join(".").join("a")),
            "not yet created"
        );
        assert!(!same_file(&a, &dir.path().join("b")));
        std::fs::write(&a, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        assert!(same_file(&a, &link), "through a symlink");
        std::fs::hard_link(&a, dir.path().join("hard")).unwrap();
        assert!(same_file(&dir.path().join("hard"), &a), "a hard link");
    }
}
