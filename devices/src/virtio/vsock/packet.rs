//! The virtio-vsock packet: its 44-byte header and the checks a packet from
//! the guest must pass before anything acts on it.
//!
//! Everything here is pure (bytes in, values out) or only reads/writes guest
//! memory through vm-memory, so a fuzz target can drive it directly:
//! [`parse_packet`] over a byte slice, [`read_tx_chain`] over a descriptor
//! chain. Nothing is allocated by a guest-given length: payloads go into a
//! caller-owned buffer capped at [`MAX_PAYLOAD`].

use vm_memory::{Address, Bytes, GuestAddress, GuestMemory as _, Permissions};

use crate::virtio::GuestMemory;

/// Size of `struct virtio_vsock_hdr` on the wire.
pub const HDR_LEN: usize = 44;
/// Largest payload one packet may carry either way (Linux uses 4 KiB RX
/// buffers and at most 64 KiB TX packets).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Most buffers of one chain that are used (more are checked, then
/// ignored): a direct chain cannot exceed the queue size, but an indirect
/// table can be far longer, and the scratch list must stay bounded.
pub const MAX_SEGMENTS: usize = 1024;
/// The host's (our) CID; guests connect to it.
pub const HOST_CID: u64 = 2;
/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type implemented.
pub const TYPE_STREAM: u16 = 1;
/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// The packet operations (`VIRTIO_VSOCK_OP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    /// Connection request.
    Request = 1,
    /// Connection accepted.
    Response = 2,
    /// Connection reset (refused or aborted).
    Rst = 3,
    /// Half or full close (flags say which way).
    Shutdown = 4,
    /// Stream data.
    Rw = 5,
    /// The sender's receive buffer state, unsolicited.
    CreditUpdate = 6,
    /// Asks the peer for a CREDIT_UPDATE.
    CreditRequest = 7,
}

impl Op {
    /// The operation for a wire value, if it is one.
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Request,
            2 => Self::Response,
            3 => Self::Rst,
            4 => Self::Shutdown,
            5 => Self::Rw,
            6 => Self::CreditUpdate,
            7 => Self::CreditRequest,
            _ => return None,
        })
    }
}

/// `struct virtio_vsock_hdr`, decoded (all fields little-endian on the wire).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Sender's CID.
    pub src_cid: u64,
    /// Receiver's CID.
    pub dst_cid: u64,
    /// Sender's port.
    pub src_port: u32,
    /// Receiver's port.
    pub dst_port: u32,
    /// Payload length following the header.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation (see [`Op`]).
    pub op: u16,
    /// Operation flags (SHUTDOWN's direction bits).
    pub flags: u32,
    /// Sender's total receive buffer space for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer so far.
    pub fwd_cnt: u32,
}

fn le<const N: usize>(b: &[u8; HDR_LEN], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

impl Header {
    /// Decodes the first [`HDR_LEN`] bytes.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        Self {
            src_cid: u64::from_le_bytes(le(b, 0)),
            dst_cid: u64::from_le_bytes(le(b, 8)),
            src_port: u32::from_le_bytes(le(b, 16)),
            dst_port: u32::from_le_bytes(le(b, 20)),
            len: u32::from_le_bytes(le(b, 24)),
            type_: u16::from_le_bytes(le(b, 28)),
            op: u16::from_le_bytes(le(b, 30)),
            flags: u32::from_le_bytes(le(b, 32)),
            buf_alloc: u32::from_le_bytes(le(b, 36)),
            fwd_cnt: u32::from_le_bytes(le(b, 40)),
        }
    }

    /// Encodes the header for the wire.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Why a packet from the guest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The chain (or byte slice) ends inside the header.
    #[error("{0} bytes is shorter than the {HDR_LEN}-byte header")]
    Short(usize),
    /// The header claims more payload than allowed.
    #[error("payload length {0} exceeds {MAX_PAYLOAD}")]
    TooLong(u32),
    /// The header claims more payload than the buffers hold.
    #[error("header says {0} payload bytes, buffers hold {1}")]
    Truncated(u32, usize),
    /// A control packet carries payload.
    #[error("op {0} with {1} payload bytes")]
    PayloadOnControl(u16, u32),
    /// Not a stream packet.
    #[error("socket type {0} (only STREAM is supported)")]
    BadType(u16),
    /// Unknown operation.
    #[error("unknown op {0}")]
    BadOp(u16),
    /// The source is not the guest.
    #[error("src_cid {0} is not the guest's")]
    BadSrcCid(u64),
    /// The destination is not the host.
    #[error("dst_cid {0} is not the host (2)")]
    BadDstCid(u64),
    /// A descriptor is device-writable where readable was needed (or the
    /// reverse).
    #[error("descriptor {0} has the wrong direction")]
    Direction(usize),
    /// A descriptor lies outside guest memory.
    #[error("descriptor {0} ({1:#x}+{2:#x}) is outside guest memory")]
    OutsideMemory(usize, u64, u32),
    /// The chain loops, is too long or has a bad next index.
    #[error("chain ends abnormally")]
    BrokenChain,
    /// Reading guest memory failed.
    #[error("reading guest memory: {0}")]
    Memory(String),
}

impl PacketError {
    /// Whether the header itself was sound enough (right CIDs, parsed) that
    /// the packet names a connection the device may reset.
    pub fn names_connection(&self) -> bool {
        matches!(
            self,
            Self::TooLong(_)
                | Self::Truncated(..)
                | Self::PayloadOnControl(..)
                | Self::BadType(_)
                | Self::BadOp(_)
        )
    }
}

/// Checks a guest header: addressing first (a forged address never gets an
/// answer), then type, op and length. Returns the operation.
pub fn check_header(hdr: &Header, guest_cid: u64) -> Result<Op, PacketError> {
    if hdr.src_cid != guest_cid {
        return Err(PacketError::BadSrcCid(hdr.src_cid));
    }
    if hdr.dst_cid != HOST_CID {
        return Err(PacketError::BadDstCid(hdr.dst_cid));
    }
    if hdr.type_ != TYPE_STREAM {
        return Err(PacketError::BadType(hdr.type_));
    }
    let op = Op::from_u16(hdr.op).ok_or(PacketError::BadOp(hdr.op))?;
    if hdr.len as usize > MAX_PAYLOAD {
        return Err(PacketError::TooLong(hdr.len));
    }
    if op != Op::Rw && hdr.len != 0 {
        return Err(PacketError::PayloadOnControl(hdr.op, hdr.len));
    }
    Ok(op)
}

/// Parses a whole packet held in one byte slice (header, then payload):
/// the header, its operation and the payload it announces. Extra trailing
/// bytes are ignored, as a guest buffer may be larger than its packet.
pub fn parse_packet(bytes: &[u8], guest_cid: u64) -> Result<(Header, Op, &[u8]), PacketError> {
    let raw: &[u8; HDR_LEN] = bytes
        .get(..HDR_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(PacketError::Short(bytes.len()))?;
    let hdr = Header::from_bytes(raw);
    let op = check_header(&hdr, guest_cid)?;
    let rest = &bytes[HDR_LEN..];
    let payload = rest
        .get(..hdr.len as usize)
        .ok_or(PacketError::Truncated(hdr.len, rest.len()))?;
    Ok((hdr, op, payload))
}

/// One guest buffer, checked to lie inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes (never 0).
    pub len: u32,
}

/// Collects a chain's buffers into `out` (cleared first; at most `max_segs`
/// are kept, the rest checked but ignored) and returns the kept buffers'
/// total length. Every
/// descriptor must be device-writable if `writable`, readable otherwise, and
/// inside guest memory; a chain that ends with NEXT still set (a loop or a
/// bad index, which virtio-queue's iterator stops at) is refused.
pub fn collect_chain<I>(
    chain: I,
    mem: &GuestMemory,
    writable: bool,
    out: &mut Vec<Segment>,
    max_segs: usize,
) -> Result<u64, PacketError>
where
    I: Iterator<Item = virtio_queue::desc::split::Descriptor>,
{
    out.clear();
    let access = if writable {
        Permissions::Write
    } else {
        Permissions::Read
    };
    let mut total = 0u64;
    let mut ended = false;
    for (i, desc) in chain.enumerate() {
        if desc.is_write_only() != writable {
            return Err(PacketError::Direction(i));
        }
        let len = desc.len();
        let in_ram = usize::try_from(len).is_ok_and(|n| mem.check_range(desc.addr(), n, access));
        if !in_ram {
            return Err(PacketError::OutsideMemory(i, desc.addr().0, len));
        }
        if len > 0 && out.len() < max_segs {
            // Only kept buffers count: the caller never sizes a packet by
            // buffers it did not keep.
            total += u64::from(len);
            out.push(Segment {
                addr: desc.addr(),
                len,
            });
        }
        ended = !desc.has_next();
    }
    if !ended {
        return Err(PacketError::BrokenChain);
    }
    Ok(total)
}

/// Copies up to `dst.len()` bytes from the segments, in order; returns how
/// many were copied.
fn gather(
    mem: &GuestMemory,
    segs: &[Segment],
    skip: usize,
    dst: &mut [u8],
) -> Result<usize, PacketError> {
    let mut skip = skip;
    let mut done = 0;
    for seg in segs {
        let len = seg.len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(dst.len() - done);
        if n == 0 {
            break;
        }
        let addr = seg.addr.unchecked_add(skip as u64);
        mem.read_slice(&mut dst[done..done + n], addr)
            .map_err(|e| PacketError::Memory(e.to_string()))?;
        done += n;
        skip = 0;
    }
    Ok(done)
}

/// Reads a TX packet from a device-readable chain: the header (which may be
/// spread over several descriptors) and then its payload into `payload`
/// (resized to the payload length, never beyond [`MAX_PAYLOAD`]). The header
/// is returned unchecked apart from its length; the caller runs
/// [`check_header`] to tell forged addresses from bad contents. On error,
/// the header comes back too if it could be read.
pub fn read_tx_chain<I>(
    chain: I,
    mem: &GuestMemory,
    segs: &mut Vec<Segment>,
    payload: &mut Vec<u8>,
) -> Result<Header, (Option<Header>, PacketError)>
where
    I: Iterator<Item = virtio_queue::desc::split::Descriptor>,
{
    payload.clear();
    let total =
        collect_chain(chain, mem, false, segs, usize::from(u16::MAX)).map_err(|e| (None, e))?;
    let total = usize::try_from(total).unwrap_or(usize::MAX);
    let mut raw = [0u8; HDR_LEN];
    let got = gather(mem, segs, 0, &mut raw).map_err(|e| (None, e))?;
    if got < HDR_LEN {
        return Err((None, PacketError::Short(got)));
    }
    let hdr = Header::from_bytes(&raw);
    if hdr.len as usize > MAX_PAYLOAD {
        return Err((Some(hdr), PacketError::TooLong(hdr.len)));
    }
    let avail = total - HDR_LEN;
    if hdr.len as usize > avail {
        return Err((Some(hdr), PacketError::Truncated(hdr.len, avail)));
    }
    payload.resize(hdr.len as usize, 0);
    let got = gather(mem, segs, HDR_LEN, payload).map_err(|e| (Some(hdr), e))?;
    if got < payload.len() {
        return Err((Some(hdr), PacketError::Truncated(hdr.len, got)));
    }
    Ok(hdr)
}

/// Writes `hdr` and `payload` into the segments of a device-writable chain
/// (which must hold them: the caller sized the payload to fit). Returns the
/// number of bytes written.
pub fn write_rx(
    mem: &GuestMemory,
    segs: &[Segment],
    hdr: &Header,
    payload: &[u8],
) -> Result<u32, PacketError> {
    let raw = hdr.to_bytes();
    let mut sources = [&raw[..], payload];
    let mut written = 0usize;
    for seg in segs {
        let mut room = seg.len as usize;
        let mut at = seg.addr;
        for src in sources.iter_mut() {
            if room == 0 {
                break;
            }
            let n = src.len().min(room);
            if n == 0 {
                continue;
            }
            mem.write_slice(&src[..n], at)
                .map_err(|e| PacketError::Memory(e.to_string()))?;
            *src = &src[n..];
            at = at.unchecked_add(n as u64);
            room -= n;
            written += n;
        }
    }
    if sources.iter().any(|s| !s.is_empty()) {
        return Err(PacketError::Truncated(
            hdr.len,
            written.saturating_sub(HDR_LEN),
        ));
    }
    u32::try_from(written).map_err(|_| PacketError::TooLong(hdr.len))
}
