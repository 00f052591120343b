//! `flint container exec [-i] [-t] N CMD...`, and the terminal relay it
//! shares with an attached `run -i -t`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use agent_protocol::{ExecEvent, ExecInput, ExecSession, ExecSpec, ExitStatus};
use container::lifecycle::daemon;
use container::lifecycle::logfile::{LogWriter, Stream};
use container::lifecycle::state::{self, Runtime, Status};
use container::ContainerError;

use super::term;

/// `exec` options.
#[derive(clap::Args)]
pub struct ExecArgs {
    /// Keep stdin open and send it to the command.
    #[arg(short, long)]
    interactive: bool,
    /// Run the command on a terminal.
    #[arg(short, long)]
    tty: bool,
    /// Set an environment variable (KEY=VALUE), added to the container's.
    #[arg(short, long = "env")]
    env: Vec<String>,
    /// Working directory [default: the container's].
    #[arg(short, long)]
    workdir: Option<String>,
    /// USER[:GROUP] [default: the container's].
    #[arg(short, long)]
    user: Option<String>,
    container: String,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn agent_err(e: agent_protocol::ClientError) -> ContainerError {
    ContainerError::Usage(format!("the container's agent: {e}"))
}

/// Runs the command; returns its status as a shell reports it.
pub fn exec(args: ExecArgs) -> Result<i32, ContainerError> {
    let runtime = Runtime::open()?;
    let id = runtime.resolve(&args.container)?;
    let dir = runtime.dir(&id);
    let st = state::load(&dir)?.effective();
    if st.status != Status::Running {
        return Err(ContainerError::Usage(format!(
            "container {} is not running",
            args.container
        )));
    }
    let mut env = st.env.clone();
    for kv in &args.env {
        let key = kv.split('=').next().unwrap_or(kv);
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    let spec = ExecSpec {
        argv: args.command.clone(),
        env,
        cwd: Some(args.workdir.clone().unwrap_or(st.cwd.clone())),
        user: args.user.clone().or(st.user.clone()),
        tty: args.tty.then(term::size),
        root: None,
        rlimits: Vec::new(),
    };
    let session = daemon::agent(&dir)
        .and_then(|a| a.exec(spec))
        .map_err(agent_err)?;
    let status = relay(session, args.interactive, args.tty, None)?;
    Ok(status.shell_code())
}

/// Relays a session to this terminal: stdin (with `interactive`), output,
/// window sizes and raw mode (with `tty`); output is also logged to `log`.
pub fn relay(
    mut session: ExecSession<UnixStream>,
    interactive: bool,
    tty: bool,
    log: Option<&LogWriter>,
) -> Result<ExitStatus, ContainerError> {
    let stream = session
        .stream()
        .try_clone()
        .map_err(|source| ContainerError::Io {
            what: "duplicating the agent connection".into(),
            source,
        })?;
    let _raw = (tty && interactive).then(term::RawMode::enter);
    if tty {
        term::watch_resize();
        let resize = stream.try_clone().ok();
        std::thread::spawn(move || {
            let Some(s) = resize else { return };
            let mut input = ExecInput::new(s);
            loop {
                std::thread::sleep(Duration::from_millis(100));
                if term::resized() {
                    let size = term::size();
                    if input.resize(size.rows, size.cols).is_err() {
                        return;
                    }
                }
            }
        });
    }
    let mut input = ExecInput::new(stream);
    if interactive {
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 16 * 1024];
            let mut stdin = std::io::stdin().lock();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if input.stdin(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = input.close_stdin();
        });
    } else {
        input.close_stdin().map_err(agent_err)?;
    }
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    loop {
        match session.next_event().map_err(agent_err)? {
            ExecEvent::Stdout(b) => {
                let _ = out.write_all(&b).and_then(|()| out.flush());
                if let Some(l) = log {
                    l.record(Stream::Stdout, &b);
                }
            }
            ExecEvent::Stderr(b) => {
                let _ = err.write_all(&b).and_then(|()| err.flush());
                if let Some(l) = log {
                    l.record(Stream::Stderr, &b);
                }
            }
            ExecEvent::Exited(status) => return Ok(status),
        }
    }
}
