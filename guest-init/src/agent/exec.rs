//! Exec sessions: one process per connection, its stdio over pipes or a
//! pseudo-terminal, relayed as frames until it exits.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use agent_protocol::{read_frame, write_frame, ExecSpec, ExitStatus, Frame, Response, MAX_CHUNK};

use super::pty;
use super::reaper::Reaper;
use super::rlimit;
use crate::resolve_user;

/// `PATH` for processes whose environment has none (Docker's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// What `CloseStdin` writes to a terminal: the EOF character (^D).
const TTY_EOF: u8 = 0x04;

/// Frames to the host from several threads; after the host went away,
/// sending does nothing, so the process's output is drained and dropped.
pub struct Sender {
    conn: Mutex<UnixStream>,
    gone: AtomicBool,
}

impl Sender {
    pub fn new(conn: UnixStream) -> Sender {
        Sender {
            conn: Mutex::new(conn),
            gone: AtomicBool::new(false),
        }
    }

    pub fn send(&self, frame: &Frame) {
        if self.gone.load(Ordering::Relaxed) {
            return;
        }
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if write_frame(&mut *conn, frame).is_err() {
            self.gone.store(true, Ordering::Relaxed);
        }
    }
}

/// Where the host's stdin frames go.
enum Input {
    Pipe(Option<std::process::ChildStdin>),
    Pty(File),
}

/// The command `spec` describes, without its stdio.
fn command(spec: &ExecSpec) -> Result<Command, String> {
    let program = spec.argv.first().ok_or("exec: argv is empty")?;
    let root = spec.root.as_deref().unwrap_or("");
    let read = |path: &str| std::fs::read_to_string(format!("{root}{path}")).unwrap_or_default();
    let creds = resolve_user(
        spec.user.as_deref(),
        &read("/etc/passwd"),
        &read("/etc/group"),
    )
    .map_err(|e| format!("user {}: {e}", spec.user.as_deref().unwrap_or("root")))?;
    let mut cmd = Command::new(program);
    cmd.args(&spec.argv[1..]).env_clear().envs(
        spec.env
            .iter()
            .map(|kv| kv.split_once('=').unwrap_or((kv, ""))),
    );
    // With a root, the chroot and the chdir happen in the child (below):
    // std changes directory before the pre_exec hook runs.
    let chroot = match &spec.root {
        Some(root) => Some((cstring(root)?, cstring(spec.cwd.as_deref().unwrap_or("/"))?)),
        None => {
            cmd.current_dir(spec.cwd.as_deref().unwrap_or("/"));
            None
        }
    };
    let has = |key: &str| spec.env.iter().any(|kv| kv.split('=').next() == Some(key));
    if !has("PATH") {
        cmd.env("PATH", DEFAULT_PATH);
    }
    if !has("HOME") {
        cmd.env("HOME", &creds.home);
    }
    let tty = spec.tty.is_some();
    let limits = rlimit::prepare(&spec.rlimits)?;
    let switch = creds.uid != 0 || creds.gid != 0 || creds.groups != [0];
    let crate::Credentials {
        uid, gid, groups, ..
    } = creds;
    // SAFETY: the closure runs in the child between fork and exec and makes
    // only async-signal-safe system calls on memory allocated before fork.
    unsafe {
        cmd.pre_exec(move || {
            // Its own session (so signals reach its whole process group),
            // with the terminal, if any, as controlling terminal.
            if libc::setsid() < 0 || (tty && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0) {
                return Err(io::Error::last_os_error());
            }
            if let Some((root, cwd)) = &chroot {
                if libc::chroot(root.as_ptr()) != 0 || libc::chdir(cwd.as_ptr()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // Before the user changes: raising a hard limit needs root.
            rlimit::apply(&limits)?;
            if switch
                && (libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0)
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// `s` as a C string for the child; NUL bytes are refused.
fn cstring(s: &str) -> Result<std::ffi::CString, String> {
    std::ffi::CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

/// A started process: its pid, where its input goes, and its outputs
/// (with `true` for stderr).
type Started = (i32, Input, Vec<(File, bool)>);

/// Starts the process `spec` describes.
fn start(spec: &ExecSpec, reaper: &Reaper) -> Result<Started, String> {
    let mut cmd = command(spec)?;
    let program = &spec.argv[0];
    let failed = |e: io::Error| match e.kind() {
        io::ErrorKind::NotFound => format!("{program}: not found (or no such cwd)"),
        _ => format!("{program}: cannot execute: {e}"),
    };
    if let Some(size) = spec.tty {
        let (master, slave) = pty::open_pty(size).map_err(|e| format!("opening a pty: {e}"))?;
        let dup = |f: &File| f.try_clone().map_err(|e| format!("pty: {e}"));
        cmd.stdin(Stdio::from(dup(&slave)?))
            .stdout(Stdio::from(dup(&slave)?))
            .stderr(Stdio::from(slave));
        let child = reaper.spawn(&mut cmd).map_err(failed)?;
        // The parent's copies of the slave must go, or the master never
        // reports the end of the terminal's output.
        drop(cmd);
        let output = dup(&master)?;
        Ok((child.id() as i32, Input::Pty(master), vec![(output, false)]))
    } else {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = reaper.spawn(&mut cmd).map_err(failed)?;
        let outputs = [
            child
                .stdout
                .take()
                .map(|o| (File::from(std::os::fd::OwnedFd::from(o)), false)),
            child
                .stderr
                .take()
                .map(|e| (File::from(std::os::fd::OwnedFd::from(e)), true)),
        ];
        Ok((
            child.id() as i32,
            Input::Pipe(child.stdin.take()),
            outputs.into_iter().flatten().collect(),
        ))
    }
}

/// Runs one exec session on `conn` until the process has ended and its
/// output is relayed.
pub fn session(conn: UnixStream, spec: ExecSpec, reaper: &Arc<Reaper>) -> io::Result<()> {
    let out = Arc::new(Sender::new(conn.try_clone()?));
    let (pid, input, outputs) = match start(&spec, reaper) {
        Ok(started) => started,
        Err(message) => {
            out.send(&Frame::Response(Response::Error { message }));
            return Ok(());
        }
    };
    out.send(&Frame::Started(pid as u32));
    let pumps: Vec<_> = outputs
        .into_iter()
        .map(|(source, is_stderr)| {
            let out = out.clone();
            super::workers::run(move || pump(source, is_stderr, &out))
        })
        .collect();
    let mut reader = conn.try_clone()?;
    // Detached: it ends when the connection is shut down below.
    let r = reaper.clone();
    super::workers::run(move || relay_input(&mut reader, input, pid, &r));
    for pump in pumps {
        let _ = pump.join();
    }
    let status = reaper.wait(pid).unwrap_or(ExitStatus::Code(255));
    out.send(&Frame::Exited(status));
    let _ = conn.shutdown(std::net::Shutdown::Both);
    Ok(())
}

/// Relays one output of the process until its end (EOF, or EIO on a pty
/// master once the terminal's last user is gone).
fn pump(mut source: File, is_stderr: bool, out: &Sender) {
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        match source.read(&mut buf) {
            Ok(0) => return,
            Ok(n) if is_stderr => out.send(&Frame::Stderr(buf[..n].to_vec())),
            Ok(n) => out.send(&Frame::Stdout(buf[..n].to_vec())),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Applies the host's input frames until the connection ends.
fn relay_input(conn: &mut UnixStream, mut input: Input, pid: i32, reaper: &Reaper) {
    while let Ok(Some(frame)) = read_frame(conn) {
        match (frame, &mut input) {
            (Frame::Stdin(bytes), Input::Pipe(stdin)) => feed(stdin, &bytes),
            (Frame::Stdin(bytes), Input::Pty(master)) => {
                let _ = master.write_all(&bytes);
            }
            (Frame::CloseStdin, Input::Pipe(stdin)) => *stdin = None,
            (Frame::CloseStdin, Input::Pty(master)) => {
                let _ = master.write_all(&[TTY_EOF]);
            }
            // Once reaped, the pid may belong to another process.
            (Frame::Signal(signal), _) if reaper.is_running(pid) => {
                // SAFETY: kill(2) with plain integers.
                unsafe { libc::kill(pid, signal) };
            }
            (Frame::Resize { rows, cols }, Input::Pty(master)) => {
                let _ = pty::set_size(master, agent_protocol::WindowSize { rows, cols });
            }
            // Stdin after CloseStdin, Resize without a tty, or frames that
            // do not belong in a session: ignored.
            _ => {}
        }
    }
}

/// Writes to the process's stdin pipe; after a failed write (the process
/// closed its stdin) the pipe is dropped and further input ignored.
fn feed(stdin: &mut Option<std::process::ChildStdin>, bytes: &[u8]) {
    if stdin.as_mut().is_some_and(|p| p.write_all(bytes).is_err()) {
        *stdin = None;
    }
}
