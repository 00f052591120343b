//! Devices that map host memory into the guest: virtio-pmem (`pmem`,
//! Firecracker's `/pmem/{id}`) and virtio-mem (`memory-hotplug`,
//! Firecracker's `/hotplug/memory`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{ConfigError, VmConfig};

/// One virtio-pmem device: a host file the guest sees as `/dev/pmemN`
/// (Firecracker's `Pmem` body of `PUT /pmem/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PmemConfig {
    /// Unique id of the device.
    pub id: String,
    /// The host file mapped into the guest.
    pub path_on_host: PathBuf,
    /// Whether the guest boots from it (`root=/dev/pmem0`).
    #[serde(default)]
    pub root_device: bool,
    /// Whether the mapping (and so the guest's disk) is read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// The virtio-mem hotplug region (Firecracker's `MemoryHotplugConfig`,
/// body of `PUT /hotplug/memory`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryHotplugConfig {
    /// Size of the hotplug region: the most memory that can be plugged.
    pub total_size_mib: u64,
    /// Granularity of KVM memory slots the region is registered as.
    #[serde(default = "default_slot_size_mib")]
    pub slot_size_mib: u64,
    /// Granularity the guest plugs and unplugs in (at least 2 MiB).
    #[serde(default = "default_block_size_mib")]
    pub block_size_mib: u64,
}

fn default_slot_size_mib() -> u64 {
    128
}

fn default_block_size_mib() -> u64 {
    2
}

/// Body of `PATCH /hotplug/memory` (Firecracker's
/// `MemoryHotplugSizeUpdate`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryHotplugSizeUpdate {
    /// How much memory the guest is asked to have plugged.
    pub requested_size_mib: u64,
}

/// Answer to `GET /hotplug/memory` (Firecracker's `MemoryHotplugStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryHotplugStatus {
    /// Size of the hotplug region.
    pub total_size_mib: u64,
    /// KVM slot size.
    pub slot_size_mib: u64,
    /// Plug granularity.
    pub block_size_mib: u64,
    /// Memory the guest has plugged.
    pub plugged_size_mib: u64,
    /// Memory the guest was asked to plug.
    pub requested_size_mib: u64,
}

/// The largest hotplug region accepted (1 TiB, flint's guest memory limit).
pub const MAX_HOTPLUG_MIB: u64 = 1 << 20;

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

impl MemoryHotplugConfig {
    /// Checks sizes: block ≥ 2 MiB and a power of two, slot a multiple of
    /// the block, total a non-zero multiple of the slot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let f = "memory-hotplug";
        if self.block_size_mib < 2 || !self.block_size_mib.is_power_of_two() {
            return Err(invalid(
                f,
                format!(
                    "block_size_mib {} must be a power of two ≥ 2",
                    self.block_size_mib
                ),
            ));
        }
        if self.slot_size_mib == 0 || !self.slot_size_mib.is_multiple_of(self.block_size_mib) {
            return Err(invalid(
                f,
                format!(
                    "slot_size_mib {} must be a non-zero multiple of block_size_mib {}",
                    self.slot_size_mib, self.block_size_mib
                ),
            ));
        }
        if self.total_size_mib == 0
            || !self.total_size_mib.is_multiple_of(self.slot_size_mib)
            || self.total_size_mib > MAX_HOTPLUG_MIB
        {
            return Err(invalid(
                f,
                format!(
                    "total_size_mib {} must be a non-zero multiple of slot_size_mib {} \
                     and at most {MAX_HOTPLUG_MIB}",
                    self.total_size_mib, self.slot_size_mib
                ),
            ));
        }
        Ok(())
    }
}

impl VmConfig {
    /// Checks the `pmem` and `memory-hotplug` sections: unique ids, files
    /// that exist, at most one root device, sane hotplug sizes.
    pub fn validate_devmem(&self) -> Result<(), ConfigError> {
        let mut ids = std::collections::HashSet::new();
        for p in &self.pmem {
            if p.id.is_empty() || p.id.len() > crate::MAX_ID_LEN {
                return Err(invalid("pmem", format!("bad id {:?}", p.id)));
            }
            if !ids.insert(p.id.as_str()) {
                return Err(invalid("pmem", format!("id {:?} used twice", p.id)));
            }
            let meta = std::fs::metadata(&p.path_on_host)
                .map_err(|e| invalid("pmem", format!("{}: {e}", p.path_on_host.display())))?;
            if !meta.is_file() || meta.len() == 0 {
                return Err(invalid(
                    "pmem",
                    format!("{} is not a non-empty file", p.path_on_host.display()),
                ));
            }
        }
        if self.pmem.iter().filter(|p| p.root_device).count() > 1 {
            return Err(invalid("pmem", "more than one root device"));
        }
        if self.pmem.iter().any(|p| p.root_device) && self.drives.iter().any(|d| d.is_root_device) {
            return Err(invalid("pmem", "a drive is already the root device"));
        }
        if let Some(h) = &self.memory_hotplug {
            h.validate()?;
        }
        Ok(())
    }
}
