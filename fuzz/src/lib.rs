//! Shared harnesses for flint's fuzz targets.
//!
//! [`virtio`] drives a real device model behind the real virtio-mmio
//! transport the way a hostile guest driver can: the fuzzer writes guest
//! memory (descriptor tables, rings, buffers), the register file, queue
//! notifications and, for network cards, frames arriving from the host.
//! Queue work runs through the device's own event-loop handler on a real
//! `EventManager`, as in the VMM.

pub mod virtio;
