//! Queues of small fixed-size requests answered by small fixed-size
//! responses (virtio-pmem's flushes, virtio-mem's plug requests): one
//! device-readable request, then a device-writable buffer for the answer.
//!
//! The driver is not trusted: the request is read only up to the size the
//! device expects (a shorter one reaches the handler as `None`), a chain
//! without room for the whole response is returned with length 0, and a
//! broken available ring is reported to the caller, which stops the device
//! until reset.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::chain::{self, Budget};
use super::GuestMemory;

/// What one turn over a queue did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Chains returned to the driver.
    pub completed: usize,
    /// Chains refused as malformed (returned with length 0).
    pub malformed: usize,
    /// Why the queue broke, if it did (the device must stop).
    pub corrupted: Option<String>,
}

impl Served {
    /// Ends a served turn: interrupts the driver if chains completed and it
    /// wants to hear of them; if the ring broke, logs it, raises a config
    /// interrupt and returns `true` (the device must stop until reset).
    /// `what` names the device in log lines.
    pub fn finish(
        &self,
        queue: &mut Queue,
        mem: &GuestMemory,
        interrupt: &super::IrqTrigger,
        what: &str,
    ) -> bool {
        if self.completed > 0 && queue.needs_notification(mem).unwrap_or(true) {
            if let Err(e) = interrupt.trigger(super::IrqKind::Vring) {
                log::error!("{what}: raising the queue interrupt: {e}");
            }
        }
        let Some(why) = &self.corrupted else {
            return false;
        };
        log::error!("{what}: the driver corrupted the queue ({why}); device stopped until reset");
        if let Err(e) = interrupt.trigger(super::IrqKind::Config) {
            log::error!("{what}: raising the config interrupt: {e}");
        }
        true
    }
}

/// Serves at most one turn's worth of chains: each request of `REQ` bytes
/// goes to `handle`, whose `RESP`-byte answer is written back.
pub fn serve<const REQ: usize, const RESP: usize>(
    queue: &mut Queue,
    mem: &GuestMemory,
    acked_features: u64,
    evt: &EventFd,
    what: &dyn std::fmt::Display,
    mut handle: impl FnMut(Option<[u8; REQ]>) -> [u8; RESP],
) -> Served {
    let mut served = Served::default();
    let mut budget = Budget::per_turn();
    loop {
        if !budget.take() {
            chain::rearm_if_pending(queue, mem, evt, what);
            break;
        }
        let walk = match chain::pop(queue, mem, acked_features) {
            Ok(Some(walk)) => walk,
            Ok(None) => break,
            Err(e) => {
                served.corrupted = Some(format!("available ring: {e}"));
                break;
            }
        };
        let head = walk.head_index();
        let len = match parse::<REQ, RESP>(walk, mem) {
            Some((request, out)) => {
                let answer = handle(request);
                match mem.write_slice(&answer, out) {
                    Ok(()) => RESP as u32,
                    Err(_) => {
                        served.malformed += 1;
                        0
                    }
                }
            }
            None => {
                served.malformed += 1;
                0
            }
        };
        if let Err(e) = queue.add_used(mem, head, len) {
            served.corrupted = Some(format!("returning descriptor {head}: {e}"));
            break;
        }
        served.completed += 1;
    }
    served
}

/// Reads the request (`None` if the readable part is shorter than `REQ`)
/// and finds the first writable buffer, which must hold the whole
/// response. `None` if there is no such buffer or the chain is malformed.
fn parse<const REQ: usize, const RESP: usize>(
    walk: chain::Walk<'_>,
    mem: &GuestMemory,
) -> Option<(Option<[u8; REQ]>, GuestAddress)> {
    let mut request = [0u8; REQ];
    let mut have = 0usize;
    let mut out = None;
    let mut walk = walk;
    for desc in &mut walk {
        if desc.is_write_only() {
            // Too small a buffer: refused rather than written past.
            out = (desc.len() as usize >= RESP).then(|| desc.addr());
            break;
        }
        let n = (desc.len() as usize).min(REQ - have);
        if n > 0 {
            mem.read_slice(&mut request[have..have + n], desc.addr())
                .ok()?;
            have += n;
        }
    }
    if walk.error().is_some() {
        return None;
    }
    Some(((have == REQ).then_some(request), out?))
}
