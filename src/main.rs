//! `flint`: a microVM monitor on Linux KVM.

mod container_cli;
mod ctl;
mod firecracker_cli;

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
        /// Run without seccomp filters. For debugging only: a guest that
        /// escapes into flint then has the whole system call interface.
        #[arg(long)]
        no_seccomp: bool,
        /// Restore the snapshot in DIR (DIR/vmstate + DIR/memory, as
        /// `flint ctl snapshot create DIR` writes them) instead of booting.
        #[arg(long, value_name = "DIR", conflicts_with = "config")]
        restore: Option<PathBuf>,
        /// With --restore: leave the vCPUs paused.
        #[arg(long, requires = "restore")]
        paused: bool,
        /// With --restore: copy the memory file instead of mapping it lazily.
        #[arg(long, requires = "restore")]
        copy_memory: bool,
        /// With --restore: re-open a drive from another file (DRIVE_ID=PATH).
        /// With --migrate-listen: the file each incoming drive gets; an
        /// incoming drive without one is refused.
        #[arg(long, value_name = "ID=PATH")]
        drive_override: Vec<String>,
        /// With --restore: attach an interface to another tap (IFACE_ID=TAP).
        /// With --migrate-listen: the tap each incoming interface gets; an
        /// incoming interface without one is refused.
        #[arg(long, value_name = "ID=TAP")]
        net_override: Vec<String>,
        /// Wait for a live migration on unix:PATH or tcp:IP:PORT and run
        /// the VM that arrives (needs --migrate-key).
        #[arg(
            long,
            value_name = "ADDR",
            conflicts_with_all = ["config", "restore"],
            requires = "migrate_key"
        )]
        migrate_listen: Option<String>,
        /// With --migrate-listen: the pre-shared key file (at least 32
        /// bytes) the source must prove it holds; it authenticates the
        /// stream but does not encrypt it.
        #[arg(long, value_name = "FILE", requires = "migrate_listen")]
        migrate_key: Option<PathBuf>,
        /// With --migrate-listen: the most guest memory an incoming VM may
        /// have (default: the host's RAM).
        #[arg(long, value_name = "MIB", requires = "migrate_listen")]
        max_mem_mib: Option<u64>,
        /// With --migrate-listen: the host socket path of an incoming vsock
        /// device (one with vsock is refused without it).
        #[arg(long, value_name = "PATH", requires = "migrate_listen")]
        vsock_override: Option<PathBuf>,
    },
    /// Talk to a running flint's API.
    Ctl(ctl::CtlArgs),
    /// Work with snapshot files.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Run a program (normally flint itself) jailed: chroot, namespaces,
    /// cgroups, rlimits, an unprivileged uid/gid, a clean environment.
    Jail(jailer::JailArgs),
    /// Run containers in microVMs.
    #[command(subcommand)]
    Container(container_cli::ContainerCommand),
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Apply a diff snapshot's memory file onto its base memory file, in place.
    Merge {
        /// The base (full) memory file; it is updated.
        base: PathBuf,
        /// The diff memory file.
        diff: PathBuf,
    },
}

fn main() -> ExitCode {
    one_malloc_arena();
    let code = cli_main();
    // Console output and log lines still buffered for a slow reader get a
    // bounded time; a reader that is stuck does not keep flint alive.
    vmm::bounded_writer::drain_all(std::time::Duration::from_secs(2));
    code
}

/// One glibc malloc arena for the whole process, set before any thread
/// exists: glibc would give each allocating thread (bounded writers, API,
/// control, vCPUs) an arena of its own, 20-30 KiB resident each, for threads
/// that allocate little and rarely at once. The seccomp set-up sets the same.
fn one_malloc_arena() {
    // SAFETY: mallopt has no memory-safety preconditions.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn cli_main() -> ExitCode {
    let started = Instant::now();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if firecracker_cli::wanted(&args) {
        return firecracker_cli::main(args, started);
    }
    let cli = Cli::parse_from(args);
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
            no_seccomp,
            restore,
            paused,
            copy_memory,
            drive_override,
            net_override,
            migrate_listen,
            migrate_key,
            max_mem_mib,
            vsock_override,
        } => {
            if (!drive_override.is_empty() || !net_override.is_empty())
                && restore.is_none()
                && migrate_listen.is_none()
            {
                eprintln!(
                    "flint: --drive-override and --net-override need --restore or --migrate-listen"
                );
                return ExitCode::from(2);
            }
            let start = if let Some(dir) = restore {
                match restore_params(&dir, paused, copy_memory, &drive_override, &net_override) {
                    Ok(params) => vmm::Start::Restore(params),
                    Err(e) => {
                        eprintln!("flint: {e}");
                        return ExitCode::from(2);
                    }
                }
            } else if let Some(address) = migrate_listen {
                match migrate_listen_params(
                    address,
                    migrate_key.as_deref(),
                    max_mem_mib,
                    vsock_override,
                    &drive_override,
                    &net_override,
                ) {
                    Ok(listen) => vmm::Start::MigrateListen(listen),
                    Err(e) => {
                        eprintln!("flint: {e}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                match config.as_deref().map(api::VmConfig::from_file).transpose() {
                    Ok(Some(config)) => vmm::Start::Boot(config),
                    Ok(None) if api_sock.is_some() => vmm::Start::Api,
                    Ok(None) => {
                        eprintln!(
                            "flint: nothing to run: give --config FILE, --api-sock PATH, \
                             --restore DIR or --migrate-listen ADDR"
                        );
                        return ExitCode::from(2);
                    }
                    Err(e) => {
                        let path = config.unwrap_or_default();
                        eprintln!("flint: invalid config {}: {e}", path.display());
                        return ExitCode::from(2);
                    }
                }
            };
            if no_seccomp {
                log::warn!("SECCOMP IS OFF (--no-seccomp): flint's threads are not confined; do not run untrusted guests like this");
            }
            run(RunOptions {
                start,
                api_sock,
                id,
                started,
                console_in: !no_console_input,
                seccomp: !no_seccomp,
                ..RunOptions::new(vmm::Start::Api, started)
            })
        }
        Command::Ctl(args) => ctl::main(args),
        Command::Container(command) => container_cli::main(command),
        Command::Jail(args) => match jailer::run(args) {
            Ok(never) => match never {},
            Err(e) => {
                eprintln!("flint jail: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Snapshot(SnapshotCommand::Merge { base, diff }) => {
            match vmm::snapshot::memory::merge_diff(&base, &diff) {
                Ok(bytes) => {
                    println!(
                        "merged {:.1} MiB of {} into {}",
                        bytes as f64 / (1 << 20) as f64,
                        diff.display(),
                        base.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("flint snapshot merge: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// What `flint run --migrate-listen ADDR` waits for and allows.
fn migrate_listen_params(
    address: String,
    key: Option<&std::path::Path>,
    max_mem_mib: Option<u64>,
    vsock_uds: Option<PathBuf>,
    drive_overrides: &[String],
    net_overrides: &[String],
) -> Result<vmm::MigrateListen, String> {
    let key = key.ok_or("--migrate-listen needs --migrate-key FILE")?;
    let key = vmm::migration::MigrationKey::from_file(key).map_err(|e| e.to_string())?;
    let overrides = restore_params(
        std::path::Path::new(""),
        false,
        false,
        drive_overrides,
        net_overrides,
    )?;
    let max_mem = match max_mem_mib {
        Some(0) => return Err("--max-mem-mib must be at least 1".into()),
        Some(mib) => mib
            .checked_mul(1 << 20)
            .ok_or("--max-mem-mib is too large")?,
        None => 0,
    };
    Ok(vmm::MigrateListen {
        address,
        key,
        policy: vmm::migration::IncomingPolicy {
            max_mem,
            drives: overrides.drive_overrides,
            nets: overrides.net_overrides,
            vsock_uds,
        },
    })
}

/// The load parameters of `flint run --restore DIR`.
fn restore_params(
    dir: &std::path::Path,
    paused: bool,
    copy_memory: bool,
    drive_overrides: &[String],
    net_overrides: &[String],
) -> Result<api::SnapshotLoadParams, String> {
    let split = |item: &String| -> Result<(String, String), String> {
        item.split_once('=')
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .ok_or_else(|| format!("{item:?}: expected ID=VALUE"))
    };
    Ok(api::SnapshotLoadParams {
        snapshot_path: dir.join("vmstate"),
        mem_file_path: dir.join("memory"),
        mem_backend: api::MemBackendType::File,
        resume_vm: !paused,
        enable_diff_snapshots: false,
        copy_memory,
        drive_overrides: drive_overrides
            .iter()
            .map(|o| {
                split(o).map(|(drive_id, path)| api::DriveOverride {
                    drive_id,
                    path_on_host: path.into(),
                })
            })
            .collect::<Result<_, _>>()?,
        net_overrides: net_overrides
            .iter()
            .map(|o| {
                split(o).map(|(iface_id, host_dev_name)| api::NetOverride {
                    iface_id,
                    host_dev_name,
                })
            })
            .collect::<Result<_, _>>()?,
    })
}

/// What [`run`] needs: how to start, the API socket, and the options that
/// reach the VMM, the API server and the metrics sink (flint's `run`
/// subcommand and the Firecracker command line both fill it).
pub(crate) struct RunOptions {
    /// Boot, wait for the API, restore or receive a migration.
    pub start: vmm::Start,
    /// Serve the API on this socket.
    pub api_sock: Option<PathBuf>,
    /// The instance id `GET /` reports.
    pub id: String,
    /// When the process started.
    pub started: Instant,
    /// Feed stdin to the guest console.
    pub console_in: bool,
    /// Install the seccomp filters.
    pub seccomp: bool,
    /// Largest API request body (the server's default if none).
    pub max_body: Option<usize>,
    /// Write metrics here from the start (as `PUT /metrics` would).
    pub metrics_path: Option<PathBuf>,
    /// Initial MMDS contents (`--metadata`), handed to the VMM.
    pub mmds_metadata: Option<serde_json::Value>,
    /// MMDS data store limit in bytes (`--mmds-size-limit`).
    pub mmds_size_limit: Option<usize>,
    /// A config file's custom CPU template (`cpu-config`).
    pub cpu_config: Option<api::CpuConfig>,
}

impl RunOptions {
    /// Options with everything optional off.
    fn new(start: vmm::Start, started: Instant) -> Self {
        RunOptions {
            start,
            api_sock: None,
            id: "flint".into(),
            started,
            console_in: true,
            seccomp: true,
            max_body: None,
            metrics_path: None,
            mmds_metadata: None,
            mmds_size_limit: None,
            cpu_config: None,
        }
    }
}

/// Runs the VM until it ends; the exit status says how.
pub(crate) fn run(run: RunOptions) -> ExitCode {
    let RunOptions {
        start,
        api_sock,
        id,
        started,
        console_in,
        seccomp,
        max_body,
        metrics_path,
        mmds_metadata,
        mmds_size_limit,
        cpu_config,
    } = run;
    let mut server = None;
    let mut options = vmm::VmmOptions {
        started,
        console_in,
        instance_id: id,
        seccomp,
        mmds_metadata,
        mmds_size_limit,
        cpu_config,
        ..Default::default()
    };
    // Requests flint itself sends the VMM (the metrics file given at
    // start), through the same channel as the API's.
    let mut to_vmm = None;
    if let Some(socket) = &api_sock {
        match start_api(socket, seccomp, max_body) {
            Ok((handle, endpoint, tx)) => {
                server = Some(handle);
                options.api = Some(endpoint);
                to_vmm = Some(tx);
            }
            Err(e) => {
                eprintln!("flint: API socket {}: {e}", socket.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(path) = metrics_path {
        if to_vmm.is_none() {
            match local_endpoint() {
                Ok((endpoint, tx)) => {
                    options.api = Some(endpoint);
                    to_vmm = Some(tx);
                }
                Err(e) => {
                    eprintln!("flint: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        if let (Some(tx), Some(endpoint)) = (&to_vmm, &options.api) {
            let request = api::ApiRequest::PutMetrics(api::MetricsConfig {
                metrics_path: path,
                ..Default::default()
            });
            if let Err(e) = send_own_request(tx, &endpoint.wake, request) {
                eprintln!("flint: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let result = vmm::run(start, options);
    drop(to_vmm);
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
        Ok(vmm::RunEnd::Migrated) => {
            log::info!("the VM now runs at the migration destination; exiting");
            ExitCode::SUCCESS
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

/// Installs the API thread's seccomp filter (run on that thread).
fn confine_api_thread() -> Result<(), String> {
    vmm::seccomp::install(vmm::seccomp::ThreadKind::Api).map_err(|e| e.to_string())
}

/// The channel into the VMM that requests go through.
type ToVmm = std::sync::mpsc::Sender<api::ApiMessage>;

fn start_api(
    socket: &std::path::Path,
    seccomp: bool,
    max_body: Option<usize>,
) -> Result<(api_server::ApiServerHandle, vmm::ApiEndpoint, ToVmm), Box<dyn std::error::Error>> {
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
    let (tx, rx) = std::sync::mpsc::channel();
    let wake = EventFd::new(EFD_NONBLOCK)?;
    let mut options = api_server::ServerOptions {
        thread_init: seccomp.then_some(confine_api_thread as fn() -> Result<(), String>),
        ..Default::default()
    };
    if let Some(max_body) = max_body {
        options.max_body = max_body;
    }
    let handle = api_server::spawn_api_server_with(socket, tx.clone(), wake.try_clone()?, options)?;
    let metrics = handle.metrics_source();
    log::info!("API listening on {}", socket.display());
    Ok((
        handle,
        vmm::ApiEndpoint {
            requests: rx,
            wake,
            metrics: Box::new(move || serde_json::to_value(metrics()).unwrap_or_default()),
        },
        tx,
    ))
}

/// A request channel into the VMM without an API server (`--no-api`), for
/// the requests flint sends itself.
fn local_endpoint() -> Result<(vmm::ApiEndpoint, ToVmm), String> {
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
    let (tx, rx) = std::sync::mpsc::channel();
    let wake = EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?;
    Ok((
        vmm::ApiEndpoint {
            requests: rx,
            wake,
            metrics: Box::new(|| serde_json::Value::Null),
        },
        tx,
    ))
}

/// Queues a request of flint's own for the VMM; a refusal is logged when
/// the VMM answers (the VMM handles it as soon as its loop runs).
fn send_own_request(
    tx: &ToVmm,
    wake: &vmm_sys_util::eventfd::EventFd,
    request: api::ApiRequest,
) -> Result<(), String> {
    let (reply, answer) = std::sync::mpsc::channel();
    let what = format!("{request:?}");
    tx.send(api::ApiMessage { request, reply })
        .map_err(|_| "the VMM's request channel is closed".to_string())?;
    wake.write(1).map_err(|e| format!("waking the VMM: {e}"))?;
    std::thread::spawn(move || {
        if let Ok(api::ApiResponse::Error(e)) = answer.recv() {
            log::error!("{what}: {}", e.fault_message);
        }
    });
    Ok(())
}
