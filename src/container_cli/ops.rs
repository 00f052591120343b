//! `ps`, `logs`, `stop`, `kill`, `wait`, `rm`, `inspect`.

use std::io::Write;
use std::time::{Duration, Instant};

use container::lifecycle::create::log_path;
use container::lifecycle::daemon;
use container::lifecycle::logfile::{self, Stream};
use container::lifecycle::state::{self, Runtime, State, Status};
use container::ContainerError;

/// A byte count as `ps`/`images` show it.
pub fn human_size(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1}GB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1}MB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1}kB", n as f64 / 1024.0),
        n => format!("{n}B"),
    }
}

fn ago(secs: u64) -> String {
    let d = state::now().saturating_sub(secs);
    match d {
        0..=59 => format!("{d} seconds"),
        60..=3599 => format!("{} minutes", d / 60),
        3600..=172_799 => format!("{} hours", d / 3600),
        _ => format!("{} days", d / 86400),
    }
}

fn load(runtime: &Runtime, key: &str) -> Result<State, ContainerError> {
    let id = runtime.resolve(key)?;
    Ok(state::load(&runtime.dir(&id))?.effective())
}

/// `ps [-a] [-q]`.
pub fn ps(all: bool, quiet: bool) -> Result<i32, ContainerError> {
    let runtime = Runtime::open()?;
    let list: Vec<State> = runtime
        .list()
        .into_iter()
        .filter(|s| all || s.status != Status::Exited)
        .collect();
    if quiet {
        for s in list {
            println!("{}", &s.id[..12]);
        }
        return Ok(0);
    }
    println!(
        "{:<12}  {:<24}  {:<22}  {:<16}  {:<28}  {:<24}  NAMES",
        "CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS"
    );
    for s in list {
        let mut command = format!("\"{}\"", s.command.join(" "));
        if command.len() > 22 {
            command = format!("{}…\"", &command[..command.floor_char_boundary_compat(19)]);
        }
        let status = match (s.status, s.started_at, s.finished_at) {
            (Status::Running, Some(t), _) => format!("Up {}", ago(t)),
            (Status::Exited, _, Some(t)) => format!("{} {} ago", s.describe(), ago(t)),
            _ => s.describe(),
        };
        let ports: Vec<String> = s
            .ports
            .iter()
            .map(|p| format!("{}:{}->{}/tcp", p.host_ip, p.host_port, p.guest_port))
            .collect();
        println!(
            "{:<12}  {:<24}  {:<22}  {:<16}  {:<28}  {:<24}  {}",
            &s.id[..12],
            s.image,
            command,
            format!("{} ago", ago(s.created)),
            status,
            ports.join(", "),
            s.name
        );
    }
    Ok(0)
}

trait FloorBoundary {
    fn floor_char_boundary_compat(&self, at: usize) -> usize;
}

impl FloorBoundary for String {
    fn floor_char_boundary_compat(&self, mut at: usize) -> usize {
        while !self.is_char_boundary(at) {
            at -= 1;
        }
        at
    }
}

/// `logs [-f]`.
pub fn logs(key: &str, follow: bool) -> Result<i32, ContainerError> {
    let runtime = Runtime::open()?;
    let id = runtime.resolve(key)?;
    let dir = runtime.dir(&id);
    let path = log_path(&dir);
    let mut offset = 0;
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    loop {
        // Whether the container had ended before this read: then nothing
        // more can come after it.
        let ended = state::load(&dir)?.effective().status == Status::Exited;
        let (records, next) =
            logfile::read_from(&path, offset).map_err(|source| ContainerError::Io {
                what: format!("reading {}", path.display()),
                source,
            })?;
        let more = next != offset;
        offset = next;
        for r in records {
            let _ = match r.stream {
                Stream::Stdout => out.write_all(&r.data),
                Stream::Stderr => err.write_all(&r.data),
            };
        }
        let _ = out.flush();
        if !follow || (ended && !more) {
            return Ok(0);
        }
        if !more {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn signal_number(name: &str) -> Result<i32, ContainerError> {
    if let Ok(n) = name.parse::<i32>() {
        return Ok(n);
    }
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    Ok(match bare {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "WINCH" => libc::SIGWINCH,
        _ => return Err(ContainerError::Usage(format!("unknown signal {name:?}"))),
    })
}

/// Sends `signal` to the container's main process.
fn signal_main(runtime: &Runtime, s: &State, signal: i32) -> Result<(), ContainerError> {
    let pid = s.main_pid.ok_or_else(|| {
        ContainerError::Usage(format!("container {} has no main process yet", s.name))
    })?;
    daemon::agent(&runtime.dir(&s.id))
        .and_then(|a| a.signal(pid as i32, signal))
        .map_err(|e| ContainerError::Usage(format!("signalling {}: {e}", s.name)))
}

/// Whether the container's VMM and its supervisor (which removes the jail
/// after the VMM) have gone.
fn flint_gone(runtime: &Runtime, id: &str) -> bool {
    state::load(&runtime.dir(id))
        .map(|s| {
            let s = s.effective();
            s.status == Status::Exited
                && ![s.flint, s.supervisor]
                    .into_iter()
                    .flatten()
                    .any(|p| p.alive())
        })
        .unwrap_or(true)
}

fn wait_gone(runtime: &Runtime, id: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if flint_gone(runtime, id) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    flint_gone(runtime, id)
}

/// `stop [-t SECS]`.
pub fn stop(keys: &[String], grace: u64) -> Result<i32, ContainerError> {
    let runtime = Runtime::open()?;
    for key in keys {
        let s = load(&runtime, key)?;
        if s.status == Status::Running {
            let _ = signal_main(&runtime, &s, libc::SIGTERM);
            if !wait_gone(&runtime, &s.id, Duration::from_secs(grace)) {
                let _ = signal_main(&runtime, &s, libc::SIGKILL);
                if !wait_gone(&runtime, &s.id, Duration::from_secs(30)) {
                    if let Some(p) = s.flint {
                        p.kill(libc::SIGKILL);
                    }
                    wait_gone(&runtime, &s.id, Duration::from_secs(10));
                }
            }
        } else if s.status == Status::Created {
            for p in [s.flint, s.supervisor, s.monitor].into_iter().flatten() {
                p.kill(libc::SIGKILL);
            }
            wait_gone(&runtime, &s.id, Duration::from_secs(10));
        }
        println!("{key}");
    }
    Ok(0)
}

/// `kill [-s SIG]`.
pub fn kill(keys: &[String], signal: &str) -> Result<i32, ContainerError> {
    let signal = signal_number(signal)?;
    let runtime = Runtime::open()?;
    for key in keys {
        let s = load(&runtime, key)?;
        if s.status != Status::Running {
            return Err(ContainerError::Usage(format!(
                "container {key} is not running"
            )));
        }
        signal_main(&runtime, &s, signal)?;
        println!("{key}");
    }
    Ok(0)
}

/// `wait`: prints each container's exit status; exits with the last.
pub fn wait(keys: &[String]) -> Result<i32, ContainerError> {
    let runtime = Runtime::open()?;
    let mut last = 0;
    for key in keys {
        let id = runtime.resolve(key)?;
        while !flint_gone(&runtime, &id) {
            std::thread::sleep(Duration::from_millis(200));
        }
        let s = state::load(&runtime.dir(&id))?.effective();
        match s.exit_code {
            Some(c) => {
                println!("{c}");
                last = c;
            }
            None => {
                println!("125");
                eprintln!("{key}: {}", s.reason.as_deref().unwrap_or("no exit status"));
                last = 125;
            }
        }
    }
    Ok(last)
}

/// `rm [-f]`.
pub fn rm(keys: &[String], force: bool) -> Result<i32, ContainerError> {
    let runtime = Runtime::open()?;
    for key in keys {
        let s = load(&runtime, key)?;
        let live = [s.flint, s.supervisor, s.monitor]
            .into_iter()
            .flatten()
            .any(|p| p.alive());
        if live {
            if !force {
                return Err(ContainerError::Usage(format!(
                    "container {key} is running: stop it first, or use rm -f"
                )));
            }
            for p in [s.flint, s.supervisor, s.monitor].into_iter().flatten() {
                p.kill(libc::SIGKILL);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while [s.flint, s.supervisor, s.monitor]
                .into_iter()
                .flatten()
                .any(|p| p.alive())
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let dir = runtime.dir(&s.id);
        let _lock = state::lock(&dir)?;
        runtime.remove(&s)?;
        println!("{key}");
    }
    Ok(0)
}

/// `inspect`: the effective state of each container, as a JSON array.
pub fn inspect(keys: &[String]) -> Result<i32, ContainerError> {
    let runtime = Runtime::open()?;
    let mut all = Vec::new();
    for key in keys {
        let s = load(&runtime, key)?;
        let mut v = serde_json::to_value(&s)
            .map_err(|e| ContainerError::Internal(format!("encoding the state: {e}")))?;
        v["state_dir"] = runtime.dir(&s.id).to_string_lossy().into_owned().into();
        v["jailed"] = s.jail.is_some().into();
        all.push(v);
    }
    let text = serde_json::to_string_pretty(&all)
        .map_err(|e| ContainerError::Internal(format!("encoding the state: {e}")))?;
    println!("{text}");
    Ok(0)
}
