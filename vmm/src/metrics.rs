//! The metrics file: one JSON object per flush, appended.
//!
//! Written on the API's `FlushMetrics` action, every
//! [`crate::wakeups::METRICS_PERIOD`] once a path is set, and at exit.
//! Firecracker's groups (`block`, `net`, `vcpu`, `uart`, ...) hold what
//! Firecracker's do: counters are deltas since the previous line written
//! (its `SharedIncMetric`s reset at each flush, so tools sum them), and
//! values (`latencies_us`, `api_server`, `seccomp.num_faults`, ...) are
//! the latest. flint's own keys (`vm`, `api`, `serial`, ...) are
//! cumulative since flint started.
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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::bounded_writer::FileOutput;
use crate::microvm::MicroVm;

/// How many bytes of metrics may wait for a slow metrics file.
pub const METRICS_BUFFER: usize = 256 * 1024;

static MISSED_FLUSHES: AtomicU64 = AtomicU64::new(0);

/// An operation whose last duration Firecracker's `latencies_us` group
/// reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// `PUT /snapshot/create` with `Full`.
    FullCreateSnapshot,
    /// `PUT /snapshot/create` with `Diff`.
    DiffCreateSnapshot,
    /// `PUT /snapshot/load`.
    LoadSnapshot,
    /// `PATCH /vm` `Paused`.
    PauseVm,
    /// `PATCH /vm` `Resumed`.
    ResumeVm,
}

/// Firecracker's key for each [`Latency`], in order.
const LATENCY_KEYS: [&str; 5] = [
    "full_create_snapshot",
    "diff_create_snapshot",
    "load_snapshot",
    "pause_vm",
    "resume_vm",
];

static LATENCIES_US: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

static PROCESS_STARTUP_US: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

/// Records Firecracker's `api_server.process_startup_time_us` and
/// `process_startup_time_cpu_us` (from `--start-time-us` /
/// `--start-time-cpu-us`: the time from the process start to flint's main).
pub fn record_process_startup(wall_us: u64, cpu_us: u64) {
    PROCESS_STARTUP_US[0].store(wall_us, Ordering::Relaxed);
    PROCESS_STARTUP_US[1].store(cpu_us, Ordering::Relaxed);
}

/// Records how long `what` took (the latest one is reported).
pub fn record_latency(what: Latency, took: Duration) {
    let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    LATENCIES_US[what as usize].store(us, Ordering::Relaxed);
}

/// Firecracker keys that are values, not counters: reported as they are,
/// never as deltas (`group`, `key`; `"*"` for the whole group).
const STORE_KEYS: [(&str, &str); 8] = [
    ("api_server", "*"),
    ("latencies_us", "*"),
    ("seccomp", "num_faults"),
    ("vmm", "panic_count"),
    ("signals", "sigbus"),
    ("signals", "sigsegv"),
    ("signals", "sigill"),
    ("signals", "sighup"),
];

/// Turns the cumulative counters of Firecracker's groups into deltas since
/// the previous call, as Firecracker's flush does; `last` keeps what was
/// reported (a counter is only consumed when its line is written).
pub fn per_flush_deltas(
    groups: &mut serde_json::Map<String, serde_json::Value>,
    last: &mut BTreeMap<String, u64>,
) {
    for (group, keys) in groups.iter_mut() {
        let Some(keys) = keys.as_object_mut() else {
            continue;
        };
        for (key, value) in keys.iter_mut() {
            let Some(now) = value.as_u64() else {
                continue;
            };
            if STORE_KEYS
                .iter()
                .any(|(g, k)| g == group && (*k == "*" || k == key))
            {
                continue;
            }
            let before = last.insert(format!("{group}.{key}"), now).unwrap_or(0);
            *value = json!(now.saturating_sub(before));
        }
    }
}

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
    /// Firecracker counters as last written (see [`per_flush_deltas`]).
    reported: BTreeMap<String, u64>,
}

impl MetricsSink {
    /// A sink without a file yet; `api` reports the API server's counters.
    pub fn new(api: Option<Box<dyn Fn() -> serde_json::Value + Send>>) -> Self {
        Self {
            file: None,
            api,
            labels: serde_json::Map::new(),
            reported: BTreeMap::new(),
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

    /// The current metrics as JSON, every counter cumulative (the written
    /// lines hold Firecracker's per-flush deltas: [`MetricsSink::write`]).
    pub fn snapshot(&self, vm: Option<&MicroVm>) -> serde_json::Value {
        self.line(vm, None)
    }

    fn line(
        &self,
        vm: Option<&MicroVm>,
        reported: Option<&mut BTreeMap<String, u64>>,
    ) -> serde_json::Value {
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
        let mut firecracker = firecracker_groups(&devices, &exits, api.as_ref());
        if let Some(reported) = reported {
            per_flush_deltas(&mut firecracker, reported);
        }
        // flint's keys join Firecracker's in the groups both have.
        let logger = firecracker.remove("logger");
        let mut line = json!({
            "utc_timestamp_ms": now_ms,
            "api": api,
            "vm": vm_metrics,
            "serial": {"missed_bytes": crate::console::serial_missed_bytes()},
            "logger": {
                "missed_lines": crate::logger::missed_lines(),
                "suppressed_guest_lines": devices::log_limit::suppressed_lines(),
            },
            "metrics": {"missed_flushes": MISSED_FLUSHES.load(Ordering::Relaxed)},
        });
        if let (Some(serde_json::Value::Object(fc)), Some(serde_json::Value::Object(own))) =
            (logger, line.get_mut("logger"))
        {
            own.extend(fc);
        }
        if let Some(object) = line.as_object_mut() {
            object.extend(firecracker);
            object.extend(self.labels.clone());
        }
        line
    }

    /// Appends the current metrics to the file, if one is set. Never
    /// blocks: a flush that does not fit the buffer is dropped and counted.
    pub fn write(&mut self, vm: Option<&MicroVm>) -> Result<(), MetricsError> {
        let mut reported = std::mem::take(&mut self.reported);
        let line = format!("{}\n", self.line(vm, Some(&mut reported)));
        self.reported = reported;
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
/// group, as in Firecracker. Values are cumulative since flint started;
/// [`per_flush_deltas`] makes the written lines per-flush, as Firecracker's.
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
    // A panic, a seccomp violation or a deadly signal ends flint before the
    // next flush: a line that is written always reports none.
    out.insert("vmm".into(), json!({"panic_count": 0}));
    out.insert("seccomp".into(), json!({"num_faults": 0}));
    out.insert(
        "signals".into(),
        json!({"sigbus": 0, "sigsegv": 0, "sigxfsz": 0, "sigxcpu": 0, "sigpipe": 0, "sighup": 0, "sigill": 0}),
    );
    let legacy =
        |c: &devices::legacy::LegacyCounters| -> serde_json::Map<String, serde_json::Value> {
            c.values()
                .into_iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect()
        };
    let mut uart = legacy(&devices::legacy::serial::UART_COUNTERS);
    uart.remove("reset_count");
    uart.insert("flush_count".into(), json!(0));
    // Bytes the console output could not take: flint's meaning of a missed write.
    let missed = devices::legacy::serial::UART_COUNTERS
        .missed_write_count
        .load(Ordering::Relaxed)
        + crate::console::serial_missed_bytes();
    uart.insert("missed_write_count".into(), json!(missed));
    out.insert("uart".into(), uart.into());
    out.insert(
        "i8042".into(),
        legacy(&devices::legacy::i8042::I8042_COUNTERS).into(),
    );
    // No RTC on x86 (Firecracker reports it on aarch64): zero, for tools
    // that read the group anyway.
    out.insert(
        "rtc".into(),
        json!({"error_count": 0, "missed_read_count": 0, "missed_write_count": 0}),
    );
    let mut latencies = serde_json::Map::new();
    for (key, value) in LATENCY_KEYS.iter().zip(&LATENCIES_US) {
        let us = value.load(Ordering::Relaxed);
        // flint's API thread only forwards: the VMM's figure is the whole.
        latencies.insert(key.to_string(), json!(us));
        latencies.insert(format!("vmm_{key}"), json!(us));
    }
    out.insert("latencies_us".into(), latencies.into());
    out.insert(
        "api_server".into(),
        json!({
            "process_startup_time_us": PROCESS_STARTUP_US[0].load(Ordering::Relaxed),
            "process_startup_time_cpu_us": PROCESS_STARTUP_US[1].load(Ordering::Relaxed),
        }),
    );
    let deprecated = api
        .and_then(|a| a.get("deprecated_http_api_calls"))
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    out.insert(
        "deprecated_api".into(),
        json!({"deprecated_http_api_calls": deprecated}),
    );
    out.insert(
        "logger".into(),
        json!({
            "missed_log_count": crate::logger::missed_lines(),
            "missed_metrics_count": MISSED_FLUSHES.load(Ordering::Relaxed),
            "metrics_fails": 0,
            "rate_limited_log_count": devices::log_limit::suppressed_lines(),
        }),
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
            "api_server",
            "latencies_us",
            "signals",
            "i8042",
            "rtc",
            "deprecated_api",
        ] {
            assert!(line.get(group).is_some(), "no {group}");
        }
        for (group, key) in [
            ("api_server", "process_startup_time_us"),
            ("latencies_us", "full_create_snapshot"),
            ("latencies_us", "vmm_load_snapshot"),
            ("latencies_us", "pause_vm"),
            ("signals", "sigsegv"),
            ("i8042", "reset_count"),
            ("uart", "write_count"),
            ("uart", "flush_count"),
            ("rtc", "error_count"),
            ("deprecated_api", "deprecated_http_api_calls"),
            ("logger", "rate_limited_log_count"),
        ] {
            assert!(line[group][key].is_u64(), "no {group}.{key}: {line}");
        }
        assert!(line["uart"]["missed_write_count"].is_u64());
        assert!(line["logger"]["missed_log_count"].is_u64());
        assert!(line["logger"]["missed_lines"].is_u64());
        assert_eq!(line["vmm"]["panic_count"], 0);
        assert_eq!(line["seccomp"]["num_faults"], 0);
    }

    /// As Firecracker's flush: counters in written lines are deltas (their
    /// sum is the total), values are the latest, and the cumulative view
    /// does not consume anything.
    #[test]
    fn written_lines_hold_per_flush_deltas() {
        let mut groups: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
            r#"{"block": {"read_count": 5}, "latencies_us": {"pause_vm": 70}, "seccomp": {"num_faults": 0}}"#,
        )
        .unwrap();
        let mut last = BTreeMap::new();
        let mut first = groups.clone();
        per_flush_deltas(&mut first, &mut last);
        assert_eq!(first["block"]["read_count"], 5);
        groups["block"]["read_count"] = json!(12);
        let mut second = groups.clone();
        per_flush_deltas(&mut second, &mut last);
        assert_eq!(second["block"]["read_count"], 7, "12 - 5");
        assert_eq!(
            second["latencies_us"]["pause_vm"], 70,
            "a value, not a counter"
        );
        let mut third = groups.clone();
        per_flush_deltas(&mut third, &mut last);
        assert_eq!(third["block"]["read_count"], 0);

        // Through the sink: the file's uart writes sum to what the device
        // counted between the flushes.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        let mut sink = MetricsSink::new(None);
        sink.set_path(&path).unwrap();
        sink.write(None).unwrap();
        let mut uart = devices::legacy::Serial::new(
            devices::trigger::EventFdTrigger::new().unwrap(),
            Box::new(std::io::sink()),
        );
        for _ in 0..3 {
            devices::BusDevice::write(&mut uart, 0x3f8, 0, b"x");
        }
        let cumulative = sink.snapshot(None)["uart"]["write_count"].as_u64().unwrap();
        assert!(cumulative >= 3);
        sink.write(None).unwrap();
        sink.write(None).unwrap();
        assert!(sink.drain(Duration::from_secs(60)));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        // Other tests in this process may write to a UART too: at least ours.
        assert!(lines[1]["uart"]["write_count"].as_u64().unwrap() >= 3);
        let sum: u64 = lines
            .iter()
            .map(|l| l["uart"]["write_count"].as_u64().unwrap())
            .sum();
        assert!(sum <= sink.snapshot(None)["uart"]["write_count"].as_u64().unwrap());
        assert!(sum >= cumulative);
    }
}
