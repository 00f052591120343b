//! x86_64 boot setup for flint guests.
//!
//! Everything a guest kernel expects to find in memory and in its vCPU registers
//! when it gets control from a 64-bit boot loader: the memory map, the e820 table
//! in the zero page, the MP table describing the vCPUs, identity page tables, a
//! GDT, and normalized CPUID. The VMM crate decides *when* to call these; this
//! crate only knows *what* the x86 boot protocol requires.

pub mod cpuid;
pub mod gdt;
pub mod lapic;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
pub mod zero_page;
