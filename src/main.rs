//! `flint`: a microVM monitor on Linux KVM.

mod ctl;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

/// A microVM monitor on Linux KVM.
#[derive(Parser)]
#[command(name = "flint", version, about)]
struct Cli {
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, global = true, default_value = "info", env = "FLINT_LOG")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a microVM: boot it from a config file, or serve the HTTP API and
    /// boot it when told to. Exits 0 when the guest reboots or powers off or
    /// on SIGINT/SIGTERM, 1 when the VM fails, 2 on a bad config.
    Run {
        /// The VM configuration (see README: "Config file").
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Serve the control API on this Unix socket.
        #[arg(long, value_name = "PATH")]
        api_sock: Option<PathBuf>,
        /// Instance id reported by the API.
        #[arg(long, default_value = "flint")]
        id: String,
        /// Do not read the guest console's input from stdin.
        #[arg(long)]
        no_console_input: bool,
    },
    /// Talk to a running flint's API.
    Ctl(ctl::CtlArgs),
}

fn main() -> ExitCode {
    let started = Instant::now();
    let cli = Cli::parse();
    let Some(level) = vmm::logger::parse_level(&cli.log_level) else {
        eprintln!("flint: unknown log level {:?}", cli.log_level);
        return ExitCode::from(2);
    };
    if let Err(e) = vmm::logger::init(level) {
        eprintln!("flint: {e}");
        return ExitCode::FAILURE;
    }
    match cli.command {
        Command::Run {
            config,
            api_sock,
            id,
            no_console_input,
        } => run(config, api_sock, id, started, !no_console_input),
        Command::Ctl(args) => ctl::main(args),
    }
}

fn run(
    config_path: Option<PathBuf>,
    api_sock: Option<PathBuf>,
    id: String,
    started: Instant,
    console_in: bool,
) -> ExitCode {
    let config = match config_path
        .as_deref()
        .map(api::VmConfig::from_file)
        .transpose()
    {
        Ok(config) => config,
        Err(e) => {
            let path = config_path.unwrap_or_default();
            eprintln!("flint: invalid config {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    if config.is_none() && api_sock.is_none() {
        eprintln!("flint: nothing to run: give --config FILE, --api-sock PATH, or both");
        return ExitCode::from(2);
    }
    let mut server = None;
    let mut options = vmm::VmmOptions {
        started,
        console_in,
        instance_id: id,
        ..Default::default()
    };
    if let Some(socket) = &api_sock {
        match start_api(socket) {
            Ok((handle, endpoint)) => {
                server = Some(handle);
                options.api = Some(endpoint);
            }
            Err(e) => {
                eprintln!("flint: API socket {}: {e}", socket.display());
                return ExitCode::FAILURE;
            }
        }
    }
    let result = vmm::run(config, options);
    if let Some(server) = server {
        if matches!(result, Ok(vmm::RunEnd::ApiStop)) {
            // Let the server finish writing the answer to the Stop request.
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        server.shutdown();
    }
    match result {
        Ok(vmm::RunEnd::GuestStopped) => {
            log::info!("guest stopped; exiting");
            ExitCode::SUCCESS
        }
        Ok(vmm::RunEnd::Signal(name)) => {
            log::info!("stopped by {name}");
            ExitCode::SUCCESS
        }
        Ok(vmm::RunEnd::GuestExit(code)) => {
            log::info!("guest exited with status {code}");
            ExitCode::from(code)
        }
        Ok(vmm::RunEnd::ApiStop) => {
            log::info!("stopped through the API");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flint: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn start_api(
    socket: &std::path::Path,
) -> Result<(api::ApiServerHandle, vmm::ApiEndpoint), Box<dyn std::error::Error>> {
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
    let (tx, rx) = std::sync::mpsc::channel();
    let wake = EventFd::new(EFD_NONBLOCK)?;
    let handle = api::spawn_api_server(socket, tx, wake.try_clone()?)?;
    let metrics = handle.metrics_source();
    log::info!("API listening on {}", socket.display());
    Ok((
        handle,
        vmm::ApiEndpoint {
            requests: rx,
            wake,
            metrics: Box::new(move || serde_json::to_value(metrics()).unwrap_or_default()),
        },
    ))
}
