//! Device models for flint guests.
//!
//! A device is a plain struct that owns its state and answers `read`/`write`
//! at an offset inside the range it was given on a [`bus::Bus`]. vCPU threads
//! dispatch port-I/O and MMIO exits through the buses; the VMM's event loop
//! feeds host-side input (stdin, tap, files) into the same structs.

pub mod bus;
pub mod legacy;
pub mod log_limit;
pub mod persist;
pub mod rate_limiter;
pub mod trigger;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
pub use trigger::EventFdTrigger;
