//! The container's flint process: boots the VM, starts the main process
//! through the guest agent, carries the published ports, writes the log,
//! and when the main process ends records its status and powers the VM off.
//!
//! A small *monitor* process is its parent (`flint container __monitor`):
//! it only waits, and when the flint process dies without recording an end
//! (a `kill -9`, a crash) it records why ("flint process N died: killed by
//! signal 9"), so `ps` never shows a dead container as running.

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agent_protocol::{
    connect_hybrid_vsock, AgentClient, ClientError, ExecEvent, ExecSession, ExecSpec, ExitStatus,
    WindowSize, DEFAULT_PORT,
};

use super::create::{config_path, console_path, log_path, vsock_path};
use super::logfile::{LogWriter, Stream};
use super::state::{self, ProcId, Runtime, State, Status};
use super::{ports, volumes};
use crate::ContainerError;

/// How long the guest may take to boot to a listening agent. The slow
/// emulating test host needs minutes; a real KVM host a fraction of a second.
pub const AGENT_DEADLINE: Duration = Duration::from_secs(600);

/// An agent connection to the container in directory `dir`.
pub fn agent(dir: &Path) -> Result<AgentClient<UnixStream>, ClientError> {
    AgentClient::handshake(connect_hybrid_vsock(&vsock_path(dir), DEFAULT_PORT)?)
}

type VmThread = JoinHandle<Result<vmm::RunEnd, ContainerError>>;

/// A booted container VM whose agent answers.
pub struct Vm {
    pub dir: PathBuf,
    pub state: State,
    thread: Option<VmThread>,
    listeners: Vec<(TcpListener, u16)>,
    _virtiofsd: Vec<Child>,
    pub log: Arc<LogWriter>,
}

fn io_at(what: String) -> impl FnOnce(std::io::Error) -> ContainerError {
    move |source| ContainerError::Io { what, source }
}

/// Boots container `id` in this process: binds its ports, starts its
/// virtiofsd daemons and the VM, and waits for the agent.
pub fn boot(runtime: &Runtime, id: &str) -> Result<Vm, ContainerError> {
    let dir = runtime.dir(id);
    let state = state::update(&dir, |s| s.flint = ProcId::current())?;
    let listeners = ports::bind(&state.ports)?;
    let virtiofsd = volumes::start_daemons(&dir, &state.volumes)?;
    let text = std::fs::read_to_string(config_path(&dir))
        .map_err(io_at(format!("reading {}", config_path(&dir).display())))?;
    let config = api::VmConfig::from_json(&text)?;
    let _ = std::fs::remove_file(vsock_path(&dir));
    let console = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(console_path(&dir))
        .map_err(io_at("opening the console log".into()))?;
    let console2 = console
        .try_clone()
        .map_err(io_at("opening the console log".into()))?;
    let options = vmm::VmmOptions {
        console_out: Some(Box::new(console)),
        console2_out: Some(Box::new(console2)),
        console_in: false,
        instance_id: state.name.clone(),
        ..vmm::VmmOptions::default()
    };
    let thread = std::thread::Builder::new()
        .name("flint_vmm".into())
        .spawn(move || vmm::run(vmm::Start::Boot(config), options).map_err(ContainerError::from))
        .map_err(io_at("starting the VMM thread".into()))?;
    let log = Arc::new(
        LogWriter::open(&log_path(&dir)).map_err(io_at("opening the container log".into()))?,
    );
    let mut vm = Vm {
        dir,
        state,
        thread: Some(thread),
        listeners,
        _virtiofsd: virtiofsd,
        log,
    };
    vm.wait_for_agent()?;
    Ok(vm)
}

impl Vm {
    fn vm_ended(&mut self) -> Option<String> {
        if !self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            return None;
        }
        let end = self.thread.take().map(JoinHandle::join);
        Some(match end {
            Some(Ok(Ok(end))) => format!("the VM stopped ({end:?})"),
            Some(Ok(Err(e))) => format!("the VM failed: {e}"),
            _ => "the VM thread panicked".into(),
        })
    }

    fn wait_for_agent(&mut self) -> Result<(), ContainerError> {
        let deadline = Instant::now() + AGENT_DEADLINE;
        loop {
            if let Some(why) = self.vm_ended() {
                return Err(ContainerError::Usage(format!(
                    "{why} before its agent answered (see {})",
                    console_path(&self.dir).display()
                )));
            }
            if agent(&self.dir).and_then(|a| a.ping()).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ContainerError::Usage(format!(
                    "the guest agent did not answer within {} s",
                    AGENT_DEADLINE.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the main process (on a terminal of `tty`'s size if given)
    /// and records the container as running.
    pub fn start_main(
        &mut self,
        tty: Option<WindowSize>,
    ) -> Result<ExecSession<UnixStream>, ContainerError> {
        let s = &self.state;
        let spec = ExecSpec {
            argv: s.command.clone(),
            env: s.env.clone(),
            cwd: Some(s.cwd.clone()),
            user: s.user.clone(),
            tty,
            root: None,
            rlimits: Vec::new(),
        };
        let session = agent(&self.dir)
            .and_then(|a| a.exec(spec))
            .map_err(|e| ContainerError::Usage(format!("starting {:?}: {e}", s.command)))?;
        let pid = session.pid();
        self.state = state::update(&self.dir, |s| {
            s.status = Status::Running;
            s.main_pid = Some(pid);
            s.started_at = Some(state::now());
        })?;
        Ok(session)
    }

    /// Starts carrying the published ports.
    pub fn serve_ports(&mut self) {
        for (listener, guest_port) in self.listeners.drain(..) {
            ports::serve(listener, guest_port, vsock_path(&self.dir));
        }
    }

    /// Copies the main process's output to the log until it exits; its
    /// status, or why it is unknown.
    pub fn relay_to_log(
        &mut self,
        mut session: ExecSession<UnixStream>,
    ) -> Result<ExitStatus, String> {
        loop {
            match session.next_event() {
                Ok(ExecEvent::Stdout(b)) => self.log.record(Stream::Stdout, &b),
                Ok(ExecEvent::Stderr(b)) => self.log.record(Stream::Stderr, &b),
                Ok(ExecEvent::Exited(status)) => return Ok(status),
                Err(e) => return self.lost(session.pid(), e),
            }
        }
    }

    /// The main process's session broke (the agent died, or the VM): asks
    /// a new agent connection for its status.
    pub fn lost(&mut self, pid: u32, error: ClientError) -> Result<ExitStatus, String> {
        for _ in 0..50 {
            if let Some(why) = self.vm_ended() {
                return Err(why);
            }
            if let Ok(status) = agent(&self.dir).and_then(|a| a.wait(pid as i32)) {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!(
            "lost the main process: its agent session ended ({error}) and the agent no longer knows it"
        ))
    }

    /// Records how the container ended, powers the VM off and waits for it
    /// (a minute at most); returns the main process's shell status.
    pub fn finish(mut self, end: Result<ExitStatus, String>) -> i32 {
        let code = end.as_ref().ok().map(|s| s.shell_code());
        let _ = state::update(&self.dir, |s| {
            s.status = Status::Exited;
            s.finished_at = Some(state::now());
            s.exit_code = code;
            s.reason = end.err();
        });
        if self.thread.is_some() {
            let _ = agent(&self.dir).and_then(|a| a.shutdown());
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.thread.as_ref().is_some_and(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.vm_ended();
        let _ = std::fs::remove_file(vsock_path(&self.dir));
        code.unwrap_or(125)
    }
}

/// Points fd 1 at /dev/null (the readiness pipe is then closed for us).
fn close_stdout() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 onto fd 1 with a descriptor we hold.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

/// `flint container __vm ID`: the detached container's flint process.
/// Writes `ready` (or `error: ...`) on stdout once the main process runs.
pub fn run_detached(runtime: &Runtime, id: &str) -> i32 {
    let dir = runtime.dir(id);
    let fail = |e: &ContainerError| {
        let _ = state::update(&dir, |s| {
            s.status = Status::Exited;
            s.finished_at = Some(state::now());
            s.reason = Some(e.to_string());
        });
        println!("error: {e}");
        1
    };
    let mut vm = match boot(runtime, id) {
        Ok(vm) => vm,
        Err(e) => return fail(&e),
    };
    let session = match vm.start_main(None) {
        Ok(s) => s,
        Err(e) => {
            let code = fail(&e);
            vm.finish(Err(e.to_string()));
            return code;
        }
    };
    vm.serve_ports();
    println!("ready");
    let _ = std::io::stdout().flush();
    close_stdout();
    let end = vm.relay_to_log(session);
    vm.finish(end);
    0
}

/// How a child process ended, in words.
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (_, Some(sig)) => format!("killed by signal {sig}"),
        (Some(code), _) => format!("exited with status {code}"),
        _ => "ended".into(),
    }
}

/// `flint container __monitor ID`: starts the container's flint process
/// (`__vm ID`) and waits for it; records the reason if it dies without
/// recording the container's end.
pub fn monitor(runtime: &Runtime, id: &str) -> i32 {
    let dir = runtime.dir(id);
    let _ = state::update(&dir, |s| s.monitor = ProcId::current());
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            println!("error: finding flint's executable: {e}");
            return 1;
        }
    };
    let mut cmd = Command::new(exe);
    cmd.args(["container", "__vm", id])
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    // SAFETY: prctl with plain integers between fork and exec: the flint
    // process does not outlive its monitor unnoticed.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            println!("error: starting the container's flint: {e}");
            return 1;
        }
    };
    close_stdout();
    let pid = child.id();
    let status = match child.wait() {
        Ok(s) => s,
        Err(_) => return 1,
    };
    let _ = state::update(&dir, |s| {
        if s.status != Status::Exited {
            s.status = Status::Exited;
            s.finished_at = Some(state::now());
            s.reason = Some(format!(
                "flint process {pid} died: {}",
                describe_exit(status)
            ));
        }
    });
    let _ = std::fs::remove_file(vsock_path(&dir));
    0
}
