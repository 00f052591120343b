//! Memory hotplug: the `memory-hotplug` config section as a virtio-mem
//! device over the hotplug region `memory::create_guest_memory_with` maps.
//!
//! The device's config entry is the whole [`VmConfig`] (present when it
//! has a `memory-hotplug` section), because where the region starts
//! depends on the machine's memory size too.
//!
//! The region is one KVM slot (it is one region of guest memory), not one
//! per `slot_size_mib`: that keeps it an ordinary guest memory region for
//! device DMA into plugged memory, KVM dirty logging and snapshots, at the
//! cost that unplugged blocks stay mapped (zero pages once released; the
//! guest can touch at most `total_size_mib` of them, the amount the
//! operator allowed). `slot_size_mib` is validated and reported only.

use api::{MemoryHotplugSizeUpdate, MemoryHotplugStatus, VmConfig};
use devices::virtio::mem::{Mem, MemArgs};

use super::DeviceKind;
use crate::memory::hotplug_region;

/// The id of the one virtio-mem device (its name is `mem hotplug`).
pub const ID: &str = "hotplug";

/// The `memory-hotplug` registration.
pub struct MemKind;

impl DeviceKind for MemKind {
    type Device = Mem;
    type Config = VmConfig;
    type Patch = MemoryHotplugSizeUpdate;

    const KIND: &'static str = "mem";
    const SECTION: &'static str = "memory-hotplug";

    fn configs(config: &VmConfig) -> Vec<&VmConfig> {
        config.memory_hotplug.iter().map(|_| config).collect()
    }

    fn id(_config: &VmConfig) -> &str {
        ID
    }

    fn args(config: &VmConfig) -> Result<MemArgs, String> {
        let h = config
            .memory_hotplug
            .as_ref()
            .ok_or("no memory-hotplug section")?;
        let (addr, region_size) = hotplug_region(config.machine_config.mem_size_mib, h);
        Ok(MemArgs {
            addr,
            region_size,
            block_size: h.block_size_mib << 20,
            slot_size: h.slot_size_mib << 20,
        })
    }

    fn create(args: MemArgs) -> Result<Mem, String> {
        Mem::new(args).map_err(|e| e.to_string())
    }

    fn patch_id(_patch: &MemoryHotplugSizeUpdate) -> &str {
        ID
    }

    /// A new requested size: the guest is told through a config change.
    fn update(mem: &mut Mem, patch: &MemoryHotplugSizeUpdate) -> Result<bool, String> {
        let bytes = patch
            .requested_size_mib
            .checked_mul(1 << 20)
            .ok_or("requested_size_mib is too large")?;
        mem.set_requested_size(bytes).map_err(|e| e.to_string())?;
        Ok(true)
    }
}

/// `GET /hotplug/memory` for a running device.
pub fn status(mem: &Mem) -> MemoryHotplugStatus {
    let a = mem.args();
    MemoryHotplugStatus {
        total_size_mib: a.region_size >> 20,
        slot_size_mib: a.slot_size >> 20,
        block_size_mib: a.block_size >> 20,
        plugged_size_mib: mem.plugged_size() >> 20,
        requested_size_mib: mem.requested_size() >> 20,
    }
}
