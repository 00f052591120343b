//! flint's logger: levels, an optional log file, one line per record.
//!
//! Logging starts on stderr at process start and can be moved to a file and
//! re-levelled at run time (the API's `PUT /logger`), which `env_logger`
//! cannot do. Lines look like
//! `2026-11-22T00:30:31.123Z INFO  [flint_vcpu0] vmm::vstate::vcpu: message`
//! (level and origin can be turned off).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use log::{LevelFilter, Log, Metadata, Record};

struct Output {
    sink: Box<dyn Write + Send>,
    show_level: bool,
    show_origin: bool,
}

struct Logger {
    output: Mutex<Output>,
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
    let logger = LOGGER.get_or_init(|| Logger {
        output: Mutex::new(Output {
            sink: Box::new(std::io::stderr()),
            show_level: true,
            show_origin: false,
        }),
        module: Mutex::new(None),
    });
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
    let sink: Option<Box<dyn Write + Send>> = match path {
        Some(path) => Some(Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| LoggerError::Open {
                    path: path.display().to_string(),
                    source,
                })?,
        )),
        None => None,
    };
    let mut out = logger.output.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(sink) = sink {
        out.sink = sink;
    }
    if let Some(show) = show_level {
        out.show_level = show;
    }
    if let Some(show) = show_origin {
        out.show_origin = show;
    }
    if let Some(level) = level {
        log::set_max_level(level);
    }
    Ok(())
}

/// Writes only records from modules whose path starts with `module` (none
/// or an empty string: every module).
pub fn set_module(module: Option<String>) {
    if let Some(logger) = LOGGER.get() {
        *logger.module.lock().unwrap_or_else(|p| p.into_inner()) = module.filter(|m| !m.is_empty());
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
        // A log line that cannot be written has nowhere else to go.
        let _ = out.sink.write_all(line.as_bytes());
    }

    fn flush(&self) {
        let mut out = self.output.lock().unwrap_or_else(|p| p.into_inner());
        let _ = out.sink.flush();
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
}
