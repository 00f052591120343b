//! The transport-facing side ([`VirtioDevice`]) and queue processing.

use std::fmt::Display;

use virtio_bindings::virtio_blk::VIRTIO_BLK_S_OK;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

use super::config::QUEUE_SIZE;
use super::io::{self, Disk};
use super::request::{self, Request, RequestType};
use super::{Active, Block, Counters};
use crate::rate_limiter::{RateLimiter, TokenKind};
use crate::virtio::chain::{self, Budget};
use crate::virtio::{ActivateError, Activation, IrqKind, VirtioDevice, TYPE_BLOCK};

const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn avail_features(&self) -> u64 {
        self.state.avail_features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config_space.read(offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Nothing in virtio-blk's config space is writable without
        // VIRTIO_BLK_F_CONFIG_WCE, which is not offered.
        crate::virtio::ignore_config_write(
            &format_args!("drive {}", self.state.drive_id),
            offset,
            data,
        );
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation {
            mem,
            queues,
            interrupt,
            acked_features,
        } = activation;
        let count = queues.len();
        let Ok([mut queue]) = <[_; 1]>::try_from(queues) else {
            crate::guest_warn!(
                "drive {}: activated with {count} queues, expected 1",
                self.state.drive_id
            );
            return Err(ActivateError::BadQueue(count.min(1)));
        };
        self.state.acked_features = acked_features;
        self.state.needs_reset = false;
        if let Some(restored) = self.restored.take() {
            if let Some(position) = restored.positions.first() {
                position.apply(&mut queue);
            }
            self.state.needs_reset = restored.needs_reset;
        }
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        // Requests made available before DRIVER_OK had their notification
        // ignored: look at the ring once now.
        if let Err(e) = self.queue_evts[0].write(1) {
            log::error!("drive {}: kicking the queue: {e}", self.state.drive_id);
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.restored = None;
        self.state.acked_features = 0;
        self.state.needs_reset = false;
    }

    fn needs_reset(&self) -> bool {
        self.state.needs_reset
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        vec![
            ("read_bytes", c.read_bytes),
            ("write_bytes", c.write_bytes),
            ("reads", c.reads),
            ("writes", c.writes),
            ("flushes", c.flushes),
            ("bad_requests", c.bad_requests),
            ("throttled", c.throttled),
        ]
    }
}

impl Block {
    /// Runs the requests the driver has made available, at most
    /// [`chain::CHAINS_PER_TURN`] of them (then re-arms the queue eventfd so
    /// the event loop comes back for the rest after serving everyone else),
    /// and interrupts the guest if it wants to hear about them. Returns how
    /// many requests were completed. Stops early when the rate limiter runs
    /// dry (the rest wait for its timer) or the queue turns out to be
    /// corrupted.
    ///
    /// Called from the event handler; public so a bench or test can drive
    /// the device synchronously.
    pub fn process_queue(&mut self) -> usize {
        let Self {
            state,
            file,
            rate_limiter,
            active,
            segments,
            counters,
            queue_evts,
            ..
        } = self;
        let Some(Active {
            mem,
            queue,
            interrupt,
        }) = active
        else {
            return 0;
        };
        if state.needs_reset {
            return 0;
        }
        let drive_id = state.drive_id.as_str();
        let mut disk = Disk {
            file,
            capacity: state.capacity_sectors,
            read_only: state.read_only,
            drive_id,
            acked_features: state.acked_features,
        };
        let mut completed = 0;
        let mut corrupted = None;
        let mut budget = Budget::per_turn();
        loop {
            if !budget.take() {
                // More may be waiting: let the event loop serve everyone
                // else, then come back for the next batch.
                let what = format_args!("drive {drive_id}");
                chain::rearm_if_pending(queue, mem, &queue_evts[0], &what);
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
            let parsed = request::parse(chain, mem, segments);
            if let Some(limiter) = rate_limiter.as_mut() {
                let bytes = match &parsed {
                    Ok(r) if matches!(r.kind, RequestType::In | RequestType::Out) => r.data_len,
                    _ => 0,
                };
                if !charge(limiter, bytes) {
                    // Undo the pop: the request runs when the timer fires.
                    queue.go_to_previous_position();
                    counters.throttled += 1;
                    break;
                }
            }
            let len = match parsed {
                Err(e) => {
                    report(counters, drive_id, head, &e);
                    0
                }
                Ok(mut req) => {
                    let (status, written) = match io::execute(&mut disk, mem, &mut req, segments) {
                        Ok(n) => {
                            count_success(counters, &req);
                            (VIRTIO_BLK_S_OK as u8, n)
                        }
                        Err(e) => {
                            report(counters, drive_id, head, &e);
                            (e.status(), 0)
                        }
                    };
                    match mem.write_obj(status, req.status_addr) {
                        Ok(()) => written.saturating_add(1),
                        Err(e) => {
                            report(counters, drive_id, head, &e);
                            0
                        }
                    }
                }
            };
            if let Err(e) = queue.add_used(&*mem, head, len) {
                corrupted = Some(format!("returning descriptor {head}: {e}"));
                break;
            }
            completed += 1;
        }
        if completed > 0 {
            // Without EVENT_IDX this only reads the avail ring's flags; if
            // even that fails, interrupting is the safe side.
            if queue.needs_notification(&*mem).unwrap_or(true) {
                if let Err(e) = interrupt.trigger(IrqKind::Vring) {
                    log::error!("drive {drive_id}: raising the queue interrupt: {e}");
                }
            }
        }
        if let Some(why) = corrupted {
            log::error!(
                "drive {drive_id}: the driver corrupted the queue ({why}); \
                 device stopped until reset"
            );
            state.needs_reset = true;
            if let Err(e) = interrupt.trigger(IrqKind::Config) {
                log::error!("drive {drive_id}: raising the config interrupt: {e}");
            }
        }
        completed
    }
}

/// Charges one request to the limiter; `false` (nothing charged): wait.
fn charge(limiter: &mut RateLimiter, bytes: u64) -> bool {
    if bytes > 0 && !limiter.consume(bytes, TokenKind::Bytes) {
        return false;
    }
    if !limiter.consume(1, TokenKind::Ops) {
        if bytes > 0 {
            limiter.manual_replenish(bytes, TokenKind::Bytes);
        }
        return false;
    }
    true
}

fn count_success(counters: &mut Counters, req: &Request) {
    match req.kind {
        RequestType::In => {
            counters.reads += 1;
            counters.read_bytes += req.data_len;
        }
        RequestType::Out => {
            counters.writes += 1;
            counters.write_bytes += req.data_len;
        }
        RequestType::Flush => counters.flushes += 1,
        _ => {}
    }
}

/// Logs a bad request: every one of the first few, then only at powers of
/// two, so a hostile guest cannot flood the host's log.
fn report(counters: &mut Counters, drive_id: &str, head: u16, what: &dyn Display) {
    counters.bad_requests += 1;
    let n = counters.bad_requests;
    if n <= 16 || n.is_power_of_two() {
        crate::guest_warn!(
            "drive {drive_id}: request at descriptor {head} failed: {what} (bad request #{n})"
        );
    }
}
