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
    /// Snapshots: `snapshot create DIR [--diff]`, `snapshot load DIR [--resume]`.
    #[command(subcommand)]
    Snapshot(SnapshotCtl),
    /// Live-migrate the VM to a `flint run --migrate-listen ADDR`.
    Migrate {
        /// unix:PATH or tcp:HOST:PORT.
        #[arg(long)]
        to: String,
        /// The pre-shared key file (the destination's --migrate-key).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Send any request: `flint ctl put /drives/rootfs '{...}'`.
    Get { path: String },
    /// PUT with a JSON body.
    Put { path: String, body: String },
    /// PATCH with a JSON body.
    Patch { path: String, body: String },
}

#[derive(Subcommand)]
enum SnapshotCtl {
    /// Save the paused VM to DIR/vmstate and DIR/memory.
    Create {
        /// Directory for the snapshot files (created if missing).
        dir: PathBuf,
        /// Only the memory written since the last snapshot.
        #[arg(long)]
        diff: bool,
    },
    /// Restore DIR/vmstate + DIR/memory into a fresh flint.
    Load {
        /// Directory with the snapshot files.
        dir: PathBuf,
        /// Run the vCPUs once restored.
        #[arg(long)]
        resume: bool,
    },
}

fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
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
        CtlCommand::Snapshot(SnapshotCtl::Create { dir, diff }) => {
            if let Err(e) = std::fs::create_dir_all(&dir) {
                eprintln!("flint ctl: {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
            let dir = absolute(&dir);
            let body = serde_json::json!({
                "snapshot_path": dir.join("vmstate"),
                "mem_file_path": dir.join("memory"),
                "snapshot_type": if diff { "Diff" } else { "Full" },
            });
            ("PUT", "/snapshot/create".into(), Some(body.to_string()))
        }
        CtlCommand::Snapshot(SnapshotCtl::Load { dir, resume }) => {
            let dir = absolute(&dir);
            let body = serde_json::json!({
                "snapshot_path": dir.join("vmstate"),
                "mem_file_path": dir.join("memory"),
                "resume_vm": resume,
            });
            ("PUT", "/snapshot/load".into(), Some(body.to_string()))
        }
        CtlCommand::Migrate { to, key } => (
            "PUT",
            "/migrate".into(),
            Some(serde_json::json!({ "destination": to, "key_path": absolute(&key) }).to_string()),
        ),
        CtlCommand::Get { path } => ("GET", path, None),
        CtlCommand::Put { path, body } => ("PUT", path, Some(body)),
        CtlCommand::Patch { path, body } => ("PATCH", path, Some(body)),
    };
    match api_server::client::request(&args.api_sock, method, &path, body.as_deref()) {
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
