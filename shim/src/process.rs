//! A container's process or an exec'd one: started through the guest agent,
//! its stdio relayed between the agent's session and the FIFOs containerd
//! gave, its exit recorded exactly and announced.
//!
//! The guest agent can die and be restarted by the guest's PID 1 while the
//! VM runs on (on the emulating CI host a guest process now and then dies of
//! SIGSEGV, the agent included). Its processes live on, orphaned: a process
//! whose session broke while its VM still runs is watched through the new
//! agent until it is gone, instead of being declared dead at once, which for
//! a pod's sandbox would take the whole pod down.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

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

/// What a process whose agent session broke needs from its VM (see the
/// module's doc): a fresh agent, possibly a restarted one, answers.
pub trait GuestProbe: Send + Sync {
    /// Whether the VM still runs.
    fn vm_running(&self) -> bool;
    /// Whether guest process `pid` still exists (not a zombie).
    fn pid_alive(&self, pid: u32) -> Result<bool, ShimError>;
    /// Sends `signal` to guest process `pid`.
    fn signal_pid(&self, pid: u32, signal: i32) -> Result<(), ShimError>;
}

/// How often an orphaned process is looked for.
const ORPHAN_POLL: Duration = Duration::from_secs(1);

/// The status reported for an orphaned process that ended by itself: its
/// real status died with the agent that started it.
pub const UNKNOWN_EXIT: u32 = 255;

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

/// The mutable part of a process.
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
    /// Set once its session broke while the VM ran on: signals then go by
    /// pid through a fresh agent.
    orphan_of: Option<Arc<dyn GuestProbe>>,
    /// The last signal sent to it while orphaned (its likely end).
    signaled: Option<i32>,
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
                orphan_of: None,
                signaled: None,
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
    /// it has ended. `guest` is asked about it if its session breaks while
    /// the VM runs on. Returns the guest pid.
    pub fn start(
        self: &Arc<Self>,
        agent: agent_protocol::AgentClient<UnixStream>,
        guest: Arc<dyn GuestProbe>,
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
            let (code, at) = match me.relay_output(&mut stream) {
                Some(exit) => exit,
                None => me.outlive_session(pid, guest),
            };
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

    /// After its session broke: if the VM runs on, waits until the process
    /// is gone from the guest (signals meanwhile go by pid); its status as
    /// far as known. If the VM is gone, as if killed.
    fn outlive_session(&self, pid: u32, guest: Arc<dyn GuestProbe>) -> (u32, SystemTime) {
        let killed = ExitStatus::Signal(libc::SIGKILL).shell_code() as u32;
        if !guest.vm_running() {
            return (killed, SystemTime::now());
        }
        log::warn!("process {pid}: its agent session broke while the VM runs; watching it");
        self.lock().orphan_of = Some(guest.clone());
        loop {
            if !guest.vm_running() {
                return (killed, SystemTime::now());
            }
            // An error: the agent is restarting; ask again.
            if let Ok(false) = guest.pid_alive(pid) {
                let code = match self.lock().signaled {
                    Some(signal) => ExitStatus::Signal(signal).shell_code() as u32,
                    None => UNKNOWN_EXIT,
                };
                return (code, SystemTime::now());
            }
            std::thread::sleep(ORPHAN_POLL);
        }
    }

    /// Relays the session's output to the FIFOs until the exit; the exit
    /// status as a shell reports it, or `None` if the session broke first. The FIFOs are opened read-write, which
    /// never blocks (a detached `ctr` may be gone before the process starts),
    /// and written by a thread of their own, so that output nobody reads
    /// never delays noticing the exit. The reader sees EOF once everything
    /// is written.
    fn relay_output(&self, stream: &mut UnixStream) -> Option<(u32, SystemTime)> {
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
                    return Some((status.shell_code() as u32, SystemTime::now()));
                }
                Err(e) => {
                    log::warn!("process session ended without an exit status: {e}");
                    return None;
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
        let mut s = self.lock();
        if let (Some(guest), Status::Running) = (s.orphan_of.clone(), s.status) {
            // Orphaned (see the module's doc): by pid, through a fresh agent.
            s.signaled = Some(signal);
            let pid = s.pid;
            drop(s);
            return guest.signal_pid(pid, signal);
        }
        match (&s.input, s.status) {
            (Some(input), Status::Running) => {
                let mut writer = input;
                Ok(ExecInput::new(&mut writer).signal(signal)?)
            }
            _ => Err(ShimError::NotFound("the process is not running".into())),
        }
    }

    /// Notes a signal sent to the process's group by pid (`kill --all`): the
    /// likely end of an orphaned process.
    pub fn record_signal(&self, signal: i32) {
        let mut s = self.lock();
        if s.orphan_of.is_some() {
            s.signaled = Some(signal);
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
        let (code, _) = p.relay_output(&mut shim).unwrap();
        sender.join().unwrap();
        assert_eq!(code, 137);
    }

    #[test]
    fn a_reader_gets_all_output_then_eof() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("stdout");
        mkfifo(&out);
        // The read end is opened first (non-blocking, so without a writer)
        // and read once the relay has opened its write end: a reader whose
        // blocking open came after the relay's writer had already closed
        // would wait for a writer forever.
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::io::AsRawFd;
        let mut read_end = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&out)
            .unwrap();
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
        assert_eq!(p.relay_output(&mut shim).unwrap().0, 3);
        // SAFETY: fcntl on a descriptor this test owns.
        unsafe {
            let flags = libc::fcntl(read_end.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(
                read_end.as_raw_fd(),
                libc::F_SETFL,
                flags & !libc::O_NONBLOCK,
            );
        }
        let mut text = String::new();
        read_end.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hi\n");
    }

    /// A VM whose process `pid` lives until it is signalled.
    struct FakeGuest {
        running: bool,
        alive: std::sync::atomic::AtomicBool,
    }

    impl GuestProbe for FakeGuest {
        fn vm_running(&self) -> bool {
            self.running
        }
        fn pid_alive(&self, _pid: u32) -> Result<bool, ShimError> {
            Ok(self.alive.load(std::sync::atomic::Ordering::SeqCst))
        }
        fn signal_pid(&self, _pid: u32, _signal: i32) -> Result<(), ShimError> {
            self.alive.store(false, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    fn orphan(running: bool, alive: bool) -> (Arc<Process>, Arc<FakeGuest>) {
        let p = Process::new(ExecSpec::default(), StdioPaths::default());
        p.lock().status = Status::Running;
        p.lock().pid = 7;
        let guest = Arc::new(FakeGuest {
            running,
            alive: alive.into(),
        });
        (p, guest)
    }

    #[test]
    fn a_process_outlives_its_broken_session_while_the_vm_runs() {
        let (p, guest) = orphan(true, true);
        let watcher = {
            let (p, guest) = (p.clone(), guest.clone());
            std::thread::spawn(move || p.outlive_session(7, guest).0)
        };
        // Still running, signals now go by pid; the signal's end is its status.
        while p.lock().orphan_of.is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!watcher.is_finished());
        p.signal(libc::SIGKILL).unwrap();
        assert_eq!(watcher.join().unwrap(), 137);
    }

    #[test]
    fn an_orphan_that_ends_by_itself_has_an_unknown_status() {
        let (p, guest) = orphan(true, false);
        assert_eq!(p.outlive_session(7, guest).0, UNKNOWN_EXIT);
    }

    #[test]
    fn a_broken_session_of_a_vm_that_is_gone_is_a_kill() {
        let (p, guest) = orphan(false, true);
        assert_eq!(p.outlive_session(7, guest).0, 137);
    }
}
