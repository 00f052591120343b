//! Saving and restoring the transport ([`Persist`] for [`MmioTransport`]).
//!
//! The transport saves only its own registers; the device behind it saves
//! itself. Restore order: the device first (it keeps its saved ring
//! positions), then its transport, which re-activates a device that was
//! running (the device then starts at the saved positions).

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{lock, MmioRegisters, MmioTransport, QueueRegisters};
use crate::persist::Persist;
use crate::virtio::{status, GuestMemory, IrqKind, IrqTrigger, VirtioDevice};

/// The transport's registers, as a snapshot saves them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioTransportState {
    /// The transport registers.
    pub regs: MmioRegisters,
    /// Each queue's registers.
    pub queues: Vec<QueueRegisters>,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// Whether the device was running.
    pub activated: bool,
}

/// What a transport is built from besides its registers.
pub struct MmioTransportArgs {
    /// The device behind the transport (already restored).
    pub device: Arc<Mutex<dyn VirtioDevice>>,
    /// Guest memory.
    pub mem: GuestMemory,
    /// The device's interrupt line.
    pub interrupt: Arc<IrqTrigger>,
}

/// Why a saved transport was refused.
#[derive(Debug, thiserror::Error)]
pub enum TransportStateError {
    /// The device's own queue sizes are invalid.
    #[error("the device's queues: {0}")]
    Queue(#[from] virtio_queue::Error),
    /// The saved registers do not fit this device.
    #[error("saved transport refused: {0}")]
    Mismatch(String),
    /// The device refused to start again.
    #[error("re-activating the device: {0}")]
    Activate(#[from] crate::virtio::ActivateError),
}

impl Persist<'_> for MmioTransport {
    type State = MmioTransportState;
    type ConstructorArgs = MmioTransportArgs;
    type Error = TransportStateError;

    fn save(&self) -> Result<MmioTransportState, TransportStateError> {
        Ok(MmioTransportState {
            regs: self.regs.clone(),
            queues: self.queues.clone(),
            interrupt_status: self.interrupt.status(),
            activated: self.activated,
        })
    }

    /// A transport in the saved state; a device that was running is
    /// activated again and a pending interrupt is raised again.
    fn restore(
        args: MmioTransportArgs,
        state: &MmioTransportState,
    ) -> Result<Self, TransportStateError> {
        let mut t = MmioTransport::new(args.device, args.mem, args.interrupt)?;
        let mismatch = |why: String| Err(TransportStateError::Mismatch(why));
        if state.queues.len() != t.queues.len()
            || state
                .queues
                .iter()
                .zip(&t.queues)
                .any(|(saved, ours)| saved.max_size != ours.max_size)
        {
            return mismatch("the saved queues do not match this device".into());
        }
        let offered = lock(&t.device).avail_features();
        if state.regs.acked_features & !offered != 0 {
            return mismatch(format!(
                "acked features {:#x} include features the device does not offer ({offered:#x})",
                state.regs.acked_features
            ));
        }
        let running = status::FEATURES_OK | status::DRIVER_OK;
        if state.activated && state.regs.device_status & running != running {
            return mismatch(format!(
                "a running device with status {:#x}",
                state.regs.device_status
            ));
        }
        if state.interrupt_status & !(IrqKind::Vring as u32 | IrqKind::Config as u32) != 0 {
            return mismatch(format!("interrupt status {:#x}", state.interrupt_status));
        }
        t.regs = state.regs.clone();
        t.queues = state.queues.clone();
        if state.activated {
            t.activate()?;
        }
        for kind in [IrqKind::Vring, IrqKind::Config] {
            if state.interrupt_status & kind as u32 != 0 {
                if let Err(e) = t.interrupt.trigger(kind) {
                    log::error!("virtio-mmio: re-raising a restored interrupt: {e}");
                }
            }
        }
        Ok(t)
    }
}
