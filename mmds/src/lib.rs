//! flint's microVM metadata service (MMDS), API-compatible with Firecracker's.
//!
//! The guest reads metadata from `http://169.254.169.254/` over its virtio-net
//! interface; flint answers ARP, TCP and HTTP for that address in-process, so the
//! traffic never reaches the host. This crate has no dependency on the VMM:
//!
//! * [`Mmds`] is the data store (JSON document with a size limit, `PUT`/`PATCH`/`GET`,
//!   version and IMDS settings, V2 token authority). The VMM keeps one per VM in an
//!   `Arc<Mutex<Mmds>>`; the API's `PUT/PATCH/GET /mmds` call [`Mmds::put`],
//!   [`Mmds::patch`] and [`Mmds::get`], and `PUT /mmds/config` deserializes an
//!   [`MmdsConfig`], checks it with [`MmdsConfig::validate`] and applies it with
//!   [`Mmds::set_version`] / [`Mmds::set_imds_compat`].
//! * [`MmdsNetStack`] is the per-interface network endpoint virtio-net calls on its
//!   TX and RX paths (see the [`stack`] module docs).

pub mod config;
pub mod fuzz;
pub mod handler;
pub mod http;
pub mod stack;
pub mod store;
mod tcp;
pub mod token;
pub mod wire;

pub use config::{
    ConfigError, MmdsConfig, MmdsVersion, DEFAULT_IPV4_ADDR, DEFAULT_MAC_ADDR, DEFAULT_SIZE_LIMIT,
};
pub use stack::{MmdsNetStack, TxChecksum};
pub use store::{merge_patch, Mmds, OutputFormat, StoreError};
pub use token::TokenError;
