//! Snapshots: a microVM's whole state in two files, and moving it between
//! processes (restore) or hosts (live migration).
//!
//! * the **state file** ([`format`]): vCPUs, the VM's interrupt controllers
//!   and clock, every device, the effective configuration and the memory
//!   layout, framed with magic, version and CRC64;
//! * the **memory file** ([`memory`]): guest RAM, full or as a diff.

pub mod format;
pub mod memory;

use api::VmConfig;
use serde::{Deserialize, Serialize};

use crate::device_manager::DevicesState;
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm::VmState;

pub use memory::MemoryLayout;

/// Whether a memory file holds all of RAM or only what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryKind {
    /// All of guest RAM.
    Full,
    /// Only the pages dirtied since the previous snapshot (merge onto it).
    Diff,
}

/// Everything but guest RAM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MicroVmState {
    /// The configuration the VM runs with (drives and taps are re-opened from
    /// it, with overrides). Stored as its JSON text: the config types skip
    /// absent fields, which a non-self-describing encoding cannot decode.
    #[serde(with = "as_json")]
    pub config: VmConfig,
    /// Where RAM is and what the memory file holds.
    pub memory: MemoryLayout,
    /// Full or diff.
    pub memory_kind: MemoryKind,
    /// Interrupt controllers, PIT, clock.
    pub vm: VmState,
    /// Every vCPU, in id order.
    pub vcpus: Vec<VcpuState>,
    /// Every device.
    pub devices: DevicesState,
}

/// (De)serializes a value as a JSON string inside the binary state.
mod as_json {
    use serde::de::{DeserializeOwned, Error as _};
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        let text = serde_json::to_string(value).map_err(S::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(
        d: D,
    ) -> Result<T, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(D::Error::custom)
    }
}
