//! flint's REST API on a Unix socket: the route table, the HTTP server that
//! turns requests into [`api::ApiRequest`] messages for the VMM, its request
//! counters, and a small client for `flint ctl` and the tests.
//!
//! Kept apart from `api` (serde-only types and validation) so the VMM, which
//! only receives checked requests on a channel, builds without hyper and
//! tokio.

#![deny(missing_docs)]

pub mod client;
mod metrics;
mod routes;
mod server;
mod service;

#[cfg(test)]
mod openapi_tests;
#[cfg(test)]
mod routes_tests;

pub use metrics::{ApiMetrics, ApiMetricsSnapshot};
pub use routes::route_request;
pub use server::{
    spawn_api_server, spawn_api_server_with, ApiServerError, ApiServerHandle, ServerOptions,
};
