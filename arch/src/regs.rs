//! Initial vCPU state for the 64-bit Linux boot protocol.
//!
//! The boot vCPU starts in long mode with paging on (an identity map of the
//! first GiB), flat segments, `rsi` pointing at the zero page and `rip` at the
//! kernel's 64-bit entry. Application processors are started later by the guest
//! itself through the in-kernel LAPIC (INIT/SIPI), so only their FPU, MSRs and
//! LAPIC are set here.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::gdt::{self, boot_gdt};
use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    ZERO_PAGE_START,
};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Present | writable.
const PTE_PRESENT_RW: u64 = 0x3;
/// Present | writable | page size (2 MiB leaf).
const PDE_HUGE: u64 = 0x83;

/// Why setting up a vCPU's boot registers failed.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing the GDT, IDT or page tables into guest memory failed.
    #[error("writing boot structures into guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    /// A KVM register ioctl failed.
    #[error("{0} failed: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
}

/// General purpose registers at the kernel entry point.
pub fn boot_regs(entry: GuestAddress) -> kvm_regs {
    kvm_regs {
        rflags: 0x2, // bit 1 is reserved and must be set
        rip: entry.raw_value(),
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// Writes the identity page tables (first 1 GiB, 2 MiB pages) into guest memory.
pub fn write_page_tables<M: GuestMemoryBackend>(mem: &M) -> Result<(), RegsError> {
    mem.write_obj(PDPTE_START | PTE_PRESENT_RW, GuestAddress(PML4_START))?;
    mem.write_obj(PDE_START | PTE_PRESENT_RW, GuestAddress(PDPTE_START))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | PDE_HUGE, GuestAddress(PDE_START + i * 8))?;
    }
    Ok(())
}

/// Writes the GDT and an empty IDT and returns the special registers of a
/// long-mode vCPU using them (starting from `sregs` as KVM reported them).
pub fn long_mode_sregs<M: GuestMemoryBackend>(
    mem: &M,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, RegsError> {
    let table = boot_gdt();
    for (i, entry) in table.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))?;

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;

    let code = gdt::kvm_segment_from(table[gdt::CODE_INDEX as usize], gdt::CODE_INDEX);
    let data = gdt::kvm_segment_from(table[gdt::DATA_INDEX as usize], gdt::DATA_INDEX);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::kvm_segment_from(table[gdt::TSS_INDEX as usize], gdt::TSS_INDEX);

    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(sregs)
}

/// The x87/SSE state the kernel expects: default control word and MXCSR.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Puts the boot vCPU at `entry` in long mode: page tables, GDT, segment,
/// general-purpose and FPU registers.
pub fn setup_boot_vcpu<M: GuestMemoryBackend>(
    vcpu: &VcpuFd,
    mem: &M,
    entry: GuestAddress,
) -> Result<(), RegsError> {
    write_page_tables(mem)?;
    let sregs = vcpu
        .get_sregs()
        .map_err(|e| RegsError::Kvm("KVM_GET_SREGS", e))?;
    let sregs = long_mode_sregs(mem, sregs)?;
    vcpu.set_sregs(&sregs)
        .map_err(|e| RegsError::Kvm("KVM_SET_SREGS", e))?;
    vcpu.set_regs(&boot_regs(entry))
        .map_err(|e| RegsError::Kvm("KVM_SET_REGS", e))?;
    setup_fpu(vcpu)
}

/// Sets the FPU state every vCPU (boot or not) starts with.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    vcpu.set_fpu(&boot_fpu())
        .map_err(|e| RegsError::Kvm("KVM_SET_FPU", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn page_tables_identity_map_first_gib() {
        let m = mem();
        write_page_tables(&m).unwrap();
        let pml4: u64 = m.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let pdpte: u64 = m.read_obj(GuestAddress(PDPTE_START)).unwrap();
        assert_eq!(pdpte, PDE_START | 3);
        for i in [0u64, 1, 8, 511] {
            let pde: u64 = m.read_obj(GuestAddress(PDE_START + i * 8)).unwrap();
            assert_eq!(pde, (i << 21) | 0x83, "PDE {i}");
        }
    }

    #[test]
    fn sregs_enter_long_mode_with_gdt_in_memory() {
        let m = mem();
        let s = long_mode_sregs(&m, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE | X86_CR0_PG);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, PML4_START);
        assert_eq!((s.gdt.base, s.gdt.limit), (BOOT_GDT_START, 31));
        assert_eq!((s.cs.selector, s.cs.l), (0x8, 1));
        assert_eq!(s.ss.selector, 0x10);
        let code: u64 = m.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(code, boot_gdt()[1]);
    }

    #[test]
    fn regs_point_at_entry_and_zero_page() {
        let r = boot_regs(GuestAddress(0x100_0000));
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x100_0000, ZERO_PAGE_START, BOOT_STACK_POINTER, 2)
        );
        let f = boot_fpu();
        assert_eq!((f.fcw, f.mxcsr), (0x37f, 0x1f80));
    }

    #[test]
    fn vcpu_accepts_boot_state() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "cannot run under CI: no /dev/kvm"
            );
            eprintln!("skipped: /dev/kvm not available");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let m = mem();
        setup_boot_vcpu(&vcpu, &m, GuestAddress(0x100_0000)).unwrap();
        assert_eq!(vcpu.get_regs().unwrap().rip, 0x100_0000);
        let s = vcpu.get_sregs().unwrap();
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.efer & EFER_LMA, 0);
    }
}
