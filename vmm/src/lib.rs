//! flint's virtual machine monitor.
//!
//! Builds a KVM microVM from an [`api::VmConfig`] (guest memory, in-kernel
//! irqchip, legacy and virtio devices, the kernel and its boot structures,
//! vCPU threads) and runs the control loop that drives it: the event loop,
//! the API, pause/resume, metrics, and the end of the run.

pub mod boot;
pub mod bounded_writer;
pub mod console;
pub mod controller;
pub mod device_manager;
pub mod devices;
pub mod logger;
pub mod memory;
pub mod metrics;
pub mod microvm;
pub mod migration;
pub mod quirks;
pub mod seccomp;
pub mod snapshot;
pub mod vstate;
pub mod wakeups;

pub use controller::{run, ApiEndpoint, MigrateListen, RunEnd, Start, VmmOptions};
pub use microvm::MicroVmError;
