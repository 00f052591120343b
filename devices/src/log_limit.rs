//! Rate-limited logging for lines a guest can trigger.
//!
//! A guest that hammers a bad register or a broken queue could otherwise
//! write a log line per access and fill the host's disk or stall flint on
//! its log. [`guest_log!`](crate::guest_log) logs at most
//! [`LINES_PER_PERIOD`] lines per [`PERIOD`] from each call site; the lines
//! it holds back are counted ([`suppressed_lines`], reported in the metrics
//! file) and announced by one "suppressed" line when the call site may log
//! again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines one call site may log per [`PERIOD`].
pub const LINES_PER_PERIOD: u32 = 10;
/// The rate limit's window.
pub const PERIOD: Duration = Duration::from_secs(1);

static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Guest-triggered log lines held back since flint started (all call sites).
pub fn suppressed_lines() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

struct Window {
    start: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

/// One call site's budget of log lines.
pub struct LogLimiter {
    window: Mutex<Window>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LogLimiter {
    /// A limiter with a full budget (const: one lives in a `static` per call site).
    pub const fn new() -> Self {
        Self {
            window: Mutex::new(Window {
                start: None,
                lines: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be logged now: `Some(k)` when it may, `k` being how
    /// many lines were held back since the last one logged; `None` when this
    /// line is held back (and counted).
    pub fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.start
            .is_none_or(|start| now.duration_since(start) >= PERIOD)
        {
            w.start = Some(now);
            w.lines = 0;
        }
        if w.lines >= LINES_PER_PERIOD {
            w.suppressed += 1;
            SUPPRESSED.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        w.lines += 1;
        Some(std::mem::take(&mut w.suppressed))
    }
}

/// `log::log!` for lines a guest can trigger, rate-limited per call site:
/// `guest_log!(log::Level::Warn, "virtio-mmio: ... {x}")`.
#[macro_export]
macro_rules! guest_log {
    ($level:expr, $($arg:tt)+) => {{
        static LIMITER: $crate::log_limit::LogLimiter = $crate::log_limit::LogLimiter::new();
        let level: ::log::Level = $level;
        if ::log::log_enabled!(level) {
            if let Some(held_back) = LIMITER.admit() {
                if held_back > 0 {
                    ::log::log!(level, "({held_back} similar guest-triggered messages suppressed)");
                }
                ::log::log!(level, $($arg)+);
            }
        }
    }};
}

/// [`guest_log!`] at warn level.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => { $crate::guest_log!(::log::Level::Warn, $($arg)+) };
}

/// [`guest_log!`] at error level.
#[macro_export]
macro_rules! guest_error {
    ($($arg:tt)+) => { $crate::guest_log!(::log::Level::Error, $($arg)+) };
}

/// [`guest_log!`] at debug level.
#[macro_export]
macro_rules! guest_debug {
    ($($arg:tt)+) => { $crate::guest_log!(::log::Level::Debug, $($arg)+) };
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::OnceLock;
    use std::thread::ThreadId;

    /// A test logger counting the lines each thread logs (tests run in
    /// parallel threads of one process, so each counts its own).
    struct Counter(Mutex<Vec<(ThreadId, String)>>);

    impl log::Log for Counter {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, record: &log::Record) {
            let line = record.args().to_string();
            self.0
                .lock()
                .unwrap()
                .push((std::thread::current().id(), line));
        }
        fn flush(&self) {}
    }

    static COUNTER: OnceLock<&'static Counter> = OnceLock::new();

    /// The lines logged so far by the calling thread.
    pub(crate) fn lines_of_this_thread() -> Vec<String> {
        let counter = COUNTER.get_or_init(|| {
            let c: &'static Counter = Box::leak(Box::new(Counter(Mutex::new(Vec::new()))));
            // Another test may have installed it first; that is the same counter.
            let _ = log::set_logger(c);
            log::set_max_level(log::LevelFilter::Trace);
            c
        });
        let me = std::thread::current().id();
        counter
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t == me)
            .map(|(_, l)| l.clone())
            .collect()
    }

    #[test]
    fn a_flood_is_cut_to_the_budget_and_counted() {
        lines_of_this_thread();
        let before = suppressed_lines();
        for i in 0..5000 {
            crate::guest_warn!("bad access {i}");
        }
        let lines = lines_of_this_thread();
        // Unless the loop spans several windows, exactly the budget; never
        // more than the budget per started window plus the "suppressed" lines.
        assert!(lines.len() >= LINES_PER_PERIOD as usize, "{lines:?}");
        assert!(lines.len() <= 200, "{} lines", lines.len());
        assert!(suppressed_lines() - before >= 5000 - lines.len() as u64);
    }

    #[test]
    fn the_next_window_reports_what_was_held_back() {
        let limiter = LogLimiter::new();
        for _ in 0..LINES_PER_PERIOD {
            assert_eq!(limiter.admit(), Some(0));
        }
        assert_eq!(limiter.admit(), None);
        assert_eq!(limiter.admit(), None);
        limiter.window.lock().unwrap().start = Some(Instant::now() - PERIOD);
        assert_eq!(limiter.admit(), Some(2));
    }
}
