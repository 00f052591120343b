//! The metrics file: one JSON object per flush, appended.
//!
//! Written on the API's `FlushMetrics` action, every
//! [`crate::wakeups::METRICS_PERIOD`] once a path is set, and at exit.
//! Counters are cumulative since flint started.
//!
//! The file never blocks the VMM thread: it is opened non-blocking (a FIFO
//! without a reader `O_RDWR`, see [`crate::bounded_writer::open_output`]);
//! a regular file is written directly, anything else (a FIFO) by a
//! `flint_metrics` thread behind a [`METRICS_BUFFER`]-byte buffer whose
//! whole flushes that do not fit are dropped and counted
//! (`metrics.missed_flushes`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::bounded_writer::FileOutput;
use crate::microvm::MicroVm;

/// How many bytes of metrics may wait for a slow metrics file.
pub const METRICS_BUFFER: usize = 256 * 1024;

static MISSED_FLUSHES: AtomicU64 = AtomicU64::new(0);

/// Why metrics could not be written.
#[derive(Debug, thiserror::Error)]
#[error("metrics file {path}: {source}")]
pub struct MetricsError {
    path: String,
    source: std::io::Error,
}

/// Where metrics go, and the sources that are not part of the VM.
pub struct MetricsSink {
    file: Option<(String, FileOutput)>,
    api: Option<Box<dyn Fn() -> serde_json::Value + Send>>,
    /// Extra top-level fields of every line (Firecracker's `emit_id` and
    /// `properties`), so operators can tell whose metrics a line holds.
    labels: serde_json::Map<String, serde_json::Value>,
}

impl MetricsSink {
    /// A sink without a file yet; `api` reports the API server's counters.
    pub fn new(api: Option<Box<dyn Fn() -> serde_json::Value + Send>>) -> Self {
        Self {
            file: None,
            api,
            labels: serde_json::Map::new(),
        }
    }

    /// Adds `"id"` (when given) and `"properties"` (when given) to every
    /// line from now on, replacing earlier ones.
    pub fn set_labels(
        &mut self,
        id: Option<&str>,
        properties: Option<&std::collections::BTreeMap<String, String>>,
    ) {
        self.labels.clear();
        if let Some(id) = id {
            self.labels.insert("id".into(), json!(id));
        }
        if let Some(properties) = properties {
            self.labels.insert("properties".into(), json!(properties));
        }
    }

    /// Whether a metrics file is configured.
    pub fn has_path(&self) -> bool {
        self.file.is_some()
    }

    /// Sets (creates or appends to) the metrics file.
    pub fn set_path(&mut self, path: &Path) -> Result<(), MetricsError> {
        self.set_file(path, crate::bounded_writer::open_output(path))
    }

    /// Sets the metrics file to `file`, opened at `path` with
    /// [`crate::bounded_writer::open_output`] (by the control thread, when
    /// the device thread may not open files).
    /// An error opening it is reported as this sink's error.
    pub fn set_file(
        &mut self,
        path: &Path,
        file: std::io::Result<std::fs::File>,
    ) -> Result<(), MetricsError> {
        let error = |source| MetricsError {
            path: path.display().to_string(),
            source,
        };
        let file = FileOutput::from_file(
            file.map_err(error)?,
            "flint_metrics",
            METRICS_BUFFER,
            &MISSED_FLUSHES,
        )
        .map_err(error)?;
        self.file = Some((path.display().to_string(), file));
        Ok(())
    }

    /// The current metrics as JSON.
    pub fn snapshot(&self, vm: Option<&MicroVm>) -> serde_json::Value {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let api = self.api.as_ref().map(|f| f());
        let (devices, exits) = match vm {
            Some(vm) => {
                let e = vm.exits();
                let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
                let exits = VcpuExitCounts {
                    io_in: get(&e.io_in),
                    io_out: get(&e.io_out),
                    mmio_read: get(&e.mmio_read),
                    mmio_write: get(&e.mmio_write),
                    failures: get(&e.failures),
                };
                (vm.device_metrics(), exits)
            }
            None => (BTreeMap::new(), VcpuExitCounts::default()),
        };
        let vm_metrics = vm.map(|vm| {
            let [pio_r, pio_w, mmio_r, mmio_w] = vm.unhandled_accesses();
            json!({
                "vcpu_exits": vm.exits(),
                "unhandled": {"pio_reads": pio_r, "pio_writes": pio_w, "mmio_reads": mmio_r, "mmio_writes": mmio_w},
                "devices": &devices,
            })
        });
        let firecracker = firecracker_groups(&devices, &exits, api.as_ref());
        let mut line = json!({
            "utc_timestamp_ms": now_ms,
            "api": api,
            "vm": vm_metrics,
            "serial": {"missed_bytes": crate::console::serial_missed_bytes()},
            "logger": {
                "missed_lines": crate::logger::missed_lines(),
                "suppressed_guest_lines": devices::log_limit::suppressed_lines(),
                "missed_log_count": crate::logger::missed_lines(),
                "missed_metrics_count": MISSED_FLUSHES.load(Ordering::Relaxed),
            },
            "metrics": {"missed_flushes": MISSED_FLUSHES.load(Ordering::Relaxed)},
        });
        if let Some(object) = line.as_object_mut() {
            object.extend(firecracker);
            object.extend(self.labels.clone());
        }
        line
    }

    /// Appends the current metrics to the file, if one is set. Never
    /// blocks: a flush that does not fit the buffer is dropped and counted.
    pub fn write(&mut self, vm: Option<&MicroVm>) -> Result<(), MetricsError> {
        let line = format!("{}\n", self.snapshot(vm));
        if let Some((path, file)) = self.file.as_mut() {
            file.write_record(line.as_bytes())
                .map_err(|source| MetricsError {
                    path: path.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Waits up to `timeout` for written metrics to reach the file.
    pub fn drain(&self, timeout: std::time::Duration) -> bool {
        self.file.as_ref().is_none_or(|(_, f)| f.drain(timeout))
    }
}

/// The vCPU exit counts Firecracker's `vcpu` group reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct VcpuExitCounts {
    /// Port-I/O reads (`exit_io_in`).
    pub io_in: u64,
    /// Port-I/O writes (`exit_io_out`).
    pub io_out: u64,
    /// MMIO reads (`exit_mmio_read`).
    pub mmio_read: u64,
    /// MMIO writes (`exit_mmio_write`).
    pub mmio_write: u64,
    /// Fatal exits (`failures`).
    pub failures: u64,
}

/// Pairs of (flint counter, Firecracker key).
type KeyMap = &'static [(&'static str, &'static str)];

/// Per device kind: Firecracker's group name and its key for each flint
/// counter (counters without a Firecracker meaning are left out).
const DEVICE_KEYS: [(&str, &str, KeyMap); 5] = [
    (
        "drive",
        "block",
        &[
            ("read_bytes", "read_bytes"),
            ("write_bytes", "write_bytes"),
            ("reads", "read_count"),
            ("writes", "write_count"),
            ("flushes", "flush_count"),
            ("bad_requests", "invalid_reqs_count"),
            ("throttled", "rate_limiter_throttled_events"),
        ],
    ),
    (
        "net",
        "net",
        &[
            ("rx_frames", "rx_packets_count"),
            ("rx_bytes", "rx_bytes_count"),
            ("rx_dropped", "rx_fails"),
            ("tx_frames", "tx_packets_count"),
            ("tx_bytes", "tx_bytes_count"),
            ("tx_dropped", "tx_fails"),
            ("bad_chains", "tx_malformed_frames"),
        ],
    ),
    (
        "vsock",
        "vsock",
        &[
            ("rx_packets", "rx_packets_count"),
            ("rx_bytes", "rx_bytes_count"),
            ("tx_packets", "tx_packets_count"),
            ("tx_bytes", "tx_bytes_count"),
        ],
    ),
    (
        "rng",
        "entropy",
        &[
            ("requests", "entropy_event_count"),
            ("bytes", "entropy_bytes"),
            ("errors", "host_rng_fails"),
            ("throttled", "entropy_rate_limiter_throttled"),
        ],
    ),
    (
        "balloon",
        "balloon",
        &[
            ("stats_updates", "stats_updates_count"),
            ("errors", "event_fails"),
        ],
    ),
];

/// Firecracker's top-level metrics groups, from flint's counters, so tools
/// written for Firecracker's metrics file find their keys. Device groups
/// (`block`, `net`, `vsock`, `entropy`, `balloon`) sum every device of the
/// kind; drives and interfaces also get their own `block_<id>`/`net_<id>`
/// group, as in Firecracker. Values are cumulative since flint started
/// (Firecracker's counters restart at each flush).
pub fn firecracker_groups(
    devices: &BTreeMap<String, BTreeMap<&'static str, u64>>,
    exits: &VcpuExitCounts,
    api: Option<&serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut groups: BTreeMap<String, BTreeMap<&str, u64>> = BTreeMap::new();
    // Every group exists even without devices, with zero values.
    for (_, group, keys) in DEVICE_KEYS {
        let entry = groups.entry(group.to_string()).or_default();
        for (_, key) in keys {
            entry.insert(key, 0);
        }
    }
    for (name, counters) in devices {
        let (kind, id) = name.split_once(' ').unwrap_or((name.as_str(), ""));
        let Some((_, group, keys)) = DEVICE_KEYS.iter().find(|(k, _, _)| *k == kind) else {
            continue;
        };
        let own = matches!(*group, "block" | "net").then(|| format!("{group}_{id}"));
        for (flint_key, fc_key) in keys.iter() {
            let value = counters.get(flint_key).copied().unwrap_or(0);
            *groups
                .entry(group.to_string())
                .or_default()
                .entry(fc_key)
                .or_default() += value;
            if let Some(own) = &own {
                *groups
                    .entry(own.clone())
                    .or_default()
                    .entry(fc_key)
                    .or_default() += value;
            }
        }
        if kind == "net" {
            let mmds = groups.entry("mmds".into()).or_default();
            *mmds.entry("rx_accepted").or_default() +=
                counters.get("mmds_tx_frames").copied().unwrap_or(0);
            *mmds.entry("tx_frames").or_default() +=
                counters.get("mmds_rx_frames").copied().unwrap_or(0);
        }
    }
    let mmds = groups.entry("mmds".into()).or_default();
    mmds.entry("rx_accepted").or_default();
    mmds.entry("tx_frames").or_default();
    let mut out: serde_json::Map<String, serde_json::Value> = groups
        .into_iter()
        .map(|(group, keys)| (group, json!(keys)))
        .collect();
    out.insert(
        "vcpu".into(),
        json!({
            "exit_io_in": exits.io_in,
            "exit_io_out": exits.io_out,
            "exit_mmio_read": exits.mmio_read,
            "exit_mmio_write": exits.mmio_write,
            "failures": exits.failures,
        }),
    );
    // A panic or a seccomp violation ends flint before the next flush:
    // a line that is written always reports none.
    out.insert("vmm".into(), json!({"panic_count": 0}));
    out.insert("seccomp".into(), json!({"num_faults": 0}));
    out.insert(
        "uart".into(),
        json!({"missed_write_count": crate::console::serial_missed_bytes()}),
    );
    let routes = api
        .and_then(|a| a.get("routes"))
        .and_then(|r| r.as_object());
    for group in ["get_api_requests", "put_api_requests", "patch_api_requests"] {
        let value = routes
            .and_then(|r| r.get(group))
            .cloned()
            .unwrap_or_else(|| json!({}));
        out.insert(group.into(), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_fifo_without_reader_as_metrics_file_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("metrics.fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sink = MetricsSink::new(None);
            sink.set_path(&fifo).unwrap();
            // Far more than the pipe and the buffer hold.
            for _ in 0..5000 {
                sink.write(None).unwrap();
            }
            let _ = tx.send(sink.snapshot(None));
        });
        let last = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("blocked on the metrics file");
        assert!(last["metrics"]["missed_flushes"].as_u64().unwrap() > 0);
        assert!(last["serial"]["missed_bytes"].is_u64());
    }

    #[test]
    fn metrics_reach_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        let mut sink = MetricsSink::new(None);
        sink.set_path(&path).unwrap();
        sink.write(None).unwrap();
        assert!(sink.drain(Duration::from_secs(60)));
        let text = std::fs::read_to_string(&path).unwrap();
        let value: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert!(value["logger"]["suppressed_guest_lines"].is_u64());
    }

    #[test]
    fn labels_are_top_level_fields_of_each_line() {
        let mut sink = MetricsSink::new(None);
        assert!(sink.snapshot(None).get("id").is_none());
        let properties = [("team".to_string(), "a".to_string())].into();
        sink.set_labels(Some("vm-1"), Some(&properties));
        let line = sink.snapshot(None);
        assert_eq!(line["id"], "vm-1");
        assert_eq!(line["properties"]["team"], "a");
        assert!(line["utc_timestamp_ms"].is_u64());
        sink.set_labels(None, None);
        assert!(sink.snapshot(None).get("id").is_none());
    }

    #[test]
    fn firecracker_groups_follow_the_counters() {
        let devices: BTreeMap<String, BTreeMap<&'static str, u64>> = [
            (
                "drive root".to_string(),
                [
                    ("read_bytes", 512),
                    ("reads", 1),
                    ("flushes", 2),
                    ("throttled", 0),
                ]
                .into(),
            ),
            (
                "drive data".to_string(),
                [
                    ("read_bytes", 1024),
                    ("reads", 2),
                    ("write_bytes", 4096),
                    ("writes", 1),
                ]
                .into(),
            ),
            (
                "net eth0".to_string(),
                [
                    ("rx_frames", 3),
                    ("rx_bytes", 300),
                    ("tx_frames", 4),
                    ("tx_bytes", 400),
                    ("mmds_tx_frames", 5),
                ]
                .into(),
            ),
            (
                "rng rng".to_string(),
                [("bytes", 64), ("requests", 2)].into(),
            ),
            ("mem m".to_string(), [("plugged", 7)].into()),
        ]
        .into();
        let exits = VcpuExitCounts {
            io_in: 10,
            io_out: 11,
            mmio_read: 12,
            mmio_write: 13,
            failures: 1,
        };
        let api = json!({"routes": {"put_api_requests": {"actions_count": 3, "actions_fails": 1}}});
        let g = firecracker_groups(&devices, &exits, Some(&api));
        assert_eq!(g["block"]["read_bytes"], 1536);
        assert_eq!(g["block"]["read_count"], 3);
        assert_eq!(g["block"]["write_bytes"], 4096);
        assert_eq!(g["block"]["write_count"], 1);
        assert_eq!(g["block"]["flush_count"], 2);
        assert_eq!(g["block_root"]["read_bytes"], 512);
        assert_eq!(g["block_data"]["write_count"], 1);
        assert_eq!(g["net"]["rx_packets_count"], 3);
        assert_eq!(g["net"]["tx_bytes_count"], 400);
        assert_eq!(g["net_eth0"]["rx_bytes_count"], 300);
        assert_eq!(g["mmds"]["rx_accepted"], 5);
        assert_eq!(g["entropy"]["entropy_bytes"], 64);
        assert_eq!(
            g["vsock"]["rx_bytes_count"], 0,
            "groups exist without devices"
        );
        assert_eq!(g["vcpu"]["exit_io_in"], 10);
        assert_eq!(g["vcpu"]["exit_mmio_write"], 13);
        assert_eq!(g["vcpu"]["failures"], 1);
        assert_eq!(g["put_api_requests"]["actions_count"], 3);
        assert_eq!(g["patch_api_requests"], json!({}));
        assert!(g.get("mem").is_none() && g.get("mem_m").is_none());
    }

    #[test]
    fn a_line_has_firecracker_groups_and_keeps_flint_keys() {
        let line = MetricsSink::new(None).snapshot(None);
        for group in [
            "utc_timestamp_ms",
            "block",
            "net",
            "vsock",
            "entropy",
            "balloon",
            "mmds",
            "vcpu",
            "vmm",
            "seccomp",
            "uart",
            "logger",
            "get_api_requests",
            "put_api_requests",
            "patch_api_requests",
            "serial",
            "metrics",
        ] {
            assert!(line.get(group).is_some(), "no {group}");
        }
        assert!(line["uart"]["missed_write_count"].is_u64());
        assert!(line["logger"]["missed_log_count"].is_u64());
        assert!(line["logger"]["missed_lines"].is_u64());
        assert_eq!(line["vmm"]["panic_count"], 0);
        assert_eq!(line["seccomp"]["num_faults"], 0);
    }
}
