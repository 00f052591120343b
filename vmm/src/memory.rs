//! Guest RAM: anonymous host mappings laid out by [`arch::layout`], and
//! the guest-physical space above RAM that devices map memory into.
//!
//! Above RAM (and above the 32-bit MMIO hole), 1 GiB aligned, comes the
//! virtio-mem hotplug region ([`hotplug_region`]), then the device regions
//! of virtio-pmem ([`DeviceSpace`], 2 MiB aligned). The hotplug region is
//! part of [`GuestMemory`] (one more anonymous `MAP_NORESERVE` region, so
//! devices can DMA into plugged memory and snapshots save it), but not of
//! the e820 map: the guest learns about it from the virtio-mem device only.
//! Device regions are host mappings the device owns (a pmem file), given
//! to KVM as extra memory slots numbered from [`DEVICE_SLOT_BASE`].
//!
//! The mappings are `MAP_NORESERVE`: a guest only costs the host the pages it
//! touches, so a 4 GiB+ guest (with RAM above the 32-bit MMIO hole) is cheap
//! to create.

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

/// Guest memory as flint uses it everywhere (the devices' type: with a
/// bitmap of the pages the VMM itself wrote).
pub type GuestMemory = devices::virtio::GuestMemory;

/// The most guest RAM flint accepts from a snapshot or migration stream
/// (a hostile layout must not make the host map absurd amounts).
pub const MAX_GUEST_MEMORY: u64 = 1 << 40;

/// Why guest memory could not be created.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The shared memory file could not be created or sized.
    #[error("creating a {size_mib} MiB memfd for shared guest memory: {source}")]
    Memfd {
        /// Requested size.
        size_mib: u64,
        /// What the host said.
        source: std::io::Error,
    },
    /// The host refused the mapping.
    #[error("mapping {size_mib} MiB of guest memory: {source}")]
    Map {
        /// Requested size.
        size_mib: u64,
        /// What vm-memory reported.
        source: vm_memory::mmap::FromRangesError,
    },
    /// The host could not give 2 MiB huge pages for `huge_pages: "2M"`.
    #[error("mapping {size_mib} MiB of guest memory with 2 MiB huge pages: {source} (the host needs {pages} free pages: see /proc/sys/vm/nr_hugepages)")]
    HugePages {
        /// Requested size.
        size_mib: u64,
        /// 2 MiB pages needed.
        pages: u64,
        /// What mmap (or vm-memory) reported.
        source: std::io::Error,
    },
}

/// Maps `mem_size_mib` MiB of guest RAM.
pub fn create_guest_memory(mem_size_mib: u64) -> Result<GuestMemory, MemoryError> {
    create_guest_memory_with(mem_size_mib, None)
}

/// Maps `mem_size_mib` MiB of guest RAM plus, with `hotplug`, the virtio-mem
/// hotplug region of `config` (see [`hotplug_region`]).
pub fn create_guest_memory_with(
    mem_size_mib: u64,
    hotplug: Option<&api::MemoryHotplugConfig>,
) -> Result<GuestMemory, MemoryError> {
    create_guest_memory_backed(mem_size_mib, hotplug, MemoryBacking::Anonymous)
}

/// What guest RAM is backed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryBacking {
    /// Private anonymous mappings (the default: nothing else maps them).
    Anonymous,
    /// One `memfd` mapped `MAP_SHARED`, every region at its own offset, so
    /// a vhost-user backend (virtiofsd) can map the same pages from the fd
    /// flint hands it in `SET_MEM_TABLE`.
    SharedMemfd,
    /// Private anonymous 2 MiB huge pages (machine-config `huge_pages: 2M`).
    HugePages2M,
}

impl MemoryBacking {
    /// Shared memory when a device's data path runs in another process
    /// (a virtio-fs device; validation refuses it with huge pages), 2 MiB
    /// pages when the machine config asks for them, anonymous otherwise.
    pub fn for_config(config: &api::VmConfig) -> Self {
        if !config.fs.is_empty() {
            Self::SharedMemfd
        } else if config.machine_config.huge_pages == api::HugePages::Hugetlbfs2M {
            Self::HugePages2M
        } else {
            Self::Anonymous
        }
    }
}

/// [`create_guest_memory_with`] with the backing chosen.
pub fn create_guest_memory_backed(
    mem_size_mib: u64,
    hotplug: Option<&api::MemoryHotplugConfig>,
    backing: MemoryBacking,
) -> Result<GuestMemory, MemoryError> {
    let mut regions = arch::layout::ram_regions(mem_size_mib << 20);
    if let Some(h) = hotplug {
        let (addr, size) = hotplug_region(mem_size_mib, h);
        regions.push((GuestAddress(addr), size as usize));
    }
    let map_error = |source| MemoryError::Map {
        size_mib: mem_size_mib,
        source,
    };
    match backing {
        MemoryBacking::HugePages2M => huge_page_memory(mem_size_mib, hotplug),
        MemoryBacking::Anonymous => GuestMemoryMmap::from_ranges(&regions).map_err(map_error),
        MemoryBacking::SharedMemfd => {
            let memfd_error = |source| MemoryError::Memfd {
                size_mib: mem_size_mib,
                source,
            };
            let total: u64 = regions.iter().map(|(_, len)| *len as u64).sum();
            let file = memfd::MemfdOptions::default()
                .close_on_exec(true)
                .create("flint-guest-ram")
                .map_err(|e| memfd_error(std::io::Error::other(e)))?
                .into_file();
            file.set_len(total).map_err(memfd_error)?;
            let file = std::sync::Arc::new(file);
            let mut offset = 0u64;
            let ranges: Vec<_> = regions
                .iter()
                .map(|&(addr, len)| {
                    let at = FileOffset::from_arc(file.clone(), offset);
                    offset += len as u64;
                    (addr, len, Some(at))
                })
                .collect();
            GuestMemoryMmap::from_ranges_with_files(&ranges).map_err(map_error)
        }
    }
}

/// Guest RAM as [`create_guest_memory_with`] on 2 MiB pages: maps RAM with `MAP_HUGETLB | MAP_HUGE_2MB` (Firecracker's hugetlbfs
/// backing), reserving the pages at once so a host without enough free
/// ones fails here, not with a SIGBUS later; the hotplug region keeps
/// ordinary pages (it is mostly unplugged, and must cost nothing then).
fn huge_page_memory(
    mem_size_mib: u64,
    hotplug: Option<&api::MemoryHotplugConfig>,
) -> Result<GuestMemory, MemoryError> {
    let pages = mem_size_mib.div_ceil(2);
    let huge_err = |source| MemoryError::HugePages {
        size_mib: mem_size_mib,
        pages,
        source,
    };
    let mut regions = Vec::new();
    for (addr, size) in arch::layout::ram_regions(mem_size_mib << 20) {
        let size = size.next_multiple_of(HUGE_PAGE_SIZE);
        let flags =
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_HUGE_2MB;
        let bitmap = vm_memory::bitmap::NewBitmap::with_len(size);
        let mapping = vm_memory::mmap::MmapRegionBuilder::new_with_bitmap(size, bitmap)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags)
            .with_hugetlbfs(true)
            .build()
            .map_err(|e| huge_err(std::io::Error::other(e.to_string())))?;
        let region = vm_memory::GuestRegionMmap::new(mapping, addr)
            .ok_or_else(|| huge_err(std::io::Error::other("region overflows")))?;
        regions.push(region);
    }
    if let Some(h) = hotplug {
        let (addr, size) = hotplug_region(mem_size_mib, h);
        let region =
            vm_memory::GuestRegionMmap::from_range(GuestAddress(addr), size as usize, None)
                .map_err(|source| MemoryError::Map {
                    size_mib: mem_size_mib,
                    source,
                })?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions)
        .map_err(|e| huge_err(std::io::Error::other(e.to_string())))
}

/// A 2 MiB huge page.
const HUGE_PAGE_SIZE: usize = 2 << 20;

/// Alignment of the areas above RAM (1 GiB: a Linux memory block and
/// sparsemem section multiple, whatever the guest's block size).
pub const DEVICE_AREA_ALIGN: u64 = 1 << 30;

/// First KVM slot number used for device regions (RAM regions use 0..).
pub const DEVICE_SLOT_BASE: u32 = 256;

/// Where the space above RAM begins for a guest of `mem_size_mib` MiB.
pub fn device_area_start(mem_size_mib: u64) -> u64 {
    let ram_end = arch::layout::ram_regions(mem_size_mib << 20)
        .iter()
        .map(|(a, l)| a.0 + *l as u64)
        .max()
        .unwrap_or(0);
    ram_end
        .max(arch::layout::MMIO_GAP_END)
        .next_multiple_of(DEVICE_AREA_ALIGN)
}

/// The virtio-mem hotplug region (guest address, size in bytes).
pub fn hotplug_region(mem_size_mib: u64, config: &api::MemoryHotplugConfig) -> (u64, u64) {
    (device_area_start(mem_size_mib), config.total_size_mib << 20)
}

/// A host mapping a device puts into guest-physical memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRegion {
    /// Host address of the mapping.
    pub host_addr: u64,
    /// Its size in bytes (a multiple of 2 MiB).
    pub size: u64,
    /// Whether the guest may only read it (a KVM read-only slot).
    pub read_only: bool,
}

/// Hands out guest-physical space and KVM slots for device regions, after
/// RAM and the hotplug region, in attach order (so a restore with the same
/// configuration places everything where it was).
#[derive(Debug)]
pub struct DeviceSpace {
    next_addr: u64,
    next_slot: u32,
}

/// Device regions are aligned to this (2 MiB).
pub const DEVICE_REGION_ALIGN: u64 = 2 << 20;

impl DeviceSpace {
    /// The space for `config`'s VM.
    pub fn new(config: &api::VmConfig) -> Self {
        let mem_mib = config.machine_config.mem_size_mib;
        let mut next_addr = device_area_start(mem_mib);
        if let Some(h) = &config.memory_hotplug {
            let (addr, size) = hotplug_region(mem_mib, h);
            next_addr = (addr + size).next_multiple_of(DEVICE_AREA_ALIGN);
        }
        Self {
            next_addr,
            next_slot: DEVICE_SLOT_BASE,
        }
    }

    /// Reserves `size` bytes: their guest address and KVM slot.
    pub fn allocate(&mut self, size: u64) -> Option<(u64, u32)> {
        let addr = self.next_addr;
        let end = addr.checked_add(size.checked_next_multiple_of(DEVICE_REGION_ALIGN)?)?;
        if end > MAX_GUEST_MEMORY * 2 {
            return None;
        }
        let slot = self.next_slot;
        self.next_addr = end;
        self.next_slot += 1;
        Some((addr, slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arch::layout::{MMIO_GAP_END, MMIO_GAP_START};
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn five_gib_guest_is_sparse_and_split_around_the_hole() {
        let mem = create_guest_memory(5 << 10).unwrap();
        assert_eq!(mem.num_regions(), 2);
        // Both ends of both regions are addressable; the hole is not.
        for addr in [
            0,
            MMIO_GAP_START - 8,
            MMIO_GAP_END,
            MMIO_GAP_END + (2 << 30) - 8,
        ] {
            mem.write_obj(0xfeed_u64, GuestAddress(addr)).unwrap();
            assert_eq!(mem.read_obj::<u64>(GuestAddress(addr)).unwrap(), 0xfeed);
        }
        assert!(mem.write_obj(1u64, GuestAddress(MMIO_GAP_START)).is_err());
        assert!(mem
            .write_obj(1u64, GuestAddress(MMIO_GAP_END + (2 << 30)))
            .is_err());
    }

    #[test]
    fn shared_memfd_backing_is_one_file_mapped_shared() {
        use std::os::unix::fs::FileExt;
        use vm_memory::GuestMemoryRegion;
        let mem = create_guest_memory_backed(5 << 10, None, MemoryBacking::SharedMemfd).unwrap();
        assert_eq!(mem.num_regions(), 2);
        mem.write_obj(0xabcd_u64, GuestAddress(MMIO_GAP_END))
            .unwrap();
        // The second region sits in the same file after the first, and a
        // write through guest memory is visible through the file.
        let regions: Vec<_> = mem.iter().collect();
        let low = regions[0].len();
        let fo = regions[1].file_offset().unwrap();
        assert_eq!(fo.start(), low);
        let mut buf = [0u8; 8];
        fo.file().read_exact_at(&mut buf, low).unwrap();
        assert_eq!(u64::from_le_bytes(buf), 0xabcd);
        let config: api::VmConfig = serde_json::from_str(
            r#"{"boot-source":{"kernel_image_path":"/k"},"fs":[{"tag":"a","socket":"/s"}]}"#,
        )
        .unwrap();
        assert_eq!(
            MemoryBacking::for_config(&config),
            MemoryBacking::SharedMemfd
        );
    }

    #[test]
    fn hotplug_and_device_regions_sit_above_ram_and_the_hole() {
        assert_eq!(device_area_start(256), 1 << 32);
        assert_eq!(device_area_start(5 << 10), 6 << 30);
        let h = api::MemoryHotplugConfig {
            total_size_mib: 128,
            slot_size_mib: 128,
            block_size_mib: 2,
        };
        let mem = create_guest_memory_with(256, Some(&h)).unwrap();
        assert_eq!(mem.num_regions(), 2);
        mem.write_obj(1u64, GuestAddress((1 << 32) + (128 << 20) - 8))
            .unwrap();
        let config: api::VmConfig = serde_json::from_str(
            r#"{"boot-source":{"kernel_image_path":"/k"},"memory-hotplug":{"total_size_mib":128}}"#,
        )
        .unwrap();
        let mut space = DeviceSpace::new(&config);
        assert_eq!(space.allocate(1), Some((5 << 30, DEVICE_SLOT_BASE)));
        assert_eq!(
            space.allocate(4 << 20),
            Some(((5 << 30) + (2 << 20), DEVICE_SLOT_BASE + 1))
        );
        assert_eq!(space.allocate(u64::MAX), None);
    }

    /// `huge_pages: "2M"`: with free pages reserved (the test sets
    /// `/proc/sys/vm/nr_hugepages`, as root, and puts it back), RAM is
    /// mapped with 2 MiB pages (smaps says so); without them the mapping
    /// fails with an error that says what the host lacks.
    #[test]
    fn huge_pages_back_ram_with_2m_pages() {
        const PATH: &str = "/proc/sys/vm/nr_hugepages";
        let Ok(before) = std::fs::read_to_string(PATH) else {
            assert!(std::env::var_os("CI").is_none(), "{PATH} is needed in CI");
            return;
        };
        let before: u64 = before.trim().parse().unwrap();
        let free = || -> u64 {
            std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        // Put the pool back however the test ends.
        struct Restore(u64);
        impl Drop for Restore {
            fn drop(&mut self) {
                let _ = std::fs::write("/proc/sys/vm/nr_hugepages", self.0.to_string());
            }
        }
        let _restore = Restore(before);
        if std::fs::write(PATH, (before + 8).to_string()).is_err() || free() < 8 {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must be able to reserve 8 huge pages (root)"
            );
            eprintln!("skipped: cannot reserve 2 MiB huge pages here");
            return;
        }
        let mem = create_guest_memory_backed(16, None, MemoryBacking::HugePages2M).unwrap();
        mem.write_obj(0xfeed_u64, GuestAddress(0x1000)).unwrap();
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0x1000)).unwrap(), 0xfeed);
        let host = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let header = format!("{host:x}-");
        // The mapping's header line, then its `Field: value` lines.
        let block = smaps
            .split_inclusive('\n')
            .skip_while(|l| !l.starts_with(&header))
            .enumerate()
            .take_while(|(i, l)| {
                *i == 0
                    || l.split_whitespace()
                        .next()
                        .is_some_and(|w| w.ends_with(':'))
            })
            .map(|(_, l)| l)
            .collect::<String>();
        assert!(
            block.contains("KernelPageSize:     2048 kB"),
            "guest RAM at {host:#x} is not on 2 MiB pages:\n{block}"
        );
        drop(mem);

        // More than the pool holds: a clear error, not a SIGBUS later.
        std::fs::write(PATH, before.to_string()).unwrap();
        let err = create_guest_memory_backed(2 * (free() + 1), None, MemoryBacking::HugePages2M)
            .unwrap_err();
        assert!(err.to_string().contains("nr_hugepages"), "{err}");
    }
}
