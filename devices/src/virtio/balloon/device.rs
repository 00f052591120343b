//! The transport-facing side ([`VirtioDevice`]) and queue processing.

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::config::{QueueKind, QueueLayout};
use super::handlers::{count_error, hint, inflate, report_free, take_stats};
use super::{Active, Balloon, TYPE_BALLOON};
use crate::virtio::chain::{self, Budget};
use crate::virtio::{
    read_config_bytes, ActivateError, Activation, GuestMemory, IrqKind, IrqTrigger, VirtioDevice,
};

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }

    fn avail_features(&self) -> u64 {
        self.state.avail_features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space().bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut space = self.config_space();
        if !space.write(offset, data) {
            crate::guest_warn!(
                "balloon: {}-byte config write at {offset:#x} touches read-only fields; ignored there",
                data.len()
            );
        }
        self.state.actual_pages = space.actual;
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation {
            mem,
            queues,
            interrupt,
            acked_features,
        } = activation;
        let acked = acked_features & self.state.avail_features;
        let layout = QueueLayout::new(acked);
        if queues.len() < layout.count {
            crate::guest_warn!(
                "balloon: activated with {} queues, the features need {}",
                queues.len(),
                layout.count
            );
            return Err(ActivateError::BadQueue(queues.len()));
        }
        let mut queues = queues;
        self.state.acked_features = acked;
        self.state.needs_reset = false;
        let mut stats_desc = None;
        if let Some(restored) = self.restored.take() {
            for (queue, position) in queues.iter_mut().zip(&restored.pending.positions) {
                position.apply(queue);
            }
            self.state.needs_reset = restored.pending.needs_reset;
            stats_desc = restored.stats_desc;
        }
        self.active = Some(Active {
            mem,
            queues,
            layout,
            interrupt,
            stats_desc,
        });
        if let Err(e) = self.arm_stats_timer() {
            log::error!("{e}");
        }
        // Buffers posted before DRIVER_OK had their notification ignored.
        for evt in &self.queue_evts[..layout.count] {
            if let Err(e) = evt.write(1) {
                log::error!("balloon: kicking a queue: {e}");
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.restored = None;
        self.state.acked_features = 0;
        self.state.needs_reset = false;
        self.state.guest_hint_cmd_id = None;
        if let Err(e) = self.arm_stats_timer() {
            log::error!("{e}");
        }
    }

    fn needs_reset(&self) -> bool {
        self.state.needs_reset
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.state.counters;
        vec![
            ("inflated_pages", c.inflated_pages),
            ("deflated_pages", c.deflated_pages),
            ("returned_bytes", c.returned_bytes()),
            ("hinted_bytes", c.hinted_bytes),
            ("reported_bytes", c.reported_bytes),
            ("stats_updates", c.stats_updates),
            ("errors", c.errors),
        ]
    }
}

impl Balloon {
    /// Handles the buffers the driver made available on queue `index`, at
    /// most [`chain::CHAINS_PER_TURN`] of them (then re-arms the queue
    /// eventfd for the next event-loop turn), and interrupts the guest if
    /// it wants to hear about them. Returns
    /// how many buffers were completed (a statistics buffer is held, not
    /// completed). A corrupted ring stops the device until reset.
    ///
    /// Called from the event handler; public so tests and benches can drive
    /// the device synchronously.
    pub fn process_queue(&mut self, index: usize) -> usize {
        let Self {
            state,
            active,
            queue_evts,
            ..
        } = self;
        let Some(Active {
            mem,
            queues,
            layout,
            interrupt,
            stats_desc,
        }) = active
        else {
            return 0;
        };
        let (Some(kind), Some(queue)) = (layout.kind(index), queues.get_mut(index)) else {
            return 0;
        };
        if state.needs_reset {
            return 0;
        }
        let mut completed = 0;
        let mut corrupted = None;
        let mut config_changed = false;
        let mut budget = Budget::per_turn();
        loop {
            if !budget.take() {
                // More may be waiting: come back after the event loop has
                // served everyone else.
                if let Some(evt) = queue_evts.get(index) {
                    chain::rearm_if_pending(queue, mem, evt, &"balloon");
                }
                break;
            }
            let chain = match chain::pop(queue, mem, state.acked_features) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(e) => {
                    corrupted = Some(format!("available ring: {e}"));
                    break;
                }
            };
            let head = chain.head_index();
            let result = match kind {
                QueueKind::Inflate => inflate(state, chain, mem, true),
                QueueKind::Deflate => inflate(state, chain, mem, false),
                QueueKind::Reporting => report_free(state, chain, mem),
                QueueKind::FreePageHint => hint(state, chain, mem, &mut config_changed),
                QueueKind::Stats => {
                    take_stats(state, chain, mem);
                    // Hold the new buffer; a hostile second one frees the first.
                    match stats_desc.replace(head) {
                        Some(old) => Ok(old),
                        None => continue,
                    }
                }
            };
            let used = match result {
                Ok(used) => used,
                Err(e) => {
                    count_error(state, kind, head, &e);
                    head
                }
            };
            if let Err(e) = queue.add_used(&*mem, used, 0) {
                corrupted = Some(format!("returning descriptor {used}: {e}"));
                break;
            }
            completed += 1;
        }
        if completed > 0 {
            notify(queue, mem, interrupt);
        }
        if let Some(why) = corrupted {
            log::error!(
                "balloon: the driver corrupted queue {index} ({why}); device stopped until reset"
            );
            state.needs_reset = true;
            config_changed = true;
        }
        if config_changed {
            if let Err(e) = interrupt.trigger(IrqKind::Config) {
                log::error!("balloon: raising the config interrupt: {e}");
            }
        }
        completed
    }

    /// Gives the held statistics buffer back used, so the guest refills it
    /// with fresh figures (on each statistics timer tick).
    pub fn return_stats_buffer(&mut self) -> bool {
        let Some(Active {
            mem,
            queues,
            layout,
            interrupt,
            stats_desc,
        }) = &mut self.active
        else {
            return false;
        };
        let (Some(index), Some(head)) = (layout.stats, *stats_desc) else {
            return false;
        };
        let Some(queue) = queues.get_mut(index) else {
            return false;
        };
        *stats_desc = None;
        if let Err(e) = queue.add_used(&*mem, head, 0) {
            log::error!("balloon: returning the statistics buffer: {e}");
            return false;
        }
        notify(queue, mem, interrupt);
        true
    }
}

fn notify(queue: &mut Queue, mem: &GuestMemory, interrupt: &IrqTrigger) {
    // Without EVENT_IDX this only reads the avail ring's flags; if even
    // that fails, interrupting is the safe side.
    if queue.needs_notification(mem).unwrap_or(true) {
        if let Err(e) = interrupt.trigger(IrqKind::Vring) {
            log::error!("balloon: raising the queue interrupt: {e}");
        }
    }
}
