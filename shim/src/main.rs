//! `containerd-shim-flint-v2`: containerd's runtime v2 shim that runs
//! containers in flint microVMs, one VM per pod (CRI sandbox), the
//! processes through flint's guest agent.
//!
//! containerd starts the binary with `start` (this prints the address of
//! the shim that serves the container: for a pod's containers, the pod's
//! sandbox shim), then talks ttrpc to the serving instance; `delete` cleans
//! up after a shim that died.

mod bundle;
mod error;
mod image;
mod process;
mod service;
mod settings;
mod task_api;
mod vm;

pub use error::ShimError;

/// The runtime's name in containerd's config.
pub const RUNTIME_ID: &str = "io.containerd.flint.v2";

fn main() {
    // The shim waits for its own children (flint, mkfs.ext4, du); the
    // crate's reaper (waitpid(-1) on SIGCHLD) would take their exits away.
    let config = containerd_shim::Config {
        no_reaper: true,
        ..Default::default()
    };
    containerd_shim::run::<service::Service>(RUNTIME_ID, Some(config))
}
