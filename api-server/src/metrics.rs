//! Request counters of the API server, so the VMM's metrics file shows how
//! the API is used and how often clients get errors.

use std::collections::BTreeMap;
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
    /// Per method (GET, PUT, PATCH) and [`ROUTES`] entry: requests, failures.
    routes: [[[AtomicU64; 2]; ROUTES.len()]; 3],
}

/// The first path segment of each resource and its name in Firecracker's
/// `get_api_requests`/`put_api_requests`/`patch_api_requests` groups, so
/// tools reading those keys work. A fixed table: hostile paths cannot grow
/// the counters.
const ROUTES: [(&str, &str); 17] = [
    ("", "instance_info"),
    ("actions", "actions"),
    ("boot-source", "boot_source"),
    ("drives", "drive"),
    ("logger", "logger"),
    ("machine-config", "machine_cfg"),
    ("cpu-config", "cpu_cfg"),
    ("metrics", "metrics"),
    ("network-interfaces", "network"),
    ("mmds", "mmds"),
    ("vsock", "vsock"),
    ("pmem", "pmem"),
    ("serial", "serial"),
    ("hotplug", "hotplug_memory"),
    ("balloon", "balloon"),
    ("entropy", "entropy"),
    ("version", "vmm_version"),
];

/// The metrics group of each counted method, in `routes` order.
const METHOD_GROUPS: [&str; 3] = ["get_api_requests", "put_api_requests", "patch_api_requests"];

/// A copy of the counters at one moment, for the metrics file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Firecracker's per-resource groups: `get_api_requests`,
    /// `put_api_requests`, `patch_api_requests`, each with
    /// `<resource>_count` and `<resource>_fails` keys.
    #[serde(default)]
    pub routes: BTreeMap<String, BTreeMap<String, u64>>,
}

impl ApiMetrics {
    /// Counts one answered request.
    pub(crate) fn record(&self, method: &str, path: &str, status: u16) {
        let method_index = ["GET", "PUT", "PATCH"].iter().position(|m| *m == method);
        let resource = path.trim_start_matches('/').split('/').next().unwrap_or("");
        let route_index = ROUTES.iter().position(|(segment, _)| *segment == resource);
        if let (Some(m), Some(r)) = (method_index, route_index) {
            let [count, fails] = &self.routes[m][r];
            count.fetch_add(1, Ordering::Relaxed);
            if status >= 400 {
                fails.fetch_add(1, Ordering::Relaxed);
            }
        }
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
            routes: METHOD_GROUPS
                .iter()
                .zip(&self.routes)
                .map(|(group, counts)| {
                    let keys = ROUTES.iter().zip(counts).flat_map(|((_, name), [c, f])| {
                        [
                            (format!("{name}_count"), get(c)),
                            (format!("{name}_fails"), get(f)),
                        ]
                    });
                    (group.to_string(), keys.collect())
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecracker_route_groups_count_requests_and_failures() {
        let m = ApiMetrics::default();
        m.record("PUT", "/actions", 204);
        m.record("PUT", "/actions", 400);
        m.record("PATCH", "/drives/rootfs", 204);
        m.record("GET", "/", 200);
        m.record("PUT", "/no-such-thing/../../x", 400);
        let s = m.snapshot();
        assert_eq!(s.routes["put_api_requests"]["actions_count"], 2);
        assert_eq!(s.routes["put_api_requests"]["actions_fails"], 1);
        assert_eq!(s.routes["patch_api_requests"]["drive_count"], 1);
        assert_eq!(s.routes["patch_api_requests"]["drive_fails"], 0);
        assert_eq!(s.routes["get_api_requests"]["instance_info_count"], 1);
        assert_eq!(s.routes["put_api_requests"]["boot_source_count"], 0);
        assert_eq!(s.requests, 5);
        assert_eq!(s.errors, 2);
    }
}
