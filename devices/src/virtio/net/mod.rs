//! virtio-net: a host TAP device as the guest's network card.
//!
//! Two queues: the guest posts empty buffers on RX (0) for frames from the
//! tap, and frames to send on TX (1). Every frame carries a 12-byte
//! virtio-net header that is passed through to the tap unchanged (apart from
//! `num_buffers`), so checksum/TSO offloads are negotiated with the guest and
//! then enforced by the host kernel via `TUNSETOFFLOAD`.
//!
//! Queue work runs on the VMM's event loop ([`event_handler`]). Everything
//! the guest wrote (rings, descriptors, headers) is treated as hostile: a bad
//! descriptor chain is returned with length 0 and logged; a broken ring puts
//! the device into NEEDS_RESET ([`Net::needs_reset`]).

mod chain;
mod event_handler;
mod mmds_hook;
mod persist;
mod rx;
pub mod tap;
mod tx;

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_bindings::virtio_net;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::{
    read_config_bytes, ActivateError, Activation, GuestMemory, IrqKind, IrqTrigger, VirtioDevice,
    TYPE_NET, VIRTIO_F_VERSION_1,
};
use crate::rate_limiter::{RateLimiter, TokenKind};
pub use persist::{NetConstructorArgs, NetPersistError, NetSnapshotState};
pub use tap::{Tap, TapError};

/// Size of the virtio-net header in front of every frame (virtio 1.x layout,
/// with `num_buffers`), on the queues and on the tap alike.
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame (header included) either direction handles: a 64 KiB TSO
/// packet plus Ethernet/VLAN headers plus the vnet header.
pub const MAX_FRAME_LEN: usize = 65562;
/// Index of the receive queue.
pub const RX_INDEX: usize = 0;
/// Index of the transmit queue.
pub const TX_INDEX: usize = 1;
/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE; 2];
const ETH_HLEN: usize = 14;

const fn bit(b: u32) -> u64 {
    1 << b
}

/// Features offered whatever the configuration: the offloads the tap's vnet
/// header carries, and mergeable RX buffers.
const BASE_FEATURES: u64 = VIRTIO_F_VERSION_1
    | bit(virtio_net::VIRTIO_NET_F_CSUM)
    | bit(virtio_net::VIRTIO_NET_F_GUEST_CSUM)
    | bit(virtio_net::VIRTIO_NET_F_HOST_TSO4)
    | bit(virtio_net::VIRTIO_NET_F_HOST_TSO6)
    | bit(virtio_net::VIRTIO_NET_F_GUEST_TSO4)
    | bit(virtio_net::VIRTIO_NET_F_GUEST_TSO6)
    | bit(virtio_net::VIRTIO_NET_F_MRG_RXBUF);

/// How a network card is attached (from the VM configuration).
#[derive(Debug)]
pub struct NetConfig {
    /// The card's id in the VM configuration (for logs and the API).
    pub iface_id: String,
    /// The host tap interface to attach to (created if absent).
    pub tap_name: String,
    /// The guest's MAC address; without it the guest picks a random one.
    pub mac: Option<[u8; 6]>,
    /// Limits on frames delivered to the guest.
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Limits on frames the guest sends.
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// Why a network card could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The tap could not be opened (missing, busy, bad name, no permission).
    #[error("net {iface_id}: {source}")]
    Tap {
        /// The card.
        iface_id: String,
        /// What went wrong.
        #[source]
        source: TapError,
    },
    /// Creating the queue eventfds or the MMDS timer failed.
    #[error("net {iface_id}: creating eventfds: {source}")]
    EventFd {
        /// The card.
        iface_id: String,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
}

/// Where frames go and come from: a tap in production, a fake in tests.
pub trait NetBackend: AsRawFd + Send {
    /// Reads one frame (vnet header first) into `buf`; `WouldBlock` when none
    /// is queued. The fd is polled edge-triggered, so callers read to empty.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Sends one frame (vnet header first).
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize>;
    /// Restricts the offloads (`TUN_F_*`) of frames handed to us.
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;
}

/// The device's own state as plain data (what a snapshot will save).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetState {
    /// The MAC address in config space, if one was configured.
    pub mac: Option<[u8; 6]>,
    /// Features offered to the driver.
    pub avail_features: u64,
    /// Features the driver accepted (0 until activation).
    pub acked_features: u64,
    /// Whether the queues are running.
    pub activated: bool,
    /// Whether the driver broke a ring and must reset the device.
    pub needs_reset: bool,
}

/// Traffic and error counters (for metrics and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes delivered to the guest (vnet headers included).
    pub rx_bytes: u64,
    /// Frames from the tap that were dropped (too short, too big for the
    /// guest's buffers, or arrived before activation).
    pub rx_dropped: u64,
    /// Frames sent to the tap.
    pub tx_frames: u64,
    /// Guest frames the MMDS stack took (never sent to the tap).
    pub mmds_tx_frames: u64,
    /// Frames from the MMDS stack delivered to the guest (also in `rx_frames`).
    pub mmds_rx_frames: u64,
    /// Bytes sent to the tap (vnet headers included).
    pub tx_bytes: u64,
    /// Frames the tap refused.
    pub tx_dropped: u64,
    /// Malformed descriptor chains returned unused.
    pub bad_chains: u64,
}

/// What exists only while the driver has the device running.
struct Active {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<IrqTrigger>,
}

/// A virtio-net device backed by a tap (see the module docs).
pub struct Net {
    iface_id: String,
    state: NetState,
    config_space: [u8; 8],
    backend: Box<dyn NetBackend>,
    queue_evts: Vec<EventFd>,
    active: Option<Active>,
    /// Saved ring positions the next activation starts at (a restore).
    restored: Option<crate::virtio::PendingRestore>,
    rx: rx::RxState,
    tx_buf: Vec<u8>,
    rx_limiter: Option<RateLimiter>,
    tx_limiter: Option<RateLimiter>,
    counters: NetCounters,
    /// The metadata service's endpoint, if MMDS listens on this card: it
    /// sees every guest frame first and feeds RX before the tap.
    mmds: Option<mmds::MmdsNetStack>,
    /// Non-blocking timerfd for the MMDS stack's retransmissions (always on
    /// the event loop, armed only while MMDS has a deadline).
    mmds_timer: TimerFd,
    /// The deadline `mmds_timer` is armed for, so it is set only on change.
    mmds_armed: Option<std::time::Instant>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("iface_id", &self.iface_id)
            .field("state", &self.state)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Net {
    /// Changes the interface's limits at run time (`None` leaves a direction
    /// as it is). `false` if a direction to change has no rate limiter (it
    /// was created without one, so its timer is not on the event loop).
    pub fn update_rate_limiters(
        &mut self,
        rx: Option<crate::rate_limiter::Limits>,
        tx: Option<crate::rate_limiter::Limits>,
    ) -> bool {
        for (update, limiter) in [(rx, &mut self.rx_limiter), (tx, &mut self.tx_limiter)] {
            if let Some((bandwidth, ops)) = update {
                match limiter.as_mut() {
                    Some(l) => l.update_buckets(bandwidth, ops),
                    None => return false,
                }
            }
        }
        true
    }

    /// Opens the tap named in `config`; a missing or busy tap is an error now
    /// rather than a dead link later.
    pub fn new(config: NetConfig) -> Result<Self, NetError> {
        let tap = Tap::open(&config.tap_name).map_err(|source| NetError::Tap {
            iface_id: config.iface_id.clone(),
            source,
        })?;
        Self::with_backend(config, Box::new(tap))
    }

    /// A device on any backend (`config.tap_name` is only used in logs); for
    /// tests and alternative backends.
    pub fn with_backend(config: NetConfig, backend: Box<dyn NetBackend>) -> Result<Self, NetError> {
        let queue_evts = (0..QUEUE_SIZES.len())
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()
            .map_err(|source| NetError::EventFd {
                iface_id: config.iface_id.clone(),
                source,
            })?;
        let mmds_timer = mmds_hook::new_timer().map_err(|source| NetError::EventFd {
            iface_id: config.iface_id.clone(),
            source,
        })?;
        let mut avail_features = BASE_FEATURES;
        let mut config_space = [0u8; 8];
        if let Some(mac) = config.mac {
            avail_features |= bit(virtio_net::VIRTIO_NET_F_MAC);
            config_space[..6].copy_from_slice(&mac);
        }
        let link_up = virtio_net::VIRTIO_NET_S_LINK_UP as u16;
        config_space[6..].copy_from_slice(&link_up.to_le_bytes());
        Ok(Self {
            iface_id: config.iface_id,
            state: NetState {
                mac: config.mac,
                avail_features,
                ..Default::default()
            },
            config_space,
            backend,
            queue_evts,
            active: None,
            restored: None,
            rx: rx::RxState::new(),
            tx_buf: vec![0; MAX_FRAME_LEN],
            rx_limiter: config.rx_rate_limiter,
            tx_limiter: config.tx_rate_limiter,
            counters: NetCounters::default(),
            mmds: None,
            mmds_timer,
            mmds_armed: None,
        })
    }

    /// The card's id in the VM configuration.
    pub fn iface_id(&self) -> &str {
        &self.iface_id
    }

    /// The device state (for snapshots and inspection).
    pub fn state(&self) -> &NetState {
        &self.state
    }

    /// Traffic and error counters.
    pub fn net_counters(&self) -> &NetCounters {
        &self.counters
    }

    /// Whether the driver broke a ring: the device stopped and the transport
    /// should show DEVICE_NEEDS_RESET until the driver resets it.
    pub fn needs_reset(&self) -> bool {
        self.state.needs_reset
    }

    fn acked(&self, feature: u32) -> bool {
        self.state.acked_features & bit(feature) != 0
    }

    /// Stops all queue work until reset and tells the driver (config irq).
    fn mark_broken(&mut self, why: &str) {
        if self.state.needs_reset {
            return;
        }
        log::error!("net {}: {why}; device needs reset", self.iface_id);
        self.state.needs_reset = true;
        if let Some(active) = &self.active {
            if let Err(e) = active.interrupt.trigger(IrqKind::Config) {
                log::error!("net {}: raising the config interrupt: {e}", self.iface_id);
            }
        }
    }

    /// The `TUN_F_*` offloads the guest can receive, from its features. TSO
    /// needs checksum offload too (the kernel refuses it alone).
    fn tap_offload(&self) -> u32 {
        use virtio_net::{
            VIRTIO_NET_F_GUEST_CSUM as CSUM, VIRTIO_NET_F_GUEST_TSO4 as TSO4,
            VIRTIO_NET_F_GUEST_TSO6 as TSO6,
        };
        if !self.acked(CSUM) {
            if self.acked(TSO4) || self.acked(TSO6) {
                crate::guest_warn!(
                    "net {}: guest took TSO without GUEST_CSUM; TSO off",
                    self.iface_id
                );
            }
            return 0;
        }
        let mut flags = libc::TUN_F_CSUM;
        if self.acked(TSO4) {
            flags |= libc::TUN_F_TSO4;
        }
        if self.acked(TSO6) {
            flags |= libc::TUN_F_TSO6;
        }
        flags
    }
}

/// Charges one frame of `bytes` to a limiter (bytes and one op) atomically.
fn charge(limiter: &mut Option<RateLimiter>, bytes: u64) -> bool {
    let Some(rl) = limiter else {
        return true;
    };
    if !rl.consume(bytes, TokenKind::Bytes) {
        return false;
    }
    if !rl.consume(1, TokenKind::Ops) {
        rl.manual_replenish(bytes, TokenKind::Bytes);
        return false;
    }
    true
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
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
        read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC is read-only for modern drivers.
        super::ignore_config_write(&format_args!("net {}", self.iface_id), offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation {
            mem,
            queues,
            interrupt,
            acked_features,
        } = activation;
        let n = queues.len();
        let Ok([rx, tx]) = <[Queue; 2]>::try_from(queues) else {
            return Err(ActivateError::BadQueue(n.min(QUEUE_SIZES.len())));
        };
        self.state.acked_features = acked_features & self.state.avail_features;
        let offload = self.tap_offload();
        self.backend.set_offload(offload).map_err(|e| {
            ActivateError::Backend(format!("net {}: setting tap offloads: {e}", self.iface_id))
        })?;
        self.rx = rx::RxState::new();
        self.active = Some(Active {
            mem,
            rx,
            tx,
            interrupt,
        });
        self.state.activated = true;
        self.state.needs_reset = false;
        if let Some(restored) = self.restored.take() {
            if let Some(active) = self.active.as_mut() {
                for (queue, position) in [&mut active.rx, &mut active.tx]
                    .into_iter()
                    .zip(&restored.positions)
                {
                    position.apply(queue);
                }
            }
            self.state.needs_reset = restored.needs_reset;
        }
        // Have the event loop look at both queues and the tap once: frames
        // may have queued up in the tap before the driver was ready.
        for evt in &self.queue_evts {
            if let Err(e) = evt.write(1) {
                log::error!("net {}: kicking the queues: {e}", self.iface_id);
            }
        }
        Ok(())
    }

    fn needs_reset(&self) -> bool {
        Net::needs_reset(self)
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        vec![
            ("rx_frames", c.rx_frames),
            ("rx_bytes", c.rx_bytes),
            ("rx_dropped", c.rx_dropped),
            ("tx_frames", c.tx_frames),
            ("tx_bytes", c.tx_bytes),
            ("tx_dropped", c.tx_dropped),
            ("mmds_tx_frames", c.mmds_tx_frames),
            ("mmds_rx_frames", c.mmds_rx_frames),
            ("bad_chains", c.bad_chains),
        ]
    }

    fn reset(&mut self) {
        self.active = None;
        self.restored = None;
        self.rx = rx::RxState::new();
        self.state.acked_features = 0;
        self.state.activated = false;
        self.state.needs_reset = false;
    }
}

#[cfg(test)]
mod tests;
