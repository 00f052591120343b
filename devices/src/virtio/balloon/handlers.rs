//! What each queue's buffers mean and what the device does with them:
//! PFN arrays (inflate, deflate), free ranges (reports, hints), command
//! ids (hinting) and statistics. Everything is checked before use.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::config::{QueueKind, VIRTIO_BALLOON_CMD_ID_DONE, VIRTIO_BALLOON_CMD_ID_STOP};
use super::pages::{self, MAX_PFN_BYTES};
use super::{stats, BalloonState};
use crate::virtio::chain::{self, Walk};
use crate::virtio::GuestMemory;

/// One chain, walked with bounded work (indirect tables refused).
pub(super) type Chain<'a> = Walk<'a>;

/// Why a buffer (or part of one) was refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum ChainError {
    /// A buffer the device must read is device-writable, or the reverse.
    #[error("descriptor has the wrong direction")]
    Direction,
    /// A PFN array whose length is not a whole number of PFNs.
    #[error("PFN array length {0} is not a multiple of 4")]
    OddLength(u32),
    /// More PFNs than one chain may carry.
    #[error("PFN array of {0} bytes is longer than {MAX_PFN_BYTES}")]
    TooLong(u64),
    /// A buffer outside guest memory.
    #[error("buffer {addr:#x}+{len} is not inside guest memory")]
    OutOfMemory {
        /// Its guest address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// PFNs outside guest memory (the others were handled).
    #[error("{0} PFNs outside guest memory skipped")]
    BadPfns(u64),
    /// The chain itself is malformed (indirect, looping, too long).
    #[error(transparent)]
    Walk(#[from] chain::ChainError),
    /// Dropping pages failed.
    #[error(transparent)]
    Discard(#[from] pages::DiscardError),
}

/// An inflate (`discard`) or deflate chain: an array of u32 PFNs.
pub(super) fn inflate(
    state: &mut BalloonState,
    chain: Chain,
    mem: &GuestMemory,
    discard: bool,
) -> Result<u16, ChainError> {
    let head = chain.head_index();
    let mut total = 0u64;
    let mut check = chain.clone();
    for d in &mut check {
        if d.is_write_only() {
            return Err(ChainError::Direction);
        }
        if d.len() % 4 != 0 {
            return Err(ChainError::OddLength(d.len()));
        }
        total += u64::from(d.len());
        if total > MAX_PFN_BYTES {
            return Err(ChainError::TooLong(total));
        }
        if !mem.check_range(d.addr(), d.len() as usize) {
            return Err(ChainError::OutOfMemory {
                addr: d.addr().0,
                len: d.len(),
            });
        }
    }
    if let Some(e) = check.error() {
        return Err(e.clone().into());
    }
    let mut failure = None;
    let walk = pages::walk_pfns(mem, chain.map(|d| (d.addr().0, d.len())), |addr, len| {
        if !discard {
            return;
        }
        match pages::discard(mem, addr, len) {
            Ok(()) => state.counters.inflated_bytes += len,
            Err(e) => failure = Some(e),
        }
    });
    if discard {
        state.counters.inflated_pages += walk.valid;
    } else {
        state.counters.deflated_pages += walk.valid;
    }
    if let Some(e) = failure {
        return Err(e.into());
    }
    match walk.invalid {
        0 => Ok(head),
        n => Err(ChainError::BadPfns(n)),
    }
}

/// A free page report: device-writable buffers, each a free guest range.
pub(super) fn report_free(
    state: &mut BalloonState,
    chain: Chain,
    mem: &GuestMemory,
) -> Result<u16, ChainError> {
    let head = chain.head_index();
    let mut chain = chain;
    let mut first_error = None;
    for d in &mut chain {
        let result = if !d.is_write_only() {
            Err(ChainError::Direction)
        } else {
            drop_range(mem, d.addr().0, d.len())
        };
        match result {
            Ok(bytes) => state.counters.reported_bytes += bytes,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = chain.error() {
        first_error.get_or_insert(e.clone().into());
    }
    first_error.map_or(Ok(head), Err)
}

/// A free-page-hint chain: a device-readable 4-byte command id (the run
/// the guest is hinting for, or STOP when it has finished), or
/// device-writable buffers each a free guest range. Hints are acted on only
/// while the host's command is the run the guest announced, so pages the
/// guest may already be reusing (after DONE) are never dropped.
pub(super) fn hint(
    state: &mut BalloonState,
    chain: Chain,
    mem: &GuestMemory,
    config_changed: &mut bool,
) -> Result<u16, ChainError> {
    let head = chain.head_index();
    let mut chain = chain;
    let mut first_error = None;
    for d in &mut chain {
        if !d.is_write_only() {
            let mut id = [0u8; 4];
            if d.len() != 4 || mem.read_slice(&mut id, d.addr()).is_err() {
                first_error.get_or_insert(ChainError::OutOfMemory {
                    addr: d.addr().0,
                    len: d.len(),
                });
                continue;
            }
            let id = u32::from_le_bytes(id);
            state.guest_hint_cmd_id = Some(id);
            if id == VIRTIO_BALLOON_CMD_ID_STOP
                && state.hint_ack_on_stop
                && state.hint_cmd_id > VIRTIO_BALLOON_CMD_ID_DONE
            {
                state.hint_cmd_id = VIRTIO_BALLOON_CMD_ID_DONE;
                *config_changed = true;
            }
            continue;
        }
        let running = state.hint_cmd_id > VIRTIO_BALLOON_CMD_ID_DONE
            && state.guest_hint_cmd_id == Some(state.hint_cmd_id);
        if !running {
            log::debug!("balloon: free page hint outside a hinting run ignored");
            continue;
        }
        match drop_range(mem, d.addr().0, d.len()) {
            Ok(bytes) => state.counters.hinted_bytes += bytes,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = chain.error() {
        first_error.get_or_insert(e.clone().into());
    }
    first_error.map_or(Ok(head), Err)
}

/// Drops the whole pages inside guest range `addr + len`; returns the bytes.
fn drop_range(mem: &GuestMemory, addr: u64, len: u32) -> Result<u64, ChainError> {
    let oom = || ChainError::OutOfMemory { addr, len };
    if !mem.check_range(GuestAddress(addr), len as usize) {
        return Err(oom());
    }
    let Some((start, bytes)) = pages::whole_pages(addr, u64::from(len)) else {
        return Ok(0);
    };
    pages::discard(mem, start, bytes)?;
    Ok(bytes)
}

/// A statistics buffer: records the figures (the caller holds the buffer).
pub(super) fn take_stats(state: &mut BalloonState, chain: Chain, mem: &GuestMemory) {
    let parsed = stats::parse(mem, chain.map(|d| (d.addr().0, d.len(), d.is_write_only())));
    if parsed.unknown_tags > 0 || parsed.ignored_bytes > 0 {
        log::debug!(
            "balloon: statistics with {} unknown tags, {} bytes ignored",
            parsed.unknown_tags,
            parsed.ignored_bytes
        );
    }
    state.stats = parsed.stats;
    state.counters.stats_updates += 1;
}

/// Counts a refused buffer; logs the first few, then only at powers of two,
/// so a hostile guest cannot flood the host's log.
pub(super) fn count_error(state: &mut BalloonState, kind: QueueKind, head: u16, what: &ChainError) {
    state.counters.errors += 1;
    let n = state.counters.errors;
    if n <= 16 || n.is_power_of_two() {
        log::warn!("balloon: {kind:?} buffer at descriptor {head}: {what} (error #{n})");
    }
}
