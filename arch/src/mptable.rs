//! Intel MultiProcessor Specification 1.4 table.
//!
//! flint guests boot without ACPI, so the kernel learns how many vCPUs exist and
//! where the IOAPIC sits (and how the ISA IRQs are wired to it) from an MP table.
//! The kernel scans the last KiB of base memory for the floating pointer, so the
//! whole table is written at [`layout::EBDA_START`] and must fit below 0xA0000.

use std::mem::size_of;

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::layout;

/// MP spec revision 1.4.
const SPEC_REV: u8 = 4;
/// APIC version reported for every local APIC (an integrated xAPIC).
const APIC_VERSION: u8 = 0x14;
/// Version reported for the IOAPIC (82093AA-class).
const IOAPIC_VERSION: u8 = 0x11;
/// CPU signature of a generic family 6 part (family 6, model 0, stepping 0).
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1:EDX feature flags advertised per processor: FPU (bit 0) and APIC (bit 9).
const CPU_FEATURE_FLAGS: u32 = 0x201;
/// Number of IOAPIC input pins, i.e. IRQ 0..=23.
const IOAPIC_PINS: u8 = 24;
/// Destination local APIC id meaning "every local APIC".
const ALL_LAPICS: u8 = 0xff;

// Entry type codes (MP spec table 4-3).
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

// Interrupt types (MP spec table 4-9).
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

const CPU_FLAG_ENABLED: u8 = 1 << 0;
const CPU_FLAG_BSP: u8 = 1 << 1;
const IOAPIC_FLAG_ENABLED: u8 = 1 << 0;

/// End (exclusive) of the area the kernel scans, i.e. the end of base memory.
const MPTABLE_END: u64 = 0xa0000;

/// MP floating pointer structure: the signature the kernel searches for.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpfIntel {
    signature: [u8; 4],
    physptr: u32,
    length: u8,
    spec_rev: u8,
    checksum: u8,
    feature1: u8,
    feature2: u8,
    feature3: u8,
    feature4: u8,
    feature5: u8,
}

/// MP configuration table header, followed by the entries.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcTable {
    signature: [u8; 4],
    base_table_length: u16,
    spec_rev: u8,
    checksum: u8,
    oem_id: [u8; 8],
    product_id: [u8; 12],
    oem_table_pointer: u32,
    oem_table_size: u16,
    entry_count: u16,
    lapic_address: u32,
    extended_table_length: u16,
    extended_table_checksum: u8,
    reserved: u8,
}

/// Processor entry: one per vCPU.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcCpu {
    entry_type: u8,
    apic_id: u8,
    apic_version: u8,
    cpu_flags: u8,
    cpu_signature: u32,
    feature_flags: u32,
    reserved: [u32; 2],
}

/// Bus entry: names the bus the IRQ entries refer to.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcBus {
    entry_type: u8,
    bus_id: u8,
    bus_type: [u8; 6],
}

/// IOAPIC entry.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcIoapic {
    entry_type: u8,
    apic_id: u8,
    apic_version: u8,
    flags: u8,
    address: u32,
}

/// I/O or local interrupt assignment entry (both share one layout).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcInterrupt {
    entry_type: u8,
    irq_type: u8,
    irq_flags: u16,
    src_bus_id: u8,
    src_bus_irq: u8,
    dst_apic_id: u8,
    dst_apic_pin: u8,
}

// SAFETY: all of these are repr(C, packed) structs made only of integers and
// integer arrays: no padding, and every bit pattern is a valid value.
unsafe impl ByteValued for MpfIntel {}
// SAFETY: see above.
unsafe impl ByteValued for MpcTable {}
// SAFETY: see above.
unsafe impl ByteValued for MpcCpu {}
// SAFETY: see above.
unsafe impl ByteValued for MpcBus {}
// SAFETY: see above.
unsafe impl ByteValued for MpcIoapic {}
// SAFETY: see above.
unsafe impl ByteValued for MpcInterrupt {}

/// Bytes of the table that do not depend on the vCPU count.
const FIXED_SIZE: usize = size_of::<MpfIntel>()
    + size_of::<MpcTable>()
    + size_of::<MpcBus>()
    + size_of::<MpcIoapic>()
    + IOAPIC_PINS as usize * size_of::<MpcInterrupt>()
    + 2 * size_of::<MpcInterrupt>();

/// Most vCPUs whose processor entries fit, with everything else, in the 1 KiB
/// between [`layout::EBDA_START`] and 0xA0000 (37 with 20-byte entries).
/// Callers use it to reject configurations the guest could not see.
pub const MAX_SUPPORTED_CPUS: u8 =
    (((MPTABLE_END - layout::EBDA_START) as usize - FIXED_SIZE) / size_of::<MpcCpu>()) as u8;

const _: () = assert!(MAX_SUPPORTED_CPUS >= 8);

/// Why the MP table could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// A guest needs at least one vCPU.
    #[error("the MP table needs at least one vCPU")]
    NoCpus,
    /// More vCPUs than fit in the EBDA.
    #[error("{0} vCPUs do not fit in the MP table (at most {MAX_SUPPORTED_CPUS})")]
    TooManyCpus(u8),
    /// Guest memory does not cover the EBDA.
    #[error("cannot write the MP table to guest memory: {0}")]
    GuestMemory(#[from] GuestMemoryError),
}

/// Value that makes `bytes` sum to zero (mod 256) when added to them.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

/// The entries of the configuration table, serialized, and how many there are.
fn build_entries(num_cpus: u8) -> (Vec<u8>, u16) {
    let mut out = Vec::new();
    let mut count = 0u16;
    let mut push = |bytes: &[u8]| {
        out.extend_from_slice(bytes);
        count += 1;
    };

    for cpu in 0..num_cpus {
        let bsp = if cpu == 0 { CPU_FLAG_BSP } else { 0 };
        let entry = MpcCpu {
            entry_type: ENTRY_PROCESSOR,
            apic_id: cpu,
            apic_version: APIC_VERSION,
            cpu_flags: CPU_FLAG_ENABLED | bsp,
            cpu_signature: CPU_SIGNATURE,
            feature_flags: CPU_FEATURE_FLAGS,
            ..Default::default()
        };
        push(entry.as_slice());
    }

    let bus = MpcBus {
        entry_type: ENTRY_BUS,
        bus_id: 0,
        bus_type: *b"ISA   ",
    };
    push(bus.as_slice());

    // The IOAPIC takes the first APIC id after the vCPUs.
    let ioapic_id = num_cpus;
    let ioapic = MpcIoapic {
        entry_type: ENTRY_IOAPIC,
        apic_id: ioapic_id,
        apic_version: IOAPIC_VERSION,
        flags: IOAPIC_FLAG_ENABLED,
        address: layout::IOAPIC_START as u32,
    };
    push(ioapic.as_slice());

    // ISA IRQ i is wired to IOAPIC pin i; polarity/trigger conform to the bus.
    for irq in 0..IOAPIC_PINS {
        let entry = MpcInterrupt {
            entry_type: ENTRY_IO_INTERRUPT,
            irq_type: INT_TYPE_INT,
            irq_flags: 0,
            src_bus_id: 0,
            src_bus_irq: irq,
            dst_apic_id: ioapic_id,
            dst_apic_pin: irq,
        };
        push(entry.as_slice());
    }

    // Every local APIC: LINT0 is the ExtINT (8259) input, LINT1 is NMI.
    for (irq_type, pin) in [(INT_TYPE_EXTINT, 0), (INT_TYPE_NMI, 1)] {
        let entry = MpcInterrupt {
            entry_type: ENTRY_LOCAL_INTERRUPT,
            irq_type,
            irq_flags: 0,
            src_bus_id: 0,
            src_bus_irq: 0,
            dst_apic_id: ALL_LAPICS,
            dst_apic_pin: pin,
        };
        push(entry.as_slice());
    }

    (out, count)
}

/// Writes the MP floating pointer and configuration table for `num_cpus` vCPUs at
/// [`layout::EBDA_START`], so a guest without ACPI can find its CPUs and IOAPIC.
pub fn setup_mptable<M: GuestMemory>(mem: &M, num_cpus: u8) -> Result<(), MptableError> {
    if num_cpus == 0 {
        return Err(MptableError::NoCpus);
    }
    if num_cpus > MAX_SUPPORTED_CPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }

    let fp_addr = layout::EBDA_START;
    let table_addr = fp_addr + size_of::<MpfIntel>() as u64;

    let (entries, entry_count) = build_entries(num_cpus);
    // Bounded by MAX_SUPPORTED_CPUS to under 1 KiB, so it fits in u16.
    let base_table_length = (size_of::<MpcTable>() + entries.len()) as u16;
    let mut header = MpcTable {
        signature: *b"PCMP",
        base_table_length,
        spec_rev: SPEC_REV,
        oem_id: *b"FLINT   ",
        product_id: *b"MICROVM     ",
        entry_count,
        lapic_address: layout::APIC_START as u32,
        ..Default::default()
    };
    let mut table = header.as_slice().to_vec();
    table.extend_from_slice(&entries);
    header.checksum = checksum(&table);
    table[..size_of::<MpcTable>()].copy_from_slice(header.as_slice());

    let mut fp = MpfIntel {
        signature: *b"_MP_",
        physptr: table_addr as u32,
        length: 1,
        spec_rev: SPEC_REV,
        ..Default::default()
    };
    fp.checksum = checksum(fp.as_slice());

    mem.write_slice(fp.as_slice(), GuestAddress(fp_addr))?;
    mem.write_slice(&table, GuestAddress(table_addr))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn memory() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    /// What a guest kernel would extract from the table.
    #[derive(Default)]
    struct Parsed {
        entry_count: u16,
        per_type: [usize; 5],
        bsp_count: usize,
        cpu_ids: Vec<u8>,
        ioapic_id: u8,
        ioapic_addr: u32,
        io_irqs: Vec<(u8, u8, u8)>,
        lapic_addr: u32,
    }

    fn parse(mem: &GuestMemoryMmap<()>) -> Parsed {
        let fp: MpfIntel = mem.read_obj(GuestAddress(layout::EBDA_START)).unwrap();
        assert_eq!(&fp.signature, b"_MP_");
        assert_eq!(sum(fp.as_slice()), 0);
        assert_eq!(fp.length, 1);
        assert_eq!(fp.spec_rev, 4);

        let table_addr = GuestAddress(u64::from(fp.physptr));
        let header: MpcTable = mem.read_obj(table_addr).unwrap();
        assert_eq!(&header.signature, b"PCMP");
        assert_eq!(header.spec_rev, 4);
        let mut table = vec![0u8; usize::from(header.base_table_length)];
        mem.read_slice(&mut table, table_addr).unwrap();
        assert_eq!(sum(&table), 0);
        assert!(u64::from(fp.physptr) + table.len() as u64 <= MPTABLE_END);

        let mut p = Parsed {
            entry_count: header.entry_count,
            lapic_addr: header.lapic_address,
            ..Default::default()
        };
        let mut off = size_of::<MpcTable>();
        while off < table.len() {
            let kind = table[off];
            p.per_type[usize::from(kind)] += 1;
            if kind == ENTRY_PROCESSOR {
                let cpu = MpcCpu::from_slice(&table[off..off + 20]).unwrap();
                assert_ne!(cpu.cpu_flags & CPU_FLAG_ENABLED, 0);
                if cpu.cpu_flags & CPU_FLAG_BSP != 0 {
                    p.bsp_count += 1;
                    assert_eq!(cpu.apic_id, 0);
                }
                p.cpu_ids.push(cpu.apic_id);
                off += 20;
                continue;
            }
            let bytes = &table[off..off + 8];
            match kind {
                ENTRY_BUS => assert_eq!(&bytes[2..], b"ISA   "),
                ENTRY_IOAPIC => {
                    let io = MpcIoapic::from_slice(bytes).unwrap();
                    p.ioapic_id = io.apic_id;
                    p.ioapic_addr = io.address;
                }
                ENTRY_IO_INTERRUPT => {
                    let i = MpcInterrupt::from_slice(bytes).unwrap();
                    p.io_irqs
                        .push((i.src_bus_irq, i.dst_apic_id, i.dst_apic_pin));
                }
                ENTRY_LOCAL_INTERRUPT => {
                    let i = MpcInterrupt::from_slice(bytes).unwrap();
                    assert_eq!(i.dst_apic_id, 0xff);
                }
                _ => panic!("unknown entry type {kind}"),
            }
            off += 8;
        }
        assert_eq!(off, table.len());
        p
    }

    fn check(num_cpus: u8) {
        let mem = memory();
        setup_mptable(&mem, num_cpus).unwrap();
        let p = parse(&mem);
        let n = usize::from(num_cpus);
        assert_eq!(p.per_type, [n, 1, 1, 24, 2]);
        assert_eq!(usize::from(p.entry_count), n + 1 + 1 + 24 + 2);
        assert_eq!(p.bsp_count, 1);
        assert_eq!(p.cpu_ids, (0..num_cpus).collect::<Vec<_>>());
        assert_eq!(p.ioapic_id, num_cpus);
        assert_eq!(u64::from(p.ioapic_addr), layout::IOAPIC_START);
        assert_eq!(u64::from(p.lapic_addr), layout::APIC_START);
        let expected: Vec<_> = (0..24).map(|i| (i, num_cpus, i)).collect();
        assert_eq!(p.io_irqs, expected);
    }

    #[test]
    fn struct_sizes_match_the_spec() {
        assert_eq!(size_of::<MpfIntel>(), 16);
        assert_eq!(size_of::<MpcTable>(), 44);
        assert_eq!(size_of::<MpcCpu>(), 20);
        assert_eq!(size_of::<MpcBus>(), 8);
        assert_eq!(size_of::<MpcIoapic>(), 8);
        assert_eq!(size_of::<MpcInterrupt>(), 8);
    }

    #[test]
    fn one_cpu() {
        check(1);
    }

    #[test]
    fn max_cpus() {
        assert_eq!(MAX_SUPPORTED_CPUS, 37);
        check(MAX_SUPPORTED_CPUS);
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        let mem = memory();
        assert!(matches!(setup_mptable(&mem, 0), Err(MptableError::NoCpus)));
        assert!(matches!(
            setup_mptable(&mem, MAX_SUPPORTED_CPUS + 1),
            Err(MptableError::TooManyCpus(n)) if n == MAX_SUPPORTED_CPUS + 1
        ));
    }

    #[test]
    fn rejects_memory_without_ebda() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x9_0000)]).unwrap();
        assert!(matches!(
            setup_mptable(&mem, 1),
            Err(MptableError::GuestMemory(_))
        ));
        // Memory ending inside the table is a partial write, also an error.
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x9_fd00)]).unwrap();
        assert!(matches!(
            setup_mptable(&mem, 4),
            Err(MptableError::GuestMemory(_))
        ));
    }
}
