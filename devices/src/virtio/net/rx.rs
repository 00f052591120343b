//! Receive path: frames from the tap into the guest's RX buffers.
//!
//! A frame read from the tap stays in [`RxState`] until the guest has posted
//! enough buffer space; chains are taken off the ring into `held` only as
//! needed and kept there across frames, so nothing is ever put back on the
//! ring. With MRG_RXBUF one frame may span several chains (`num_buffers`
//! says how many), otherwise it must fit in one or is dropped.

use std::io;

use virtio_queue::QueueT;
use vm_memory::Bytes;

use super::chain::{self, Segment};
use super::{charge, Net, ETH_HLEN, MAX_FRAME_LEN, VNET_HDR_LEN};
use crate::virtio::chain::{pop, rearm, Budget};

/// Offset of `num_buffers` in the vnet header.
const NUM_BUFFERS_OFFSET: usize = 10;
/// How many frames to discard per wakeup while the device is not running.
const DRAIN_LIMIT: usize = 256;

/// A guest RX chain taken off the ring and not yet returned.
struct HeldChain {
    head: u16,
    segments: Vec<Segment>,
    capacity: u64,
}

/// Receive-side state that outlives one event.
pub(super) struct RxState {
    pub(super) frame: Vec<u8>,
    /// Length of the frame waiting in `frame`, and whether it was charged to
    /// the rate limiter yet.
    pending: Option<(usize, bool)>,
    held: Vec<HeldChain>,
}

impl RxState {
    /// How many chains are held off the ring for the next frame.
    pub(crate) fn held_count(&self) -> usize {
        self.held.len()
    }

    pub(super) fn new() -> Self {
        Self {
            frame: vec![0; MAX_FRAME_LEN],
            pending: None,
            held: Vec::new(),
        }
    }
}

/// What became of the pending frame.
enum Outcome {
    Delivered,
    /// Not enough guest buffers yet: keep the frame, wait for a notification.
    NoBuffers,
    /// The guest's buffers can never hold it.
    TooBig,
}

impl Net {
    /// Moves frames from the tap to the guest until either runs dry, the rate
    /// limiter blocks, the device breaks, or [`CHAINS_PER_TURN`] frames were
    /// handled (then the RX eventfd is re-armed for the next turn).
    ///
    /// [`CHAINS_PER_TURN`]: crate::virtio::chain::CHAINS_PER_TURN
    pub(super) fn process_rx(&mut self) {
        if self.active.is_none() {
            self.drain_tap();
            return;
        }
        let mut used = false;
        let mut budget = Budget::per_turn();
        while !self.state.needs_reset {
            if !budget.take() {
                // The tap is edge-triggered: what it still holds would
                // never wake us again, so come back through the RX queue.
                let what = format_args!("net {}", self.iface_id);
                rearm(&self.queue_evts[super::RX_INDEX], &what);
                break;
            }
            let (len, charged) = match self.rx.pending {
                Some(p) => p,
                // MMDS's answers first: they are few and the guest waits on them.
                None => match self.read_mmds().or_else(|| self.read_tap()) {
                    Some(len) => (len, false),
                    None => break,
                },
            };
            self.rx.pending = Some((len, charged));
            if !charged {
                if !charge(&mut self.rx_limiter, (len - VNET_HDR_LEN) as u64) {
                    break;
                }
                self.rx.pending = Some((len, true));
            }
            match self.deliver(len, &mut used) {
                Ok(Outcome::Delivered) => {
                    self.rx.pending = None;
                    self.counters.rx_frames += 1;
                    self.counters.rx_bytes += len as u64;
                }
                Ok(Outcome::NoBuffers) => break,
                Ok(Outcome::TooBig) => {
                    self.rx.pending = None;
                    self.counters.rx_dropped += 1;
                    crate::guest_debug!(
                        "net {}: {len}-byte frame does not fit the guest's RX buffers; dropped",
                        self.iface_id
                    );
                }
                Err(why) => self.mark_broken(&format!("RX queue: {why}")),
            }
        }
        if used {
            self.signal_used(super::RX_INDEX);
        }
        self.arm_mmds_timer();
    }

    /// Reads the next usable frame from the tap; `None` when it is empty (or
    /// failing, which is logged).
    fn read_tap(&mut self) -> Option<usize> {
        loop {
            match self.backend.read_frame(&mut self.rx.frame) {
                Ok(n) if (VNET_HDR_LEN + ETH_HLEN..=MAX_FRAME_LEN).contains(&n) => return Some(n),
                Ok(n) => {
                    self.counters.rx_dropped += 1;
                    crate::guest_debug!(
                        "net {}: dropping {n}-byte frame from the tap",
                        self.iface_id
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::error!("net {}: reading the tap: {e}", self.iface_id);
                    return None;
                }
            }
        }
    }

    /// Discards what the tap has queued while the driver is not running.
    pub(super) fn drain_tap(&mut self) {
        for _ in 0..DRAIN_LIMIT {
            match self.backend.read_frame(&mut self.rx.frame) {
                Ok(_) => self.counters.rx_dropped += 1,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Holds chains until they can take `len` bytes, then writes the frame.
    /// `Err` means the ring itself is broken.
    fn deliver(&mut self, len: usize, used: &mut bool) -> Result<Outcome, String> {
        let mrg = self.acked(virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF);
        let acked = self.state.acked_features;
        let Some(active) = self.active.as_mut() else {
            return Ok(Outcome::NoBuffers);
        };
        let max_chains = if mrg {
            usize::from(active.rx.size())
        } else {
            1
        };
        let need = len as u64;
        let mut capacity: u64 = self.rx.held.iter().map(|c| c.capacity).sum();
        while capacity < need {
            if self.rx.held.len() >= max_chains {
                return Ok(Outcome::TooBig);
            }
            let next = pop(&mut active.rx, &active.mem, acked).map_err(|e| e.to_string())?;
            let Some(chain) = next else {
                return Ok(Outcome::NoBuffers);
            };
            let head = chain.head_index();
            let mut segments = Vec::new();
            let min = VNET_HDR_LEN as u64;
            match chain::collect(chain, &active.mem, true, min, u64::MAX, &mut segments) {
                Ok(cap) => {
                    capacity += cap;
                    self.rx.held.push(HeldChain {
                        head,
                        segments,
                        capacity: cap,
                    });
                }
                Err(why) => {
                    self.counters.bad_chains += 1;
                    log_bad_chain(&self.iface_id, "RX", head, &why, self.counters.bad_chains);
                    active
                        .rx
                        .add_used(&active.mem, head, 0)
                        .map_err(|e| format!("returning chain {head}: {e}"))?;
                    *used = true;
                }
            }
        }
        // Enough space: count the chains the frame spans, stamp the header.
        let mut spans = 0;
        let mut covered = 0;
        for held in &self.rx.held {
            if covered >= need {
                break;
            }
            covered += held.capacity;
            spans += 1;
        }
        let num_buffers = u16::try_from(spans).map_err(|_| "too many RX buffers".to_string())?;
        self.rx.frame[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&num_buffers.to_le_bytes());
        let mut rest = &self.rx.frame[..len];
        for held in self.rx.held.drain(..spans) {
            let mut written = 0u32;
            for seg in &held.segments {
                let n = rest.len().min(seg.len as usize);
                let (now, later) = rest.split_at(n);
                active
                    .mem
                    .write_slice(now, seg.addr)
                    .map_err(|e| format!("writing chain {}: {e}", held.head))?;
                written += n as u32; // n <= seg.len, and the chain's total fits u32
                rest = later;
            }
            active
                .rx
                .add_used(&active.mem, held.head, written)
                .map_err(|e| format!("returning chain {}: {e}", held.head))?;
        }
        *used = true;
        Ok(Outcome::Delivered)
    }
}

/// Logs a malformed chain, throttled so a hostile guest cannot flood logs.
pub(super) fn log_bad_chain(
    iface: &str,
    queue: &str,
    head: u16,
    why: &dyn std::fmt::Display,
    count: u64,
) {
    if count <= 32 || count.is_power_of_two() {
        crate::guest_warn!(
            "net {iface}: {queue} chain {head} rejected: {why} (bad chains so far: {count})"
        );
    }
}
