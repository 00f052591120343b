//! Guest memory in snapshot files: full and diff dumps, merging a diff onto
//! its base, and mapping a memory file back as guest RAM.
//!
//! The memory file holds the guest's regions back to back (their guest
//! addresses are in the state file), then a [`TRAILER_LEN`]-byte trailer
//! binding it to its layout and its state file: magic `FLINTMEM`, the
//! layout's digest, the RAM size, and the snapshot's random id. The state
//! file records the memory file's length, the same digest and the same id,
//! so a state file is only ever restored with the memory file written with
//! it (or, for a diff, merged from it). A full dump skips all-zero pages, leaving holes, so files are
//! as sparse as the guest. A diff dump has the same size but only the pages
//! dirtied since the previous snapshot are written; the rest are holes,
//! which is what [`merge_diff`] relies on.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};
use vm_memory::bitmap::{AtomicBitmap, Bitmap};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion,
    GuestRegionMmap, MemoryRegionAddress,
};

use crate::memory::GuestMemory;

/// Guest page size for dirty tracking and dumps.
pub const PAGE_SIZE: usize = 4096;
/// Size of the trailer after the RAM in a memory file.
pub const TRAILER_LEN: u64 = 32;
/// The trailer's magic.
const TRAILER_MAGIC: [u8; 8] = *b"FLINTMEM";
/// The most regions a layout may have (flint makes one or two).
const MAX_REGIONS: usize = 64;
const CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_ECMA_182);

/// Why guest memory could not be dumped or loaded.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    /// The file could not be read or written.
    #[error("memory file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file does not match the layout in the state file.
    #[error("memory file {path} is {found} bytes, the snapshot's guest has {expected}")]
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// The guest's memory size.
        expected: u64,
    },
    /// Guest memory could not be read, written or mapped.
    #[error("guest memory: {0}")]
    Guest(String),
    /// Not a regular file (a device, FIFO, directory...).
    #[error("memory file {0}: not a regular file")]
    NotRegular(PathBuf),
    /// The file's trailer does not match the state file's layout.
    #[error("memory file {0} does not belong to this state file (its memory layout differs)")]
    WrongLayout(PathBuf),
    /// The layout itself is impossible.
    #[error("memory layout: {0}")]
    BadLayout(String),
    /// KVM would not hand over its dirty log.
    #[error("KVM_GET_DIRTY_LOG for slot {slot}: {source}")]
    DirtyLog {
        /// The memory slot.
        slot: u32,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
}

/// Where the guest's RAM regions are, in memory-file order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryLayout {
    /// (guest address, size) of each region.
    pub regions: Vec<(u64, u64)>,
}

impl MemoryLayout {
    /// The layout of `mem`.
    pub fn of(mem: &GuestMemory) -> Self {
        Self {
            regions: mem
                .iter()
                .map(|r| (r.start_addr().raw_value(), r.len()))
                .collect(),
        }
    }

    /// Fresh (zeroed, anonymous) guest RAM with this layout.
    pub fn create_memory(&self) -> Result<GuestMemory, MemoryFileError> {
        let ranges: Vec<(GuestAddress, usize)> = self
            .regions
            .iter()
            .map(|&(gpa, size)| (GuestAddress(gpa), size as usize))
            .collect();
        GuestMemory::from_ranges(&ranges).map_err(|e| MemoryFileError::Guest(e.to_string()))
    }

    /// Total bytes of RAM (saturating: [`Self::validate`] refuses overflow).
    pub fn total(&self) -> u64 {
        self.regions
            .iter()
            .fold(0u64, |sum, r| sum.saturating_add(r.1))
    }

    /// The memory file's length: the RAM and the trailer.
    pub fn file_len(&self) -> u64 {
        self.total().saturating_add(TRAILER_LEN)
    }

    /// A digest (CRC-64) of the layout, recorded in the state file and in
    /// the memory file's trailer. It tells files of different VMs apart; it
    /// is not a defence against someone who can write both files.
    pub fn digest(&self) -> u64 {
        let mut digest = CRC64.digest();
        for &(gpa, size) in &self.regions {
            digest.update(&gpa.to_le_bytes());
            digest.update(&size.to_le_bytes());
        }
        digest.finalize()
    }

    /// Checks a layout read from a file before anything is allocated or
    /// mapped for it: 1 to 64 page-aligned, non-empty regions, none running
    /// past 2^64, none overlapping, all together no more than `max_total`
    /// bytes (the host's RAM).
    pub fn validate(&self, max_total: u64) -> Result<(), MemoryFileError> {
        let bad = |why: String| Err(MemoryFileError::BadLayout(why));
        if self.regions.is_empty() || self.regions.len() > MAX_REGIONS {
            return bad(format!("{} regions", self.regions.len()));
        }
        let page = PAGE_SIZE as u64;
        let mut total = 0u64;
        let mut ends: Vec<(u64, u64)> = Vec::with_capacity(self.regions.len());
        for &(gpa, size) in &self.regions {
            if size == 0 || gpa % page != 0 || size % page != 0 {
                return bad(format!(
                    "region {gpa:#x}+{size:#x} is empty or not page-aligned"
                ));
            }
            let Some(end) = gpa.checked_add(size) else {
                return bad(format!("region {gpa:#x}+{size:#x} runs past 2^64"));
            };
            if let Some(&(a, b)) = ends.iter().find(|&&(a, b)| gpa < b && a < end) {
                return bad(format!("region {gpa:#x}..{end:#x} overlaps {a:#x}..{b:#x}"));
            }
            ends.push((gpa, end));
            total = match total.checked_add(size) {
                Some(t) => t,
                None => return bad("total size overflows".into()),
            };
        }
        if total > max_total {
            return bad(format!(
                "{total} bytes of RAM, more than this host's {max_total}"
            ));
        }
        Ok(())
    }

    /// The memory file's trailer for this layout and snapshot `id`.
    fn trailer(&self, id: u64) -> [u8; TRAILER_LEN as usize] {
        let mut t = [0u8; TRAILER_LEN as usize];
        t[..8].copy_from_slice(&TRAILER_MAGIC);
        t[8..16].copy_from_slice(&self.digest().to_le_bytes());
        t[16..24].copy_from_slice(&self.total().to_le_bytes());
        t[24..].copy_from_slice(&id.to_le_bytes());
        t
    }
}

/// A fresh random id binding a state file to its memory file.
pub fn new_snapshot_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's random source.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// The host's physical RAM in bytes (no guest may claim more), from
/// `/proc/meminfo` (plain file reads, which the VMM thread's seccomp filter
/// allows; `sysinfo(2)` it does not). Unknown: no limit.
pub fn host_ram() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else {
        return u64::MAX;
    };
    text.lines()
        .find_map(|line| {
            let kib = line.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?;
            kib.trim().parse::<u64>().ok()
        })
        .map_or(u64::MAX, |kib| kib.saturating_mul(1024))
}

/// Which pages a dump writes.
pub enum Pages<'a> {
    /// Every non-zero page.
    All,
    /// The pages set in these per-region bitmaps (bit n = page n of the region).
    Dirty(&'a [Vec<u64>]),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> MemoryFileError + '_ {
    move |source| MemoryFileError::Io {
        path: path.to_owned(),
        source,
    }
}

fn bit(bitmap: &[u64], page: usize) -> bool {
    bitmap
        .get(page / 64)
        .is_some_and(|word| word & (1 << (page % 64)) != 0)
}

/// Writes guest memory to `path` (replacing it) with the trailer for
/// snapshot `id`, returning the bytes of RAM written.
pub fn dump(mem: &GuestMemory, path: &Path, pages: Pages, id: u64) -> Result<u64, MemoryFileError> {
    let layout = MemoryLayout::of(mem);
    let file = File::create(path).map_err(io(path))?;
    file.set_len(layout.file_len()).map_err(io(path))?;
    file.write_all_at(&layout.trailer(id), layout.total())
        .map_err(io(path))?;
    let mut page = vec![0u8; PAGE_SIZE];
    let mut written = 0u64;
    let mut file_offset = 0u64;
    for (index, region) in mem.iter().enumerate() {
        let pages_in_region = (region.len() as usize).div_ceil(PAGE_SIZE);
        for p in 0..pages_in_region {
            let selected = match &pages {
                Pages::All => true,
                Pages::Dirty(bitmaps) => bitmaps.get(index).is_some_and(|b| bit(b, p)),
            };
            if !selected {
                continue;
            }
            let offset = (p * PAGE_SIZE) as u64;
            let len = (region.len() - offset).min(PAGE_SIZE as u64) as usize;
            region
                .read_slice(&mut page[..len], MemoryRegionAddress(offset))
                .map_err(|e| MemoryFileError::Guest(e.to_string()))?;
            // A zero page in a full dump stays a hole; in a diff it must be
            // written, or merging would keep the base's old contents.
            if matches!(pages, Pages::All) && page[..len].iter().all(|&b| b == 0) {
                continue;
            }
            file.write_all_at(&page[..len], file_offset + offset)
                .map_err(io(path))?;
            written += len as u64;
        }
        file_offset += region.len();
    }
    file.sync_all().map_err(io(path))?;
    Ok(written)
}

/// Turns KVM dirty logging on or off for every slot of `mem` (re-registering
/// the slots with or without `KVM_MEM_LOG_DIRTY_PAGES`).
pub fn set_dirty_logging(vm: &VmFd, mem: &GuestMemory, on: bool) -> Result<(), MemoryFileError> {
    crate::vstate::vm::register_slots(vm, mem, on)
        .map_err(|e| MemoryFileError::Guest(e.to_string()))
}

/// The pages written since the last call, per region: KVM's dirty log (guest
/// writes) OR-ed with the VMM's own writes (the memory bitmap). Both are
/// cleared. KVM dirty logging must be on for the slots.
pub fn take_dirty_pages(vm: &VmFd, mem: &GuestMemory) -> Result<Vec<Vec<u64>>, MemoryFileError> {
    let mut all = Vec::with_capacity(mem.num_regions());
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let mut bitmap = vm
            .get_dirty_log(slot, region.len() as usize)
            .map_err(|source| MemoryFileError::DirtyLog { slot, source })?;
        let vmm_written = vmm_bitmap(region);
        let pages = (region.len() as usize).div_ceil(PAGE_SIZE);
        for p in 0..pages {
            if vmm_written.dirty_at(p * PAGE_SIZE) {
                if let Some(word) = bitmap.get_mut(p / 64) {
                    *word |= 1 << (p % 64);
                }
            }
        }
        vmm_written.reset();
        all.push(bitmap);
    }
    Ok(all)
}

/// The bitmap of pages the VMM wrote in `region`.
fn vmm_bitmap(region: &GuestRegionMmap<AtomicBitmap>) -> &AtomicBitmap {
    std::ops::Deref::deref(region).bitmap()
}

/// Forgets the VMM-write bitmaps (after filling memory from a file or a
/// migration stream, which are not guest writes).
pub fn reset_vmm_bitmaps(mem: &GuestMemory) {
    for region in mem.iter() {
        vmm_bitmap(region).reset();
    }
}

/// How many pages are set in per-region bitmaps.
pub fn count_pages(bitmaps: &[Vec<u64>]) -> u64 {
    bitmaps
        .iter()
        .flat_map(|b| b.iter())
        .map(|w| u64::from(w.count_ones()))
        .sum()
}

/// Opens a memory file without blocking and refuses anything but a regular
/// file (a FIFO or device could block or stream forever).
fn open_regular(path: &Path, write: bool) -> Result<File, MemoryFileError> {
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(io(path))?;
    if !file.metadata().map_err(io(path))?.file_type().is_file() {
        return Err(MemoryFileError::NotRegular(path.to_owned()));
    }
    Ok(file)
}

/// Checks the file is exactly as long as `layout` needs and that its
/// trailer names the same layout and snapshot `id`.
fn check_file(
    file: &File,
    path: &Path,
    layout: &MemoryLayout,
    id: u64,
) -> Result<(), MemoryFileError> {
    let found = file.metadata().map_err(io(path))?.len();
    if found != layout.file_len() {
        return Err(MemoryFileError::SizeMismatch {
            path: path.to_owned(),
            found,
            expected: layout.file_len(),
        });
    }
    let mut trailer = [0u8; TRAILER_LEN as usize];
    file.read_exact_at(&mut trailer, layout.total())
        .map_err(io(path))?;
    if trailer != layout.trailer(id) {
        return Err(MemoryFileError::WrongLayout(path.to_owned()));
    }
    Ok(())
}

fn bitmap_for(size: u64) -> AtomicBitmap {
    AtomicBitmap::new(
        size as usize,
        std::num::NonZeroUsize::MIN.saturating_add(PAGE_SIZE - 1),
    )
}

/// Maps the memory file as guest RAM, `MAP_PRIVATE`: pages are read lazily on
/// first touch and guest writes never reach the file.
pub fn map_private(
    path: &Path,
    layout: &MemoryLayout,
    id: u64,
) -> Result<GuestMemory, MemoryFileError> {
    let file = open_regular(path, false)?;
    check_file(&file, path, layout, id)?;
    let file = std::sync::Arc::new(file);
    let mut regions = Vec::with_capacity(layout.regions.len());
    let mut offset = 0u64;
    for &(gpa, size) in &layout.regions {
        let region = MmapRegionBuilder::new_with_bitmap(size as usize, bitmap_for(size))
            .with_file_offset(FileOffset::from_arc(file.clone(), offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| MemoryFileError::Guest(format!("mapping {path:?}: {e}")))?;
        let region = GuestRegionMmap::new(region, GuestAddress(gpa))
            .ok_or_else(|| MemoryFileError::Guest(format!("region at {gpa:#x} overflows")))?;
        regions.push(region);
        offset += size;
    }
    GuestMemory::from_regions(regions).map_err(|e| MemoryFileError::Guest(e.to_string()))
}

/// Creates anonymous guest RAM for `layout` and copies the memory file in
/// (no dependency on the file afterwards).
pub fn load_copy(
    path: &Path,
    layout: &MemoryLayout,
    id: u64,
) -> Result<GuestMemory, MemoryFileError> {
    let file = open_regular(path, false)?;
    check_file(&file, path, layout, id)?;
    let mem = layout.create_memory()?;
    let mut offset = 0u64;
    let mut chunk = vec![0u8; 1 << 20];
    for &(gpa, size) in &layout.regions {
        let mut done = 0u64;
        while done < size {
            let len = (size - done).min(chunk.len() as u64) as usize;
            file.read_exact_at(&mut chunk[..len], offset + done)
                .map_err(io(path))?;
            mem.write_slice(&chunk[..len], GuestAddress(gpa + done))
                .map_err(|e| MemoryFileError::Guest(e.to_string()))?;
            done += len as u64;
        }
        offset += size;
    }
    // Loading is not a guest write: the next diff starts from here.
    reset_vmm_bitmaps(&mem);
    Ok(mem)
}

/// Applies a diff memory file onto its base, in place: every data extent of
/// the (sparse) diff overwrites the same range of the base, the trailer
/// included, so the result belongs to the diff's state file. Both must be
/// regular files of the same layout. Returns the bytes copied.
pub fn merge_diff(base: &Path, diff: &Path) -> Result<u64, MemoryFileError> {
    let diff_file = open_regular(diff, false)?;
    let base_file = open_regular(base, true)?;
    let size = diff_file.metadata().map_err(io(diff))?.len();
    let base_size = base_file.metadata().map_err(io(base))?.len();
    if size != base_size {
        return Err(MemoryFileError::SizeMismatch {
            path: diff.to_owned(),
            found: size,
            expected: base_size,
        });
    }
    let trailer_at =
        size.checked_sub(TRAILER_LEN)
            .ok_or_else(|| MemoryFileError::SizeMismatch {
                path: diff.to_owned(),
                found: size,
                expected: TRAILER_LEN,
            })?;
    let mut trailers = [[0u8; TRAILER_LEN as usize]; 2];
    diff_file
        .read_exact_at(&mut trailers[0], trailer_at)
        .map_err(io(diff))?;
    base_file
        .read_exact_at(&mut trailers[1], trailer_at)
        .map_err(io(base))?;
    // Same magic, layout and size; the diff's snapshot id (copied with its
    // data) is what the merged file then carries.
    if trailers[0][..24] != trailers[1][..24] || trailers[0][..8] != TRAILER_MAGIC {
        return Err(MemoryFileError::WrongLayout(diff.to_owned()));
    }
    let mut copied = 0u64;
    let mut pos = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while pos < size {
        let Some(start) = seek(&diff_file, pos, libc::SEEK_DATA).map_err(io(diff))? else {
            break;
        };
        let end = seek(&diff_file, start, libc::SEEK_HOLE)
            .map_err(io(diff))?
            .unwrap_or(size);
        let mut at = start;
        while at < end {
            let len = (end - at).min(buf.len() as u64) as usize;
            diff_file
                .read_exact_at(&mut buf[..len], at)
                .map_err(io(diff))?;
            base_file.write_all_at(&buf[..len], at).map_err(io(base))?;
            at += len as u64;
        }
        copied += end - start;
        pos = end;
    }
    base_file.sync_all().map_err(io(base))?;
    Ok(copied)
}

/// `lseek` with SEEK_DATA/SEEK_HOLE; `None` when there is no more data.
fn seek(file: &File, offset: u64, whence: i32) -> std::io::Result<Option<u64>> {
    let offset =
        i64::try_from(offset).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek on a file descriptor we own; it only moves the offset.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    Ok(Some(r as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn full_dump_is_sparse_and_maps_back() {
        let mem = create_guest_memory(16).unwrap();
        mem.write_obj(0xdead_beef_u64, GuestAddress(0x1000))
            .unwrap();
        mem.write_obj(0x1234_u64, GuestAddress(0xff_f000)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem");
        let written = dump(&mem, &path, Pages::All, 7).unwrap();
        assert_eq!(written, 2 * PAGE_SIZE as u64, "only the two non-zero pages");
        let layout = MemoryLayout::of(&mem);
        for restored in [
            map_private(&path, &layout, 7).unwrap(),
            load_copy(&path, &layout, 7).unwrap(),
        ] {
            assert_eq!(
                restored.read_obj::<u64>(GuestAddress(0x1000)).unwrap(),
                0xdead_beef
            );
            assert_eq!(
                restored.read_obj::<u64>(GuestAddress(0xff_f000)).unwrap(),
                0x1234
            );
        }
        // MAP_PRIVATE: writes to the restored guest do not reach the file.
        let private = map_private(&path, &layout, 7).unwrap();
        private.write_obj(7u64, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            map_private(&path, &layout, 7)
                .unwrap()
                .read_obj::<u64>(GuestAddress(0x1000))
                .unwrap(),
            0xdead_beef
        );
    }

    #[test]
    fn diff_onto_base_gives_the_latest_memory() {
        let mem = create_guest_memory(16).unwrap();
        mem.write_obj(1u64, GuestAddress(0x2000)).unwrap();
        mem.write_obj(2u64, GuestAddress(0x3000)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (base, diff) = (dir.path().join("base"), dir.path().join("diff"));
        dump(&mem, &base, Pages::All, 1).unwrap();
        // Change one page and zero another; mark them dirty by hand.
        mem.write_obj(3u64, GuestAddress(0x2000)).unwrap();
        mem.write_obj(0u64, GuestAddress(0x3000)).unwrap();
        let mut bitmap = vec![0u64; (16 << 20) / PAGE_SIZE / 64];
        bitmap[0] = (1 << 2) | (1 << 3);
        assert_eq!(
            dump(&mem, &diff, Pages::Dirty(&[bitmap]), 2).unwrap(),
            2 * PAGE_SIZE as u64
        );
        // Two pages and the trailer.
        assert_eq!(
            merge_diff(&base, &diff).unwrap(),
            2 * PAGE_SIZE as u64 + TRAILER_LEN
        );
        let merged = load_copy(&base, &MemoryLayout::of(&mem), 2).unwrap();
        assert_eq!(merged.read_obj::<u64>(GuestAddress(0x2000)).unwrap(), 3);
        assert_eq!(merged.read_obj::<u64>(GuestAddress(0x3000)).unwrap(), 0);
    }

    #[test]
    fn wrong_sized_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let layout = MemoryLayout {
            regions: vec![(0, 1 << 20)],
        };
        assert!(matches!(
            map_private(&path, &layout, 0),
            Err(MemoryFileError::SizeMismatch { .. })
        ));
        assert!(matches!(
            load_copy(&path, &layout, 0),
            Err(MemoryFileError::SizeMismatch { .. })
        ));
        let other = dir.path().join("other");
        std::fs::write(&other, vec![0u8; 8192]).unwrap();
        assert!(matches!(
            merge_diff(&path, &other),
            Err(MemoryFileError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn a_memory_file_of_another_snapshot_or_layout_is_refused() {
        let mem = create_guest_memory(4).unwrap();
        let layout = MemoryLayout::of(&mem);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem");
        dump(&mem, &path, Pages::All, 41).unwrap();
        assert!(load_copy(&path, &layout, 41).is_ok());
        // Written with another state file.
        for result in [
            load_copy(&path, &layout, 42).map(drop),
            map_private(&path, &layout, 42).map(drop),
        ] {
            assert!(matches!(result, Err(MemoryFileError::WrongLayout(_))));
        }
        // Same length, other layout (the regions elsewhere).
        let moved = MemoryLayout {
            regions: vec![(1 << 30, layout.total())],
        };
        assert!(matches!(
            load_copy(&path, &moved, 41),
            Err(MemoryFileError::WrongLayout(_))
        ));
        // A plain RAM image without a trailer has the wrong length.
        std::fs::write(&path, vec![0u8; layout.total() as usize]).unwrap();
        assert!(matches!(
            load_copy(&path, &layout, 41),
            Err(MemoryFileError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn devices_and_fifos_as_memory_files_are_refused_without_hanging() {
        let layout = MemoryLayout {
            regions: vec![(0, 1 << 20)],
        };
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for path in [Path::new("/dev/zero"), &fifo] {
            assert!(matches!(
                load_copy(path, &layout, 0),
                Err(MemoryFileError::NotRegular(_))
            ));
            assert!(matches!(
                map_private(path, &layout, 0),
                Err(MemoryFileError::NotRegular(_))
            ));
        }
        // `flint snapshot merge` with a FIFO on either side: refused at once.
        let regular = dir.path().join("base");
        std::fs::write(&regular, [0u8; 4096]).unwrap();
        for (base, diff) in [(&fifo, &regular), (&regular, &fifo)] {
            assert!(matches!(
                merge_diff(base, diff),
                Err(MemoryFileError::NotRegular(_))
            ));
        }
    }

    #[test]
    fn host_ram_is_known_here() {
        let ram = host_ram();
        assert!(ram > 64 << 20 && ram < u64::MAX, "{ram}");
    }

    #[test]
    fn vmm_writes_are_tracked_by_the_bitmap() {
        let mem = create_guest_memory(16).unwrap();
        let region = mem.iter().next().unwrap();
        vmm_bitmap(region).reset();
        mem.write_obj(9u32, GuestAddress(0x5004)).unwrap();
        assert!(vmm_bitmap(region).dirty_at(0x5000));
        assert!(!vmm_bitmap(region).dirty_at(0x6000));
    }
}
