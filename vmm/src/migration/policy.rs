//! What an incoming migration may ask of the destination. The source's
//! state is untrusted input even from a peer holding the key: it must not
//! pick host files, nor more memory, vCPUs or devices than this flint allows.

use std::path::PathBuf;

use api::{DriveOverride, NetOverride, VmConfig};

use crate::snapshot::{MemoryLayout, MicroVmState, MAX_VCPUS};

/// How many virtio devices fit: one GSI each between the first and last
/// device GSI.
pub const MAX_DEVICES: usize =
    (arch::layout::IRQ_DEVICES_END - arch::layout::IRQ_DEVICES_START + 1) as usize;

/// The destination's limits and the host resources it allows, all from its
/// own command line (never from the wire).
#[derive(Debug, Clone, Default)]
pub struct IncomingPolicy {
    /// Most guest memory, in bytes, the destination commits (0: host RAM).
    pub max_mem: u64,
    /// The backing file of each drive, by drive id. A drive of the
    /// incoming VM without an entry here is refused.
    pub drives: Vec<DriveOverride>,
    /// The tap of each interface, by interface id; same rule.
    pub nets: Vec<NetOverride>,
    /// The vsock device's host socket path; an incoming vsock device is
    /// refused without it.
    pub vsock_uds: Option<PathBuf>,
}

impl IncomingPolicy {
    /// The memory limit in effect: `max_mem`, else host RAM, and never more
    /// than flint's own ceiling.
    pub fn memory_limit(&self) -> u64 {
        let host = crate::snapshot::memory::host_ram();
        let asked = if self.max_mem == 0 {
            host
        } else {
            self.max_mem
        };
        asked.min(crate::memory::MAX_GUEST_MEMORY)
    }

    /// Checks the announced memory layout before any memory is allocated.
    pub fn check_layout(&self, layout: &MemoryLayout) -> Result<(), String> {
        let limit = self.memory_limit();
        if layout.total() > limit {
            return Err(format!(
                "the incoming VM has {} MiB of memory, this flint allows {} MiB (--max-mem-mib)",
                layout.total() >> 20,
                limit >> 20
            ));
        }
        layout.validate(limit).map_err(|e| e.to_string())
    }

    /// Checks the incoming state against the limits and puts the
    /// destination's own host paths in place of the wire's.
    pub fn apply(&self, state: &mut MicroVmState) -> Result<(), String> {
        self.check_layout(&state.memory)?;
        let vcpus = usize::from(state.config.machine_config.vcpu_count);
        if vcpus == 0 || vcpus > MAX_VCPUS || state.vcpus.len() > MAX_VCPUS {
            return Err(format!(
                "the incoming VM has {vcpus} vCPUs (1 to {MAX_VCPUS} allowed)"
            ));
        }
        let devices = crate::devices::configured_names(&state.config).len();
        if devices > MAX_DEVICES || state.devices.virtio.len() > MAX_DEVICES {
            return Err(format!(
                "the incoming VM has {devices} devices, at most {MAX_DEVICES} fit"
            ));
        }
        self.rewrite_host_paths(&mut state.config)
    }

    fn rewrite_host_paths(&self, config: &mut VmConfig) -> Result<(), String> {
        for drive in &mut config.drives {
            let allowed = self
                .drives
                .iter()
                .find(|o| o.drive_id == drive.drive_id)
                .ok_or_else(|| {
                    format!(
                        "the incoming VM has drive {:?} ({}); this flint opens only the drives \
                         given with --drive-override {}=PATH",
                        drive.drive_id,
                        drive.path_on_host.display(),
                        drive.drive_id
                    )
                })?;
            drive.path_on_host = allowed.path_on_host.clone();
        }
        for net in &mut config.network_interfaces {
            let allowed = self
                .nets
                .iter()
                .find(|o| o.iface_id == net.iface_id)
                .ok_or_else(|| {
                    format!(
                        "the incoming VM has interface {:?} (tap {}); this flint attaches only \
                         the taps given with --net-override {}=TAP",
                        net.iface_id, net.host_dev_name, net.iface_id
                    )
                })?;
            net.host_dev_name = allowed.host_dev_name.clone();
        }
        if let Some(vsock) = &mut config.vsock {
            let uds = self.vsock_uds.clone().ok_or_else(|| {
                format!(
                    "the incoming VM has a vsock device (socket {}); give --vsock-override PATH",
                    vsock.uds_path.display()
                )
            })?;
            vsock.uds_path = uds;
        }
        if let Some(serial) = &mut config.serial {
            if let Some(path) = serial.serial_out_path.take() {
                log::warn!(
                    "incoming migration: the serial output file {} is not opened here; \
                     the console goes to this flint's default",
                    path.display()
                );
            }
        }
        // Never opened on restore, but not the source's business either.
        config.boot_source.kernel_image_path = PathBuf::new();
        config.boot_source.initrd_path = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        serde_json::from_value(serde_json::json!({
            "boot-source": {"kernel_image_path": "/boot/vmlinux"},
            "drives": [{"drive_id": "rootfs", "path_on_host": "/etc/shadow", "is_root_device": true}],
            "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "br-host"}],
            "serial": {"serial_out_path": "/root/.bashrc"},
        }))
        .unwrap()
    }

    fn allowed() -> IncomingPolicy {
        IncomingPolicy {
            drives: vec![DriveOverride {
                drive_id: "rootfs".into(),
                path_on_host: "/srv/vm/root.ext4".into(),
            }],
            nets: vec![NetOverride {
                iface_id: "eth0".into(),
                host_dev_name: "tap7".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn host_paths_come_from_the_destination_only() {
        let mut c = config();
        allowed().rewrite_host_paths(&mut c).unwrap();
        assert_eq!(c.drives[0].path_on_host, PathBuf::from("/srv/vm/root.ext4"));
        assert_eq!(c.network_interfaces[0].host_dev_name, "tap7");
        assert_eq!(c.serial.unwrap().serial_out_path, None);
        assert_eq!(c.boot_source.kernel_image_path, PathBuf::new());
    }

    #[test]
    fn a_disk_or_tap_the_destination_did_not_allow_is_refused() {
        let mut policy = allowed();
        policy.drives.clear();
        let err = policy.rewrite_host_paths(&mut config()).unwrap_err();
        assert!(
            err.contains("\"rootfs\"") && err.contains("--drive-override"),
            "{err}"
        );
        let mut policy = allowed();
        policy.nets[0].iface_id = "eth1".into();
        let err = policy.rewrite_host_paths(&mut config()).unwrap_err();
        assert!(err.contains("--net-override"), "{err}");
    }

    #[test]
    fn memory_beyond_the_limit_is_refused_before_allocation() {
        let policy = IncomingPolicy {
            max_mem: 64 << 20,
            ..Default::default()
        };
        let small = MemoryLayout {
            regions: vec![(0, 64 << 20)],
        };
        policy.check_layout(&small).unwrap();
        let big = MemoryLayout {
            regions: vec![(0, 128 << 20)],
        };
        let err = policy.check_layout(&big).unwrap_err();
        assert!(err.contains("--max-mem-mib"), "{err}");
        // The default is the host's RAM, never more than flint's ceiling.
        let default = IncomingPolicy::default().memory_limit();
        assert!(default > 0 && default <= crate::memory::MAX_GUEST_MEMORY);
    }
}
