//! `flint container ...`: Docker's container lifecycle on microVMs. The
//! work is in the `container` crate (`container::lifecycle`); this module
//! is the command line: parsing, output formats, terminals.

mod exec;
mod ops;
mod run;
mod term;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use container::lifecycle::state::Runtime;
use container::lifecycle::store::Store;
use container::ContainerError;

/// `flint container` subcommands.
#[derive(Subcommand)]
pub enum ContainerCommand {
    /// Run a command from an image in a new microVM: one-shot (exits with
    /// the command's status), or a long-lived container with -d / -i / -t /
    /// --name / -p / -v.
    Run(run::RunArgs),
    /// List containers (running ones; -a: all).
    Ps {
        /// Show exited containers too.
        #[arg(short, long)]
        all: bool,
        /// Print only the ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Run a command in a running container.
    Exec(exec::ExecArgs),
    /// Print a container's output (its main process's stdout and stderr).
    Logs {
        /// Keep printing new output until the container ends.
        #[arg(short, long)]
        follow: bool,
        container: String,
    },
    /// Stop containers: SIGTERM to the main process, SIGKILL after the
    /// grace time, then the VM powers off.
    Stop {
        /// Seconds to wait before SIGKILL.
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Send a signal to containers' main processes (default SIGKILL).
    Kill {
        /// Signal name (KILL, SIGTERM, ...) or number.
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Wait for containers to end; prints their exit statuses.
    Wait {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers (with -f also running ones, killed first).
    Rm {
        /// Kill a running container first.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Print a container's state as JSON.
    Inspect {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Load an image tarball (OCI layout or `docker save`) into the local
    /// image store, under the names it carries (or --tag).
    Load {
        /// The tarball [default: stdin].
        #[arg(short, long, value_name = "TARBALL")]
        input: Option<PathBuf>,
        /// Store it under this NAME[:TAG] instead of its own names.
        #[arg(long)]
        tag: Option<String>,
    },
    /// List the images in the local store.
    Images,
    /// Remove images from the local store.
    Rmi {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Internal: the process that watches a container's flint.
    #[command(name = "__monitor", hide = true)]
    Monitor { id: String },
    /// Internal: a detached container's flint process.
    #[command(name = "__vm", hide = true)]
    Vm { id: String },
}

/// Runs a `flint container` command.
pub fn main(command: ContainerCommand) -> ExitCode {
    let (what, result) = match command {
        ContainerCommand::Run(args) => ("run", run::run(args)),
        ContainerCommand::Ps { all, quiet } => ("ps", ops::ps(all, quiet)),
        ContainerCommand::Exec(args) => ("exec", exec::exec(args)),
        ContainerCommand::Logs { follow, container } => ("logs", ops::logs(&container, follow)),
        ContainerCommand::Stop { time, containers } => ("stop", ops::stop(&containers, time)),
        ContainerCommand::Kill { signal, containers } => ("kill", ops::kill(&containers, &signal)),
        ContainerCommand::Wait { containers } => ("wait", ops::wait(&containers)),
        ContainerCommand::Rm { force, containers } => ("rm", ops::rm(&containers, force)),
        ContainerCommand::Inspect { containers } => ("inspect", ops::inspect(&containers)),
        ContainerCommand::Load { input, tag } => ("load", load(input.as_deref(), tag.as_deref())),
        ContainerCommand::Images => ("images", images()),
        ContainerCommand::Rmi { images } => ("rmi", rmi(&images)),
        ContainerCommand::Monitor { id } => {
            let code = Runtime::open().map(|r| container::lifecycle::daemon::monitor(&r, &id));
            ("__monitor", code)
        }
        ContainerCommand::Vm { id } => {
            let code = Runtime::open().map(|r| container::lifecycle::daemon::run_detached(&r, &id));
            ("__vm", code)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("flint container {what}: {e}");
            ExitCode::from(125)
        }
    }
}

/// The tarball an image reference names: an existing file, else a
/// `name:tag` of the local store.
pub fn resolve_image(reference: &Path) -> Result<PathBuf, ContainerError> {
    if reference.is_file() {
        return Ok(reference.to_owned());
    }
    let text = reference.to_string_lossy();
    if let Ok(store) = Store::open() {
        if let Some((_, path)) = store.find(&text) {
            return Ok(path);
        }
    }
    Err(ContainerError::Usage(format!(
        "image {text} not found: not a tarball, and not in the local store (flint container load -i TARBALL)"
    )))
}

fn load(input: Option<&Path>, tag: Option<&str>) -> Result<i32, ContainerError> {
    let store = Store::open()?;
    let names = match input {
        Some(p) => {
            let file = std::fs::File::open(p).map_err(|source| ContainerError::Io {
                what: format!("opening {}", p.display()),
                source,
            })?;
            store.load(file, tag)?
        }
        None => store.load(std::io::stdin().lock(), tag)?,
    };
    for n in names {
        println!("Loaded image: {n}");
    }
    Ok(0)
}

fn images() -> Result<i32, ContainerError> {
    let store = Store::open()?;
    println!(
        "{:<40} {:<16} {:<20} {:>10}",
        "REPOSITORY", "TAG", "IMAGE ID", "SIZE"
    );
    for e in store.list() {
        let (repo, tag) = e.name.rsplit_once(':').unwrap_or((&e.name, ""));
        let id = e.digest.strip_prefix("sha256:").unwrap_or(&e.digest);
        println!(
            "{:<40} {:<16} {:<20} {:>10}",
            repo,
            tag,
            &id[..id.len().min(12)],
            ops::human_size(e.size)
        );
    }
    Ok(0)
}

fn rmi(names: &[String]) -> Result<i32, ContainerError> {
    let store = Store::open()?;
    for n in names {
        store.remove(n)?;
        println!("Untagged: {}", container::lifecycle::store::normalize(n));
    }
    Ok(0)
}
