//! Snapshots: a microVM's whole state in two files, and moving it between
//! processes (restore) or hosts (live migration).
//!
//! * the **state file** ([`format`]): named, versioned sections: `config`,
//!   `memory` (layout, kind, and what binds the memory file to it), `vm`
//!   (interrupt controllers, PIT, clock), `vcpus`, `serial`, and one
//!   `device:<name>` section per virtio device (its version is the device's
//!   state version);
//! * the **memory file** ([`memory`]): guest RAM, full or as a diff; on
//!   restore mapped or copied, or served page by page by a userfaultfd
//!   handler that has the file ([`uffd`], `mem_backend` `Uffd`).
//!
//! Decoding a state file checks everything that does not need the devices'
//! host resources before anything is allocated or reaches KVM
//! ([`MicroVmState::validate`]); vCPU states are checked against the host's
//! KVM, and device states against the devices they are restored into.

pub mod format;
pub mod memory;
pub mod uffd;

use std::collections::HashSet;
use std::path::Path;

use api::VmConfig;
use serde::{Deserialize, Serialize};

use crate::device_manager::{DevicesState, VirtioDeviceState};
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm::VmState;
use format::{FormatError, Section};

pub use memory::MemoryLayout;

/// The most vCPUs a snapshot may have.
pub const MAX_VCPUS: usize = 32;
/// Name prefix of the per-device sections.
pub const DEVICE_SECTION_PREFIX: &str = "device:";

const CONFIG: &str = "config";
const MEMORY: &str = "memory";
const VM: &str = "vm";
const VCPUS: &str = "vcpus";
const SERIAL: &str = "serial";

/// Whether a memory file holds all of RAM or only what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryKind {
    /// All of guest RAM.
    Full,
    /// Only the pages dirtied since the previous snapshot (merge onto it).
    Diff,
}

/// Everything but guest RAM.
#[derive(Debug, Clone)]
pub struct MicroVmState {
    /// The configuration the VM runs with (drives and taps are re-opened from
    /// it, with overrides).
    pub config: VmConfig,
    /// Where RAM is and what the memory file holds.
    pub memory: MemoryLayout,
    /// Full or diff.
    pub memory_kind: MemoryKind,
    /// Random id shared with the memory file's trailer (binds the pair).
    pub snapshot_id: u64,
    /// Interrupt controllers, PIT, clock.
    pub vm: VmState,
    /// Every vCPU, in id order.
    pub vcpus: Vec<VcpuState>,
    /// Every device.
    pub devices: DevicesState,
}

/// The `memory` section: the layout and what binds the memory file to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct MemorySection {
    layout: MemoryLayout,
    kind: MemoryKind,
    /// The memory file's length.
    file_len: u64,
    /// [`MemoryLayout::digest`], also in the memory file's trailer.
    layout_digest: u64,
    /// The snapshot's id, also in the memory file's trailer.
    snapshot_id: u64,
}

/// Why a decoded state was refused.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file's framing or a section is bad.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The contents are inconsistent or impossible.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl MicroVmState {
    /// The state as file sections (see the module docs).
    pub fn to_sections(&self) -> Result<Vec<Section>, FormatError> {
        let config = serde_json::to_string(&self.config).map_err(|e| FormatError::Encoding {
            path: Default::default(),
            name: CONFIG.into(),
            message: e.to_string(),
        })?;
        let memory = MemorySection {
            layout: self.memory.clone(),
            kind: self.memory_kind,
            file_len: self.memory.file_len(),
            layout_digest: self.memory.digest(),
            snapshot_id: self.snapshot_id,
        };
        let mut sections = vec![
            Section::encode(CONFIG, 1, true, &config)?,
            Section::encode(MEMORY, 1, true, &memory)?,
            Section::encode(VM, 1, true, &self.vm)?,
            Section::encode(VCPUS, 1, true, &self.vcpus)?,
            Section::encode(SERIAL, 1, true, &self.devices.serial)?,
        ];
        for device in &self.devices.virtio {
            let name = format!("{DEVICE_SECTION_PREFIX}{}", device.name);
            sections.push(Section::encode(&name, device.version, true, device)?);
        }
        Ok(sections)
    }

    /// Rebuilds the state from file sections: every known section must be
    /// there in the version this flint reads; unknown optional sections are
    /// skipped, unknown required ones refused by name. Then
    /// [`Self::validate`]s it.
    pub fn from_sections(sections: Vec<Section>, path: &Path) -> Result<Self, StateError> {
        let mut unknown_required = Vec::new();
        let mut devices = Vec::new();
        let mut fixed = std::collections::HashMap::new();
        for section in sections {
            if let Some(name) = section.name.strip_prefix(DEVICE_SECTION_PREFIX) {
                let mut device: VirtioDeviceState = section.decode(section.version, path)?;
                if device.name != name {
                    return Err(invalid(
                        path,
                        format!(
                            "section {:?} holds the state of {:?}",
                            section.name, device.name
                        ),
                    ));
                }
                device.version = section.version;
                devices.push(device);
            } else if [CONFIG, MEMORY, VM, VCPUS, SERIAL].contains(&section.name.as_str()) {
                fixed.insert(section.name.clone(), section);
            } else if section.required {
                unknown_required.push(section.name);
            } else {
                log::info!(
                    "{}: skipping section {:?} (version {}), which this flint does not use",
                    path.display(),
                    section.name,
                    section.version
                );
            }
        }
        if !unknown_required.is_empty() {
            return Err(FormatError::UnknownRequired {
                path: path.to_owned(),
                names: unknown_required,
            }
            .into());
        }
        let mut take = |name: &str| {
            fixed.remove(name).ok_or_else(|| FormatError::Missing {
                path: path.to_owned(),
                name: name.to_string(),
            })
        };
        let config: String = take(CONFIG)?.decode(1, path)?;
        let config: VmConfig = serde_json::from_str(&config)
            .map_err(|e| invalid(path, format!("section \"config\": {e}")))?;
        let memory: MemorySection = take(MEMORY)?.decode(1, path)?;
        let state = Self {
            config,
            vm: take(VM)?.decode(1, path)?,
            vcpus: take(VCPUS)?.decode(1, path)?,
            devices: DevicesState {
                serial: take(SERIAL)?.decode(1, path)?,
                virtio: devices,
            },
            memory: memory.layout.clone(),
            memory_kind: memory.kind,
            snapshot_id: memory.snapshot_id,
        };
        if memory.file_len != state.memory.file_len()
            || memory.layout_digest != state.memory.digest()
        {
            return Err(invalid(
                path,
                "the recorded memory file length or layout digest does not match the layout".into(),
            ));
        }
        state
            .validate(memory::host_ram())
            .map_err(|message| invalid(path, message))?;
        Ok(state)
    }

    /// Checks what can be checked without KVM or the devices' host
    /// resources: the memory layout (see [`MemoryLayout::validate`]; at
    /// most `host_ram` bytes, and the configured size), 1..=32 vCPU states,
    /// as many as the configuration's vCPUs, and exactly one device state
    /// per configured device.
    pub fn validate(&self, host_ram: u64) -> Result<(), String> {
        self.memory.validate(host_ram).map_err(|e| e.to_string())?;
        let configured = self.config.machine_config.mem_size_mib.checked_mul(1 << 20);
        if configured != Some(self.memory.total()) {
            return Err(format!(
                "the memory layout has {} bytes, the configuration {} MiB",
                self.memory.total(),
                self.config.machine_config.mem_size_mib
            ));
        }
        let vcpus = self.vcpus.len();
        if !(1..=MAX_VCPUS).contains(&vcpus) {
            return Err(format!("{vcpus} vCPU states (1 to {MAX_VCPUS} allowed)"));
        }
        if vcpus != usize::from(self.config.machine_config.vcpu_count) {
            return Err(format!(
                "{vcpus} vCPU states for {} configured vCPUs",
                self.config.machine_config.vcpu_count
            ));
        }
        let expected: HashSet<String> = crate::devices::configured_names(&self.config)
            .into_iter()
            .collect();
        let saved: HashSet<String> = self.devices.virtio.iter().map(|d| d.name.clone()).collect();
        let mut missing: Vec<&String> = expected.difference(&saved).collect();
        if !missing.is_empty() {
            missing.sort();
            return Err(format!("no device state for configured {missing:?}"));
        }
        let mut extra: Vec<&String> = saved.difference(&expected).collect();
        if !extra.is_empty() {
            extra.sort();
            return Err(format!(
                "device state for {extra:?}, which is not configured"
            ));
        }
        Ok(())
    }
}

fn invalid(path: &Path, message: String) -> StateError {
    StateError::Invalid {
        path: path.display().to_string(),
        message,
    }
}

/// The state file's bytes for `state`.
pub fn encode_state(state: &MicroVmState) -> Result<Vec<u8>, FormatError> {
    format::encode(&state.to_sections()?)
}

/// Decodes and validates state-file bytes (`path` names them in errors).
pub fn decode_state(bytes: &[u8], path: &Path) -> Result<MicroVmState, StateError> {
    MicroVmState::from_sections(format::decode(bytes, path)?, path)
}

/// Reads, decodes and validates a state file.
pub fn load_state(path: &Path) -> Result<MicroVmState, StateError> {
    decode_state(&format::read_file(path)?, path)
}

#[cfg(test)]
pub(crate) mod tests;
