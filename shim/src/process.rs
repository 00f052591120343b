//! A container's process or an exec'd one: started through the guest agent,
//! its stdio relayed between the agent's session and the FIFOs containerd
//! gave, its exit recorded exactly and announced.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

use agent_protocol::{ExecEvent, ExecInput, ExecSpec, ExitStatus};

use crate::ShimError;

/// The FIFO paths containerd gave for a process (empty: none).
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

/// The mutable part of a process.
#[derive(Debug)]
pub struct State {
    pub status: Status,
    /// Its pid in the guest (0 before it starts).
    pub pid: u32,
    /// The exit status as a shell reports it (code, or 128 + signal), and
    /// when it was seen.
    pub exit: Option<(u32, SystemTime)>,
    /// A handle on the session's stream for input, signals and resizes.
    input: Option<UnixStream>,
    stdin_closed: bool,
}

/// One process of a container (the init has an empty exec id).
pub struct Process {
    pub spec: ExecSpec,
    pub stdio: StdioPaths,
    state: Mutex<State>,
    exited: Condvar,
}

/// Called once when a process has exited and its output is relayed.
pub type OnExit = Box<dyn FnOnce(u32, u32, SystemTime) + Send>;

impl Process {
    /// A process not yet started.
    pub fn new(spec: ExecSpec, stdio: StdioPaths) -> Arc<Process> {
        Arc::new(Process {
            spec,
            stdio,
            state: Mutex::new(State {
                status: Status::Created,
                pid: 0,
                exit: None,
                input: None,
                stdin_closed: false,
            }),
            exited: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Status, pid and exit.
    pub fn snapshot(&self) -> (Status, u32, Option<(u32, SystemTime)>) {
        let s = self.lock();
        (s.status, s.pid, s.exit)
    }

    /// Starts the process through `agent` (a fresh connection): relays its
    /// stdio on threads of its own and calls `on_exit(pid, status, at)` when
    /// it has ended. Returns the guest pid.
    pub fn start(
        self: &Arc<Self>,
        agent: agent_protocol::AgentClient<UnixStream>,
        on_exit: OnExit,
    ) -> Result<u32, ShimError> {
        if self.lock().status != Status::Created {
            return Err(ShimError::State("the process was already started".into()));
        }
        let session = agent.exec(self.spec.clone())?;
        let pid = session.pid();
        let mut stream = session.into_stream();
        let input = stream.try_clone().map_err(|e| ShimError::Io {
            what: "cloning the session".into(),
            source: e,
        })?;
        {
            let mut s = self.lock();
            s.status = Status::Running;
            s.pid = pid;
            s.input = Some(input.try_clone().map_err(|e| ShimError::Io {
                what: "cloning the session".into(),
                source: e,
            })?);
        }
        if !self.stdio.stdin.is_empty() {
            let path = self.stdio.stdin.clone();
            let me = self.clone();
            std::thread::spawn(move || me.relay_stdin(&path, input));
        } else {
            let _ = ExecInput::new(input).close_stdin();
        }
        let me = self.clone();
        std::thread::spawn(move || {
            let (code, at) = me.relay_output(&mut stream);
            {
                let mut s = me.lock();
                s.status = Status::Stopped;
                s.exit = Some((code, at));
                s.input = None;
            }
            me.exited.notify_all();
            on_exit(pid, code, at);
        });
        Ok(pid)
    }

    /// Copies the stdin FIFO to the session until it ends, then closes the
    /// process's stdin.
    fn relay_stdin(&self, path: &str, session: UnixStream) {
        let mut input = ExecInput::new(session);
        // Opening blocks until containerd's side is open: on this thread,
        // never on a service thread.
        if let Ok(mut fifo) = File::open(path) {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match fifo.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if input.stdin(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        if !std::mem::replace(&mut self.lock().stdin_closed, true) {
            let _ = input.close_stdin();
        }
    }

    /// Relays the session's output to the FIFOs until the exit; the exit
    /// status as a shell reports it. The FIFOs are opened read-write, which
    /// never blocks (a detached `ctr` may be gone before the process starts),
    /// and written by a thread of their own, so that output nobody reads
    /// never delays noticing the exit. The reader sees EOF once everything
    /// is written.
    fn relay_output(&self, stream: &mut UnixStream) -> (u32, SystemTime) {
        let open = |path: &str| -> Option<File> {
            (!path.is_empty())
                .then(|| OpenOptions::new().read(true).write(true).open(path).ok())
                .flatten()
        };
        let mut stdout = open(&self.stdio.stdout);
        let mut stderr = if self.stdio.stderr == self.stdio.stdout {
            None
        } else {
            open(&self.stdio.stderr)
        };
        let (tx, rx) = std::sync::mpsc::channel::<(bool, Vec<u8>)>();
        std::thread::spawn(move || {
            for (is_stderr, bytes) in rx {
                if is_stderr && stderr.is_some() {
                    write_or_drop(&mut stderr, &bytes)
                } else {
                    write_or_drop(&mut stdout, &bytes)
                }
            }
        });
        let mut session = SessionReader { stream };
        loop {
            match session.next() {
                Ok(ExecEvent::Stdout(bytes)) => {
                    let _ = tx.send((false, bytes));
                }
                Ok(ExecEvent::Stderr(bytes)) => {
                    let _ = tx.send((true, bytes));
                }
                Ok(ExecEvent::Exited(status)) => {
                    return (status.shell_code() as u32, SystemTime::now());
                }
                Err(e) => {
                    log::warn!("process session ended without an exit status: {e}");
                    // The VM went away (or the agent died): as if killed.
                    return (
                        ExitStatus::Signal(libc::SIGKILL).shell_code() as u32,
                        SystemTime::now(),
                    );
                }
            }
        }
    }

    /// Blocks until the process has exited: its status and time.
    pub fn wait(&self) -> (u32, SystemTime) {
        let mut s = self.lock();
        loop {
            if let Some(exit) = s.exit {
                return exit;
            }
            s = self.exited.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Sends `signal` to the process (through its session: never to a
    /// reused pid).
    pub fn signal(&self, signal: i32) -> Result<(), ShimError> {
        let s = self.lock();
        match (&s.input, s.status) {
            (Some(input), Status::Running) => {
                let mut writer = input;
                Ok(ExecInput::new(&mut writer).signal(signal)?)
            }
            _ => Err(ShimError::NotFound("the process is not running".into())),
        }
    }

    /// Closes the process's stdin (`CloseIO`).
    pub fn close_stdin(&self) -> Result<(), ShimError> {
        let mut s = self.lock();
        if std::mem::replace(&mut s.stdin_closed, true) {
            return Ok(());
        }
        if let Some(input) = &s.input {
            let mut writer = input;
            ExecInput::new(&mut writer).close_stdin()?;
        }
        Ok(())
    }

    /// Resizes the process's terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ShimError> {
        let s = self.lock();
        if let Some(input) = &s.input {
            let mut writer = input;
            ExecInput::new(&mut writer).resize(rows, cols)?;
        }
        Ok(())
    }

    /// Records an exit for a process that never started (killed while
    /// created).
    pub fn mark_exited(&self, code: u32) -> (u32, SystemTime) {
        let at = SystemTime::now();
        {
            let mut s = self.lock();
            s.status = Status::Stopped;
            s.exit = Some((code, at));
        }
        self.exited.notify_all();
        (code, at)
    }
}

/// Reads session events from a borrowed stream.
struct SessionReader<'a> {
    stream: &'a mut UnixStream,
}

impl SessionReader<'_> {
    fn next(&mut self) -> Result<ExecEvent, agent_protocol::ClientError> {
        use agent_protocol::Frame;
        match agent_protocol::read_frame(self.stream)? {
            Some(Frame::Stdout(b)) => Ok(ExecEvent::Stdout(b)),
            Some(Frame::Stderr(b)) => Ok(ExecEvent::Stderr(b)),
            Some(Frame::Exited(status)) => Ok(ExecEvent::Exited(status)),
            Some(other) => Err(agent_protocol::ClientError::Unexpected(format!(
                "{other:?}"
            ))),
            None => Err(agent_protocol::ClientError::Closed),
        }
    }
}

/// Writes to a FIFO; once the reader is gone, output is dropped.
fn write_or_drop(out: &mut Option<File>, bytes: &[u8]) {
    if out.as_mut().is_some_and(|f| f.write_all(bytes).is_err()) {
        *out = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_protocol::{write_frame, Frame};

    fn mkfifo(path: &std::path::Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo(3) with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn the_exit_is_seen_though_nobody_reads_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("stdout");
        mkfifo(&out);
        let p = Process::new(
            ExecSpec::default(),
            StdioPaths {
                stdout: out.display().to_string(),
                stderr: out.display().to_string(),
                ..StdioPaths::default()
            },
        );
        let (mut agent, mut shim) = UnixStream::pair().unwrap();
        // More output than a pipe holds, then the exit.
        let sender = std::thread::spawn(move || {
            for _ in 0..32 {
                write_frame(&mut agent, &Frame::Stdout(vec![b'x'; 16 * 1024])).unwrap();
            }
            write_frame(&mut agent, &Frame::Exited(ExitStatus::Signal(9))).unwrap();
        });
        let (code, _) = p.relay_output(&mut shim);
        sender.join().unwrap();
        assert_eq!(code, 137);
    }

    #[test]
    fn a_reader_gets_all_output_then_eof() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("stdout");
        mkfifo(&out);
        let reader = {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut text = String::new();
                File::open(out).unwrap().read_to_string(&mut text).unwrap();
                text
            })
        };
        let p = Process::new(
            ExecSpec::default(),
            StdioPaths {
                stdout: out.display().to_string(),
                ..StdioPaths::default()
            },
        );
        let (mut agent, mut shim) = UnixStream::pair().unwrap();
        write_frame(&mut agent, &Frame::Stdout(b"hi\n".to_vec())).unwrap();
        write_frame(&mut agent, &Frame::Exited(ExitStatus::Code(3))).unwrap();
        assert_eq!(p.relay_output(&mut shim).0, 3);
        assert_eq!(reader.join().unwrap(), "hi\n");
    }
}
