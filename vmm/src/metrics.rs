//! The metrics file: one JSON object per flush, appended.
//!
//! Written on the API's `FlushMetrics` action, every
//! [`crate::wakeups::METRICS_PERIOD`] once a path is set, and at exit.
//! Counters are cumulative since flint started.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::microvm::MicroVm;

/// Why metrics could not be written.
#[derive(Debug, thiserror::Error)]
#[error("metrics file {path}: {source}")]
pub struct MetricsError {
    path: String,
    source: std::io::Error,
}

/// Where metrics go, and the sources that are not part of the VM.
pub struct MetricsSink {
    file: Option<(String, File)>,
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
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| MetricsError {
                path: path.display().to_string(),
                source,
            })?;
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
        });
        if let Some(object) = line.as_object_mut() {
            object.extend(self.labels.clone());
        }
        line
    }

    /// Appends the current metrics to the file, if one is set.
    pub fn write(&mut self, vm: Option<&MicroVm>) -> Result<(), MetricsError> {
        let line = self.snapshot(vm).to_string();
        if let Some((path, file)) = self.file.as_mut() {
            writeln!(file, "{line}").map_err(|source| MetricsError {
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
