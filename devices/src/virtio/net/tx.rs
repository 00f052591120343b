//! Transmit path: frames the guest queued on TX, out through the tap.
//!
//! Each chain is checked as a whole (device-readable only, inside guest RAM,
//! vnet header plus an Ethernet header at least, [`MAX_FRAME_LEN`] at most)
//! and copied out of guest memory before the tap sees a byte of it, so the
//! guest cannot change a frame while the host is parsing it.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::Bytes;

use super::chain::{self, Segment};
use super::rx::log_bad_chain;
use super::{charge, IrqKind, Net, ETH_HLEN, MAX_FRAME_LEN, RX_INDEX, VNET_HDR_LEN};
use crate::rate_limiter::TokenKind;
use crate::virtio::chain::{pop, rearm_if_pending, Budget};

impl Net {
    /// Sends the guest's queued frames until the ring is empty, the rate
    /// limiter blocks, the device breaks, or [`CHAINS_PER_TURN`] chains
    /// were taken (then the TX eventfd is re-armed for the next turn).
    ///
    /// [`CHAINS_PER_TURN`]: crate::virtio::chain::CHAINS_PER_TURN
    pub(super) fn process_tx(&mut self) {
        let mut used = false;
        let mut segments: Vec<Segment> = Vec::new();
        let mut budget = Budget::per_turn();
        while !self.state.needs_reset {
            if self.tx_limiter.as_ref().is_some_and(|rl| rl.is_blocked()) {
                break;
            }
            let acked = self.state.acked_features;
            let Some(active) = self.active.as_mut() else {
                return;
            };
            if !budget.take() {
                let what = format_args!("net {}", self.iface_id);
                let evt = &self.queue_evts[super::TX_INDEX];
                rearm_if_pending(&active.tx, &active.mem, evt, &what);
                break;
            }
            let next = match pop(&mut active.tx, &active.mem, acked) {
                Ok(next) => next,
                Err(e) => {
                    self.mark_broken(&format!("TX queue: {e}"));
                    break;
                }
            };
            let Some(chain) = next else {
                break;
            };
            let head = chain.head_index();
            let (min, max) = ((VNET_HDR_LEN + ETH_HLEN) as u64, MAX_FRAME_LEN as u64);
            let result = chain::collect(chain, &active.mem, false, min, max, &mut segments)
                .map_err(|e| e.to_string())
                .and_then(|len| self.copy_frame(&segments, len));
            let len = match result {
                Ok(len) => len,
                Err(why) => {
                    self.counters.bad_chains += 1;
                    let count = self.counters.bad_chains;
                    log_bad_chain(&self.iface_id, "TX", head, &why, count);
                    used |= self.return_tx(head);
                    continue;
                }
            };
            let payload = (len - VNET_HDR_LEN) as u64;
            if !charge(&mut self.tx_limiter, payload) {
                // Leave the chain on the ring; the limiter's timer resumes us.
                if let Some(active) = self.active.as_mut() {
                    active.tx.go_to_previous_position();
                }
                break;
            }
            if self.offer_to_mmds(len) {
                used |= self.return_tx(head);
                continue;
            }
            match self.backend.write_frame(&self.tx_buf[..len]) {
                Ok(_) => {
                    self.counters.tx_frames += 1;
                    self.counters.tx_bytes += len as u64;
                }
                Err(e) => {
                    self.counters.tx_dropped += 1;
                    if let Some(rl) = &mut self.tx_limiter {
                        rl.manual_replenish(payload, TokenKind::Bytes);
                        rl.manual_replenish(1, TokenKind::Ops);
                    }
                    let n = self.counters.tx_dropped;
                    if n <= 32 || n.is_power_of_two() {
                        crate::guest_warn!(
                            "net {}: tap refused a {len}-byte frame: {e} (dropped so far: {n})",
                            self.iface_id
                        );
                    }
                }
            }
            used |= self.return_tx(head);
        }
        if used {
            self.signal_used(super::TX_INDEX);
        }
        if self.mmds_has_frames() {
            // MMDS answered (ARP, SYN-ACK, data): deliver it now.
            self.process_rx();
        } else {
            self.arm_mmds_timer();
        }
    }

    /// Copies the chain's buffers into `tx_buf` and checks the vnet header
    /// against what the guest negotiated.
    fn copy_frame(&mut self, segments: &[Segment], len: u64) -> Result<usize, String> {
        let Some(active) = &self.active else {
            return Err("device not active".into());
        };
        let len = usize::try_from(len).map_err(|_| "too long".to_string())?;
        let mut dst = self.tx_buf.get_mut(..len).ok_or("too long")?;
        for seg in segments {
            if seg.len as usize > dst.len() {
                return Err("segments longer than the chain".into());
            }
            let (now, later) = dst.split_at_mut(seg.len as usize);
            active
                .mem
                .read_slice(now, seg.addr)
                .map_err(|e| format!("reading {:#x}: {e}", seg.addr.0))?;
            dst = later;
        }
        let (flags, gso) = (u32::from(self.tx_buf[0]), u32::from(self.tx_buf[1]));
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 && !self.acked(VIRTIO_NET_F_CSUM) {
            return Err("checksum offload used but not negotiated".into());
        }
        let gso_ok = match gso {
            VIRTIO_NET_HDR_GSO_NONE => true,
            VIRTIO_NET_HDR_GSO_TCPV4 => self.acked(VIRTIO_NET_F_HOST_TSO4),
            VIRTIO_NET_HDR_GSO_TCPV6 => self.acked(VIRTIO_NET_F_HOST_TSO6),
            _ => false,
        };
        if !gso_ok {
            return Err(format!("GSO type {gso:#x} not negotiated"));
        }
        Ok(len)
    }

    /// Puts a TX chain on the used ring (nothing written: length 0).
    /// Returns whether the ring changed; a failure breaks the device.
    fn return_tx(&mut self, head: u16) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        match active.tx.add_used(&active.mem, head, 0) {
            Ok(()) => true,
            Err(e) => {
                self.mark_broken(&format!("TX queue: returning chain {head}: {e}"));
                false
            }
        }
    }

    /// Interrupts the guest for queue `index` if the driver wants it.
    pub(super) fn signal_used(&mut self, index: usize) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let queue = if index == RX_INDEX {
            &mut active.rx
        } else {
            &mut active.tx
        };
        let notify = queue.needs_notification(&active.mem).unwrap_or_else(|e| {
            crate::guest_warn!(
                "net {}: queue {index}: {e}; notifying anyway",
                self.iface_id
            );
            true
        });
        if notify {
            if let Err(e) = active.interrupt.trigger(IrqKind::Vring) {
                log::error!("net {}: raising the queue interrupt: {e}", self.iface_id);
            }
        }
    }
}
