//! `flint` as a drop-in `firecracker` binary: Firecracker's command line
//! (`--api-sock`, `--config-file`, `--no-api`, logger and metrics flags, ...)
//! with no subcommand, or any command line when flint is started through a
//! link named `firecracker`. Tools that spawn Firecracker (SDKs, sandbox
//! services, CI runners) can then run flint unchanged. The flags are mapped
//! onto flint's own machinery (`vmm::run`, the API server, the logger and
//! the metrics sink); what flint cannot honour is refused at start.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;

use crate::RunOptions;

/// Firecracker's default API socket, used when `--api-sock` is not given.
pub const DEFAULT_API_SOCK: &str = "/run/firecracker.socket";

/// Firecracker's default API body limit in bytes (its
/// `HTTP_MAX_PAYLOAD_SIZE`), the default of `--http-api-max-payload-size`.
pub const DEFAULT_MAX_PAYLOAD: usize = 51_200;

/// Exit status for a command line that does not parse (Firecracker's
/// `ArgParsing`).
const EXIT_ARG_PARSING: u8 = 153;

/// Exit status for an unknown `--level` (Firecracker's `BadConfiguration`).
const EXIT_BAD_CONFIGURATION: u8 = 152;

/// Largest `--config-file` / `--metadata` file read; real ones are a few KiB.
const MAX_INPUT_FILE_BYTES: u64 = 1 << 20;

/// Firecracker's command line, flag for flag (see its `src/firecracker/src/main.rs`).
#[derive(Parser, Debug)]
#[command(
    name = "firecracker",
    about = "flint, started with Firecracker's command line",
    disable_version_flag = true
)]
pub struct FirecrackerArgs {
    /// Path to the Unix socket the API is served on.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_API_SOCK)]
    pub api_sock: PathBuf,
    /// MicroVM unique identifier (alphanumerics and '-', at most 64).
    #[arg(long, default_value = "anonymous-instance")]
    pub id: String,
    /// A custom seccomp BPF filter file: refused (flint installs its own).
    #[arg(long, value_name = "FILE")]
    pub seccomp_filter: Option<PathBuf>,
    /// Run without seccomp filters. Not recommended.
    #[arg(long, conflicts_with = "seccomp_filter")]
    pub no_seccomp: bool,
    /// Process start time (wall clock, microseconds since the epoch).
    #[arg(long, value_name = "US")]
    pub start_time_us: Option<u64>,
    /// Process start CPU time (microseconds).
    #[arg(long, value_name = "US")]
    pub start_time_cpu_us: Option<u64>,
    /// Parent process CPU time (microseconds).
    #[arg(long, value_name = "US")]
    pub parent_cpu_time_us: Option<u64>,
    /// The microVM configuration in JSON (Firecracker's full VM config).
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// JSON file with the initial MMDS contents.
    #[arg(long, value_name = "FILE")]
    pub metadata: Option<PathBuf>,
    /// Do not serve the API; requires --config-file.
    #[arg(long, requires = "config_file")]
    pub no_api: bool,
    /// File or FIFO the log goes to.
    #[arg(long, value_name = "PATH")]
    pub log_path: Option<PathBuf>,
    /// Log level: Error, Warning, Info, Debug, Trace, Off (any case).
    #[arg(long)]
    pub level: Option<String>,
    /// Only log records from this module path (and below).
    #[arg(long)]
    pub module: Option<String>,
    /// Prefix each log line with its level.
    #[arg(long)]
    pub show_level: bool,
    /// Prefix each log line with its thread, file and line.
    #[arg(long)]
    pub show_log_origin: bool,
    /// File or FIFO the metrics (JSON lines) go to.
    #[arg(long, value_name = "PATH")]
    pub metrics_path: Option<PathBuf>,
    /// Firecracker's boot-timer device; flint logs its boot figures anyway.
    #[arg(long)]
    pub boot_timer: bool,
    /// Print the version and exit.
    #[arg(long)]
    pub version: bool,
    /// Print the snapshot format version flint writes and exit.
    #[arg(long)]
    pub snapshot_version: bool,
    /// Print the format version of this snapshot state file and exit.
    #[arg(long, value_name = "FILE")]
    pub describe_snapshot: Option<PathBuf>,
    /// Largest API request body in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_PAYLOAD)]
    pub http_api_max_payload_size: usize,
    /// Largest MMDS data store in bytes (default: the API body limit).
    #[arg(long, value_name = "BYTES")]
    pub mmds_size_limit: Option<usize>,
    /// PCIe devices: refused (flint's devices are virtio-mmio).
    #[arg(long)]
    pub enable_pci: bool,
}

/// Firecracker's long flags, to recognise its command line on `flint`.
const FIRECRACKER_FLAGS: &[&str] = &[
    "api-sock",
    "id",
    "seccomp-filter",
    "no-seccomp",
    "start-time-us",
    "start-time-cpu-us",
    "parent-cpu-time-us",
    "config-file",
    "metadata",
    "no-api",
    "log-path",
    "level",
    "module",
    "show-level",
    "show-log-origin",
    "metrics-path",
    "boot-timer",
    "snapshot-version",
    "describe-snapshot",
    "http-api-max-payload-size",
    "mmds-size-limit",
    "enable-pci",
];

/// Whether this command line is Firecracker's: flint was started through a
/// link named `firecracker`, or its first argument is one of Firecracker's
/// flags (flint's own command lines start with a subcommand or with
/// `--log-level`, `--help`, `--version`).
pub fn wanted(args: &[OsString]) -> bool {
    let argv0_is_firecracker = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|name| name == "firecracker");
    let first_flag_is_firecracker = args
        .get(1)
        .and_then(|a| a.to_str())
        .and_then(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a))
        .is_some_and(|name| FIRECRACKER_FLAGS.contains(&name));
    argv0_is_firecracker || first_flag_is_firecracker
}

/// Runs flint from Firecracker's command line; exit statuses as
/// Firecracker's: 0 on a clean end, 1 on an error, 153 for a command line
/// that does not parse, 152 for an unknown log level.
pub fn main(args: Vec<OsString>, started: Instant) -> ExitCode {
    let args = match FirecrackerArgs::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_ARG_PARSING } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if args.version {
        println!(
            "Firecracker v{} (flint {})",
            api::FIRECRACKER_API_VERSION,
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    if args.snapshot_version {
        println!("v{}", vmm::snapshot::format::FORMAT_VERSION);
        return ExitCode::SUCCESS;
    }
    if let Some(path) = &args.describe_snapshot {
        return match snapshot_format_version(path) {
            Ok(version) => {
                println!("v{version}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("flint: --describe-snapshot {}: {e}", path.display());
                ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = refuse_unsupported(&args) {
        eprintln!("flint: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = check_instance_id(&args.id) {
        eprintln!("flint: --id {:?}: {e}", args.id);
        return ExitCode::FAILURE;
    }
    let level = match args.level.as_deref() {
        Some(name) => match vmm::logger::parse_level(name) {
            Some(level) => level,
            None => {
                eprintln!(
                    "flint: invalid value for --level: {name:?} (possible values: Error, Warning, Info, Debug, Trace, Off)"
                );
                return ExitCode::from(EXIT_BAD_CONFIGURATION);
            }
        },
        None => log::LevelFilter::Info,
    };
    match setup(&args, level, started) {
        Ok(options) => crate::run(options),
        Err(e) => {
            eprintln!("flint: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Refuses, with one line, the flags flint cannot honour.
pub fn refuse_unsupported(args: &FirecrackerArgs) -> Result<(), String> {
    if let Some(path) = &args.seccomp_filter {
        return Err(format!(
            "--seccomp-filter {}: flint cannot load a foreign seccomp BPF file; it installs its own per-thread filters (omit the flag, or use --no-seccomp for debugging)",
            path.display()
        ));
    }
    if args.enable_pci {
        return Err(
            "--enable-pci: flint has no PCI bus; its devices are virtio-mmio (omit the flag)"
                .into(),
        );
    }
    Ok(())
}

/// Firecracker's rule for instance ids: 1 to 64 alphanumerics or '-'.
pub fn check_instance_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() || id.len() > 64 {
        return Err("must be 1 to 64 characters");
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err("may only hold ASCII letters, digits and '-'");
    }
    Ok(())
}

/// Reads the format version from a snapshot state file's header (magic,
/// then the version), as `--describe-snapshot` prints it.
pub fn snapshot_format_version(path: &Path) -> Result<u32, String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let magic = vmm::snapshot::format::MAGIC;
    let mut header = [0u8; 12];
    let mut got = 0;
    while got < header.len() {
        match file.read(&mut header[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    if got < magic.len() || header[..magic.len()] != magic {
        return Err("not a flint snapshot state file (bad magic)".into());
    }
    if got < header.len() {
        return Err(format!(
            "truncated: {got} bytes, the header alone is {}",
            header.len()
        ));
    }
    Ok(u32::from_le_bytes([
        header[8], header[9], header[10], header[11],
    ]))
}

/// Reads a small regular file (a config or MMDS data), refusing FIFOs,
/// devices and anything over [`MAX_INPUT_FILE_BYTES`].
fn read_small_file(path: &Path) -> Result<String, String> {
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(|e| fail(&e))?;
    let meta = file.metadata().map_err(|e| fail(&e))?;
    if !meta.is_file() {
        return Err(fail(&"not a regular file"));
    }
    if meta.len() > MAX_INPUT_FILE_BYTES {
        return Err(fail(&format!("larger than {MAX_INPUT_FILE_BYTES} bytes")));
    }
    let mut text = String::new();
    file.take(MAX_INPUT_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| fail(&e))?;
    Ok(text)
}

/// The logger and metrics sections a Firecracker config file may hold,
/// applied like the flags of the same names.
#[derive(Debug, Default, PartialEq)]
pub struct ConfigFileExtras {
    /// The file's `logger` section.
    pub logger: Option<api::LoggerConfig>,
    /// The file's `metrics` section.
    pub metrics: Option<api::MetricsConfig>,
    /// The file's `cpu-config` section (a custom CPU template).
    pub cpu_config: Option<api::CpuConfig>,
}

/// Parses a Firecracker config file's text: its `logger` and `metrics`
/// sections are taken out (flint applies them as the flags), the rest is
/// flint's [`api::VmConfig`], not yet checked against the host. Paths stay
/// relative to the working directory, as Firecracker takes them.
pub fn parse_config_file(text: &str) -> Result<(api::VmConfig, ConfigFileExtras), String> {
    let mut value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut extras = ConfigFileExtras::default();
    if let Some(object) = value.as_object_mut() {
        if let Some(logger) = object.remove("logger") {
            extras.logger =
                Some(serde_json::from_value(logger).map_err(|e| format!("logger: {e}"))?);
        }
        if let Some(cpu) = object.remove("cpu-config") {
            extras.cpu_config =
                Some(serde_json::from_value(cpu).map_err(|e| format!("cpu-config: {e}"))?);
        }
        if let Some(metrics) = object.remove("metrics") {
            extras.metrics =
                Some(serde_json::from_value(metrics).map_err(|e| format!("metrics: {e}"))?);
        }
    }
    let config = api::VmConfig::from_json(&value.to_string()).map_err(|e| e.to_string())?;
    Ok((config, extras))
}

/// Applies the logger flags (and a config file's `logger` section, whose
/// fields win where set) and returns the options for [`crate::run`].
fn setup(
    args: &FirecrackerArgs,
    level: log::LevelFilter,
    started: Instant,
) -> Result<RunOptions, String> {
    let (config, extras) = match &args.config_file {
        Some(path) => {
            let text = read_small_file(path)?;
            let invalid = |e: String| format!("invalid config {}: {e}", path.display());
            let (config, extras) = parse_config_file(&text).map_err(invalid)?;
            config.validate().map_err(|e| invalid(e.to_string()))?;
            (Some(config), extras)
        }
        None => (None, ConfigFileExtras::default()),
    };
    let file_logger = extras.logger.unwrap_or_default();
    let level = match file_logger.level {
        Some(l) => vmm::logger::parse_level(&format!("{l:?}")).unwrap_or(level),
        None => level,
    };
    vmm::logger::init(level).map_err(|e| e.to_string())?;
    let log_path = file_logger.log_path.as_deref().or(args.log_path.as_deref());
    vmm::logger::configure(
        log_path,
        Some(level),
        Some(file_logger.show_level.unwrap_or(args.show_level)),
        Some(file_logger.show_log_origin.unwrap_or(args.show_log_origin)),
    )
    .map_err(|e| e.to_string())?;
    log::info!(
        "Running flint v{} as Firecracker v{} (instance {})",
        env!("CARGO_PKG_VERSION"),
        api::FIRECRACKER_API_VERSION,
        args.id
    );
    log_start_times(args);
    if args.boot_timer {
        log::info!("--boot-timer: flint logs its boot figures without a boot-timer device");
    }
    // After the start-up lines, which (as Firecracker's) are not filtered.
    vmm::logger::set_module(file_logger.module.or_else(|| args.module.clone()));

    let metrics_path = extras
        .metrics
        .map(|m| m.metrics_path)
        .or_else(|| args.metrics_path.clone());
    if let Some(path) = &metrics_path {
        // Fail at start, as Firecracker does, if the file cannot be opened.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("metrics file {}: {e}", path.display()))?;
    }
    let mmds_size_limit = args
        .mmds_size_limit
        .unwrap_or(args.http_api_max_payload_size);
    let mmds_metadata = match &args.metadata {
        Some(path) => {
            let text = read_small_file(path).map_err(|e| format!("--metadata {e}"))?;
            if text.len() > mmds_size_limit {
                return Err(format!(
                    "--metadata {}: {} bytes exceed the MMDS size limit of {mmds_size_limit} bytes",
                    path.display(),
                    text.len()
                ));
            }
            Some(
                serde_json::from_str::<serde_json::Value>(&text)
                    .map_err(|e| format!("--metadata {}: {e}", path.display()))?,
            )
        }
        None => None,
    };
    if args.no_seccomp {
        log::warn!("SECCOMP IS OFF (--no-seccomp): flint's threads are not confined; do not run untrusted guests like this");
    }
    let start = match config {
        Some(config) => vmm::Start::Boot(config),
        None => vmm::Start::Api,
    };
    Ok(RunOptions {
        start,
        api_sock: (!args.no_api).then(|| args.api_sock.clone()),
        id: args.id.clone(),
        started,
        console_in: true,
        seccomp: !args.no_seccomp,
        max_body: Some(args.http_api_max_payload_size),
        metrics_path,
        mmds_metadata,
        mmds_size_limit: Some(mmds_size_limit),
        cpu_config: extras.cpu_config,
    })
}

/// Logs how long flint took to get here from the times a launcher passed
/// (`--start-time-us`, `--start-time-cpu-us`, `--parent-cpu-time-us`).
fn log_start_times(args: &FirecrackerArgs) {
    let Some(start_us) = args.start_time_us else {
        return;
    };
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    // Firecracker's `api_server.process_startup_time_us` (the CPU figure
    // stays 0: flint does not measure its own CPU time here).
    vmm::metrics::record_process_startup(now_us.saturating_sub(start_us), 0);
    log::info!(
        "process start to flint main: {} us (start-time-cpu-us {:?}, parent-cpu-time-us {:?})",
        now_us.saturating_sub(start_us),
        args.start_time_cpu_us,
        args.parent_cpu_time_us
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn recognises_firecracker_command_lines() {
        assert!(wanted(&os(&["/usr/bin/firecracker"])));
        assert!(wanted(&os(&["flint", "--api-sock", "/tmp/s"])));
        assert!(wanted(&os(&["flint", "--no-api", "--config-file", "c"])));
        assert!(wanted(&os(&["flint", "--level=Debug"])));
        assert!(!wanted(&os(&["flint", "run", "--api-sock", "/tmp/s"])));
        assert!(!wanted(&os(&["flint", "--log-level", "debug", "run"])));
        assert!(!wanted(&os(&["flint", "--version"])));
        assert!(!wanted(&os(&["flint"])));
    }

    #[test]
    fn parses_firecracker_flags() {
        let args = FirecrackerArgs::try_parse_from(os(&[
            "firecracker",
            "--api-sock",
            "/tmp/a.sock",
            "--id",
            "vm-1",
            "--level",
            "Debug",
            "--show-level",
            "--show-log-origin",
            "--metrics-path",
            "/tmp/m",
            "--http-api-max-payload-size",
            "1000",
        ]))
        .unwrap();
        assert_eq!(args.api_sock, PathBuf::from("/tmp/a.sock"));
        assert_eq!(args.id, "vm-1");
        assert!(args.show_level && args.show_log_origin);
        assert_eq!(args.http_api_max_payload_size, 1000);
        let defaults = FirecrackerArgs::try_parse_from(os(&["firecracker"])).unwrap();
        assert_eq!(defaults.api_sock, PathBuf::from(DEFAULT_API_SOCK));
        assert_eq!(defaults.id, "anonymous-instance");
        assert!(FirecrackerArgs::try_parse_from(os(&["firecracker", "--no-api"])).is_err());
        assert!(FirecrackerArgs::try_parse_from(os(&[
            "firecracker",
            "--no-seccomp",
            "--seccomp-filter",
            "f"
        ]))
        .is_err());
    }

    #[test]
    fn refuses_what_flint_cannot_honour() {
        let pci = FirecrackerArgs::try_parse_from(os(&["firecracker", "--enable-pci"])).unwrap();
        assert!(refuse_unsupported(&pci)
            .unwrap_err()
            .contains("--enable-pci"));
        let bpf =
            FirecrackerArgs::try_parse_from(os(&["firecracker", "--seccomp-filter", "f"])).unwrap();
        assert!(refuse_unsupported(&bpf)
            .unwrap_err()
            .contains("--seccomp-filter"));
    }

    #[test]
    fn instance_ids() {
        assert!(check_instance_id("abc-123").is_ok());
        assert!(check_instance_id("").is_err());
        assert!(check_instance_id("a/b").is_err());
        assert!(check_instance_id(&"a".repeat(65)).is_err());
    }

    #[test]
    fn config_file_sections() {
        let text = r#"{
            "boot-source": {"kernel_image_path": "vmlinux"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "smt": false},
            "logger": {"log_path": "/tmp/l", "level": "Debug"},
            "metrics": {"metrics_path": "/tmp/m"}
        }"#;
        let (config, extras) = parse_config_file(text).unwrap();
        assert_eq!(
            config.boot_source.kernel_image_path,
            PathBuf::from("vmlinux")
        );
        assert_eq!(
            extras.logger.unwrap().log_path,
            Some(PathBuf::from("/tmp/l"))
        );
        assert_eq!(
            extras.metrics.unwrap().metrics_path,
            PathBuf::from("/tmp/m")
        );
        let (_, extras) = parse_config_file(
            r#"{"boot-source": {"kernel_image_path": "k"}, "cpu-config": {"cpuid_modifiers": [{"leaf": "0x1", "modifiers": [{"register": "ecx", "bitmap": "0b0x"}]}]}}"#,
        )
        .unwrap();
        assert_eq!(extras.cpu_config.unwrap().cpuid_modifiers[0].leaf, 1);
        let (_, extras) = parse_config_file(
            r#"{"boot-source": {"kernel_image_path": "k"}, "cpu-config": {"msr_modifiers": [{"addr": "0x10a", "bitmap": "0b0"}]}}"#,
        )
        .unwrap();
        assert_eq!(extras.cpu_config.unwrap().msr_modifiers[0].addr, 0x10a);
        let err = parse_config_file(
            r#"{"boot-source": {"kernel_image_path": "k"}, "cpu-config": {"msr_modifiers": [{"addr": "0x10a", "bitmap": "0b2"}]}}"#,
        )
        .unwrap_err();
        assert!(
            err.contains("cpu-config") && err.contains("msr_modifiers[0].bitmap"),
            "{err}"
        );
    }

    #[test]
    fn describe_snapshot_header() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        let mut bytes = vmm::snapshot::format::MAGIC.to_vec();
        bytes.extend_from_slice(&7u32.to_le_bytes());
        std::fs::write(&good, &bytes).unwrap();
        assert_eq!(snapshot_format_version(&good).unwrap(), 7);
        let bad = dir.path().join("bad");
        std::fs::write(&bad, b"garbage!garbage").unwrap();
        assert!(snapshot_format_version(&bad)
            .unwrap_err()
            .contains("bad magic"));
        let short = dir.path().join("short");
        std::fs::write(&short, &bytes[..10]).unwrap();
        assert!(snapshot_format_version(&short)
            .unwrap_err()
            .contains("truncated"));
    }
}
