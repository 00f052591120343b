//! The transport-facing side ([`VirtioDevice`]) and queue processing.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::config::{
    QueueKind, QueueLayout, VIRTIO_BALLOON_CMD_ID_DONE, VIRTIO_BALLOON_CMD_ID_STOP,
};
use super::pages::{self, MAX_PFN_BYTES};
use super::{stats, Active, Balloon, BalloonState, TYPE_BALLOON};
use crate::virtio::{
    read_config_bytes, ActivateError, Activation, GuestMemory, IrqKind, IrqTrigger, VirtioDevice,
};

type Chain<'a> = DescriptorChain<&'a GuestMemory>;

/// Why a buffer (or part of one) was refused.
#[derive(Debug, thiserror::Error)]
enum ChainError {
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
    /// Dropping pages failed.
    #[error(transparent)]
    Discard(#[from] pages::DiscardError),
}

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
            log::warn!(
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
            log::warn!(
                "balloon: activated with {} queues, the features need {}",
                queues.len(),
                layout.count
            );
            return Err(ActivateError::BadQueue(queues.len()));
        }
        self.state.acked_features = acked;
        self.state.needs_reset = false;
        self.active = Some(Active {
            mem,
            queues,
            layout,
            interrupt,
            stats_desc: None,
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

    fn queue_positions(&self) -> Vec<(u16, u16)> {
        self.active
            .iter()
            .flat_map(|a| a.queues.iter())
            .map(|q| (q.next_avail(), q.next_used()))
            .collect()
    }

    fn prepare_snapshot(&mut self) {
        // The held statistics buffer goes back to the guest (it refills it);
        // a restored device has nothing of the guest's in hand.
        self.return_stats_buffer();
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
    /// Handles every buffer the driver made available on queue `index`,
    /// then interrupts the guest if it wants to hear about them. Returns
    /// how many buffers were completed (a statistics buffer is held, not
    /// completed). A corrupted ring stops the device until reset.
    ///
    /// Called from the event handler; public so tests and benches can drive
    /// the device synchronously.
    pub fn process_queue(&mut self, index: usize) -> usize {
        let Self { state, active, .. } = self;
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
        loop {
            let chain = match queue.iter(&*mem) {
                Ok(mut avail) => match avail.next() {
                    Some(chain) => chain,
                    None => break,
                },
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

/// An inflate (`discard`) or deflate chain: an array of u32 PFNs.
fn inflate(
    state: &mut BalloonState,
    chain: Chain,
    mem: &GuestMemory,
    discard: bool,
) -> Result<u16, ChainError> {
    let head = chain.head_index();
    let mut total = 0u64;
    for d in chain.clone() {
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
fn report_free(
    state: &mut BalloonState,
    chain: Chain,
    mem: &GuestMemory,
) -> Result<u16, ChainError> {
    let head = chain.head_index();
    let mut first_error = None;
    for d in chain {
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
    first_error.map_or(Ok(head), Err)
}

/// A free-page-hint chain: a device-readable 4-byte command id (the run
/// the guest is hinting for, or STOP when it has finished), or
/// device-writable buffers each a free guest range. Hints are acted on only
/// while the host's command is the run the guest announced, so pages the
/// guest may already be reusing (after DONE) are never dropped.
fn hint(
    state: &mut BalloonState,
    chain: Chain,
    mem: &GuestMemory,
    config_changed: &mut bool,
) -> Result<u16, ChainError> {
    let head = chain.head_index();
    let mut first_error = None;
    for d in chain {
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
fn take_stats(state: &mut BalloonState, chain: Chain, mem: &GuestMemory) {
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
fn count_error(state: &mut BalloonState, kind: QueueKind, head: u16, what: &ChainError) {
    state.counters.errors += 1;
    let n = state.counters.errors;
    if n <= 16 || n.is_power_of_two() {
        log::warn!("balloon: {kind:?} buffer at descriptor {head}: {what} (error #{n})");
    }
}
