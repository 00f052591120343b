//! Request counters of the API server, so the VMM's metrics file shows how
//! the API is used and how often clients get errors.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Live counters, shared between the server's connections; lock-free so
/// counting never contends with serving.
#[derive(Debug, Default)]
pub struct ApiMetrics {
    requests: AtomicU64,
    errors: AtomicU64,
    get: AtomicU64,
    put: AtomicU64,
    patch: AtomicU64,
    other_method: AtomicU64,
    vmm_timeouts: AtomicU64,
    evicted: AtomicU64,
    refused: AtomicU64,
}

/// A copy of the counters at one moment, for the metrics file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiMetricsSnapshot {
    /// Requests answered (any status).
    pub requests: u64,
    /// Requests answered with a 4xx or 5xx status.
    pub errors: u64,
    /// `GET` requests.
    pub get: u64,
    /// `PUT` requests.
    pub put: u64,
    /// `PATCH` requests.
    pub patch: u64,
    /// Requests with any other method (all refused with 405).
    pub other_method: u64,
    /// Requests the VMM did not answer in time (503).
    pub vmm_timeouts: u64,
    /// Idle connections closed to make room for a new client.
    pub evicted: u64,
    /// Connections refused (503) because all slots waited for the VMM.
    pub refused: u64,
}

impl ApiMetrics {
    /// Counts one answered request.
    pub(crate) fn record(&self, method: &str, status: u16) {
        let by_method = match method {
            "GET" => &self.get,
            "PUT" => &self.put,
            "PATCH" => &self.patch,
            _ => &self.other_method,
        };
        by_method.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 400 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a request the VMM did not answer within the reply timeout.
    pub(crate) fn record_vmm_timeout(&self) {
        self.vmm_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an idle connection closed for a new client.
    pub(crate) fn record_evicted(&self) {
        self.evicted.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection refused because every slot waited for the VMM.
    pub(crate) fn record_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads all counters (each is exact; together they may be a request
    /// apart, which metrics do not need to be).
    pub fn snapshot(&self) -> ApiMetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ApiMetricsSnapshot {
            requests: get(&self.requests),
            errors: get(&self.errors),
            get: get(&self.get),
            put: get(&self.put),
            patch: get(&self.patch),
            other_method: get(&self.other_method),
            vmm_timeouts: get(&self.vmm_timeouts),
            evicted: get(&self.evicted),
            refused: get(&self.refused),
        }
    }
}
