//! Guest RAM: anonymous host mappings laid out by [`arch::layout`].
//!
//! The mappings are `MAP_NORESERVE`: a guest only costs the host the pages it
//! touches, so a 4 GiB+ guest (with RAM above the 32-bit MMIO hole) is cheap
//! to create.

use vm_memory::GuestMemoryMmap;

/// Guest memory as flint uses it everywhere (the devices' type: with a
/// bitmap of the pages the VMM itself wrote).
pub type GuestMemory = devices::virtio::GuestMemory;

/// The most guest RAM flint accepts from a snapshot or migration stream
/// (a hostile layout must not make the host map absurd amounts).
pub const MAX_GUEST_MEMORY: u64 = 1 << 40;

/// Why guest memory could not be created.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host refused the mapping.
    #[error("mapping {size_mib} MiB of guest memory: {source}")]
    Map {
        /// Requested size.
        size_mib: u64,
        /// What vm-memory reported.
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Maps `mem_size_mib` MiB of guest RAM.
pub fn create_guest_memory(mem_size_mib: u64) -> Result<GuestMemory, MemoryError> {
    let regions = arch::layout::ram_regions(mem_size_mib << 20);
    GuestMemoryMmap::from_ranges(&regions).map_err(|source| MemoryError::Map {
        size_mib: mem_size_mib,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arch::layout::{MMIO_GAP_END, MMIO_GAP_START};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

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
}
