//! flint's virtual machine monitor.
//!
//! Builds a KVM microVM from an [`api::VmConfig`] (guest memory, in-kernel
//! irqchip, legacy devices, the kernel and its boot structures, vCPU threads)
//! and runs its event loop until the guest stops.

pub mod boot;
pub mod console;
pub mod device_manager;
pub mod exit_watcher;
pub mod memory;
pub mod microvm;
pub mod quirks;
pub mod vstate;

pub use microvm::{run, MicroVmError, RunEnd, RunOptions};
