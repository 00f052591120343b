//! Standalone front end of the jailer library (`flint jail` is the usual
//! entry point); the jailer's integration tests drive it.

use std::process::ExitCode;

use clap::Parser;

/// `flint-jailer [OPTIONS] -- [ARGS]...`: same options as `flint jail`.
#[derive(Parser)]
#[command(name = "flint-jailer", about = "Run a binary inside a flint jail")]
struct Cli {
    #[command(flatten)]
    jail: jailer::JailArgs,
}

/// Prints log records to stderr, so warnings (skipped cgroups) and
/// translations are visible without a logging crate.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            eprintln!(
                "flint jail: {}: {}",
                record.level().as_str().to_lowercase(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

fn main() -> ExitCode {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    let cli = Cli::parse();
    match jailer::run(cli.jail) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("flint jail: {e}");
            ExitCode::FAILURE
        }
    }
}
