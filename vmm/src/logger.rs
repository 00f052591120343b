//! flint's logger: levels, an optional log file, one line per record.
//!
//! Logging starts on stderr at process start and can be moved to a file and
//! re-levelled at run time (the API's `PUT /logger`), which `env_logger`
//! cannot do. Lines look like
//! `2026-11-22T00:30:31.123Z INFO  [flint_vcpu0] vmm::vstate::vcpu: message`
//! (level and origin can be turned off).
//!
//! A log file never blocks a thread that logs: it is opened non-blocking (a
//! FIFO without a reader `O_RDWR`, see
//! [`crate::bounded_writer::open_output`]); a regular file is written
//! directly, anything else (a FIFO) by a `flint_log_out` thread behind a
//! [`LOG_BUFFER`]-byte buffer, whose whole lines that do not fit are dropped
//! and counted ([`missed_lines`]). stderr is written directly, as before: it
//! is there from the first line (also in the jailer's forked children, which
//! have no writer thread).
//!
//! Records of the `virtio_queue` crate, which a guest triggers with a
//! malformed ring, are rate-limited like flint's own guest-triggered lines
//! ([`devices::guest_log!`]).

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use devices::log_limit::LogLimiter;
use log::{LevelFilter, Log, Metadata, Record};

use crate::bounded_writer::FileOutput;

/// How many bytes of log lines may wait for a slow log file.
pub const LOG_BUFFER: usize = 256 * 1024;

/// How long [`Log::flush`] waits for a stuck log file.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

static MISSED_LINES: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped because the log file did not keep up.
pub fn missed_lines() -> u64 {
    MISSED_LINES.load(Ordering::Relaxed)
}

enum Sink {
    Stderr,
    File(FileOutput),
}

struct Output {
    sink: Sink,
    show_level: bool,
    show_origin: bool,
}

/// flint's logger (public for tests; the process uses one through [`init`]).
pub struct Logger {
    output: Mutex<Output>,
    virtio_queue: LogLimiter,
    /// Only records whose target (module path) starts with this are
    /// written (Firecracker's `module` filter); none writes all.
    module: Mutex<Option<String>>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Why the logger could not be (re)configured.
#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    /// The log file could not be opened.
    #[error("log file {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Another logger was installed first.
    #[error("a logger is already installed")]
    AlreadySet,
}

/// Parses a level name (`error`, `warn`/`warning`, `info`, `debug`, `trace`, `off`).
pub fn parse_level(name: &str) -> Option<LevelFilter> {
    match name.to_ascii_lowercase().as_str() {
        "warning" => Some(LevelFilter::Warn),
        other => other.parse().ok(),
    }
}

/// Installs the logger, writing to stderr at `level`.
pub fn init(level: LevelFilter) -> Result<(), LoggerError> {
    let logger = LOGGER.get_or_init(Logger::new);
    log::set_logger(logger).map_err(|_| LoggerError::AlreadySet)?;
    log::set_max_level(level);
    Ok(())
}

/// Changes where and how records are written; `None` keeps the current setting.
pub fn configure(
    path: Option<&Path>,
    level: Option<LevelFilter>,
    show_level: Option<bool>,
    show_origin: Option<bool>,
) -> Result<(), LoggerError> {
    let Some(logger) = LOGGER.get() else {
        return Ok(());
    };
    if let Some(path) = path {
        logger.set_path(path)?;
    }
    configure_rest(logger, level, show_level, show_origin);
    Ok(())
}

/// [`configure`] with the log file already opened at `path` (by the
/// control thread, see `controller::control`).
pub fn configure_with_file(
    file: Option<(&Path, std::fs::File)>,
    level: Option<LevelFilter>,
    show_level: Option<bool>,
    show_origin: Option<bool>,
) -> Result<(), LoggerError> {
    let Some(logger) = LOGGER.get() else {
        return Ok(());
    };
    if let Some((path, file)) = file {
        logger.set_file(path, file)?;
    }
    configure_rest(logger, level, show_level, show_origin);
    Ok(())
}

fn configure_rest(
    logger: &Logger,
    level: Option<LevelFilter>,
    show_level: Option<bool>,
    show_origin: Option<bool>,
) {
    let mut out = logger.output.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(show) = show_level {
        out.show_level = show;
    }
    if let Some(show) = show_origin {
        out.show_origin = show;
    }
    if let Some(level) = level {
        log::set_max_level(level);
    }
}

impl Logger {
    /// A logger writing to stderr, with levels and without origins.
    pub fn new() -> Self {
        Self {
            output: Mutex::new(Output {
                sink: Sink::Stderr,
                show_level: true,
                show_origin: false,
            }),
            virtio_queue: LogLimiter::new(),
            module: Mutex::new(None),
        }
    }

    /// Sends further lines to `path` (created if missing, appended to),
    /// through the non-blocking writer; opening never blocks either.
    pub fn set_path(&self, path: &Path) -> Result<(), LoggerError> {
        let open_error = |source| LoggerError::Open {
            path: path.display().to_string(),
            source,
        };
        let file = crate::bounded_writer::open_output(path).map_err(open_error)?;
        self.set_file(path, file)
    }

    /// Sends further lines to `file`, opened at `path` with
    /// [`crate::bounded_writer::open_output`] (by the control thread, when
    /// the device thread may not open files).
    pub fn set_file(&self, path: &Path, file: std::fs::File) -> Result<(), LoggerError> {
        let file = FileOutput::from_file(file, "flint_log_out", LOG_BUFFER, &MISSED_LINES)
            .map_err(|source| LoggerError::Open {
                path: path.display().to_string(),
                source,
            })?;
        self.output.lock().unwrap_or_else(|p| p.into_inner()).sink = Sink::File(file);
        Ok(())
    }

    fn write_line(&self, record: &Record) {
        let mut line = format!("{}", humantime::format_rfc3339_millis(SystemTime::now()));
        let mut out = self.output.lock().unwrap_or_else(|p| p.into_inner());
        if out.show_level {
            line.push_str(&format!(" {:<5}", record.level()));
        }
        if out.show_origin {
            let thread = std::thread::current();
            line.push_str(&format!(
                " [{}] {}:{}",
                thread.name().unwrap_or("?"),
                record.file().unwrap_or("?"),
                record.line().unwrap_or(0)
            ));
        }
        line.push_str(&format!(" {}\n", record.args()));
        match &mut out.sink {
            // A log line that cannot be written has nowhere else to go.
            Sink::Stderr => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
            Sink::File(file) => {
                if file.write_record(line.as_bytes()).is_err() {
                    MISSED_LINES.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Writes only records from modules whose path starts with `module` (none
/// or an empty string: every module), as Firecracker's `module` filter.
pub fn set_module(module: Option<String>) {
    if let Some(logger) = LOGGER.get() {
        *logger.module.lock().unwrap_or_else(|p| p.into_inner()) = module.filter(|m| !m.is_empty());
    }
}

impl Default for Logger {
    fn default() -> Self {
        Self::new()
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        if metadata.level() > log::max_level() {
            return false;
        }
        let module = self.module.lock().unwrap_or_else(|p| p.into_inner());
        module
            .as_deref()
            .is_none_or(|m| metadata.target().starts_with(m))
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if record.target().starts_with("virtio_queue") {
            match self.virtio_queue.admit() {
                None => return,
                Some(0) => {}
                Some(held_back) => self.write_line(
                    &Record::builder()
                        .args(format_args!(
                            "({held_back} similar virtio_queue messages suppressed)"
                        ))
                        .level(record.level())
                        .target(record.target())
                        .build(),
                ),
            }
        }
        self.write_line(record);
    }

    /// Waits (at most [`FLUSH_TIMEOUT`]) for buffered lines to reach the file.
    fn flush(&self) {
        let out = self.output.lock().unwrap_or_else(|p| p.into_inner());
        match &out.sink {
            Sink::Stderr => {
                let _ = std::io::stderr().flush();
            }
            Sink::File(file) => {
                file.drain(FLUSH_TIMEOUT);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_names() {
        assert_eq!(parse_level("Warning"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("INFO"), Some(LevelFilter::Info));
        assert_eq!(parse_level("trace"), Some(LevelFilter::Trace));
        assert_eq!(parse_level("loud"), None);
    }

    fn log_many(logger: &Logger, target: &str, n: usize) {
        for i in 0..n {
            logger.log(
                &Record::builder()
                    .args(format_args!("line {i}"))
                    .level(log::Level::Error)
                    .target(target)
                    .build(),
            );
        }
    }

    /// Runs `f` on a thread; fails the test if it has not returned after a
    /// generous timeout (the old code blocked forever here).
    fn must_return(f: impl FnOnce() + Send + 'static) {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            f();
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(60)).is_ok(),
            "blocked on the log file"
        );
    }

    #[test]
    fn a_fifo_without_reader_as_log_file_never_blocks() {
        log::set_max_level(LevelFilter::Error);
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("log.fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let before = missed_lines();
        must_return(move || {
            let logger = Logger::new();
            logger.set_path(&fifo).unwrap();
            // Far more than the pipe and the buffer hold.
            log_many(&logger, "vmm", 20_000);
        });
        assert!(missed_lines() > before);
    }

    #[test]
    fn virtio_queue_records_are_capped() {
        log::set_max_level(LevelFilter::Error);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let logger = Logger::new();
        logger.set_path(&path).unwrap();
        log_many(&logger, "virtio_queue::queue", 5000);
        log_many(&logger, "vmm", 3);
        logger.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines = text.lines().count();
        assert!((13..=300).contains(&lines), "{lines} lines:\n{text}");
    }
}
