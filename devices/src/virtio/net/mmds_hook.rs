//! The metadata service on a network card: guest frames for MMDS are taken
//! off the TX path before the tap, and MMDS's answers are queued for RX
//! ahead of the tap's frames, all on the event loop thread.
//!
//! Answers go through the same pending-frame, rate-limiter and
//! buffer-holding path as tap frames ([`super::rx`]), so RX accounting is
//! the same whichever side a frame came from. MMDS frames are at most 1514
//! bytes with complete checksums: their vnet header is all zeroes (the RX
//! path stamps `num_buffers`).

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mmds::{MmdsNetStack, TxChecksum};
use virtio_bindings::virtio_net::VIRTIO_NET_HDR_F_NEEDS_CSUM;
use vmm_sys_util::timerfd::TimerFd;

use super::{Net, VNET_HDR_LEN};

/// Shortest timer armed: a zero duration would disarm the timerfd.
const MIN_TIMER: Duration = Duration::from_millis(1);

/// A non-blocking timerfd (a wake-up whose expiry a later re-arm cleared
/// must read nothing rather than block the event loop).
pub(super) fn new_timer() -> io::Result<TimerFd> {
    let timer = TimerFd::new().map_err(io::Error::from)?;
    let fd = timer.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(timer)
}

impl Net {
    /// Puts the metadata service on this card (`PUT /mmds/config` listed
    /// it); replaces any previous one. Takes effect on the next frame.
    pub fn set_mmds(&mut self, stack: MmdsNetStack) {
        self.mmds = Some(stack);
        self.mmds_armed = None;
        if let Err(e) = self.mmds_timer.clear() {
            log::error!("net {}: clearing the MMDS timer: {e}", self.iface_id);
        }
    }

    /// Whether MMDS listens on this card.
    pub fn has_mmds(&self) -> bool {
        self.mmds.is_some()
    }

    /// The timerfd the event loop watches for MMDS retransmissions.
    pub(super) fn mmds_timer(&self) -> &TimerFd {
        &self.mmds_timer
    }

    /// Offers the frame in `tx_buf[..len]` (vnet header first) to MMDS;
    /// `true` if it was MMDS's, so it must not reach the tap.
    pub(super) fn offer_to_mmds(&mut self, len: usize) -> bool {
        let Some(stack) = self.mmds.as_mut() else {
            return false;
        };
        let Some(frame) = self.tx_buf.get(VNET_HDR_LEN..len) else {
            return false;
        };
        let csum = if u32::from(self.tx_buf[0]) & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
            TxChecksum::Partial
        } else {
            TxChecksum::Complete
        };
        if !stack.handle_tx_frame(frame, csum, Instant::now()) {
            return false;
        }
        self.counters.mmds_tx_frames += 1;
        true
    }

    /// Whether MMDS has a frame for the guest now.
    pub(super) fn mmds_has_frames(&self) -> bool {
        self.mmds.as_ref().is_some_and(|s| s.has_pending_frames())
    }

    /// Writes MMDS's next frame into the RX frame buffer behind a zeroed
    /// vnet header; its length with the header, or `None` if it has none.
    pub(super) fn read_mmds(&mut self) -> Option<usize> {
        let stack = self.mmds.as_mut()?;
        let n = stack.next_frame(&mut self.rx.frame[VNET_HDR_LEN..])?;
        self.rx.frame[..VNET_HDR_LEN].fill(0);
        self.counters.mmds_rx_frames += 1;
        Some(VNET_HDR_LEN + n)
    }

    /// The MMDS timer fired: runs the stack's timers and delivers what they
    /// produced (retransmissions, resets).
    pub(super) fn handle_mmds_timer(&mut self) {
        match self.mmds_timer.wait() {
            Ok(_) => {}
            // A re-arm after expiry cleared it: nothing is due.
            Err(e) if e.errno() == libc::EAGAIN => {}
            Err(e) => log::error!("net {}: reading the MMDS timer: {e}", self.iface_id),
        }
        self.mmds_armed = None;
        if let Some(stack) = self.mmds.as_mut() {
            stack.tick(Instant::now());
        }
        self.process_rx();
        self.arm_mmds_timer();
    }

    /// Arms the timer for MMDS's next deadline (or disarms it), with a
    /// syscall only when the deadline changed.
    pub(super) fn arm_mmds_timer(&mut self) {
        let Some(stack) = &self.mmds else {
            return;
        };
        let next = stack.next_timeout();
        if next == self.mmds_armed {
            return;
        }
        let result = match next {
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now()).max(MIN_TIMER);
                self.mmds_timer.reset(wait, None)
            }
            None => self.mmds_timer.clear(),
        };
        match result {
            Ok(()) => self.mmds_armed = next,
            Err(e) => log::error!("net {}: arming the MMDS timer: {e}", self.iface_id),
        }
    }
}
