//! Bounded queue work: walking a guest's descriptor chain and budgeting the
//! chains one event-loop turn may take.
//!
//! virtio-queue's own chain iterator follows an indirect table whether or
//! not `VIRTIO_F_INDIRECT_DESC` was negotiated (up to 65535 descriptors per
//! chain) and stops silently on a bad chain. [`Walk`] reads each descriptor
//! once, refuses an indirect one unless the feature was negotiated, never
//! takes more steps than the queue size (virtio 1.x, 2.7.5.3.1: a longer
//! chain is an error, and a loop is one) and stops at the first problem,
//! keeping it in [`Walk::error`]. A chain cut short ends on a descriptor
//! that still has NEXT set (or yields nothing), which the device parsers
//! already refuse.
//!
//! [`Budget`] caps how many chains a device takes off one queue per
//! notification; a device that spends it re-arms its queue eventfd
//! ([`rearm`]) so the event loop serves signals, the API and the other
//! devices before the next batch.

use std::sync::atomic::Ordering;

use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::GuestMemory;

/// Most chains a device takes off one queue per event-loop turn: large
/// enough to keep a busy ring moving, small enough that a turn stays short
/// even when every chain is as long as the queue.
pub const CHAINS_PER_TURN: usize = 64;

/// Size of one split-ring descriptor in a table.
const DESC_SIZE: u64 = 16;

/// Why a chain was cut short.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// An indirect descriptor on a device that did not negotiate them.
    #[error("descriptor {0} is indirect but VIRTIO_F_INDIRECT_DESC was not negotiated")]
    IndirectNotNegotiated(u16),
    /// An indirect descriptor inside an indirect table.
    #[error("indirect descriptor inside an indirect table")]
    NestedIndirect,
    /// An indirect descriptor that also chains on (the spec forbids it).
    #[error("indirect descriptor {0} also has NEXT set")]
    IndirectWithNext(u16),
    /// An indirect table that is empty or not a whole number of descriptors.
    #[error("indirect table of {0} bytes is empty or not a whole number of descriptors")]
    BadIndirectTable(u32),
    /// More descriptors than the queue size: too long, or a loop.
    #[error("the chain is longer than the queue size ({0}) or loops")]
    TooLong(u16),
    /// A next index past the end of its table.
    #[error("next index {0} is outside the descriptor table ({1} entries)")]
    BadIndex(u16, u16),
    /// A descriptor the device cannot read.
    #[error("descriptor at {0:#x} is outside guest memory")]
    Unreadable(u64),
    /// Buffers adding up to 4 GiB or more.
    #[error("the chain's buffers add up to 4 GiB or more")]
    BytesOverflow,
}

/// The descriptors of one chain, read from guest memory one at a time with
/// at most queue-size reads. Cloning restarts nothing: a clone continues
/// from the same point (clone before iterating to walk twice).
#[derive(Debug, Clone)]
pub struct Walk<'m> {
    mem: &'m GuestMemory,
    head: u16,
    table: GuestAddress,
    table_len: u16,
    /// The next index to read; `None` once the chain ended or failed.
    next: Option<u16>,
    /// Descriptors still allowed.
    left: u16,
    limit: u16,
    indirect_ok: bool,
    in_indirect: bool,
    bytes: u32,
    reads: u32,
    error: Option<ChainError>,
}

impl<'m> Walk<'m> {
    /// The chain at `head` of `queue`'s descriptor table; indirect tables
    /// are followed only if `acked_features` has `VIRTIO_F_INDIRECT_DESC`.
    pub fn new(mem: &'m GuestMemory, queue: &Queue, head: u16, acked_features: u64) -> Self {
        let indirect_ok = acked_features & (1 << VIRTIO_RING_F_INDIRECT_DESC) != 0;
        Self::from_table(
            mem,
            GuestAddress(queue.desc_table()),
            queue.size(),
            head,
            indirect_ok,
        )
    }

    /// The chain at `head` of the `size`-entry descriptor table at `table`.
    pub fn from_table(
        mem: &'m GuestMemory,
        table: GuestAddress,
        size: u16,
        head: u16,
        indirect_ok: bool,
    ) -> Self {
        Self {
            mem,
            head,
            table,
            table_len: size,
            next: Some(head),
            left: size,
            limit: size,
            indirect_ok,
            in_indirect: false,
            bytes: 0,
            reads: 0,
            error: None,
        }
    }

    /// The chain's head index (what goes back on the used ring).
    pub fn head_index(&self) -> u16 {
        self.head
    }

    /// Why the walk stopped early, if it did.
    pub fn error(&self) -> Option<&ChainError> {
        self.error.as_ref()
    }

    /// How many descriptors were read from guest memory so far.
    pub fn reads(&self) -> u32 {
        self.reads
    }

    fn fail(&mut self, e: ChainError) -> Option<Descriptor> {
        self.error = Some(e);
        self.next = None;
        None
    }
}

impl Iterator for Walk<'_> {
    type Item = Descriptor;

    fn next(&mut self) -> Option<Descriptor> {
        loop {
            let index = self.next?;
            if index >= self.table_len {
                return self.fail(ChainError::BadIndex(index, self.table_len));
            }
            if self.left == 0 {
                return self.fail(ChainError::TooLong(self.limit));
            }
            self.left -= 1;
            let Some(addr) = self.table.0.checked_add(u64::from(index) * DESC_SIZE) else {
                return self.fail(ChainError::Unreadable(self.table.0));
            };
            self.reads += 1;
            let Ok(desc) = self.mem.read_obj::<Descriptor>(GuestAddress(addr)) else {
                return self.fail(ChainError::Unreadable(addr));
            };
            if desc.refers_to_indirect_table() {
                if !self.indirect_ok {
                    return self.fail(ChainError::IndirectNotNegotiated(index));
                }
                if self.in_indirect {
                    return self.fail(ChainError::NestedIndirect);
                }
                if desc.has_next() {
                    return self.fail(ChainError::IndirectWithNext(index));
                }
                let len = desc.len();
                if len == 0 || u64::from(len) % DESC_SIZE != 0 {
                    return self.fail(ChainError::BadIndirectTable(len));
                }
                // Entries past the remaining budget would fail anyway;
                // the count only has to fit a u16.
                let entries = u16::try_from(u64::from(len) / DESC_SIZE).unwrap_or(u16::MAX);
                self.table = desc.addr();
                self.table_len = entries;
                self.next = Some(0);
                self.in_indirect = true;
                // The indirect descriptor carries no buffer: only the
                // table's entries count towards the queue-size limit.
                self.left += 1;
                continue;
            }
            let Some(bytes) = self.bytes.checked_add(desc.len()) else {
                return self.fail(ChainError::BytesOverflow);
            };
            self.bytes = bytes;
            self.next = desc.has_next().then(|| desc.next());
            return Some(desc);
        }
    }
}

/// Takes the next available chain off `queue`, as a [`Walk`]; `Ok(None)`
/// when the ring is empty, `Err` when the available ring is corrupted.
pub fn pop<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemory,
    acked_features: u64,
) -> Result<Option<Walk<'m>>, virtio_queue::Error> {
    let head = match queue.iter(mem)?.next() {
        Some(chain) => chain.head_index(),
        None => return Ok(None),
    };
    Ok(Some(Walk::new(mem, queue, head, acked_features)))
}

/// How many more chains this turn may take off one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    left: usize,
}

impl Budget {
    /// A fresh turn of [`CHAINS_PER_TURN`] chains.
    pub fn per_turn() -> Self {
        Self::new(CHAINS_PER_TURN)
    }

    /// A turn of `chains` chains.
    pub fn new(chains: usize) -> Self {
        Self { left: chains }
    }

    /// Spends one chain; `false` when the turn is over (the caller then
    /// re-arms its queue and returns).
    pub fn take(&mut self) -> bool {
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        true
    }

    /// Whether the turn is over.
    pub fn spent(&self) -> bool {
        self.left == 0
    }
}

/// Makes the event loop call the queue's handler again on its next turn
/// (work left over after a spent [`Budget`]).
pub fn rearm(evt: &EventFd, what: &dyn std::fmt::Display) {
    if let Err(e) = evt.write(1) {
        log::error!("{what}: re-arming the queue eventfd: {e}");
    }
}

/// [`rearm`]s `evt` if `queue` still has chains available, or if its
/// available index cannot be read (the next turn reports that).
pub fn rearm_if_pending(
    queue: &Queue,
    mem: &GuestMemory,
    evt: &EventFd,
    what: &dyn std::fmt::Display,
) {
    let pending = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_or(true, |idx| idx.0 != queue.next_avail());
    if pending {
        rearm(evt, what);
    }
}

#[cfg(test)]
mod tests;
