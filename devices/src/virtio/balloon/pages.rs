//! Giving guest pages back to the host, and reading PFN arrays.
//!
//! A page is given back by dropping the host pages behind its guest
//! mapping: `madvise(MADV_DONTNEED)` for private (anonymous) memory, which
//! then reads as zeros; `MADV_REMOVE` for shared memory (memfd, shmem or a
//! shared file), which punches a hole in the backing object, since
//! `MADV_DONTNEED` would only unmap it and free nothing. Either way the
//! guest can touch the page again later and gets fresh memory.
//!
//! Contiguous pages are coalesced so one `madvise` covers a whole run.
//! Every guest address is checked against guest RAM first.

use std::io;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use super::config::{PAGE_SIZE, PFN_SHIFT};
use crate::virtio::GuestMemory;

/// Most PFN bytes taken from one inflate or deflate chain (Linux sends at
/// most 256 PFNs, 1 KiB, per buffer); a longer chain is refused whole.
pub const MAX_PFN_BYTES: u64 = 64 * 1024;

/// Why a range could not be given back.
#[derive(Debug, thiserror::Error)]
pub enum DiscardError {
    /// Part of the range is not guest RAM.
    #[error("{addr:#x}+{len:#x} is not inside guest memory")]
    OutOfMemory {
        /// Guest-physical start.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The host refused to drop the pages.
    #[error("madvise on {addr:#x}+{len:#x}: {source}")]
    Madvise {
        /// Guest-physical start.
        addr: u64,
        /// Length in bytes.
        len: u64,
        /// What the OS said.
        source: io::Error,
    },
}

/// Drops the host pages behind guest range `[addr, addr + len)` (whole
/// 4 KiB pages; a range may span several memory regions). The range is
/// checked to be inside guest RAM before anything is dropped.
pub fn discard(mem: &GuestMemory, addr: u64, len: u64) -> Result<(), DiscardError> {
    let out_of_memory = DiscardError::OutOfMemory { addr, len };
    if len == 0 {
        return Ok(());
    }
    if !addr.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
        return Err(out_of_memory);
    }
    let fits = usize::try_from(len).is_ok_and(|n| mem.check_range(GuestAddress(addr), n));
    if !fits {
        return Err(out_of_memory);
    }
    let (mut at, mut left) = (addr, len);
    while left > 0 {
        let Some(region) = mem.find_region(GuestAddress(at)) else {
            return Err(out_of_memory);
        };
        let offset = at - region.start_addr().0;
        let n = left.min(region.len() - offset);
        let host = region
            .get_host_address(MemoryRegionAddress(offset))
            .map_err(|_| DiscardError::OutOfMemory { addr: at, len: n })?;
        let advice = if region.flags() & libc::MAP_SHARED != 0 {
            libc::MADV_REMOVE
        } else {
            libc::MADV_DONTNEED
        };
        // SAFETY: `host..host + n` lies inside this region's mapping (the
        // region contains `at..at + n`, checked above), which vm-memory keeps
        // mapped for as long as `mem` lives. Dropping the pages changes only
        // their contents (they read back as zeros or the file's data), which
        // is what the guest asked for; no Rust reference into guest memory
        // relies on them (guest memory is only accessed volatilely).
        let rc = unsafe { libc::madvise(host.cast(), n as usize, advice) };
        if rc != 0 {
            return Err(DiscardError::Madvise {
                addr: at,
                len: n,
                source: io::Error::last_os_error(),
            });
        }
        at += n;
        left -= n;
    }
    Ok(())
}

/// Rounds `[addr, addr + len)` inward to whole pages: `None` if no whole
/// page is inside (or the range wraps around).
pub fn whole_pages(addr: u64, len: u64) -> Option<(u64, u64)> {
    let end = addr.checked_add(len)?;
    let start = addr.checked_next_multiple_of(PAGE_SIZE)?;
    let end = end - end % PAGE_SIZE;
    (end > start).then(|| (start, end - start))
}

/// What walking a PFN array found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PfnWalk {
    /// PFNs inside guest RAM.
    pub valid: u64,
    /// PFNs outside guest RAM (skipped).
    pub invalid: u64,
    /// Runs of contiguous pages handed to `each_run`.
    pub runs: u64,
    /// Bytes in those runs.
    pub bytes: u64,
}

/// Reads the little-endian u32 PFNs in guest buffers `bufs` (`(address,
/// length)`, already checked: inside guest memory, lengths multiples of 4)
/// and calls `each_run(addr, len)` once per run of contiguous valid pages.
/// PFNs outside guest RAM are counted and skipped. At most
/// [`MAX_PFN_BYTES`] are read whatever the buffers say (the guest can
/// rewrite a descriptor between the caller's checks and this walk).
pub fn walk_pfns(
    mem: &GuestMemory,
    bufs: impl IntoIterator<Item = (u64, u32)>,
    mut each_run: impl FnMut(u64, u64),
) -> PfnWalk {
    let mut walk = PfnWalk::default();
    let mut run: Option<(u64, u64)> = None;
    let mut chunk = [0u8; 1024];
    let mut budget = MAX_PFN_BYTES;
    for (addr, len) in bufs {
        let len = u64::from(len).min(budget) & !3;
        budget -= len;
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(chunk.len() as u64) as usize;
            let at = addr.checked_add(done).map(GuestAddress);
            if at.is_none_or(|at| mem.read_slice(&mut chunk[..n], at).is_err()) {
                walk.invalid += n as u64 / 4;
                done += n as u64;
                continue;
            }
            done += n as u64;
            for raw in chunk[..n].chunks_exact(4) {
                let pfn = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
                let page = u64::from(pfn) << PFN_SHIFT;
                if !mem.check_range(GuestAddress(page), PAGE_SIZE as usize) {
                    walk.invalid += 1;
                    continue;
                }
                walk.valid += 1;
                run = match run {
                    Some((start, len)) if start + len == page => Some((start, len + PAGE_SIZE)),
                    Some((start, len)) => {
                        walk.runs += 1;
                        walk.bytes += len;
                        each_run(start, len);
                        Some((page, PAGE_SIZE))
                    }
                    None => Some((page, PAGE_SIZE)),
                };
            }
        }
    }
    if let Some((start, len)) = run {
        walk.runs += 1;
        walk.bytes += len;
        each_run(start, len);
    }
    walk
}
