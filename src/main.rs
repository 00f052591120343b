//! `flint`: a microVM monitor on Linux KVM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

/// A microVM monitor on Linux KVM.
#[derive(Parser)]
#[command(name = "flint", version, about)]
struct Cli {
    /// Log level: error, warn, info, debug, trace (or an env_logger filter).
    #[arg(long, global = true, default_value = "info", env = "FLINT_LOG")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a microVM from a JSON config file and run it until the guest
    /// reboots or powers off (exit 0), flint gets SIGINT/SIGTERM (exit 0),
    /// or the VM fails (exit 1).
    Run {
        /// The VM configuration (see README: "Config file").
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Do not read the guest console's input from stdin.
        #[arg(long)]
        no_console_input: bool,
    },
}

fn main() -> ExitCode {
    let started = Instant::now();
    let cli = Cli::parse();
    env_logger::Builder::new()
        .parse_filters(&cli.log_level)
        .format_target(false)
        .init();
    match cli.command {
        Command::Run {
            config,
            no_console_input,
        } => run(&config, started, !no_console_input),
    }
}

fn run(config_path: &std::path::Path, started: Instant, console_in: bool) -> ExitCode {
    let config = match api::VmConfig::from_file(config_path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("flint: invalid config {}: {e}", config_path.display());
            return ExitCode::from(2);
        }
    };
    let options = vmm::RunOptions {
        started,
        console_in,
        ..Default::default()
    };
    match vmm::run(&config, options) {
        Ok(vmm::RunEnd::GuestStopped) => {
            log::info!("guest stopped; exiting");
            ExitCode::SUCCESS
        }
        Ok(vmm::RunEnd::Signal(name)) => {
            log::info!("stopped by {name}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flint: error: {e}");
            ExitCode::FAILURE
        }
    }
}
