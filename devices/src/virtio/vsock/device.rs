//! The [`VirtioDevice`] side and the queue work: TX packets into the muxer,
//! muxer packets into RX buffers, the TRANSPORT_RESET event.

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

use super::muxer::log_limited;
use super::packet::{self, check_header, HDR_LEN, MAX_PAYLOAD};
use super::{Active, Vsock, EVQ_INDEX, QUEUE_SIZES, RX_INDEX, RX_PER_TURN, TX_INDEX, TX_PER_TURN};
use crate::virtio::chain::{pop, Budget};
use crate::virtio::{
    read_config_bytes, ActivateError, Activation, IrqKind, VirtioDevice, VIRTIO_F_VERSION_1,
};

/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`.
const EVENT_TRANSPORT_RESET: u32 = 0;

impl Vsock {
    /// Stops queue work until the driver resets the device, and tells it.
    fn mark_broken(&mut self, why: &str) {
        if self.needs_reset {
            return;
        }
        log::error!("vsock: {why}; device needs reset");
        self.needs_reset = true;
        if let Some(active) = &self.active {
            if let Err(e) = active.interrupt.trigger(IrqKind::Config) {
                log::error!("vsock: raising the config interrupt: {e}");
            }
        }
    }

    /// Asks the event loop to call us again for `index` (work left over
    /// after a bounded turn).
    fn kick(&self, index: usize) {
        if let Err(e) = self.queue_evts[index].write(1) {
            log::error!("vsock: re-kicking queue {index}: {e}");
        }
    }

    /// Interrupts the guest for queue `index` if the driver wants it.
    fn signal_used(&mut self, index: usize) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let queue = match index {
            RX_INDEX => &mut active.rx,
            TX_INDEX => &mut active.tx,
            _ => &mut active.evq,
        };
        let notify = queue.needs_notification(&active.mem).unwrap_or(true);
        if notify {
            if let Err(e) = active.interrupt.trigger(IrqKind::Vring) {
                log::error!("vsock: raising the queue interrupt: {e}");
            }
        }
    }

    /// Returns a chain to queue `index` with `len` bytes written.
    fn add_used(&mut self, index: usize, head: u16, len: u32) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let queue = match index {
            RX_INDEX => &mut active.rx,
            TX_INDEX => &mut active.tx,
            _ => &mut active.evq,
        };
        match queue.add_used(&active.mem, head, len) {
            Ok(()) => true,
            Err(e) => {
                self.mark_broken(&format!("queue {index}: returning chain {head}: {e}"));
                false
            }
        }
    }

    /// Takes the guest's packets off TX (at most [`TX_PER_TURN`] per call)
    /// and hands the valid ones to the muxer.
    pub(super) fn process_tx(&mut self) {
        let mut used = false;
        for _ in 0..TX_PER_TURN {
            if self.needs_reset {
                break;
            }
            let acked = self.acked_features;
            let Some(active) = self.active.as_mut() else {
                return;
            };
            let next = match pop(&mut active.tx, &active.mem, acked) {
                Ok(next) => next,
                Err(e) => {
                    self.mark_broken(&format!("TX queue: {e}"));
                    break;
                }
            };
            let Some(chain) = next else {
                if used {
                    self.signal_used(TX_INDEX);
                }
                return;
            };
            let head = chain.head_index();
            let read =
                packet::read_tx_chain(chain, &active.mem, &mut self.segs, &mut self.tx_payload);
            // The packet is copied out: the buffer goes back right away.
            used |= self.add_used(TX_INDEX, head, 0);
            match read.and_then(|hdr| {
                check_header(&hdr, self.guest_cid)
                    .map(|op| (hdr, op))
                    .map_err(|e| (Some(hdr), e))
            }) {
                Ok((hdr, op)) => {
                    let c = &mut self.muxer.counters;
                    c.tx_packets += 1;
                    c.tx_bytes += u64::from(hdr.len);
                    self.muxer.handle_guest(&hdr, op, &self.tx_payload);
                }
                Err((hdr, why)) => self.muxer.reject_guest(hdr.as_ref(), &why),
            }
        }
        // Budget spent (or broken): yield, and come back for the rest.
        if !self.needs_reset {
            self.kick(TX_INDEX);
        }
        if used {
            self.signal_used(TX_INDEX);
        }
    }

    /// Fills the guest's RX buffers with what the muxer owes it (at most
    /// [`RX_PER_TURN`] packets per call). Host data is read only into a
    /// buffer already taken from the ring, and only as much as fits.
    pub(super) fn process_rx(&mut self) {
        let mut used = false;
        let mut delivered = 0;
        while self.muxer.has_rx_work() && !self.needs_reset {
            if delivered == RX_PER_TURN {
                self.kick(RX_INDEX);
                break;
            }
            let acked = self.acked_features;
            let Some(active) = self.active.as_mut() else {
                return;
            };
            let next = match pop(&mut active.rx, &active.mem, acked) {
                Ok(next) => next,
                Err(e) => {
                    self.mark_broken(&format!("RX queue: {e}"));
                    break;
                }
            };
            let Some(chain) = next else {
                break;
            };
            let head = chain.head_index();
            let cap = match packet::collect_chain(
                chain,
                &active.mem,
                true,
                &mut self.segs,
                usize::from(QUEUE_SIZES[RX_INDEX]),
            ) {
                Ok(cap) if cap >= HDR_LEN as u64 => cap,
                Ok(cap) => {
                    self.bad_rx_chain(head, &format!("{cap}-byte buffer cannot hold a header"));
                    used = true;
                    continue;
                }
                Err(e) => {
                    self.bad_rx_chain(head, &e);
                    used = true;
                    continue;
                }
            };
            let room =
                usize::try_from(cap - HDR_LEN as u64).map_or(MAX_PAYLOAD, |r| r.min(MAX_PAYLOAD));
            let Some((hdr, n)) = self.muxer.next_rx(&mut self.rx_buf[..room]) else {
                // Nothing owed after all: leave the buffer on the ring.
                if let Some(active) = self.active.as_mut() {
                    active.rx.go_to_previous_position();
                }
                break;
            };
            let Some(active) = self.active.as_ref() else {
                return;
            };
            let len = match packet::write_rx(&active.mem, &self.segs, &hdr, &self.rx_buf[..n]) {
                Ok(len) => {
                    let c = &mut self.muxer.counters;
                    c.rx_packets += 1;
                    c.rx_bytes += n as u64;
                    len
                }
                Err(e) => {
                    let c = &mut self.muxer.counters;
                    c.errors += 1;
                    c.host_bytes_dropped += n as u64;
                    log_limited(c.errors, &format!("writing RX chain {head}: {e}"));
                    0
                }
            };
            used |= self.add_used(RX_INDEX, head, len);
            delivered += 1;
        }
        if used {
            self.signal_used(RX_INDEX);
        }
    }

    fn bad_rx_chain(&mut self, head: u16, why: &dyn std::fmt::Display) {
        self.muxer.counters.errors += 1;
        log_limited(
            self.muxer.counters.errors,
            &format!("RX chain {head} rejected: {why}"),
        );
        self.add_used(RX_INDEX, head, 0);
    }

    /// Delivers an owed TRANSPORT_RESET event once the driver has posted an
    /// event buffer.
    pub(super) fn process_event_queue(&mut self) {
        let mut used = false;
        let mut budget = Budget::per_turn();
        while self.reset_event_pending && !self.needs_reset {
            if !budget.take() {
                self.kick(EVQ_INDEX);
                break;
            }
            let acked = self.acked_features;
            let Some(active) = self.active.as_mut() else {
                return;
            };
            let next = match pop(&mut active.evq, &active.mem, acked) {
                Ok(next) => next,
                Err(e) => {
                    self.mark_broken(&format!("event queue: {e}"));
                    break;
                }
            };
            let Some(chain) = next else {
                break;
            };
            let head = chain.head_index();
            let n = usize::from(QUEUE_SIZES[EVQ_INDEX]);
            let written = match packet::collect_chain(chain, &active.mem, true, &mut self.segs, n) {
                Ok(cap) if cap >= 4 => {
                    let id = EVENT_TRANSPORT_RESET.to_le_bytes();
                    let mut at = 0;
                    let mut ok = true;
                    for seg in &self.segs {
                        let k = (seg.len as usize).min(id.len() - at);
                        ok &= active.mem.write_slice(&id[at..at + k], seg.addr).is_ok();
                        at += k;
                        if at == id.len() {
                            break;
                        }
                    }
                    ok.then_some(4)
                }
                _ => None,
            };
            match written {
                Some(len) => {
                    self.reset_event_pending = false;
                    used |= self.add_used(EVQ_INDEX, head, len);
                    log::info!("vsock: sent TRANSPORT_RESET to the guest");
                }
                None => {
                    self.muxer.counters.errors += 1;
                    log_limited(
                        self.muxer.counters.errors,
                        &format!("event chain {head} rejected"),
                    );
                    used |= self.add_used(EVQ_INDEX, head, 0);
                }
            }
        }
        if used {
            self.signal_used(EVQ_INDEX);
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        super::TYPE_VSOCK
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        crate::virtio::ignore_config_write(&"vsock", offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation {
            mem,
            queues,
            interrupt,
            acked_features,
        } = activation;
        let n = queues.len();
        let Ok([mut rx, mut tx, mut evq]) = <[Queue; 3]>::try_from(queues) else {
            return Err(ActivateError::BadQueue(n.min(QUEUE_SIZES.len())));
        };
        self.acked_features = acked_features & VIRTIO_F_VERSION_1;
        self.needs_reset = false;
        if let Some(restored) = self.restored.take() {
            for (queue, position) in [&mut rx, &mut tx, &mut evq]
                .into_iter()
                .zip(&restored.positions)
            {
                position.apply(queue);
            }
            self.needs_reset = restored.needs_reset;
        }
        self.active = Some(Active {
            mem,
            rx,
            tx,
            evq,
            interrupt,
        });
        // Have the event loop look at every queue once (the TRANSPORT_RESET
        // event, packets posted before activation).
        for evt in &self.queue_evts {
            if let Err(e) = evt.write(1) {
                log::error!("vsock: kicking the queues: {e}");
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.restored = None;
        self.muxer.close_all();
        self.acked_features = 0;
        self.needs_reset = false;
        self.reset_event_pending = false;
    }

    fn needs_reset(&self) -> bool {
        self.needs_reset
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.muxer.counters;
        vec![
            ("rx_packets", c.rx_packets),
            ("rx_bytes", c.rx_bytes),
            ("tx_packets", c.tx_packets),
            ("tx_bytes", c.tx_bytes),
            ("conns_opened", c.conns_opened),
            ("conns_reset", c.conns_reset),
            ("errors", c.errors),
            ("host_bytes_dropped", c.host_bytes_dropped),
            ("guest_bytes_dropped", c.guest_bytes_dropped),
        ]
    }
}
