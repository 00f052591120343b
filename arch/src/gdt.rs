//! The flat 64-bit GDT a guest kernel is entered with.
//!
//! The 64-bit Linux boot protocol requires long mode with flat `__BOOT_CS` /
//! `__BOOT_DS` descriptors. The same descriptors are written into guest memory
//! (the kernel may reload them) and converted into `kvm_segment`s for the vCPU.

use kvm_bindings::kvm_segment;

/// Descriptor flags: 64-bit code, present, DPL 0, readable, granularity 4 KiB.
const CODE64_FLAGS: u16 = 0xa09b;
/// Descriptor flags: data, present, DPL 0, writable, 32-bit, granularity 4 KiB.
const DATA_FLAGS: u16 = 0xc093;
/// Descriptor flags: 64-bit busy TSS, present.
const TSS_FLAGS: u16 = 0x808b;

/// The boot GDT: null, code, data, TSS (selectors 0x0, 0x8, 0x10, 0x18).
pub fn boot_gdt() -> [u64; 4] {
    [
        0,
        descriptor(CODE64_FLAGS, 0, 0xfffff),
        descriptor(DATA_FLAGS, 0, 0xfffff),
        descriptor(TSS_FLAGS, 0, 0xfffff),
    ]
}

/// Index of the code descriptor in [`boot_gdt`].
pub const CODE_INDEX: u8 = 1;
/// Index of the data descriptor in [`boot_gdt`].
pub const DATA_INDEX: u8 = 2;
/// Index of the TSS descriptor in [`boot_gdt`].
pub const TSS_INDEX: u8 = 3;

/// Packs a segment descriptor the way the CPU reads it from the GDT.
pub fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let (base, limit, flags) = (u64::from(base), u64::from(limit), u64::from(flags));
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// Unpacks a descriptor into the form `KVM_SET_SREGS` takes.
pub fn kvm_segment_from(descriptor: u64, index: u8) -> kvm_segment {
    let bit = |n: u32| ((descriptor >> n) & 1) as u8;
    let base = ((descriptor >> 16) & 0x00ff_ffff) | ((descriptor >> 32) & 0xff00_0000);
    let raw_limit = ((descriptor & 0xffff) | ((descriptor >> 32) & 0xf_0000)) as u32;
    let granular = bit(55);
    let present = bit(47);
    kvm_segment {
        base,
        // With 4 KiB granularity KVM wants the limit in bytes.
        limit: if granular == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: u16::from(index) * 8,
        type_: ((descriptor >> 40) & 0xf) as u8,
        present,
        dpl: ((descriptor >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: granular,
        avl: bit(52),
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_long_mode_flat() {
        let cs = kvm_segment_from(boot_gdt()[CODE_INDEX as usize], CODE_INDEX);
        assert_eq!(cs.selector, 0x8);
        assert_eq!((cs.l, cs.db, cs.s, cs.present, cs.g), (1, 0, 1, 1, 1));
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.base, 0);
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.unusable, 0);
    }

    #[test]
    fn data_and_tss_segments() {
        let ds = kvm_segment_from(boot_gdt()[DATA_INDEX as usize], DATA_INDEX);
        assert_eq!((ds.selector, ds.type_, ds.db, ds.l), (0x10, 0x3, 1, 0));
        let tss = kvm_segment_from(boot_gdt()[TSS_INDEX as usize], TSS_INDEX);
        assert_eq!((tss.selector, tss.type_, tss.s), (0x18, 0xb, 0));
    }

    #[test]
    fn descriptor_round_trips_base_and_limit() {
        let d = descriptor(0x4093, 0x1234_5678, 0xabcde);
        let s = kvm_segment_from(d, 5);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde);
        assert_eq!(s.g, 0);
        assert_eq!(kvm_segment_from(0, 0).unusable, 1);
    }
}
