//! Network interfaces: the `network-interfaces` config section as
//! virtio-net devices on host taps.

use std::any::Any;
use std::sync::{Arc, Mutex};

use api::{MmdsConfig, NetConfig, NetPatch, VmConfig};
use devices::virtio::net::{self, Net, NetConstructorArgs};
use mmds::{Mmds, MmdsNetStack, DEFAULT_MAC_ADDR};

use super::block::{limits, rate_limiter};
use super::DeviceKind;
use crate::device_manager::VirtioEntry;

/// The `network-interfaces` registration.
pub struct NetKind;

impl DeviceKind for NetKind {
    type Device = Net;
    type Config = NetConfig;
    type Patch = NetPatch;

    const KIND: &'static str = "net";
    const SECTION: &'static str = "network-interfaces";

    fn configs(config: &VmConfig) -> Vec<&NetConfig> {
        config.network_interfaces.iter().collect()
    }

    fn id(config: &NetConfig) -> &str {
        &config.iface_id
    }

    /// The tap is opened by `create`/`restore` (`backend: None`).
    fn args(iface: &NetConfig) -> Result<NetConstructorArgs, String> {
        Ok(NetConstructorArgs {
            config: net::NetConfig {
                iface_id: iface.iface_id.clone(),
                tap_name: iface.host_dev_name.clone(),
                mac: iface.guest_mac.map(|m| m.0),
                rx_rate_limiter: rate_limiter(&iface.rx_rate_limiter)
                    .map_err(|e| format!("rx rate limiter: {e}"))?,
                tx_rate_limiter: rate_limiter(&iface.tx_rate_limiter)
                    .map_err(|e| format!("tx rate limiter: {e}"))?,
            },
            backend: None,
        })
    }

    fn create(args: NetConstructorArgs) -> Result<Net, String> {
        match args.backend {
            Some(backend) => Net::with_backend(args.config, backend),
            None => Net::new(args.config),
        }
        .map_err(|e| e.to_string())
    }

    fn patch_id(patch: &NetPatch) -> &str {
        &patch.iface_id
    }

    /// New rate limits (nothing in config space changes).
    fn update(net: &mut Net, patch: &NetPatch) -> Result<bool, String> {
        let rx = patch
            .rx_rate_limiter
            .is_some()
            .then(|| limits(&patch.rx_rate_limiter));
        let tx = patch
            .tx_rate_limiter
            .is_some()
            .then(|| limits(&patch.tx_rate_limiter));
        if !net.update_rate_limiters(rx, tx) {
            return Err("this interface has no rate limiter to update".into());
        }
        Ok(false)
    }

    fn update_config(config: &mut VmConfig, patch: &NetPatch) {
        if let Some(iface) = config
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == patch.iface_id)
        {
            if patch.rx_rate_limiter.is_some() {
                iface.rx_rate_limiter = patch.rx_rate_limiter.clone();
            }
            if patch.tx_rate_limiter.is_some() {
                iface.tx_rate_limiter = patch.tx_rate_limiter.clone();
            }
        }
    }
}

/// Gives every net device `config` lists its own MMDS endpoint on `store`
/// (Firecracker's MAC, the configured address); an id with no device is an
/// error (the config check should have refused it).
pub fn attach_mmds(
    entries: &[VirtioEntry],
    store: &Arc<Mutex<Mmds>>,
    config: &MmdsConfig,
) -> Result<(), String> {
    for id in &config.network_interfaces {
        let entry = entries
            .iter()
            .find(|e| e.kind == NetKind::KIND && &e.id == id)
            .ok_or_else(|| format!("no network interface {id:?} for MMDS"))?;
        let handle: Arc<dyn Any + Send + Sync> = entry.handle.clone();
        let net = handle
            .downcast_ref::<Mutex<Net>>()
            .ok_or_else(|| format!("{}: not a net device", entry.name))?;
        let stack = MmdsNetStack::new(DEFAULT_MAC_ADDR, config.ipv4(), store.clone());
        net.lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_mmds(stack);
        log::info!("MMDS on {} at {}", entry.name, config.ipv4());
    }
    Ok(())
}
