//! `flint ctl`: a small client for the control API.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

/// Arguments of `flint ctl`.
#[derive(Args)]
pub struct CtlArgs {
    /// The API socket of the flint to talk to.
    #[arg(long, value_name = "PATH")]
    api_sock: PathBuf,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Show the instance id, state and version (GET /).
    Info,
    /// Boot the configured VM (InstanceStart).
    Boot,
    /// Pause the vCPUs (PATCH /vm Paused).
    Pause,
    /// Resume the vCPUs (PATCH /vm Resumed).
    Resume,
    /// Print the VM's configuration as a config file (GET /vm/config).
    Config,
    /// Stop the running VM and end flint (the `Stop` action).
    Stop,
    /// Press Ctrl+Alt+Del on the guest's keyboard (SendCtrlAltDel).
    CtrlAltDel,
    /// Send any request: `flint ctl put /drives/rootfs '{...}'`.
    Get { path: String },
    /// PUT with a JSON body.
    Put { path: String, body: String },
    /// PATCH with a JSON body.
    Patch { path: String, body: String },
}

/// Runs a `flint ctl` command; prints the response body, exits non-zero on an error status.
pub fn main(args: CtlArgs) -> ExitCode {
    let (method, path, body): (&str, String, Option<String>) = match args.command {
        CtlCommand::Info => ("GET", "/".into(), None),
        CtlCommand::Boot => (
            "PUT",
            "/actions".into(),
            Some(r#"{"action_type":"InstanceStart"}"#.into()),
        ),
        CtlCommand::Pause => ("PATCH", "/vm".into(), Some(r#"{"state":"Paused"}"#.into())),
        CtlCommand::Resume => ("PATCH", "/vm".into(), Some(r#"{"state":"Resumed"}"#.into())),
        CtlCommand::Config => ("GET", "/vm/config".into(), None),
        CtlCommand::Stop => (
            "PUT",
            "/actions".into(),
            Some(r#"{"action_type":"Stop"}"#.into()),
        ),
        CtlCommand::CtrlAltDel => (
            "PUT",
            "/actions".into(),
            Some(r#"{"action_type":"SendCtrlAltDel"}"#.into()),
        ),
        CtlCommand::Get { path } => ("GET", path, None),
        CtlCommand::Put { path, body } => ("PUT", path, Some(body)),
        CtlCommand::Patch { path, body } => ("PATCH", path, Some(body)),
    };
    match api::client::request(&args.api_sock, method, &path, body.as_deref()) {
        Ok((status, text)) => {
            if !text.is_empty() {
                println!("{text}");
            }
            if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                eprintln!("flint ctl: {method} {path}: HTTP {status}");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("flint ctl: {e}");
            ExitCode::FAILURE
        }
    }
}
