//! Vsock: the `vsock` config section as a virtio-vsock device proxying the
//! guest's stream sockets through host Unix sockets.

use api::{VmConfig, VsockConfig};
use devices::virtio::vsock::{self, Vsock};

use super::DeviceKind;

/// The `vsock` registration (at most one device).
pub struct VsockKind;

impl DeviceKind for VsockKind {
    type Device = Vsock;
    type Config = VsockConfig;
    type Patch = ();

    const KIND: &'static str = "vsock";
    const SECTION: &'static str = "vsock";

    fn configs(config: &VmConfig) -> Vec<&VsockConfig> {
        config.vsock.iter().collect()
    }

    /// Firecracker's deprecated `vsock_id`, or `vsock`.
    fn id(config: &VsockConfig) -> &str {
        config.vsock_id.as_deref().unwrap_or("vsock")
    }

    /// The listener is created by `create`/`restore`.
    fn args(config: &VsockConfig) -> Result<vsock::VsockConfig, String> {
        Ok(vsock::VsockConfig {
            guest_cid: u64::from(config.guest_cid),
            uds_path: config.uds_path.clone(),
        })
    }

    fn create(args: vsock::VsockConfig) -> Result<Vsock, String> {
        Vsock::new(args).map_err(|e| e.to_string())
    }
}
