//! The legacy PC devices a Linux guest without ACPI expects on port I/O.

pub mod exit_status;
pub mod i8042;
pub mod serial;

pub use exit_status::ExitStatusPort;

use std::sync::atomic::{AtomicU64, Ordering};

/// Access counters of a legacy device, with Firecracker's metric names
/// (its `i8042` and `uart` groups), cumulative since flint started: the
/// metrics file turns them into per-flush deltas.
#[derive(Debug, Default)]
pub struct LegacyCounters {
    /// Guest reads served (`read_count`).
    pub read_count: AtomicU64,
    /// Guest writes taken (`write_count`).
    pub write_count: AtomicU64,
    /// Reads of a width or port the device ignores (`missed_read_count`).
    pub missed_read_count: AtomicU64,
    /// Writes the device ignored (`missed_write_count`).
    pub missed_write_count: AtomicU64,
    /// Writes that failed inside the device (`error_count`).
    pub error_count: AtomicU64,
    /// Guest-requested resets (`reset_count`, the i8042's).
    pub reset_count: AtomicU64,
}

impl LegacyCounters {
    /// All zero (for statics).
    pub const fn new() -> Self {
        Self {
            read_count: AtomicU64::new(0),
            write_count: AtomicU64::new(0),
            missed_read_count: AtomicU64::new(0),
            missed_write_count: AtomicU64::new(0),
            error_count: AtomicU64::new(0),
            reset_count: AtomicU64::new(0),
        }
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `(name, value)` pairs, Firecracker's names.
    pub fn values(&self) -> [(&'static str, u64); 6] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("read_count", get(&self.read_count)),
            ("write_count", get(&self.write_count)),
            ("missed_read_count", get(&self.missed_read_count)),
            ("missed_write_count", get(&self.missed_write_count)),
            ("error_count", get(&self.error_count)),
            ("reset_count", get(&self.reset_count)),
        ]
    }
}
pub use i8042::I8042;
pub use serial::Serial;
