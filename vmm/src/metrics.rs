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
        let error = |source| MetricsError {
            path: path.display().to_string(),
            source,
        };
        let file = FileOutput::open(path, "flint_metrics", METRICS_BUFFER, &MISSED_FLUSHES)
            .map_err(error)?;
        self.file = Some((path.display().to_string(), file));
        Ok(())
    }

    /// The current metrics as JSON.
    pub fn snapshot(&self, vm: Option<&MicroVm>) -> serde_json::Value {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let vm_metrics = vm.map(|vm| {
            let [pio_r, pio_w, mmio_r, mmio_w] = vm.unhandled_accesses();
            json!({
                "vcpu_exits": vm.exits(),
                "unhandled": {"pio_reads": pio_r, "pio_writes": pio_w, "mmio_reads": mmio_r, "mmio_writes": mmio_w},
                "devices": vm.device_metrics(),
            })
        });
        let mut line = json!({
            "utc_timestamp_ms": now_ms,
            "api": self.api.as_ref().map(|f| f()),
            "vm": vm_metrics,
            "serial": {"missed_bytes": crate::console::serial_missed_bytes()},
            "logger": {
                "missed_lines": crate::logger::missed_lines(),
                "suppressed_guest_lines": devices::log_limit::suppressed_lines(),
            },
            "metrics": {"missed_flushes": MISSED_FLUSHES.load(Ordering::Relaxed)},
        });
        if let Some(object) = line.as_object_mut() {
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
}
