//! The guest-physical memory map every flint x86_64 guest gets.
//!
//! One place defines where boot structures, RAM, the 32-bit MMIO hole and the
//! interrupt controllers live, so the loader, the e820 map, the MP table and the
//! device manager can never disagree about it.

use vm_memory::GuestAddress;

/// GDT used while entering the kernel in 64-bit mode.
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT: the kernel installs its own before enabling interrupts.
pub const BOOT_IDT_START: u64 = 0x520;
/// Linux `boot_params` ("zero page"); its address is passed in `rsi`.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU (grows down below the page tables).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, then PDPT, then one PD (1 GiB of 2 MiB pages).
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table of the boot identity map.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory of the boot identity map.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line (NUL terminated).
pub const CMDLINE_START: u64 = 0x20000;
/// Upper bound for the command line flint writes, including the NUL.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the Extended BIOS Data Area: low RAM ends here and the MP table lives here,
/// one of the places the kernel scans for the MP floating pointer.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of "high memory": the kernel is loaded at or above this address.
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO hole below 4 GiB (RAM never sits in it).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole; RAM that did not fit below the hole continues here.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// Size of the 32-bit MMIO hole.
pub const MMIO_GAP_SIZE: u64 = MMIO_GAP_END - MMIO_GAP_START;
/// First address handed out to virtio-mmio devices (inside the MMIO hole).
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
/// Size of the MMIO window reserved for devices.
pub const MMIO_DEVICES_SIZE: u64 = 0x1000_0000;
/// Where the KVM in-kernel IOAPIC is mapped.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Where every local APIC is mapped.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM needs three pages for the TSS inside the guest address space (Intel only),
/// placed in the MMIO hole just below the BIOS area.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

/// Highest address (exclusive) the Linux boot protocol lets us put an initrd at
/// when the kernel does not say otherwise (`initrd_addr_max` default).
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x3800_0000;

/// IRQ lines of the legacy devices (ISA numbering, routed through the IOAPIC).
pub const SERIAL_IRQ: u32 = 4;
/// IRQ of the second UART (COM2).
pub const SERIAL2_IRQ: u32 = 3;
/// First GSI handed out to virtio-mmio devices.
pub const IRQ_DEVICES_START: u32 = 5;
/// Last GSI usable by devices (the IOAPIC has 24 pins).
pub const IRQ_DEVICES_END: u32 = 23;

// The boot stack lives between the zero page and the page tables.
const _: () =
    assert!(BOOT_STACK_POINTER < PML4_START && BOOT_STACK_POINTER > ZERO_PAGE_START + 4096);

/// The guest RAM regions for `mem_size` bytes of memory: everything below the
/// 32-bit MMIO hole first, the remainder above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    let low = mem_size.min(MMIO_GAP_START);
    let mut regions = vec![(GuestAddress(0), low as usize)];
    if mem_size > MMIO_GAP_START {
        regions.push((
            GuestAddress(MMIO_GAP_END),
            (mem_size - MMIO_GAP_START) as usize,
        ));
    }
    regions
}

/// End (exclusive) of the RAM below the MMIO hole.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region() {
        assert_eq!(ram_regions(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
    }

    #[test]
    fn memory_above_the_hole_moves_past_4g() {
        let regions = ram_regions(5 << 30);
        assert_eq!(regions[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(
            regions[1],
            (
                GuestAddress(MMIO_GAP_END),
                ((5u64 << 30) - MMIO_GAP_START) as usize
            )
        );
        let total: usize = regions.iter().map(|r| r.1).sum();
        assert_eq!(total as u64, 5 << 30);
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let spans = [
            (BOOT_GDT_START, BOOT_GDT_START + 4 * 8),
            (BOOT_IDT_START, BOOT_IDT_START + 8),
            (ZERO_PAGE_START, ZERO_PAGE_START + 4096),
            (PML4_START, PML4_START + 4096),
            (PDPTE_START, PDPTE_START + 4096),
            (PDE_START, PDE_START + 4096),
            (CMDLINE_START, CMDLINE_START + CMDLINE_MAX_SIZE as u64),
            (EBDA_START, EBDA_START + 1024),
        ];
        for (i, a) in spans.iter().enumerate() {
            for b in &spans[i + 1..] {
                assert!(a.1 <= b.0 || b.1 <= a.0, "{a:x?} overlaps {b:x?}");
            }
            assert!(a.1 <= HIMEM_START);
        }
    }
}
