//! The KVM virtual machine: capabilities, guest memory slots and the in-kernel
//! interrupt controllers (PIC, IOAPIC, LAPICs) and PIT.
//!
//! The in-kernel irqchip keeps interrupt delivery, timers and `hlt` out of
//! userspace entirely; flint only injects device interrupts through irqfds.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MEM_LOG_DIRTY_PAGES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

use devices::persist::Persist;

use crate::memory::GuestMemory;
use crate::vstate::vcpu_state::exact_size;

/// The KVM API version flint is written against (stable since Linux 2.6.22).
const KVM_API_VERSION: i32 = 12;

/// Capabilities flint cannot run without.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
];

/// Why the VM could not be created or set up.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` could not be opened.
    #[error("opening /dev/kvm: {0} (is KVM available and accessible to this user?)")]
    OpenKvm(kvm_ioctls::Error),
    /// The kernel speaks another KVM API.
    #[error("KVM API version {0}, flint needs {KVM_API_VERSION}")]
    ApiVersion(i32),
    /// A capability flint needs is missing.
    #[error("this host's KVM lacks {0}")]
    MissingCap(&'static str),
    /// A KVM ioctl failed.
    #[error("{0} failed: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
}

/// A KVM VM with guest memory and interrupt controllers.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    /// Opens KVM, checks it can run flint guests, and creates an empty VM.
    pub fn new() -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(VmError::ApiVersion(version));
        }
        if let Some((_, name)) = REQUIRED_CAPS
            .iter()
            .find(|(cap, _)| !kvm.check_extension(*cap))
        {
            return Err(VmError::MissingCap(name));
        }
        let fd = kvm
            .create_vm()
            .map_err(|e| VmError::Kvm("KVM_CREATE_VM", e))?;
        Ok(Self { kvm, fd })
    }

    /// The KVM system handle (for CPUID and MSR queries).
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The VM file descriptor (for vCPUs, irqfds, ioeventfds).
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Gives a device's host mapping (a pmem file) to KVM as memory slot
    /// `slot` at guest address `gpa`.
    pub fn register_device_region(
        &self,
        slot: u32,
        gpa: u64,
        region: crate::memory::HostRegion,
    ) -> Result<(), VmError> {
        let flags = if region.read_only {
            kvm_bindings::KVM_MEM_READONLY
        } else {
            0
        };
        let desc = kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr: gpa,
            memory_size: region.size,
            userspace_addr: region.host_addr,
        };
        // SAFETY: the host range is a live mapping owned by the device,
        // which the VMM keeps (in its device list) for as long as the VM
        // exists; `DeviceSpace` hands out slots and guest ranges that
        // overlap neither each other nor RAM.
        unsafe { self.fd.set_user_memory_region(desc) }
            .map_err(|e| VmError::Kvm("KVM_SET_USER_MEMORY_REGION (device)", e))
    }

    /// Gives every region of `mem` to KVM as a memory slot, with KVM's dirty
    /// page log on when `track_dirty` (diff snapshots, live migration).
    pub fn register_memory(&self, mem: &GuestMemory, track_dirty: bool) -> Result<(), VmError> {
        register_slots(&self.fd, mem, track_dirty)
    }

    /// The in-kernel interrupt controllers, PIT and clock, for a snapshot.
    pub fn save_state(&self) -> Result<VmState, VmError> {
        let chip = |chip_id| -> Result<kvm_irqchip, VmError> {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut chip)
                .map_err(|e| VmError::Kvm("KVM_GET_IRQCHIP", e))?;
            Ok(chip)
        };
        Ok(VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: self
                .fd
                .get_pit2()
                .map_err(|e| VmError::Kvm("KVM_GET_PIT2", e))?,
            clock: self
                .fd
                .get_clock()
                .map_err(|e| VmError::Kvm("KVM_GET_CLOCK", e))?,
        })
    }

    /// Puts saved interrupt controller, PIT and clock state back (after
    /// [`Vm::setup_irqchip`]).
    pub fn restore_state(&self, state: &VmState) -> Result<(), VmError> {
        for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
            self.fd
                .set_irqchip(chip)
                .map_err(|e| VmError::Kvm("KVM_SET_IRQCHIP", e))?;
        }
        self.fd
            .set_pit2(&state.pit)
            .map_err(|e| VmError::Kvm("KVM_SET_PIT2", e))?;
        // The guest's clock continues from the saved value; only the stable
        // flag may be passed back (KVM rejects the others).
        let clock = kvm_clock_data {
            clock: state.clock.clock,
            flags: 0,
            ..Default::default()
        };
        self.fd
            .set_clock(&clock)
            .map_err(|e| VmError::Kvm("KVM_SET_CLOCK", e))
    }

    /// Creates the in-kernel PIC + IOAPIC + LAPICs and the PIT. Must run before
    /// any vCPU is created.
    pub fn setup_irqchip(&self) -> Result<(), VmError> {
        self.fd
            .set_tss_address(arch::layout::KVM_TSS_ADDRESS as usize)
            .map_err(|e| VmError::Kvm("KVM_SET_TSS_ADDR", e))?;
        self.fd
            .create_irq_chip()
            .map_err(|e| VmError::Kvm("KVM_CREATE_IRQCHIP", e))?;
        // A dummy speaker port keeps the guest's PC-speaker probing off the PIO bus.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd
            .create_pit2(pit)
            .map_err(|e| VmError::Kvm("KVM_CREATE_PIT2", e))
    }
}

/// Registers (or re-registers) every region of `mem` as a KVM memory slot.
pub fn register_slots(vm: &VmFd, mem: &GuestMemory, track_dirty: bool) -> Result<(), VmError> {
    let flags = if track_dirty {
        KVM_MEM_LOG_DIRTY_PAGES
    } else {
        0
    };
    for (slot, region) in mem.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the host range [as_ptr, as_ptr + len) is a live mapping owned
        // by `mem`, which the VMM keeps alive for as long as the VM exists
        // (vCPU threads and devices hold clones of it); slots do not overlap
        // because the regions of a GuestMemoryMmap do not.
        unsafe { vm.set_user_memory_region(region_desc) }
            .map_err(|e| VmError::Kvm("KVM_SET_USER_MEMORY_REGION", e))?;
    }
    Ok(())
}

/// The VM saves and restores through [`Persist`]: restoring writes the
/// saved interrupt controllers, PIT and clock into a freshly created VM
/// that already has its memory and irqchip (the constructor argument).
impl Persist<'_> for Vm {
    type State = VmState;
    type ConstructorArgs = Vm;
    type Error = VmError;

    fn save(&self) -> Result<VmState, VmError> {
        self.save_state()
    }

    fn restore(vm: Vm, state: &VmState) -> Result<Vm, VmError> {
        vm.restore_state(state)?;
        Ok(vm)
    }
}

/// The VM-wide KVM state a snapshot needs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VmState {
    /// The master 8259.
    #[serde(with = "exact_size")]
    pub pic_master: kvm_irqchip,
    /// The slave 8259.
    #[serde(with = "exact_size")]
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC (redirection table, pending bits).
    #[serde(with = "exact_size")]
    pub ioapic: kvm_irqchip,
    /// The PIT's channels.
    #[serde(with = "exact_size")]
    pub pit: kvm_pit_state2,
    /// kvmclock.
    #[serde(with = "exact_size")]
    pub clock: kvm_clock_data,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn vm_with_memory_and_irqchip() {
        if Kvm::new().is_err() {
            eprintln!("skipped: /dev/kvm not available");
            return;
        }
        let vm = Vm::new().unwrap();
        let mem = create_guest_memory(5 << 10).unwrap();
        vm.register_memory(&mem, true).unwrap();
        vm.setup_irqchip().unwrap();
        // A second irqchip is refused: proves the first one exists.
        assert!(vm.fd().create_irq_chip().is_err());
    }

    #[test]
    fn device_regions_become_slots_beside_ram_and_hotplug_memory() {
        if Kvm::new().is_err() {
            eprintln!("skipped: /dev/kvm not available");
            return;
        }
        let config: api::VmConfig = serde_json::from_str(
            r#"{"boot-source":{"kernel_image_path":"/k"},
                "machine-config":{"mem_size_mib":128},
                "memory-hotplug":{"total_size_mib":128}}"#,
        )
        .unwrap();
        let vm = Vm::new().unwrap();
        let mem =
            crate::memory::create_guest_memory_with(128, config.memory_hotplug.as_ref()).unwrap();
        vm.register_memory(&mem, false).unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), b"pmem").unwrap();
        let mut space = crate::memory::DeviceSpace::new(&config);
        for read_only in [false, true] {
            let pmem = devices::virtio::pmem::Pmem::new(devices::virtio::pmem::PmemArgs {
                id: "p".into(),
                path: file.path().into(),
                read_only,
            })
            .unwrap();
            let region = crate::memory::HostRegion {
                host_addr: pmem.mapping().host_addr(),
                size: pmem.mapping().len(),
                read_only,
            };
            let (gpa, slot) = space.allocate(region.size).unwrap();
            vm.register_device_region(slot, gpa, region).unwrap();
            // The same guest range again (overlap) is refused by KVM.
            assert!(vm.register_device_region(slot + 10, gpa, region).is_err());
            // Unregister before the mapping goes away.
            let mut gone = region;
            gone.size = 0;
            vm.register_device_region(slot, gpa, gone).unwrap();
        }
    }
}
