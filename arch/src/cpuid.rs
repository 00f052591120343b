//! CPUID normalization and CPU templates.
//!
//! KVM reports what the host can virtualize, not what a particular vCPU should
//! see: topology fields describe the host, power management and PMU leaves leak
//! host details the guest cannot use. [`normalize_cpuid`] rewrites that table per
//! vCPU so the guest sees a consistent single-socket machine, and optionally
//! applies a [`CpuTemplate`] that hides features not every host has.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Which feature set guests see, on top of normalization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuTemplate {
    /// Host features as KVM supports them, only normalized.
    #[default]
    None,
    /// A conservative baseline that hides features missing on some hosts, so a
    /// snapshot taken on one host can resume on another.
    T2,
}

/// Where a vCPU sits in the guest topology: one thread per core, all cores in
/// one socket. Needed because topology leaves differ per vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuTopology {
    /// Index of this vCPU, also its APIC id.
    pub vcpu_id: u8,
    /// Number of vCPUs in the guest.
    pub vcpu_count: u8,
}

/// Why CPUID could not be normalized.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuidError {
    /// A guest needs at least one vCPU.
    #[error("the vCPU count must be at least 1")]
    NoVcpus,
    /// The vCPU id does not exist in the topology.
    #[error("vCPU id {vcpu_id} is out of range for {vcpu_count} vCPUs")]
    VcpuIdOutOfRange {
        /// The offending id.
        vcpu_id: u8,
        /// The vCPU count it was checked against.
        vcpu_count: u8,
    },
    /// A custom template modifies a CPUID leaf KVM does not report.
    #[error("CPUID leaf {leaf:#x} subleaf {subleaf:#x} is not supported by this host (custom CPU template)")]
    LeafNotSupported {
        /// The leaf (EAX input).
        leaf: u32,
        /// The subleaf (ECX input).
        subleaf: u32,
    },
}

/// Bits a custom CPU template forces: where `mask` has a 1 the register
/// takes `value`'s bit, elsewhere it keeps the host's (the template's `x`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BitFilter {
    /// The bits the template sets or clears.
    pub mask: u64,
    /// Their values (bits outside `mask` are ignored).
    pub value: u64,
}

impl BitFilter {
    /// `host` with the template's bits applied.
    pub fn apply(&self, host: u64) -> u64 {
        (host & !self.mask) | (self.value & self.mask)
    }
}

/// One of the four CPUID output registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuidRegister {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

/// A custom CPU template's change to one CPUID leaf/subleaf (Firecracker's
/// `cpuid_modifiers` entry), applied after normalization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuidModifier {
    /// The leaf (EAX input).
    pub leaf: u32,
    /// The subleaf (ECX input).
    pub subleaf: u32,
    /// KVM's entry flags (`KVM_CPUID_FLAG_*`), replacing the host's.
    pub flags: u32,
    /// The register changes, applied in order.
    pub registers: Vec<(CpuidRegister, BitFilter)>,
}

/// Applies a custom CPU template's CPUID modifiers to a (normalized) table.
/// A leaf/subleaf the table lacks is an error, as in Firecracker: adding
/// leaves KVM does not know would advertise what the host cannot provide.
pub fn apply_cpuid_modifiers(
    cpuid: &mut CpuId,
    modifiers: &[CpuidModifier],
) -> Result<(), CpuidError> {
    for m in modifiers {
        let entry = cpuid
            .as_mut_slice()
            .iter_mut()
            .find(|e| e.function == m.leaf && e.index == m.subleaf)
            .ok_or(CpuidError::LeafNotSupported {
                leaf: m.leaf,
                subleaf: m.subleaf,
            })?;
        entry.flags = m.flags;
        for (register, filter) in &m.registers {
            let reg = match register {
                CpuidRegister::Eax => &mut entry.eax,
                CpuidRegister::Ebx => &mut entry.ebx,
                CpuidRegister::Ecx => &mut entry.ecx,
                CpuidRegister::Edx => &mut entry.edx,
            };
            // The filter of a 32-bit register has only 32 bits (the parser
            // refuses longer bitmaps), so the truncation loses nothing.
            *reg = filter.apply(u64::from(*reg)) as u32;
        }
    }
    Ok(())
}

const LEAF_VENDOR: u32 = 0x0;
const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_THERMAL_POWER: u32 = 0x6;
const LEAF_EXT_FEATURES: u32 = 0x7;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_XSAVE: u32 = 0xd;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_EXT_AMD_FEATURES: u32 = 0x8000_0001;
const LEAF_ADDRESS_SIZES: u32 = 0x8000_0008;

/// Leaf 0x1 ECX: running under a hypervisor.
const HYPERVISOR_BIT: u32 = 1 << 31;
/// Leaf 0x1 ECX: the local APIC timer has TSC-deadline mode. KVM always
/// emulates it (`KVM_CAP_TSC_DEADLINE_TIMER`) but leaves the bit to the
/// VMM; without it the guest arms every timer tick by writing the APIC's
/// MMIO page (an MMIO exit and an instruction decode) instead of one MSR.
const TSC_DEADLINE_BIT: u32 = 1 << 24;
/// Leaf 0x1 ECX: IA32_PERF_CAPABILITIES exists; KVM does not give the
/// guest a PMU here (leaf 0xa is cleared), so neither is it offered.
const PDCM_BIT: u32 = 1 << 15;
/// Leaf 0x1 EDX: more than one logical processor per package.
const HTT_BIT: u32 = 1 << 28;
/// CLFLUSH line size in 8-byte units (64 bytes).
const CLFLUSH_LINE_SIZE: u32 = 8;

/// Leaf 0xb/0x1f level types (ECX[15:8]).
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

const fn bits(list: &[u32]) -> u32 {
    let mut mask = 0;
    let mut i = 0;
    while i < list.len() {
        mask |= 1 << list[i];
        i += 1;
    }
    mask
}

/// Bits a template clears in one leaf (and subleaf, if it matters).
struct Mask {
    leaf: u32,
    subleaf: Option<u32>,
    eax: u32,
    ebx: u32,
    ecx: u32,
    edx: u32,
}

/// The T2 baseline: roughly what every x86_64 server host from the
/// Haswell/Broadwell and Zen generations on has in common.
const T2_MASKS: &[Mask] = &[
    // Leaf 1 ECX: virtualization (VMX 5, SMX 6) - no nested virtualization;
    // power/thermal (EIST 7, TM2 8) and debug store/perf (DTES64 2, DS-CPL 4,
    // PDCM 15) - host details; MONITOR 3, CNXT-ID 10, SDBG 11, xTPR 14, DCA 18
    // - not virtualized consistently.
    // Leaf 1 EDX: DS 21, ACPI thermal 22, TM 29, PBE 31 - host power management.
    Mask {
        leaf: LEAF_FEATURES,
        subleaf: None,
        eax: 0,
        ebx: 0,
        ecx: bits(&[2, 3, 4, 5, 6, 7, 8, 10, 11, 14, 15, 18]),
        edx: bits(&[21, 22, 29, 31]),
    },
    // Leaf 7.0 EBX: SGX 2; TSX HLE 4 / RTM 11 (disabled by microcode on many
    // hosts); RDT monitoring/allocation 12, 15; MPX 14 (dropped by newer CPUs);
    // AVX-512 F 16, DQ 17, IFMA 21, PF 26, ER 27, CD 28, BW 30, VL 31; newer
    // cache/trace instructions CLFLUSHOPT 23, CLWB 24, Intel PT 25, SHA 29.
    // ECX: AVX-512 VBMI 1, VBMI2 6, VNNI 11, BITALG 12, VPOPCNTDQ 14;
    // PKU 3 / OSPKE 4; WAITPKG 5; GFNI 8, VAES 9, VPCLMULQDQ 10; LA57 16
    // (5-level paging); MOVDIRI 27, MOVDIR64B 28.
    // EDX: AVX-512 4VNNIW 2, 4FMAPS 3, VP2INTERSECT 8, FP16 23; AMX BF16 22,
    // TILE 24, INT8 25.
    Mask {
        leaf: LEAF_EXT_FEATURES,
        subleaf: Some(0),
        eax: 0,
        ebx: bits(&[
            2, 4, 11, 12, 14, 15, 16, 17, 21, 23, 24, 25, 26, 27, 28, 29, 30, 31,
        ]),
        ecx: bits(&[1, 3, 4, 5, 6, 8, 9, 10, 11, 12, 14, 16, 27, 28]),
        edx: bits(&[2, 3, 8, 22, 23, 24, 25]),
    },
    // Leaf 0xd.0 EAX: XSAVE state components of the features hidden above, so
    // the guest does not enable them in XCR0: MPX 3-4, AVX-512 5-7, PKRU 9,
    // AMX tile 17-18.
    Mask {
        leaf: LEAF_XSAVE,
        subleaf: Some(0),
        eax: bits(&[3, 4, 5, 6, 7, 9, 17, 18]),
        ebx: 0,
        ecx: 0,
        edx: 0,
    },
    // Leaf 0x8000_0001 ECX: AMD-only or vendor-specific extensions - SVM 2,
    // ExtApicSpace 3, SSE4A 6, MisAlignSSE 7, OSVW 9, IBS 10, XOP 11, SKINIT 12,
    // WDT 13, LWP 15, FMA4 16, TCE 17, NodeId 19, TBM 21, TopologyExtensions 22
    // (its leaf 0x8000_001e is not normalized), PerfCtr extensions 23, 24, 28,
    // DataBreakpoint 26, PerfTsc 27, MONITORX 29.
    // EDX: AMD-only MmxExt 22, FFXSR 25, 3DNow!Ext 30, 3DNow! 31.
    Mask {
        leaf: LEAF_EXT_AMD_FEATURES,
        subleaf: None,
        eax: 0,
        ebx: 0,
        ecx: bits(&[
            2, 3, 6, 7, 9, 10, 11, 12, 13, 15, 16, 17, 19, 21, 22, 23, 24, 26, 27, 28, 29,
        ]),
        edx: bits(&[22, 25, 30, 31]),
    },
];

/// Whether leaf 0 names an AMD CPU.
fn is_amd(entries: &[kvm_cpuid_entry2]) -> bool {
    entries
        .iter()
        .find(|e| e.function == LEAF_VENDOR)
        .is_some_and(|e| {
            let mut vendor = [0u8; 12];
            vendor[..4].copy_from_slice(&e.ebx.to_le_bytes());
            vendor[4..8].copy_from_slice(&e.edx.to_le_bytes());
            vendor[8..].copy_from_slice(&e.ecx.to_le_bytes());
            &vendor == b"AuthenticAMD"
        })
}

/// Replaces `value[hi:lo]` with `field`.
fn set_bits(value: u32, hi: u32, lo: u32, field: u32) -> u32 {
    let mask = (u32::MAX >> (31 - (hi - lo))) << lo;
    (value & !mask) | ((field << lo) & mask)
}

/// Rewrites one leaf 0xb/0x1f subleaf for a single-socket, one-thread-per-core
/// topology.
fn set_topology_level(entry: &mut kvm_cpuid_entry2, topo: VcpuTopology) {
    let count = u32::from(topo.vcpu_count);
    // Bits of the x2APIC id below the package level: ceil(log2(count)).
    let core_shift = u32::BITS - (count - 1).leading_zeros();
    let (eax, ebx, level_type) = match entry.index {
        0 => (0, 1, LEVEL_TYPE_SMT),
        1 => (core_shift, count, LEVEL_TYPE_CORE),
        _ => (0, 0, 0),
    };
    entry.eax = eax;
    entry.ebx = ebx;
    entry.ecx = (level_type << 8) | (entry.index & 0xff);
    entry.edx = u32::from(topo.vcpu_id);
}

/// Normalizes the CPUID table KVM supports for the vCPU at `topo`, then applies
/// `template`. The result is meant for that vCPU's `set_cpuid2`.
///
/// Only leaves present in `cpuid` are rewritten; none are added. The KVM
/// paravirtual leaves (0x4000_0000...) are left as KVM reported them.
pub fn normalize_cpuid(
    cpuid: &mut CpuId,
    topo: VcpuTopology,
    template: CpuTemplate,
) -> Result<(), CpuidError> {
    if topo.vcpu_count == 0 {
        return Err(CpuidError::NoVcpus);
    }
    if topo.vcpu_id >= topo.vcpu_count {
        return Err(CpuidError::VcpuIdOutOfRange {
            vcpu_id: topo.vcpu_id,
            vcpu_count: topo.vcpu_count,
        });
    }

    let count = u32::from(topo.vcpu_count);
    let apic_id = u32::from(topo.vcpu_id);
    let amd = is_amd(cpuid.as_slice());

    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = set_bits(entry.ebx, 31, 24, apic_id);
                entry.ebx = set_bits(entry.ebx, 23, 16, count);
                entry.ebx = set_bits(entry.ebx, 15, 8, CLFLUSH_LINE_SIZE);
                entry.ecx |= HYPERVISOR_BIT | TSC_DEADLINE_BIT;
                entry.ecx &= !PDCM_BIT;
                if count > 1 {
                    entry.edx |= HTT_BIT;
                } else {
                    entry.edx &= !HTT_BIT;
                }
            }
            LEAF_CACHE => {
                // Cache type 0 marks "no more caches"; leave that subleaf zeroed.
                if entry.eax & 0x1f == 0 {
                    continue;
                }
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level <= 2 { 0 } else { count - 1 };
                // The field is 6 bits wide; saturate rather than wrap.
                let cores = (count - 1).min(0x3f);
                entry.eax = set_bits(entry.eax, 31, 26, cores);
                entry.eax = set_bits(entry.eax, 25, 14, sharing);
            }
            LEAF_THERMAL_POWER | LEAF_PMU => {
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => set_topology_level(entry, topo),
            LEAF_ADDRESS_SIZES if amd => {
                entry.ecx = set_bits(entry.ecx, 7, 0, count - 1);
            }
            _ => {}
        }
    }

    if template == CpuTemplate::T2 {
        for entry in cpuid.as_mut_slice() {
            let masks = T2_MASKS.iter().filter(|m| {
                m.leaf == entry.function && m.subleaf.unwrap_or(entry.index) == entry.index
            });
            for m in masks {
                entry.eax &= !m.eax;
                entry.ebx &= !m.ebx;
                entry.ecx &= !m.ecx;
                entry.edx &= !m.edx;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const AVX512F: u32 = 1 << 16;
    const HLE: u32 = 1 << 4;
    const RTM: u32 = 1 << 11;
    const AVX512_VBMI: u32 = 1 << 1;
    const AVX512_4VNNIW: u32 = 1 << 2;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: 0,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    /// Cache descriptor with type `kind` (1 data, 2 instruction, 3 unified) at `level`.
    fn cache(index: u32, kind: u32, level: u32) -> kvm_cpuid_entry2 {
        // Host-like garbage in the topology fields that must be overwritten.
        let eax = (0x3f << 26) | (0xfff << 14) | (level << 5) | kind;
        entry(LEAF_CACHE, index, [eax, 0x01c0_003f, 0x3f, 0])
    }

    fn vendor_regs(vendor: &[u8; 12]) -> [u32; 4] {
        let word =
            |i: usize| u32::from_le_bytes([vendor[i], vendor[i + 1], vendor[i + 2], vendor[i + 3]]);
        [0x1f, word(0), word(8), word(4)]
    }

    fn table(vendor: &[u8; 12]) -> CpuId {
        CpuId::from_entries(&[
            entry(0, 0, vendor_regs(vendor)),
            // Host: APIC id 0x2a, 0x40 logical CPUs, brand index 0x11.
            entry(1, 0, [0x906ea, 0x2a40_0811, 0x7ffa_fbff, 0xbfeb_fbff]),
            cache(0, 1, 1),
            cache(1, 2, 1),
            cache(2, 3, 2),
            cache(3, 3, 3),
            entry(LEAF_THERMAL_POWER, 0, [0x77, 2, 9, 0]),
            entry(LEAF_EXT_FEATURES, 0, [0, u32::MAX, u32::MAX, u32::MAX]),
            entry(LEAF_PMU, 0, [0x0704_8304, 0, 0, 0x603]),
            entry(LEAF_TOPOLOGY, 0, [1, 2, 0x100, 0x2a]),
            entry(LEAF_TOPOLOGY, 1, [6, 0x40, 0x201, 0x2a]),
            entry(LEAF_TOPOLOGY, 2, [0, 0, 2, 0x2a]),
            entry(
                0x4000_0000,
                0,
                [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d],
            ),
            entry(0x4000_0001, 0, [0x0100_7afb, 0, 0, 0]),
            entry(LEAF_EXT_AMD_FEATURES, 0, [0, 0, u32::MAX, u32::MAX]),
            entry(LEAF_ADDRESS_SIZES, 0, [0x3030, 0, 0x3f, 0]),
        ])
        .expect("synthetic CPUID table")
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .expect("leaf present")
    }

    fn normalized(vendor: &[u8; 12], id: u8, count: u8, template: CpuTemplate) -> CpuId {
        let mut cpuid = table(vendor);
        let topo = VcpuTopology {
            vcpu_id: id,
            vcpu_count: count,
        };
        normalize_cpuid(&mut cpuid, topo, template).unwrap();
        cpuid
    }

    #[test]
    fn topology_rules_for_vcpu_0_and_3_of_4() {
        for id in [0u8, 3] {
            let cpuid = normalized(b"GenuineIntel", id, 4, CpuTemplate::None);
            let id = u32::from(id);

            let l1 = find(&cpuid, 1, 0);
            assert_eq!(l1.ebx >> 24, id);
            assert_eq!((l1.ebx >> 16) & 0xff, 4);
            assert_eq!((l1.ebx >> 8) & 0xff, 8);
            assert_eq!(l1.ebx & 0xff, 0x11, "brand index kept");
            assert_ne!(l1.ecx & HYPERVISOR_BIT, 0);
            assert_ne!(l1.edx & HTT_BIT, 0);

            for (sub, shared) in [(0, 0), (1, 0), (2, 0), (3, 3)] {
                let l4 = find(&cpuid, 4, sub);
                assert_eq!(l4.eax >> 26, 3, "subleaf {sub}");
                assert_eq!((l4.eax >> 14) & 0xfff, shared, "subleaf {sub}");
            }

            for leaf in [LEAF_THERMAL_POWER, LEAF_PMU] {
                let e = find(&cpuid, leaf, 0);
                assert_eq!([e.eax, e.ebx, e.ecx, e.edx], [0; 4]);
            }

            let smt = find(&cpuid, 0xb, 0);
            assert_eq!([smt.eax, smt.ebx, smt.ecx, smt.edx], [0, 1, 0x100, id]);
            let core = find(&cpuid, 0xb, 1);
            assert_eq!([core.eax, core.ebx, core.ecx, core.edx], [2, 4, 0x201, id]);
            let rest = find(&cpuid, 0xb, 2);
            assert_eq!([rest.eax, rest.ebx, rest.ecx, rest.edx], [0, 0, 2, id]);

            // Intel: the AMD core count field is not touched.
            assert_eq!(find(&cpuid, LEAF_ADDRESS_SIZES, 0).ecx, 0x3f);
            assert_eq!(find(&cpuid, LEAF_ADDRESS_SIZES, 0).eax, 0x3030);

            // KVM leaves stay as reported.
            let original = table(b"GenuineIntel");
            for leaf in [0x4000_0000, 0x4000_0001] {
                let (a, b) = (find(&cpuid, leaf, 0), find(&original, leaf, 0));
                assert_eq!([a.eax, a.ebx, a.ecx, a.edx], [b.eax, b.ebx, b.ecx, b.edx]);
            }
        }
    }

    #[test]
    fn cache_level_fields_are_kept() {
        let cpuid = normalized(b"GenuineIntel", 0, 4, CpuTemplate::None);
        for (sub, kind, level) in [(0, 1, 1), (1, 2, 1), (2, 3, 2), (3, 3, 3)] {
            let eax = find(&cpuid, 4, sub).eax;
            assert_eq!(eax & 0x1f, kind);
            assert_eq!((eax >> 5) & 7, level);
        }
    }

    #[test]
    fn single_vcpu_has_no_htt_and_zero_shift() {
        let cpuid = normalized(b"GenuineIntel", 0, 1, CpuTemplate::None);
        assert_eq!(find(&cpuid, 1, 0).edx & HTT_BIT, 0);
        assert_eq!(find(&cpuid, 0xb, 1).eax, 0);
        assert_eq!(find(&cpuid, 0xb, 1).ebx, 1);
        assert_eq!(find(&cpuid, 4, 3).eax >> 14, 0);
    }

    #[test]
    fn the_apic_timer_has_tsc_deadline_mode_and_no_perf_capabilities() {
        let cpuid = normalized(b"GenuineIntel", 0, 1, CpuTemplate::None);
        let ecx = find(&cpuid, 1, 0).ecx;
        assert_ne!(ecx & TSC_DEADLINE_BIT, 0);
        assert_eq!(ecx & PDCM_BIT, 0);
        assert_ne!(ecx & HYPERVISOR_BIT, 0);
    }

    #[test]
    fn core_shift_rounds_up() {
        let cpuid = normalized(b"GenuineIntel", 4, 5, CpuTemplate::None);
        assert_eq!(find(&cpuid, 0xb, 1).eax, 3);
        let cpuid = normalized(b"GenuineIntel", 0, 2, CpuTemplate::None);
        assert_eq!(find(&cpuid, 0xb, 1).eax, 1);
    }

    #[test]
    fn amd_core_count_in_address_size_leaf() {
        let cpuid = normalized(b"AuthenticAMD", 1, 4, CpuTemplate::None);
        let e = find(&cpuid, LEAF_ADDRESS_SIZES, 0);
        assert_eq!(e.ecx, 3);
        assert_eq!(e.eax, 0x3030, "address sizes kept");
    }

    #[test]
    fn t2_masks_avx512_and_tsx_but_none_keeps_them() {
        let none = find(&normalized(b"GenuineIntel", 0, 4, CpuTemplate::None), 7, 0);
        assert_eq!(none.ebx & (AVX512F | HLE | RTM), AVX512F | HLE | RTM);
        assert_ne!(none.ecx & AVX512_VBMI, 0);
        assert_ne!(none.edx & AVX512_4VNNIW, 0);

        let cpuid = normalized(b"GenuineIntel", 0, 4, CpuTemplate::T2);
        let t2 = find(&cpuid, 7, 0);
        let ebx_cleared = bits(&[2, 4, 11, 14, 16, 17, 21, 26, 27, 28, 30, 31]);
        let ecx_cleared = bits(&[1, 3, 4, 6, 11, 12, 14]);
        let edx_cleared = bits(&[2, 3, 8]);
        assert_eq!(t2.ebx & ebx_cleared, 0);
        assert_eq!(t2.ecx & ecx_cleared, 0);
        assert_eq!(t2.edx & edx_cleared, 0);
        // Baseline features such as AVX2 (EBX 5) and BMI2 (EBX 8) survive.
        assert_eq!(t2.ebx & bits(&[5, 8]), bits(&[5, 8]));

        let l1 = find(&cpuid, 1, 0);
        assert_eq!(l1.ecx & bits(&[5, 6, 7, 8, 15, 18]), 0);
        assert_ne!(
            l1.ecx & HYPERVISOR_BIT,
            0,
            "template keeps the hypervisor bit"
        );
        let ext = find(&cpuid, LEAF_EXT_AMD_FEATURES, 0);
        assert_eq!(ext.ecx & (1 << 2), 0, "SVM hidden");
        assert_ne!(ext.ecx & 1, 0, "LAHF/SAHF kept");
        assert_ne!(ext.edx & (1 << 29), 0, "long mode kept");
    }

    #[test]
    fn rejects_bad_topology() {
        let mut cpuid = table(b"GenuineIntel");
        let topo = |vcpu_id, vcpu_count| VcpuTopology {
            vcpu_id,
            vcpu_count,
        };
        assert_eq!(
            normalize_cpuid(&mut cpuid, topo(0, 0), CpuTemplate::None),
            Err(CpuidError::NoVcpus)
        );
        assert_eq!(
            normalize_cpuid(&mut cpuid, topo(4, 4), CpuTemplate::None),
            Err(CpuidError::VcpuIdOutOfRange {
                vcpu_id: 4,
                vcpu_count: 4
            })
        );
    }

    #[test]
    fn normalizes_host_cpuid() {
        let kvm = match kvm_ioctls::Kvm::new() {
            Ok(kvm) => kvm,
            Err(e) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "cannot run under CI: /dev/kvm: {e}"
                );
                println!("skipping: cannot open /dev/kvm: {e}");
                return;
            }
        };
        let mut cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        let topo = VcpuTopology {
            vcpu_id: 1,
            vcpu_count: 2,
        };
        normalize_cpuid(&mut cpuid, topo, CpuTemplate::T2).unwrap();
        let l1 = find(&cpuid, 1, 0);
        assert_eq!(l1.ebx >> 24, 1);
        assert_ne!(l1.ecx & HYPERVISOR_BIT, 0);
    }

    #[test]
    fn cpuid_modifiers_set_clear_and_keep_host_bits() {
        let mut cpuid = CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0, [0xffff_0000, 0, 0b1101, 0]),
            entry(LEAF_EXT_FEATURES, 0, [0, 0xffff_ffff, 0, 0]),
        ])
        .unwrap();
        let modifiers = [
            CpuidModifier {
                leaf: LEAF_FEATURES,
                subleaf: 0,
                flags: 1,
                registers: vec![
                    // "0bx01x": bit 2 cleared, bit 1 set, bits 0 and 3 the host's.
                    (
                        CpuidRegister::Ecx,
                        BitFilter {
                            mask: 0b0110,
                            value: 0b0010,
                        },
                    ),
                    (
                        CpuidRegister::Eax,
                        BitFilter {
                            mask: 0xffff_ffff,
                            value: 0x1234,
                        },
                    ),
                ],
            },
            CpuidModifier {
                leaf: LEAF_EXT_FEATURES,
                subleaf: 0,
                flags: 0,
                registers: vec![(
                    CpuidRegister::Ebx,
                    BitFilter {
                        mask: AVX512F.into(),
                        value: 0,
                    },
                )],
            },
        ];
        apply_cpuid_modifiers(&mut cpuid, &modifiers).unwrap();
        let e = cpuid.as_slice();
        assert_eq!(e[0].ecx, 0b1011, "host 0b1101 through 0bx01x");
        assert_eq!(e[0].eax, 0x1234);
        assert_eq!(e[0].flags, 1);
        assert_eq!(e[1].ebx, !AVX512F, "only AVX512F cleared");
    }

    #[test]
    fn cpuid_modifier_of_a_missing_leaf_is_refused() {
        let mut cpuid = CpuId::from_entries(&[entry(LEAF_FEATURES, 0, [0; 4])]).unwrap();
        let missing = CpuidModifier {
            leaf: LEAF_FEATURES,
            subleaf: 1,
            flags: 0,
            registers: vec![],
        };
        assert_eq!(
            apply_cpuid_modifiers(&mut cpuid, &[missing]),
            Err(CpuidError::LeafNotSupported {
                leaf: 1,
                subleaf: 1
            })
        );
    }
}
