//! Turning a descriptor chain into a request, without trusting it.
//!
//! The chain is flattened into bytes: the first 16 must be device-readable
//! (the header, possibly spread over several descriptors), the very last
//! byte must be device-writable (the status), and everything in between is
//! data, kept as a list of guest buffers. Layout is not assumed beyond that
//! (`VIRTIO_F_VERSION_1` implies any layout): data may share a descriptor
//! with the header or the status.
//!
//! Nothing here touches the image. Guest memory is only read (the header),
//! through vm-memory; data buffers are checked later, before any I/O.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::config::QUEUE_SIZE;
use crate::virtio::chain::Walk;
use crate::virtio::GuestMemory;

/// Length of `struct virtio_blk_outhdr`.
const HEADER_LEN: usize = 16;
/// Most data buffers one request may have: a chain is never walked past
/// the queue size (indirect tables are refused), so the scratch list never
/// grows past it.
pub(super) const MAX_SEGMENTS: usize = QUEUE_SIZE as usize;

/// One data buffer in guest memory (not yet checked against it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes (never 0).
    pub len: u32,
}

/// What the header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestType {
    /// Read sectors into guest memory.
    In,
    /// Write sectors from guest memory.
    Out,
    /// Make earlier writes durable.
    Flush,
    /// Return the drive's name.
    GetId,
    /// Deallocate sectors.
    Discard,
    /// Zero sectors.
    WriteZeroes,
    /// Anything else.
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            VIRTIO_BLK_T_DISCARD => Self::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => Self::WriteZeroes,
            other => Self::Unsupported(other),
        }
    }
}

/// Why a chain cannot carry a status back: it is returned with length 0.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum ChainError {
    /// Empty, looping, too long, or pointing outside the descriptor table.
    #[error("the descriptor chain is empty, loops or is cut short")]
    Malformed,
    /// The last descriptor is device-readable.
    #[error("the last descriptor (status) is not device-writable")]
    StatusNotWritable,
    /// The last descriptor has no room for the status byte.
    #[error("the last descriptor (status) is empty")]
    StatusEmpty,
    /// The status byte is not in guest memory.
    #[error("the status byte at {0:#x} is outside guest memory")]
    StatusOutsideMemory(u64),
}

/// Why a request fails; the guest sees [`RequestError::status`].
#[derive(Debug, thiserror::Error)]
pub(super) enum RequestError {
    /// Fewer than 16 header bytes before the status.
    #[error("the header is shorter than {HEADER_LEN} bytes")]
    ShortHeader,
    /// Part of the header is in a device-writable descriptor.
    #[error("the header is in a device-writable descriptor")]
    HeaderWritable,
    /// The header is not in guest memory.
    #[error("the header at {0:#x} is outside guest memory")]
    HeaderOutsideMemory(u64),
    /// More data buffers than [`MAX_SEGMENTS`].
    #[error("more than {MAX_SEGMENTS} data buffers")]
    TooManySegments,
    /// A read's data buffer is device-readable.
    #[error("read into a buffer that is not device-writable")]
    DataNotWritable,
    /// A write's data buffer is device-writable.
    #[error("write from a buffer that is not device-readable")]
    DataNotReadable,
    /// Data length is not a whole number of sectors.
    #[error("data length {0} is not a multiple of 512")]
    UnalignedLength(u64),
    /// The sectors are not all on the drive.
    #[error("sectors {sector}..+{count} are beyond the capacity ({capacity} sectors)")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        count: u64,
        /// The drive's capacity.
        capacity: u64,
    },
    /// A data buffer is not (entirely) in guest memory.
    #[error("data buffer {addr:#x}+{len:#x} is outside guest memory")]
    DataOutsideMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// A write, discard or write-zeroes on a read-only drive.
    #[error("the drive is read-only")]
    ReadOnly,
    /// A discard / write-zeroes payload that is not exactly its ranges.
    #[error("discard/write-zeroes payload of {0} bytes (must be 16 per range, at most 1 range)")]
    BadRanges(u64),
    /// A discard / write-zeroes range larger than advertised.
    #[error("discard/write-zeroes of {0} sectors is larger than advertised")]
    RangeTooLarge(u32),
    /// The type is unknown or its feature was not negotiated.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// Flags the device does not support (e.g. unmap on a discard).
    #[error("unsupported flags {0:#x}")]
    UnsupportedFlags(u32),
    /// The image said no.
    #[error("I/O on the image: {0}")]
    Io(#[from] std::io::Error),
}

impl RequestError {
    /// The `VIRTIO_BLK_S_*` status the guest gets.
    pub(super) fn status(&self) -> u8 {
        match self {
            Self::Unsupported(_) | Self::UnsupportedFlags(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// A parsed chain whose status byte can be written back.
#[derive(Debug)]
pub(super) struct Request {
    /// Where the status byte goes (checked to be in guest memory).
    pub status_addr: GuestAddress,
    /// The header's type (meaningless if `problem` is set).
    pub kind: RequestType,
    /// The header's sector (meaningless if `problem` is set).
    pub sector: u64,
    /// Total bytes of the data buffers.
    pub data_len: u64,
    /// Whether every data buffer is device-writable (true if none).
    pub data_writable: bool,
    /// Whether every data buffer is device-readable (true if none).
    pub data_readable: bool,
    /// A problem found while parsing: the request fails with its status.
    pub problem: Option<RequestError>,
}

/// Accumulates the bytes before the status: header first, then data.
struct Walker<'a> {
    mem: &'a GuestMemory,
    segments: &'a mut Vec<Segment>,
    header: [u8; HEADER_LEN],
    header_len: usize,
    data_len: u64,
    data_writable: bool,
    data_readable: bool,
    problem: Option<RequestError>,
}

impl Walker<'_> {
    fn fail(&mut self, e: RequestError) {
        self.problem.get_or_insert(e);
        // Stop collecting the header; its content no longer matters.
        self.header_len = HEADER_LEN;
    }

    /// Takes `len` bytes at `addr` from a descriptor before the status.
    fn take(&mut self, mut addr: GuestAddress, mut len: u32, writable: bool) {
        if self.header_len < HEADER_LEN && len > 0 {
            if writable {
                return self.fail(RequestError::HeaderWritable);
            }
            let n = (HEADER_LEN - self.header_len).min(len as usize);
            let dst = &mut self.header[self.header_len..self.header_len + n];
            if self.mem.read_slice(dst, addr).is_err() {
                return self.fail(RequestError::HeaderOutsideMemory(addr.0));
            }
            self.header_len += n;
            // Cannot wrap: the n bytes at addr were just read.
            addr = GuestAddress(addr.0.wrapping_add(n as u64));
            len -= n as u32;
        }
        if len == 0 {
            return;
        }
        self.data_len += u64::from(len);
        self.data_writable &= writable;
        self.data_readable &= !writable;
        if self.segments.len() >= MAX_SEGMENTS {
            return self.fail(RequestError::TooManySegments);
        }
        self.segments.push(Segment { addr, len });
    }
}

/// Parses `chain`, leaving its data buffers in `segments` (cleared first;
/// it never grows past [`MAX_SEGMENTS`]).
pub(super) fn parse(
    chain: Walk<'_>,
    mem: &GuestMemory,
    segments: &mut Vec<Segment>,
) -> Result<Request, ChainError> {
    segments.clear();
    let mut walker = Walker {
        mem,
        segments,
        header: [0; HEADER_LEN],
        header_len: 0,
        data_len: 0,
        data_writable: true,
        data_readable: true,
        problem: None,
    };
    // The status is in the last descriptor, known only once the chain ends:
    // hold each descriptor back until the next one shows up.
    let mut last: Option<Descriptor> = None;
    for desc in chain {
        if let Some(prev) = last.replace(desc) {
            walker.take(prev.addr(), prev.len(), prev.is_write_only());
        }
    }
    let status = last.ok_or(ChainError::Malformed)?;
    // The walk stops early on an indirect descriptor (not offered), a loop
    // or a chain longer than the queue, a next index outside the table or
    // 2^32 bytes: the last descriptor then still says there is more.
    if status.has_next() {
        return Err(ChainError::Malformed);
    }
    if !status.is_write_only() {
        return Err(ChainError::StatusNotWritable);
    }
    let before_status = status.len().checked_sub(1).ok_or(ChainError::StatusEmpty)?;
    let status_addr = status
        .addr()
        .0
        .checked_add(u64::from(before_status))
        .map(GuestAddress)
        .filter(|&a| mem.check_range(a, 1))
        .ok_or(ChainError::StatusOutsideMemory(status.addr().0))?;
    walker.take(status.addr(), before_status, true);
    if walker.header_len < HEADER_LEN {
        walker.fail(RequestError::ShortHeader);
    }
    let h = walker.header;
    let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let sector = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    Ok(Request {
        status_addr,
        kind: RequestType::from(kind),
        sector,
        data_len: walker.data_len,
        data_writable: walker.data_writable,
        data_readable: walker.data_readable,
        problem: walker.problem,
    })
}
