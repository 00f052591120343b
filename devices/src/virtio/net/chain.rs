//! Checking a guest's descriptor chain before any of its buffers is used.
//!
//! virtio-queue's chain iterator stops silently on a loop, an out-of-range
//! `next` or an unreadable descriptor; a chain whose last descriptor still
//! has NEXT set therefore ended abnormally and is rejected as a whole.

use vm_memory::{GuestAddress, GuestMemory, Permissions};

use super::GuestMemory as Memory;

/// One descriptor's buffer, known to lie inside guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Why a chain was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum ChainError {
    #[error("chain loops, is too long or has a bad next index")]
    Truncated,
    #[error("descriptor {0} is device-{1} (wrong direction)")]
    Direction(usize, &'static str),
    #[error("descriptor {0} ({1:#x}+{2:#x}) is outside guest memory")]
    OutsideMemory(usize, u64, u32),
    #[error("{0} bytes exceed the {1}-byte limit")]
    TooLong(u64, u64),
    #[error("{0} bytes is shorter than the {1}-byte minimum")]
    TooShort(u64, u64),
}

/// Collects the chain's buffers into `out` (cleared first) and returns their
/// total length. Every descriptor must be device-writable if `writable`,
/// device-readable otherwise; the total must lie in `min..=max`.
pub(super) fn collect<I>(
    chain: I,
    mem: &Memory,
    writable: bool,
    min: u64,
    max: u64,
    out: &mut Vec<Segment>,
) -> Result<u64, ChainError>
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
            let found = if desc.is_write_only() {
                "writable"
            } else {
                "readable"
            };
            return Err(ChainError::Direction(i, found));
        }
        let len = desc.len();
        let in_ram = usize::try_from(len).is_ok_and(|n| mem.check_range(desc.addr(), n, access));
        if !in_ram {
            return Err(ChainError::OutsideMemory(i, desc.addr().0, len));
        }
        total += u64::from(len);
        if total > max {
            return Err(ChainError::TooLong(total, max));
        }
        if len > 0 {
            out.push(Segment {
                addr: desc.addr(),
                len,
            });
        }
        ended = !desc.has_next();
    }
    if !ended {
        return Err(ChainError::Truncated);
    }
    if total < min {
        return Err(ChainError::TooShort(total, min));
    }
    Ok(total)
}
