//! The virtio-mmio transport (virtio 1.x, register layout version 2).
//!
//! One 4 KiB window per device. Registers are 32-bit and must be accessed
//! with aligned 32-bit loads/stores; config space (at 0x100) takes any size.
//! Everything the driver writes is checked before it reaches the device:
//! features it was not offered, queues that are not valid for guest memory,
//! status transitions out of order. A bad setup leaves DRIVER_OK unset or
//! flags DEVICE_NEEDS_RESET; it never reaches the device model.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::{
    status, Activation, GuestMemory, IrqKind, IrqTrigger, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::bus::BusDevice;

/// Size of a device's MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register (where ioeventfds are registered).
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
/// "FLNT" as the vendor id.
const VENDOR_ID: u32 = 0x544e_4c46;
const CONFIG_SPACE_OFFSET: u64 = 0x100;

/// The transport's own registers, as plain data (what a snapshot saves).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MmioRegisters {
    /// Device status (see [`status`]).
    pub device_status: u32,
    /// Which 32-bit half of the device features is visible.
    pub device_features_sel: u32,
    /// Which 32-bit half of the driver features is written.
    pub driver_features_sel: u32,
    /// Features the driver accepted so far.
    pub acked_features: u64,
    /// The queue that queue registers address.
    pub queue_sel: u32,
    /// Bumped whenever the device changes its config space.
    pub config_generation: u32,
}

/// One queue's registers as the driver wrote them. They are only turned into
/// a [`Queue`] (and checked against guest memory) at DRIVER_OK.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueRegisters {
    /// QueueNumMax: fixed by the device.
    pub max_size: u16,
    /// QueueNum as written (not yet validated).
    pub size: u32,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available (driver) ring address.
    pub avail_ring: u64,
    /// Used (device) ring address.
    pub used_ring: u64,
}

impl QueueRegisters {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: u32::from(max_size),
            ..Default::default()
        }
    }

    /// The validated queue, or why the driver's setup is unusable.
    fn to_queue(&self, mem: &GuestMemory) -> Result<Queue, String> {
        let mut q = Queue::new(self.max_size).map_err(|e| e.to_string())?;
        let size = u16::try_from(self.size).map_err(|_| format!("size {}", self.size))?;
        q.try_set_size(size)
            .map_err(|e| format!("size {size}: {e}"))?;
        q.try_set_desc_table_address(GuestAddress(self.desc_table))
            .map_err(|e| format!("descriptor table {:#x}: {e}", self.desc_table))?;
        q.try_set_avail_ring_address(GuestAddress(self.avail_ring))
            .map_err(|e| format!("avail ring {:#x}: {e}", self.avail_ring))?;
        q.try_set_used_ring_address(GuestAddress(self.used_ring))
            .map_err(|e| format!("used ring {:#x}: {e}", self.used_ring))?;
        q.set_ready(self.ready);
        if !self.ready {
            return Err("not ready".into());
        }
        if !q.is_valid(mem) {
            return Err("rings are not inside guest memory".into());
        }
        Ok(q)
    }
}

fn set_low(value: &mut u64, low: u32) {
    *value = (*value & !0xffff_ffff) | u64::from(low);
}

fn set_high(value: &mut u64, high: u32) {
    *value = (*value & 0xffff_ffff) | (u64::from(high) << 32);
}

/// A virtio device behind its MMIO register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemory,
    interrupt: Arc<IrqTrigger>,
    queues: Vec<QueueRegisters>,
    regs: MmioRegisters,
    /// Set once the device was handed its queues; cleared by a reset.
    activated: bool,
}

impl MmioTransport {
    /// A transport for `device`, whose queues live in `mem`.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemory,
        interrupt: Arc<IrqTrigger>,
    ) -> Result<Self, virtio_queue::Error> {
        let sizes: Vec<u16> = lock(&device).queue_max_sizes().to_vec();
        // Refuse a device whose own queue sizes are invalid up front.
        for &size in &sizes {
            Queue::new(size)?;
        }
        let queues = sizes.into_iter().map(QueueRegisters::new).collect();
        Ok(Self {
            device,
            mem,
            interrupt,
            queues,
            regs: MmioRegisters::default(),
            activated: false,
        })
    }

    /// The transport's registers (for inspection and snapshots).
    pub fn registers(&self) -> &MmioRegisters {
        &self.regs
    }

    /// The device's interrupt line.
    pub fn interrupt(&self) -> &Arc<IrqTrigger> {
        &self.interrupt
    }

    fn selected_queue(&mut self) -> Option<&mut QueueRegisters> {
        self.queues.get_mut(self.regs.queue_sel as usize)
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            0x00 => MAGIC_VALUE,
            0x04 => MMIO_VERSION,
            0x08 => lock(&self.device).device_type(),
            0x0c => VENDOR_ID,
            0x10 => {
                let features = lock(&self.device).avail_features();
                match self.regs.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => self.selected_queue().map_or(0, |q| u32::from(q.max_size)),
            0x44 => self.selected_queue().map_or(0, |q| u32::from(q.ready)),
            0x60 => self.interrupt.status(),
            0x70 => {
                let mut value = self.regs.device_status;
                if self.activated && lock(&self.device).needs_reset() {
                    value |= status::DEVICE_NEEDS_RESET;
                }
                value
            }
            0xfc => self.regs.config_generation,
            _ => {
                crate::guest_debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    /// Queue registers may only change while the driver is setting up
    /// (after FEATURES_OK, before DRIVER_OK).
    fn queue_setup_allowed(&self) -> bool {
        let s = self.regs.device_status;
        s & status::FEATURES_OK != 0 && s & status::DRIVER_OK == 0
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let setup = self.queue_setup_allowed();
        match offset {
            0x14 => self.regs.device_features_sel = value,
            0x20 => self.write_driver_features(value),
            0x24 => self.regs.driver_features_sel = value,
            0x30 => self.regs.queue_sel = value,
            0x38 if setup => self.update_queue(|q| q.size = value),
            0x44 if setup => self.update_queue(|q| q.ready = value == 1),
            0x50 => self.notify_queue(value),
            0x64 => self.interrupt.ack(value),
            0x70 => self.write_status(value),
            0x80 if setup => self.update_queue(|q| set_low(&mut q.desc_table, value)),
            0x84 if setup => self.update_queue(|q| set_high(&mut q.desc_table, value)),
            0x90 if setup => self.update_queue(|q| set_low(&mut q.avail_ring, value)),
            0x94 if setup => self.update_queue(|q| set_high(&mut q.avail_ring, value)),
            0xa0 if setup => self.update_queue(|q| set_low(&mut q.used_ring, value)),
            0xa4 if setup => self.update_queue(|q| set_high(&mut q.used_ring, value)),
            0x38 | 0x44 | 0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => {
                crate::guest_warn!(
                    "virtio-mmio: queue register {offset:#x} written in status {:#x}; ignored",
                    self.regs.device_status
                );
            }
            _ => crate::guest_debug!("virtio-mmio: write of unknown register {offset:#x}"),
        }
    }

    fn update_queue(&mut self, f: impl FnOnce(&mut QueueRegisters)) {
        match self.selected_queue() {
            Some(queue) => f(queue),
            None => crate::guest_warn!("virtio-mmio: queue {} does not exist", self.regs.queue_sel),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.regs.device_status & (status::FEATURES_OK | status::DRIVER_OK) != 0
            || self.regs.device_status & status::DRIVER == 0
        {
            crate::guest_warn!("virtio-mmio: driver features written outside negotiation; ignored");
            return;
        }
        let shift = match self.regs.driver_features_sel {
            0 => 0,
            1 => 32,
            _ => return,
        };
        let offered = lock(&self.device).avail_features();
        let accepted = (u64::from(value) << shift) & offered;
        if accepted != u64::from(value) << shift {
            crate::guest_warn!(
                "virtio-mmio: driver accepted features that were not offered; dropped"
            );
        }
        let mask = 0xffff_ffffu64 << shift;
        self.regs.acked_features = (self.regs.acked_features & !mask) | accepted;
    }

    fn notify_queue(&mut self, index: u32) {
        // Normally KVM's ioeventfd swallows this write; seeing it here means
        // none is registered (e.g. in tests), so forward it by hand.
        let device = lock(&self.device);
        match device.queue_events().get(index as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    crate::guest_error!("virtio-mmio: notifying queue {index}: {e}");
                }
            }
            None => crate::guest_warn!("virtio-mmio: notify of nonexistent queue {index}"),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let current = self.regs.device_status;
        // Bits can only be added, never taken away (except by a reset).
        if value & current != current {
            crate::guest_warn!(
                "virtio-mmio: status {current:#x} -> {value:#x} clears bits; ignored"
            );
            return;
        }
        let added = value & !current;
        let mut new = value;
        if added & status::FEATURES_OK != 0 && !self.features_acceptable() {
            new &= !status::FEATURES_OK;
        }
        if added & status::DRIVER_OK != 0 {
            if current & status::FEATURES_OK == 0 {
                crate::guest_warn!("virtio-mmio: DRIVER_OK before FEATURES_OK; ignored");
                new &= !status::DRIVER_OK;
            } else if let Err(e) = self.activate() {
                crate::guest_error!("virtio-mmio: device activation failed: {e}");
                new |= status::DEVICE_NEEDS_RESET;
                self.regs.device_status = new;
                if let Err(e) = self.interrupt.trigger(IrqKind::Config) {
                    crate::guest_error!("virtio-mmio: raising the config interrupt: {e}");
                }
                return;
            }
        }
        self.regs.device_status = new;
    }

    fn features_acceptable(&self) -> bool {
        if self.regs.acked_features & VIRTIO_F_VERSION_1 == 0 {
            crate::guest_warn!("virtio-mmio: driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)");
            return false;
        }
        true
    }

    /// Hands the queues to the device (a restored device puts them at its
    /// saved positions itself).
    fn activate(&mut self) -> Result<(), super::ActivateError> {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, regs) in self.queues.iter().enumerate() {
            let queue = regs.to_queue(&self.mem).map_err(|why| {
                crate::guest_warn!("virtio-mmio: queue {i}: {why}");
                super::ActivateError::BadQueue(i)
            })?;
            queues.push(queue);
        }
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            acked_features: self.regs.acked_features,
        };
        lock(&self.device).activate(activation)?;
        self.activated = true;
        Ok(())
    }

    fn reset(&mut self) {
        if self.activated {
            lock(&self.device).reset();
            self.activated = false;
        }
        for queue in &mut self.queues {
            *queue = QueueRegisters::new(queue.max_size);
        }
        self.interrupt.ack(u32::MAX);
        self.regs = MmioRegisters {
            config_generation: self.regs.config_generation,
            ..Default::default()
        };
    }

    /// Tells the driver the device's config space changed (e.g. a drive's
    /// new capacity): bumps ConfigGeneration and raises a config interrupt.
    pub fn notify_config_change(&mut self) {
        self.regs.config_generation = self.regs.config_generation.wrapping_add(1);
        if let Err(e) = self.interrupt.trigger(IrqKind::Config) {
            crate::guest_error!("virtio-mmio: raising the config-change interrupt: {e}");
        }
    }

    /// The queues' registers (for inspection and snapshots).
    pub fn queue_registers(&self) -> &[QueueRegisters] {
        &self.queues
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        match <&mut [u8; 4]>::try_from(&mut *data) {
            Ok(word) if offset.is_multiple_of(4) => {
                *word = self.read_register(offset).to_le_bytes()
            }
            _ => {
                data.fill(0);
                crate::guest_warn!(
                    "virtio-mmio: {}-byte read at {offset:#x}; registers are 32-bit",
                    data.len()
                );
            }
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(word) if offset.is_multiple_of(4) => {
                self.write_register(offset, u32::from_le_bytes(word))
            }
            _ => crate::guest_warn!(
                "virtio-mmio: {}-byte write at {offset:#x}; registers are 32-bit",
                data.len()
            ),
        }
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

mod persist;
pub use persist::{MmioTransportArgs, MmioTransportState, TransportStateError};

#[cfg(test)]
mod tests;
