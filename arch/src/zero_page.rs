//! The Linux "zero page" (`struct boot_params`) and its e820 memory map.
//!
//! With the 64-bit boot protocol the kernel learns everything about its
//! environment from this page: where RAM is, where the command line and the
//! initrd are, and (for a bzImage) the setup header it was built with.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::layout::{
    CMDLINE_START, EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START, ZERO_PAGE_START,
};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
/// Room in `boot_params` for e820 entries.
const E820_MAX_ENTRIES: usize = 128;

/// Why the zero page could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ZeroPageError {
    /// The memory map needs more entries than `boot_params` holds.
    #[error("the e820 map needs {0} entries, the zero page holds {E820_MAX_ENTRIES}")]
    TooManyE820Entries(usize),
    /// Writing the zero page into guest memory failed.
    #[error("writing the zero page: {0}")]
    Write(linux_loader::configurator::Error),
}

/// One e820 entry: `[addr, addr + size)` of `kind` (E820_RAM, E820_RESERVED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte of the range.
    pub addr: u64,
    /// Length of the range in bytes.
    pub size: u64,
    /// E820_RAM or E820_RESERVED.
    pub kind: u32,
}

/// The e820 map of a guest with `mem_size` bytes of RAM laid out by
/// [`crate::layout::ram_regions`]: low RAM up to the EBDA (the MP table lives
/// there and must not be handed to the page allocator), then RAM from 1 MiB up to
/// the MMIO hole, then whatever did not fit below 4 GiB.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let ram = |addr, end: u64| E820Entry {
        addr,
        size: end - addr,
        kind: E820_RAM,
    };
    let mut map = vec![ram(0, EBDA_START.min(mem_size))];
    let low_end = mem_size.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        map.push(ram(HIMEM_START, low_end));
    }
    if mem_size > MMIO_GAP_START {
        map.push(ram(
            MMIO_GAP_END,
            MMIO_GAP_END + (mem_size - MMIO_GAP_START),
        ));
    }
    map
}

/// Where the initrd was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdRange {
    /// Guest-physical start (page aligned).
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: u64,
}

/// Everything the zero page describes.
#[derive(Debug, Clone, Copy)]
pub struct ZeroPageInputs<'a> {
    /// The bzImage's own setup header; `None` for an ELF vmlinux.
    pub setup_header: Option<setup_header>,
    /// Length of the command line at [`CMDLINE_START`], without its NUL.
    pub cmdline_len: usize,
    /// The loaded initrd, if any.
    pub initrd: Option<InitrdRange>,
    /// The e820 memory map.
    pub e820: &'a [E820Entry],
}

/// Builds the `boot_params` structure for `inputs`.
pub fn build_boot_params(inputs: &ZeroPageInputs) -> Result<boot_params, ZeroPageError> {
    let mut params = boot_params::default();
    if let Some(hdr) = inputs.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = inputs.cmdline_len as u32;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    if let Some(initrd) = inputs.initrd {
        params.hdr.ramdisk_image = initrd.addr.0 as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    if inputs.e820.len() > E820_MAX_ENTRIES {
        return Err(ZeroPageError::TooManyE820Entries(inputs.e820.len()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(inputs.e820) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = inputs.e820.len() as u8;
    Ok(params)
}

/// Builds the zero page and writes it at [`ZERO_PAGE_START`].
pub fn write_zero_page<M: GuestMemoryBackend>(
    mem: &M,
    inputs: &ZeroPageInputs,
) -> Result<(), ZeroPageError> {
    let params = build_boot_params(inputs)?;
    LinuxBootConfigurator::write_bootparams::<M>(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(ZeroPageError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryMmap};

    fn total_ram(map: &[E820Entry]) -> u64 {
        map.iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn e820_small_guest() {
        let map = e820_map(256 << 20);
        assert_eq!(map.len(), 2);
        assert_eq!((map[0].addr, map[0].size), (0, EBDA_START));
        assert_eq!(
            (map[1].addr, map[1].size),
            (HIMEM_START, (256 << 20) - HIMEM_START)
        );
        // The 384 KiB between the EBDA and 1 MiB (legacy video/ROM) are not RAM.
        assert_eq!(total_ram(&map), (256 << 20) - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn e820_above_the_mmio_gap() {
        let mem = 5u64 << 30;
        let map = e820_map(mem);
        assert_eq!(map.len(), 3);
        assert_eq!(map[1].addr + map[1].size, MMIO_GAP_START);
        assert_eq!(map[2].addr, MMIO_GAP_END);
        assert_eq!(map[2].size, mem - MMIO_GAP_START);
        // No RAM entry overlaps the hole, and entries are sorted and disjoint.
        for pair in map.windows(2) {
            assert!(pair[0].addr + pair[0].size <= pair[1].addr);
        }
        assert!(map
            .iter()
            .all(|e| e.addr + e.size <= MMIO_GAP_START || e.addr >= MMIO_GAP_END));
        assert_eq!(total_ram(&map), mem - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn e820_exactly_at_the_gap() {
        let map = e820_map(MMIO_GAP_START);
        assert_eq!(map.len(), 2);
        assert_eq!(map[1].addr + map[1].size, MMIO_GAP_START);
    }

    #[test]
    fn zero_page_fields() {
        let map = e820_map(128 << 20);
        let initrd = InitrdRange {
            addr: GuestAddress(0x700_0000),
            size: 0x12_3456,
        };
        let p = build_boot_params(&ZeroPageInputs {
            setup_header: None,
            cmdline_len: 42,
            initrd: Some(initrd),
            e820: &map,
        })
        .unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ hdr.ramdisk_image }, 0x700_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x12_3456);
        assert_eq!(p.e820_entries, 2);
        let second = p.e820_table[1];
        assert_eq!(
            ({ second.addr }, { second.r#type }),
            (HIMEM_START, E820_RAM)
        );
    }

    #[test]
    fn bzimage_header_is_kept() {
        let hdr = setup_header {
            version: 0x020f,
            loadflags: 1,
            ..Default::default()
        };
        let p = build_boot_params(&ZeroPageInputs {
            setup_header: Some(hdr),
            cmdline_len: 1,
            initrd: None,
            e820: &[],
        })
        .unwrap();
        assert_eq!(({ p.hdr.version }, p.hdr.loadflags), (0x020f, 1));
        assert_eq!({ p.hdr.ramdisk_image }, 0);
    }

    #[test]
    fn written_to_guest_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let map = e820_map(1 << 20);
        write_zero_page(
            &mem,
            &ZeroPageInputs {
                setup_header: None,
                cmdline_len: 7,
                initrd: None,
                e820: &map,
            },
        )
        .unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.cmdline_size }, 7);
        assert_eq!(p.e820_entries, 1);
    }

    #[test]
    fn too_many_entries_is_an_error() {
        let map = vec![
            E820Entry {
                addr: 0,
                size: 1,
                kind: E820_RAM
            };
            E820_MAX_ENTRIES + 1
        ];
        let inputs = ZeroPageInputs {
            setup_header: None,
            cmdline_len: 0,
            initrd: None,
            e820: &map,
        };
        assert!(matches!(
            build_boot_params(&inputs),
            Err(ZeroPageError::TooManyE820Entries(129))
        ));
    }
}
