//! The transport-facing side ([`VirtioDevice`]).

use vmm_sys_util::eventfd::EventFd;

use super::{Fs, TYPE_FS};
use crate::virtio::{read_config_bytes, ActivateError, Activation, IrqKind, VirtioDevice};

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.kicks
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        crate::virtio::ignore_config_write(&format_args!("virtio-fs {}", self.tag), offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation {
            mem,
            queues,
            interrupt,
            acked_features,
        } = activation;
        let Some(backend) = self.backend.as_mut() else {
            return Err(ActivateError::Backend(format!(
                "virtio-fs {}: the vhost-user backend is gone",
                self.tag
            )));
        };
        if let Err(e) = backend.activate(&mem, &queues, acked_features, &self.kicks, &self.calls) {
            self.counters.backend_errors += 1;
            crate::guest_error!("virtio-fs {}: starting the backend: {e}", self.tag);
            return Err(ActivateError::Backend(e.to_string()));
        }
        self.acked_features = acked_features;
        self.needs_reset = false;
        self.interrupt = Some(interrupt);
        self.counters.activations += 1;
        // Buffers posted before DRIVER_OK had their kicks swallowed by the
        // ioeventfd before the daemon held it: kick once more.
        for kick in &self.kicks {
            if let Err(e) = kick.write(1) {
                log::error!("virtio-fs {}: kicking a queue: {e}", self.tag);
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.interrupt = None;
        self.acked_features = 0;
        self.needs_reset = false;
        if let Some(backend) = self.backend.as_mut() {
            if let Err(e) = backend.stop() {
                self.counters.backend_errors += 1;
                crate::guest_error!("virtio-fs {}: stopping the backend's rings: {e}", self.tag);
            }
        }
    }

    fn needs_reset(&self) -> bool {
        self.needs_reset
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        vec![
            ("interrupts", c.interrupts),
            ("activations", c.activations),
            ("backend_errors", c.backend_errors),
        ]
    }
}

impl Fs {
    /// The daemon signalled queue `index`'s call eventfd: the guest is
    /// told, through the interrupt status register and the irqfd.
    pub fn handle_call(&mut self, index: usize) {
        let Some(call) = self.calls.get(index) else {
            return;
        };
        // Drain it (non-blocking; nothing to read is fine).
        let _ = call.read();
        let Some(interrupt) = &self.interrupt else {
            return;
        };
        self.counters.interrupts += 1;
        if let Err(e) = interrupt.trigger(IrqKind::Vring) {
            log::error!("virtio-fs {}: raising the queue interrupt: {e}", self.tag);
        }
    }

    /// The daemon closed its socket (or died): the device stops until the
    /// driver resets it, and cannot run again in this VM.
    pub fn handle_disconnect(&mut self) {
        if self.backend.take().is_none() {
            return;
        }
        self.counters.backend_errors += 1;
        crate::guest_error!(
            "virtio-fs {}: the vhost-user backend closed its socket; device needs a reset",
            self.tag
        );
        if let Some(interrupt) = &self.interrupt {
            self.needs_reset = true;
            if let Err(e) = interrupt.trigger(IrqKind::Config) {
                log::error!("virtio-fs {}: raising the config interrupt: {e}", self.tag);
            }
        }
    }
}
