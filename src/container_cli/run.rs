//! `flint container run`: one-shot as before, or a long-lived container
//! (`-d`, `-i`, `-t`, `--name`, `-p`, `-v`). Detached, a monitor process
//! (own session) starts the container's flint, which reports `ready` on a
//! pipe once the main process runs; attached, this process is the
//! container's flint and relays the main process to the terminal.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use container::lifecycle::create::{self, CreateOptions};
use container::lifecycle::state::{self, Runtime, Status};
use container::lifecycle::{daemon, ports, volumes};
use container::{ContainerError, ContainerRunArgs};

use super::{exec, resolve_image, term};

/// `run` options: a one-shot run's, plus the lifecycle ones.
#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    base: ContainerRunArgs,
    /// Run in the background; print the container id.
    #[arg(short, long)]
    detach: bool,
    /// Name the container (default: generated).
    #[arg(long)]
    name: Option<String>,
    /// Publish a container port: [HOST_IP:]HOST_PORT:CONTAINER_PORT.
    #[arg(short, long = "publish", value_name = "[IP:]HOST:GUEST")]
    publish: Vec<String>,
    /// Share a host directory: HOST_DIR:CONTAINER_DIR[:ro] (virtio-fs).
    #[arg(short, long = "volume", value_name = "HOST:GUEST[:ro]")]
    volume: Vec<String>,
    /// Keep stdin open and send it to the main process (attached).
    #[arg(short, long)]
    interactive: bool,
    /// Run the main process on a terminal.
    #[arg(short, long)]
    tty: bool,
    /// Run the container's VMM unjailed even as root (also FLINT_NO_JAIL=1).
    /// By default, as root, it runs under flint-jailer: its own root
    /// directory, an unprivileged uid, a cgroup with the --memory/--cpus
    /// limits.
    #[arg(long)]
    no_jail: bool,
}

/// Runs the command.
pub fn run(mut args: RunArgs) -> Result<i32, ContainerError> {
    // `run IMAGE [CMD...]`: the first word is the image when neither
    // --image nor --rootfs is given.
    let image_ref = match (&args.base.image, &args.base.rootfs) {
        (None, None) => {
            if args.base.command.is_empty() {
                return Err(ContainerError::Usage("no image given".into()));
            }
            let r = args.base.command.remove(0);
            args.base.image = Some(resolve_image(&PathBuf::from(&r))?);
            r
        }
        (Some(p), None) => {
            let r = p.to_string_lossy().into_owned();
            args.base.image = Some(resolve_image(p)?);
            r
        }
        (_, Some(dir)) => dir.to_string_lossy().into_owned(),
    };
    let long_lived = args.detach
        || args.interactive
        || args.tty
        || args.name.is_some()
        || !args.publish.is_empty()
        || !args.volume.is_empty();
    if !long_lived {
        return container::run(args.base).map(i32::from);
    }
    let options = CreateOptions {
        name: args.name.clone(),
        image_ref,
        ports: args
            .publish
            .iter()
            .map(|p| ports::parse_publish(p))
            .collect::<Result<_, _>>()?,
        volumes: args
            .volume
            .iter()
            .enumerate()
            .map(|(i, v)| volumes::parse_volume(v, i))
            .collect::<Result<_, _>>()?,
        tty: args.tty,
        no_jail: args.no_jail,
    };
    // A taken port is refused before anything is built.
    drop(ports::bind(&options.ports)?);
    if !options.volumes.is_empty() {
        volumes::find_virtiofsd()?;
    }
    let runtime = Runtime::open()?;
    let mut progress: Box<dyn std::io::Write> = match args.base.quiet {
        true => Box::new(std::io::sink()),
        false => Box::new(std::io::stderr()),
    };
    let st = create::create(&runtime, &args.base, &options, &mut *progress)?;
    if args.detach {
        detached(&runtime, &st.id)
    } else {
        attached(&runtime, &st.id, args.interactive, args.tty)
    }
}

/// Starts the monitor and waits for the container's flint's `ready`.
fn detached(runtime: &Runtime, id: &str) -> Result<i32, ContainerError> {
    let dir = runtime.dir(id);
    let exe = std::env::current_exe().map_err(|source| ContainerError::Io {
        what: "finding flint's executable".into(),
        source,
    })?;
    let log =
        std::fs::File::create(dir.join("flint.log")).map_err(|source| ContainerError::Io {
            what: "creating the flint log".into(),
            source,
        })?;
    let mut cmd = Command::new(exe);
    cmd.args(["container", "__monitor", id])
        .env("FLINT_RUNTIME_DIR", &runtime.root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    // SAFETY: setsid and fcntl/close_range on plain integers between fork
    // and exec (async-signal-safe): the container leaves this terminal's
    // session and its signals, and keeps none of the caller's descriptors
    // (a lock or pipe the caller holds must not live as long as the
    // container).
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            cloexec_from(3);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| ContainerError::Io {
        what: "starting the container's monitor".into(),
        source,
    })?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    match line.trim_end() {
        "ready" => {
            println!("{id}");
            Ok(0)
        }
        other => {
            let reason = other
                .strip_prefix("error: ")
                .map(str::to_owned)
                .or_else(|| state::load(&dir).ok().and_then(|s| s.effective().reason))
                .unwrap_or_else(|| "the container's flint ended before starting it".into());
            Err(ContainerError::Usage(format!(
                "{reason} (container {}; flint container rm it)",
                &id[..12]
            )))
        }
    }
}

/// This process is the container's flint; the main process is relayed to
/// this terminal (and logged).
fn attached(
    runtime: &Runtime,
    id: &str,
    interactive: bool,
    tty: bool,
) -> Result<i32, ContainerError> {
    let mut vm = match daemon::boot(runtime, id) {
        Ok(vm) => vm,
        Err(e) => {
            let _ = state::update(&runtime.dir(id), |s| {
                s.status = Status::Exited;
                s.reason = Some(e.to_string());
            });
            return Err(e);
        }
    };
    let session = match vm.start_main(tty.then(term::size)) {
        Ok(s) => s,
        Err(e) => {
            vm.finish(Err(e.to_string()));
            return Err(e);
        }
    };
    vm.serve_ports();
    let pid = session.pid();
    let log = vm.log.clone();
    let end = match exec::relay(session, interactive, tty, Some(&log)) {
        Ok(status) => Ok(status),
        Err(e) => vm.lost(pid, agent_protocol::ClientError::Unexpected(e.to_string())),
    };
    Ok(vm.finish(end))
}

/// Marks every descriptor from `first` on close-on-exec (the child's stdio
/// is already in place below it). Async-signal-safe: for `pre_exec`.
fn cloexec_from(first: u32) {
    /// `CLOSE_RANGE_CLOEXEC` (Linux 5.11); older kernels get the loop.
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes descriptor flags.
    let done =
        unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if done == 0 {
        return;
    }
    for fd in first as i32..4096 {
        // SAFETY: F_SETFD on a descriptor number; EBADF for unused ones.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}
