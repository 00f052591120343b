//! What the device offers the driver: feature bits and the configuration
//! space (`struct virtio_blk_config`, virtio 1.x section 5.2.4).

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};

use crate::virtio::{read_config_bytes, VIRTIO_F_VERSION_1};

/// log2 of the sector size.
pub(super) const SECTOR_SHIFT: u32 = 9;
/// The unit of `sector` in requests and of the capacity: fixed at 512 bytes
/// by the virtio spec, whatever the block size.
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;
/// The size of the single request queue: large enough for deep queues from
/// the guest, small enough to bound the work of one batch.
pub const QUEUE_SIZE: u16 = 256;
/// Data buffers per request: what fits in the queue next to the header and
/// status descriptors (indirect descriptors are not offered).
pub(super) const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest discard, in sectors (2 GiB): one `fallocate` call.
pub(super) const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Largest write-zeroes, in sectors (32 MiB): bounds the time the event loop
/// spends should the filesystem force a fallback to writing zeroes.
pub(super) const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 16;
/// Ranges per discard / write-zeroes request.
pub(super) const MAX_DISCARD_SEG: u32 = 1;
/// Discard granularity hint, in sectors (4 KiB, a typical filesystem block).
const DISCARD_SECTOR_ALIGNMENT: u32 = 8;

/// Bytes of config space the device implements (up to and including
/// `write_zeroes_may_unmap` and its padding); the rest reads as 0.
const CONFIG_LEN: usize = 60;

// Field offsets in `struct virtio_blk_config`.
const OFF_CAPACITY: usize = 0;
const OFF_SEG_MAX: usize = 12;
const OFF_BLK_SIZE: usize = 20;
const OFF_MAX_DISCARD_SECTORS: usize = 36;
const OFF_MAX_DISCARD_SEG: usize = 40;
const OFF_DISCARD_SECTOR_ALIGNMENT: usize = 44;
const OFF_MAX_WRITE_ZEROES_SECTORS: usize = 48;
const OFF_MAX_WRITE_ZEROES_SEG: usize = 52;
const OFF_WRITE_ZEROES_MAY_UNMAP: usize = 56;

/// The features offered: discard and write-zeroes only make sense (and are
/// only offered) on a writable drive.
pub(super) fn avail_features(read_only: bool) -> u64 {
    let bit = |b: u32| 1u64 << b;
    let mut features = VIRTIO_F_VERSION_1
        | bit(VIRTIO_BLK_F_FLUSH)
        | bit(VIRTIO_BLK_F_SEG_MAX)
        | bit(VIRTIO_BLK_F_BLK_SIZE);
    if read_only {
        features |= bit(VIRTIO_BLK_F_RO);
    } else {
        features |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
    }
    features
}

/// The device-specific configuration space, little-endian as the spec
/// requires. It never changes after creation (the image is not resized).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ConfigSpace([u8; CONFIG_LEN]);

impl ConfigSpace {
    /// The config space of a drive of `capacity_sectors` sectors.
    pub(super) fn new(capacity_sectors: u64) -> Self {
        let mut c = [0u8; CONFIG_LEN];
        let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
        put(OFF_CAPACITY, &capacity_sectors.to_le_bytes());
        put(OFF_SEG_MAX, &SEG_MAX.to_le_bytes());
        put(OFF_BLK_SIZE, &(SECTOR_SIZE as u32).to_le_bytes());
        put(OFF_MAX_DISCARD_SECTORS, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(OFF_MAX_DISCARD_SEG, &MAX_DISCARD_SEG.to_le_bytes());
        put(
            OFF_DISCARD_SECTOR_ALIGNMENT,
            &DISCARD_SECTOR_ALIGNMENT.to_le_bytes(),
        );
        put(
            OFF_MAX_WRITE_ZEROES_SECTORS,
            &MAX_WRITE_ZEROES_SECTORS.to_le_bytes(),
        );
        put(OFF_MAX_WRITE_ZEROES_SEG, &MAX_DISCARD_SEG.to_le_bytes());
        // Write-zeroes may punch holes (see `io::write_zeroes`).
        put(OFF_WRITE_ZEROES_MAY_UNMAP, &[1]);
        Self(c)
    }

    /// A driver read at `offset` (out-of-range bytes read 0).
    pub(super) fn read(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.0, offset, data);
    }
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use virtio_bindings::virtio_blk::virtio_blk_config as C;

    use super::*;

    #[test]
    fn offsets_match_the_kernel_header() {
        assert_eq!(offset_of!(C, capacity), OFF_CAPACITY);
        assert_eq!(offset_of!(C, seg_max), OFF_SEG_MAX);
        assert_eq!(offset_of!(C, blk_size), OFF_BLK_SIZE);
        assert_eq!(offset_of!(C, max_discard_sectors), OFF_MAX_DISCARD_SECTORS);
        assert_eq!(offset_of!(C, max_discard_seg), OFF_MAX_DISCARD_SEG);
        assert_eq!(
            offset_of!(C, discard_sector_alignment),
            OFF_DISCARD_SECTOR_ALIGNMENT
        );
        assert_eq!(
            offset_of!(C, max_write_zeroes_sectors),
            OFF_MAX_WRITE_ZEROES_SECTORS
        );
        assert_eq!(
            offset_of!(C, max_write_zeroes_seg),
            OFF_MAX_WRITE_ZEROES_SEG
        );
        assert_eq!(
            offset_of!(C, write_zeroes_may_unmap),
            OFF_WRITE_ZEROES_MAY_UNMAP
        );
        assert_eq!(offset_of!(C, max_secure_erase_sectors), CONFIG_LEN);
    }

    #[test]
    fn fields_read_back_little_endian() {
        let c = ConfigSpace::new(0x0102_0304_0506_0708);
        let mut b = [0u8; 8];
        c.read(0, &mut b);
        assert_eq!(u64::from_le_bytes(b), 0x0102_0304_0506_0708);
        let mut w = [0u8; 4];
        c.read(OFF_BLK_SIZE as u64, &mut w);
        assert_eq!(u32::from_le_bytes(w), 512);
        c.read(OFF_SEG_MAX as u64, &mut w);
        assert_eq!(u32::from_le_bytes(w), 254);
        c.read(CONFIG_LEN as u64 - 2, &mut w);
        assert_eq!(w, [0; 4], "past the end reads 0");
        c.read(u64::MAX, &mut w);
        assert_eq!(w, [0; 4]);
    }

    #[test]
    fn read_only_drives_offer_ro_and_no_discard() {
        let ro = avail_features(true);
        let rw = avail_features(false);
        assert_ne!(ro & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(ro & (1 << VIRTIO_BLK_F_DISCARD), 0);
        assert_eq!(rw & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(rw & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
        assert_ne!(ro & VIRTIO_F_VERSION_1, 0);
    }
}
