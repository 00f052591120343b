//! The transport-facing side ([`VirtioDevice`]) and queue processing.

use std::io;

use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::{Active, Rng, RngCounters, MAX_REQUEST_BYTES, QUEUE_SIZE, TYPE_RNG};
use crate::rate_limiter::{RateLimiter, TokenKind};
use crate::virtio::chain::{self, Budget, ChainError, Walk};
use crate::virtio::{ActivateError, Activation, GuestMemory, IrqKind, VirtioDevice};

const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum RequestError {
    /// The chain has a buffer the device may not write.
    #[error("descriptor {0} is device-readable; entropy buffers must be writable")]
    ReadOnly(u16),
    /// A buffer is not inside guest memory.
    #[error("buffer {addr:#x}+{len} is not inside guest memory")]
    OutOfMemory {
        /// Its guest address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// The chain has no bytes to fill.
    #[error("empty chain")]
    Empty,
    /// The host could not produce randomness.
    #[error("getrandom: {0}")]
    Entropy(io::Error),
    /// Writing guest memory failed after the checks passed.
    #[error("writing guest memory: {0}")]
    Memory(String),
    /// The chain itself is malformed (indirect, looping, too long).
    #[error(transparent)]
    Chain(#[from] ChainError),
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
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

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no config space.
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        crate::virtio::ignore_config_write(&"entropy device (no config space)", offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation {
            mem,
            queues,
            interrupt,
            acked_features,
        } = activation;
        let count = queues.len();
        let Ok([queue]) = <[_; 1]>::try_from(queues) else {
            crate::guest_warn!("entropy device: activated with {count} queues, expected 1");
            return Err(ActivateError::BadQueue(count.min(1)));
        };
        let mut queue = queue;
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
        // Buffers posted before DRIVER_OK had their notification ignored.
        if let Err(e) = self.queue_evts[0].write(1) {
            log::error!("entropy device: kicking the queue: {e}");
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
        let c = &self.state.counters;
        vec![
            ("requests", c.requests),
            ("bytes", c.bytes),
            ("errors", c.errors),
            ("throttled", c.throttled),
        ]
    }
}

impl Rng {
    /// Serves the buffers the driver has made available, at most
    /// [`chain::CHAINS_PER_TURN`] of them (then re-arms the queue eventfd
    /// for the next event-loop turn), and interrupts the guest if it wants
    /// to hear about them. Returns how many were
    /// completed. Stops early when the rate limiter runs dry (its timer
    /// resumes) or the ring turns out to be corrupted (device stopped).
    ///
    /// Called from the event handler; public so tests and benches can
    /// drive the device synchronously.
    pub fn process_queue(&mut self) -> usize {
        let Self {
            state,
            rate_limiter,
            active,
            scratch,
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
        let counters = &mut state.counters;
        let mut completed = 0;
        let mut corrupted = None;
        let mut budget = Budget::per_turn();
        loop {
            if !budget.take() {
                // More may be waiting: come back after the event loop has
                // served everyone else.
                chain::rearm_if_pending(queue, mem, &queue_evts[0], &"entropy device");
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
            let wanted = request_len(&chain, mem);
            if let Some(limiter) = rate_limiter.as_mut() {
                let bytes = *wanted.as_ref().unwrap_or(&0) as u64;
                if !charge(limiter, bytes) {
                    // Undo the pop: the request runs when the timer fires.
                    queue.go_to_previous_position();
                    counters.throttled += 1;
                    break;
                }
            }
            counters.requests += 1;
            let len = match wanted.and_then(|n| fill(chain, mem, &mut scratch[..n])) {
                Ok(n) => {
                    counters.bytes += n as u64;
                    n as u32 // n <= MAX_REQUEST_BYTES
                }
                Err(e) => {
                    report(counters, head, &e);
                    0
                }
            };
            if let Err(e) = queue.add_used(&*mem, head, len) {
                corrupted = Some(format!("returning descriptor {head}: {e}"));
                break;
            }
            completed += 1;
        }
        if completed > 0 && queue.needs_notification(&*mem).unwrap_or(true) {
            if let Err(e) = interrupt.trigger(IrqKind::Vring) {
                log::error!("entropy device: raising the queue interrupt: {e}");
            }
        }
        if let Some(why) = corrupted {
            log::error!(
                "entropy device: the driver corrupted the queue ({why}); device stopped until reset"
            );
            state.needs_reset = true;
            if let Err(e) = interrupt.trigger(IrqKind::Config) {
                log::error!("entropy device: raising the config interrupt: {e}");
            }
        }
        completed
    }
}

/// Checks every buffer of the chain (writable, inside guest memory) and
/// returns how many bytes the request gets (capped at [`MAX_REQUEST_BYTES`]).
fn request_len(chain: &Walk<'_>, mem: &GuestMemory) -> Result<usize, RequestError> {
    let mut total = 0usize;
    let mut walk = chain.clone();
    for desc in &mut walk {
        if !desc.is_write_only() {
            return Err(RequestError::ReadOnly(chain.head_index()));
        }
        let len = desc.len();
        if !mem.check_range(desc.addr(), len as usize) {
            return Err(RequestError::OutOfMemory {
                addr: desc.addr().0,
                len,
            });
        }
        total = total.saturating_add(len as usize);
    }
    if let Some(e) = walk.error() {
        return Err(e.clone().into());
    }
    match total.min(MAX_REQUEST_BYTES) {
        0 => Err(RequestError::Empty),
        n => Ok(n),
    }
}

/// Fills `buf` with host randomness and writes it across the chain's buffers
/// (already checked by [`request_len`]). Returns the bytes written.
fn fill(chain: Walk<'_>, mem: &GuestMemory, buf: &mut [u8]) -> Result<usize, RequestError> {
    getrandom(buf).map_err(RequestError::Entropy)?;
    let mut done = 0;
    for desc in chain {
        if done == buf.len() {
            break;
        }
        let n = (desc.len() as usize).min(buf.len() - done);
        mem.write_slice(&buf[done..done + n], GuestAddress(desc.addr().0))
            .map_err(|e| RequestError::Memory(e.to_string()))?;
        done += n;
    }
    Ok(done)
}

/// Fills `buf` from the kernel's CSPRNG without ever blocking.
pub(super) fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`,
        // a live, exclusively borrowed buffer; no memory is retained.
        let n =
            unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), libc::GRND_NONBLOCK) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // EAGAIN: the pool is not initialised yet (only early in host boot).
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::other("getrandom returned no bytes"));
        }
        done += n as usize; // 0 < n <= rest.len()
    }
    Ok(())
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

/// Logs a refused request: the first few, then only at powers of two, so a
/// hostile guest cannot flood the host's log.
fn report(counters: &mut RngCounters, head: u16, what: &RequestError) {
    counters.errors += 1;
    let n = counters.errors;
    if n <= 16 || n.is_power_of_two() {
        log::warn!("entropy device: request at descriptor {head} refused: {what} (error #{n})");
    }
}
