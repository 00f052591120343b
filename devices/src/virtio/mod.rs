//! virtio devices on the virtio-mmio transport.
//!
//! A device model (block, net) implements [`VirtioDevice`]: what it offers
//! (type, features, queues, config space) and what it does once the driver
//! has set it up ([`VirtioDevice::activate`]). The [`mmio::MmioTransport`]
//! runs the register protocol on vCPU threads; the device's queue work runs
//! on the VMM's event loop, woken by KVM ioeventfds on the queue-notify
//! register, and interrupts the guest through a KVM irqfd.

pub mod balloon;
pub mod block;
pub mod chain;
pub mod fs;
pub mod mem;
pub mod mmio;
pub mod net;
pub mod pmem;
pub mod reqresp;
pub mod rng;
pub mod vsock;

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest memory as the devices see it. The bitmap records every page the
/// VMM writes (used rings, data read from disk or the network), which KVM's
/// dirty log cannot see; diff snapshots and live migration need both.
pub type GuestMemory = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;

/// Device status bits (virtio 1.x, 2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready to drive it.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error and must be reset by the driver.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// Feature bit every modern (virtio 1.x) device offers and requires.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// virtio device type of a network card.
pub const TYPE_NET: u32 = 1;
/// virtio device type of a block device.
pub const TYPE_BLOCK: u32 = 2;

/// Why a device refused to start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The device needs a queue the driver did not set up.
    #[error("queue {0} is not ready or invalid")]
    BadQueue(usize),
    /// The device's backend failed.
    #[error("backend: {0}")]
    Backend(String),
}

/// The reasons a device interrupts the guest (InterruptStatus bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqKind {
    /// A used ring was updated.
    Vring = 1,
    /// The configuration space changed (or the device needs a reset).
    Config = 2,
}

/// A device's interrupt line: the InterruptStatus register plus the eventfd
/// KVM injects as the device's GSI (an irqfd).
#[derive(Debug)]
pub struct IrqTrigger {
    status: AtomicU32,
    evt: EventFd,
}

impl IrqTrigger {
    /// A new line with its own eventfd (to be registered as an irqfd).
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            status: AtomicU32::new(0),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Sets the status bit for `kind` and raises the interrupt.
    pub fn trigger(&self, kind: IrqKind) -> io::Result<()> {
        self.status.fetch_or(kind as u32, Ordering::SeqCst);
        self.evt.write(1)
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: the driver handled these bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The eventfd to register with KVM as the device's irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation {
    /// Guest memory, for the queues and the buffers they point at.
    pub mem: GuestMemory,
    /// The queues as the driver configured them (validated by the transport).
    pub queues: Vec<Queue>,
    /// The interrupt line.
    pub interrupt: Arc<IrqTrigger>,
    /// The features the driver accepted.
    pub acked_features: u64,
}

/// A virtio device model behind a transport.
///
/// Saving and restoring a device is not part of this trait: each device
/// model implements [`crate::persist::Persist`] with its own state type
/// (queue positions, negotiated features, rate limiter levels...), and the
/// transport saves only its own registers.
pub trait VirtioDevice: Send {
    /// The virtio device type ([`TYPE_BLOCK`], [`TYPE_NET`]).
    fn device_type(&self) -> u32;
    /// Features offered to the driver (must include [`VIRTIO_F_VERSION_1`]).
    fn avail_features(&self) -> u64;
    /// The maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// One eventfd per queue, signalled when the driver notifies that queue
    /// (the VMM registers them as KVM ioeventfds).
    fn queue_events(&self) -> &[EventFd];
    /// Reads from the device-specific config space; out-of-range bytes read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes to the device-specific config space (most devices ignore it).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts processing the queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops processing and forgets the queues (the driver wrote status 0).
    fn reset(&mut self);
    /// Whether the device hit a guest error it cannot continue from; the
    /// transport then shows DEVICE_NEEDS_RESET in the status register.
    fn needs_reset(&self) -> bool {
        false
    }
    /// Cumulative counters (bytes, requests, errors) for the metrics file.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// Where a queue's driver and device are in its rings: what a device saves
/// per running queue, so a restored device continues where it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueuePosition {
    /// The next available-ring entry the device will take.
    pub next_avail: u16,
    /// The next used-ring entry the device will fill.
    pub next_used: u16,
}

impl QueuePosition {
    /// The position of `queue`.
    pub fn of(queue: &Queue) -> Self {
        use virtio_queue::QueueT;
        Self {
            next_avail: queue.next_avail(),
            next_used: queue.next_used(),
        }
    }

    /// Moves `queue` to this position.
    pub fn apply(&self, queue: &mut Queue) {
        use virtio_queue::QueueT;
        queue.set_next_avail(self.next_avail);
        queue.set_next_used(self.next_used);
    }
}

/// What a restored device keeps until the transport re-activates it: the
/// activation then puts its queues at the saved positions and re-flags a
/// device that was waiting for a reset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingRestore {
    /// One position per queue.
    pub positions: Vec<QueuePosition>,
    /// Whether the device had stopped on a broken ring.
    pub needs_reset: bool,
}

/// Logs (rate-limited: the guest chooses how often) a driver's write to a
/// device whose config space it may not write, which is then ignored.
pub fn ignore_config_write(device: &dyn std::fmt::Display, offset: u64, data: &[u8]) {
    crate::guest_warn!(
        "{device}: {}-byte config write at {offset:#x} ignored (read-only config space)",
        data.len()
    );
}

/// Copies `config[offset..]` into `data`, zero-filling what lies past the end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}
