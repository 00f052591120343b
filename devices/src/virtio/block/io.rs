//! Doing a parsed request against the image.
//!
//! Everything the request names is checked first (type, direction, length,
//! sector range, every data buffer against guest memory), so a rejected
//! request never touches the image. Data moves directly between the file
//! and guest memory with vm-memory's volatile I/O, at the request's offset.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use vm_memory::{Bytes, GuestMemoryBackend, ReadVolatile, WriteVolatile};

use super::config::{MAX_DISCARD_SECTORS, MAX_WRITE_ZEROES_SECTORS, SECTOR_SHIFT, SECTOR_SIZE};
use super::request::{Request, RequestError, RequestType, Segment};
use crate::virtio::GuestMemory;

/// Length of `struct virtio_blk_discard_write_zeroes`.
const RANGE_LEN: u64 = 16;

/// The image and what a request may do with it.
pub(super) struct Disk<'a> {
    /// The image.
    pub file: &'a mut File,
    /// Addressable sectors.
    pub capacity: u64,
    /// Whether the drive is read-only.
    pub read_only: bool,
    /// The drive's name (for GET_ID).
    pub drive_id: &'a str,
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// Runs `req` (whose data buffers are `segments`). Returns how many bytes it
/// wrote into the guest's data buffers (the status byte not included).
pub(super) fn execute(
    disk: &mut Disk<'_>,
    mem: &GuestMemory,
    req: &mut Request,
    segments: &[Segment],
) -> Result<u32, RequestError> {
    if let Some(problem) = req.problem.take() {
        return Err(problem);
    }
    match req.kind {
        RequestType::In => {
            if !req.data_writable {
                return Err(RequestError::DataNotWritable);
            }
            let offset = disk.byte_range(req.sector, req.data_len)?;
            check_memory(mem, segments)?;
            disk.file.seek(SeekFrom::Start(offset))?;
            for seg in segments {
                for slice in mem.get_slices(seg.addr, seg.len as usize) {
                    let mut slice = slice.map_err(|e| io::Error::other(e.to_string()))?;
                    disk.file
                        .read_exact_volatile(&mut slice)
                        .map_err(volatile_to_io)?;
                }
            }
            // data_len <= the chain's total, which the queue caps at 4 GiB - 1.
            Ok(u32::try_from(req.data_len).unwrap_or(u32::MAX))
        }
        RequestType::Out => {
            if disk.read_only {
                return Err(RequestError::ReadOnly);
            }
            if !req.data_readable {
                return Err(RequestError::DataNotReadable);
            }
            let offset = disk.byte_range(req.sector, req.data_len)?;
            check_memory(mem, segments)?;
            disk.file.seek(SeekFrom::Start(offset))?;
            for seg in segments {
                for slice in mem.get_slices(seg.addr, seg.len as usize) {
                    let slice = slice.map_err(|e| io::Error::other(e.to_string()))?;
                    disk.file
                        .write_all_volatile(&slice)
                        .map_err(volatile_to_io)?;
                }
            }
            Ok(0)
        }
        RequestType::Flush => {
            // fdatasync: the guest's `sync` survives a host crash, not just
            // the death of this process (the page cache covers that).
            disk.file.sync_data()?;
            Ok(0)
        }
        RequestType::GetId => {
            if !req.data_writable {
                return Err(RequestError::DataNotWritable);
            }
            check_memory(mem, segments)?;
            let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
            let name = disk.drive_id.as_bytes();
            let n = name.len().min(id.len());
            id[..n].copy_from_slice(&name[..n]);
            let mut written = 0usize;
            for seg in segments {
                let rest = &id[written..];
                let n = rest.len().min(seg.len as usize);
                mem.write_slice(&rest[..n], seg.addr)
                    .map_err(|e| io::Error::other(e.to_string()))?;
                written += n;
                if written == id.len() {
                    break;
                }
            }
            Ok(written as u32)
        }
        RequestType::Discard | RequestType::WriteZeroes => {
            let (feature, t) = match req.kind {
                RequestType::Discard => (VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_T_DISCARD),
                _ => (VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_T_WRITE_ZEROES),
            };
            if disk.acked_features & (1 << feature) == 0 {
                return Err(RequestError::Unsupported(t));
            }
            if disk.read_only {
                return Err(RequestError::ReadOnly);
            }
            if !req.data_readable {
                return Err(RequestError::DataNotReadable);
            }
            let (sector, count, flags) = read_range(mem, req.data_len, segments)?;
            disk.zero_or_discard(req.kind, sector, count, flags)?;
            Ok(0)
        }
        RequestType::Unsupported(t) => Err(RequestError::Unsupported(t)),
    }
}

impl Disk<'_> {
    /// Checks that `len` bytes from `sector` are whole sectors on the drive;
    /// returns the byte offset.
    fn byte_range(&self, sector: u64, len: u64) -> Result<u64, RequestError> {
        if len & (SECTOR_SIZE - 1) != 0 {
            return Err(RequestError::UnalignedLength(len));
        }
        let count = len >> SECTOR_SHIFT;
        match sector.checked_add(count) {
            Some(end) if end <= self.capacity => Ok(sector << SECTOR_SHIFT),
            _ => Err(RequestError::OutOfRange {
                sector,
                count,
                capacity: self.capacity,
            }),
        }
    }

    fn zero_or_discard(
        &mut self,
        kind: RequestType,
        sector: u64,
        count: u32,
        flags: u32,
    ) -> Result<(), RequestError> {
        let unmap = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
        let (max, allowed_flags) = match kind {
            RequestType::Discard => (MAX_DISCARD_SECTORS, 0),
            _ => (MAX_WRITE_ZEROES_SECTORS, unmap),
        };
        if flags & !allowed_flags != 0 {
            return Err(RequestError::UnsupportedFlags(flags));
        }
        if count > max {
            return Err(RequestError::RangeTooLarge(count));
        }
        let offset = self.byte_range(sector, u64::from(count) << SECTOR_SHIFT)?;
        let len = u64::from(count) << SECTOR_SHIFT;
        if len == 0 {
            return Ok(());
        }
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        if kind == RequestType::Discard {
            // Discard is a hint: a filesystem that cannot punch holes just
            // keeps the data.
            if let Err(e) = fallocate(self.file, punch, offset, len) {
                crate::guest_debug!("discard of {len} bytes at {offset}: {e}; ignored");
            }
            return Ok(());
        }
        let zero = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        if fallocate(self.file, zero, offset, len).is_ok() {
            return Ok(());
        }
        // Holes read back as zeroes too (config says write-zeroes may unmap).
        if fallocate(self.file, punch, offset, len).is_ok() {
            return Ok(());
        }
        write_zeroes(self.file, offset, len)?;
        Ok(())
    }
}

/// Every data buffer must lie entirely in guest memory.
fn check_memory(mem: &GuestMemory, segments: &[Segment]) -> Result<(), RequestError> {
    for seg in segments {
        if !mem.check_range(seg.addr, seg.len as usize) {
            return Err(RequestError::DataOutsideMemory {
                addr: seg.addr.0,
                len: seg.len,
            });
        }
    }
    Ok(())
}

/// Reads the single `{ le64 sector; le32 num_sectors; le32 flags; }` range of
/// a discard / write-zeroes request (possibly split across buffers).
fn read_range(
    mem: &GuestMemory,
    data_len: u64,
    segments: &[Segment],
) -> Result<(u64, u32, u32), RequestError> {
    if data_len != RANGE_LEN {
        return Err(RequestError::BadRanges(data_len));
    }
    let mut raw = [0u8; RANGE_LEN as usize];
    let mut filled = 0usize;
    for seg in segments {
        let n = seg.len as usize; // data_len == 16, so each fits
        mem.read_slice(&mut raw[filled..filled + n], seg.addr)
            .map_err(|_| RequestError::DataOutsideMemory {
                addr: seg.addr.0,
                len: seg.len,
            })?;
        filled += n;
    }
    let sector = u64::from_le_bytes([
        raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7],
    ]);
    let count = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
    let flags = u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]);
    Ok((sector, count, flags))
}

fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let offset = libc::off64_t::try_from(offset).map_err(io::Error::other)?;
    let len = libc::off64_t::try_from(len).map_err(io::Error::other)?;
    loop {
        // SAFETY: fallocate only takes integers; the fd is owned by `file`,
        // which outlives the call.
        let ret = unsafe { libc::fallocate64(file.as_raw_fd(), mode, offset, len) };
        if ret == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The slow path of write-zeroes: plain writes from a fixed zero buffer.
fn write_zeroes(file: &File, mut offset: u64, mut len: u64) -> io::Result<()> {
    static ZEROES: [u8; 64 << 10] = [0; 64 << 10];
    while len > 0 {
        let n = len.min(ZEROES.len() as u64);
        // n <= 64 KiB, so the cast cannot truncate.
        file.write_all_at(&ZEROES[..n as usize], offset)?;
        offset += n;
        len -= n;
    }
    Ok(())
}

fn volatile_to_io(e: vm_memory::VolatileMemoryError) -> io::Error {
    match e {
        vm_memory::VolatileMemoryError::IOError(e) => e,
        other => io::Error::other(other.to_string()),
    }
}
