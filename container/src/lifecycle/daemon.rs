//! The container's supervisor (`flint container __vm`, unjailed): starts
//! the VMM as a child `flint` process (jailed as root: see [`crate::jail`]),
//! starts the main process through the guest agent, carries the published
//! ports, writes the log, and when the main process ends records its
//! status, powers the VM off and removes the jail. A VMM that dies (a
//! `kill -9`, a crash) ends the container with the reason ("flint process
//! N died: killed by signal 9").
//!
//! A small *monitor* process is the supervisor's parent (`flint container
//! __monitor`): it only waits, and when the supervisor dies without
//! recording an end it records why, so `ps` never shows a dead container
//! as running.

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol::{
    connect_hybrid_vsock, AgentClient, ClientError, ExecEvent, ExecSession, ExecSpec, ExitStatus,
    WindowSize, DEFAULT_PORT,
};

use super::create::{config_path, console_path, log_path, vsock_path};
use super::logfile::{LogWriter, Stream};
use super::state::{self, ProcId, Runtime, State, Status};
use super::{ports, volumes};
use crate::jail::{self, JailSpec, Vmm};
use crate::ContainerError;

/// How long the guest may take to boot to a listening agent. The slow
/// emulating test host needs minutes; a real KVM host a fraction of a second.
pub const AGENT_DEADLINE: Duration = Duration::from_secs(600);

/// An agent connection to the container in directory `dir`.
pub fn agent(dir: &Path) -> Result<AgentClient<UnixStream>, ClientError> {
    AgentClient::handshake(connect_hybrid_vsock(&vsock_path(dir), DEFAULT_PORT)?)
}

/// A booted container VM whose agent answers.
pub struct Vm {
    pub dir: PathBuf,
    pub state: State,
    vmm: Option<Vmm>,
    listeners: Vec<(TcpListener, u16)>,
    _virtiofsd: Vec<Child>,
    pub log: Arc<LogWriter>,
}

fn io_at(what: String) -> impl FnOnce(std::io::Error) -> ContainerError {
    move |source| ContainerError::Io { what, source }
}

/// The API socket of an unjailed VMM in container directory `dir`.
pub fn api_path(dir: &Path) -> PathBuf {
    dir.join("api.sock")
}

/// The jail for container `state`, or why there is none.
fn jail_spec(state: &State, flint: &Path) -> Result<Result<JailSpec, String>, ContainerError> {
    if let Some(reason) = jail::unjailed_reason(state.no_jail) {
        return Ok(Err(reason));
    }
    let jailer = jail::find_jailer(flint);
    // `<cache>/containers/<id>` holds the disks: the jails go next to it,
    // on the same file system, so the disks are hard-linked, never copied.
    let cache = state
        .disk_dir
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| ContainerError::Internal("disk directory without a cache".into()))?;
    let id = format!("ctr-{}", &state.id[..16.min(state.id.len())]);
    let uid = jail::allocate_uid(
        Path::new(jail::UID_DIR),
        jail::UID_BASE,
        jail::UID_COUNT,
        &id,
    )?;
    Ok(Ok(JailSpec {
        id,
        flint: flint.to_owned(),
        jailer,
        uid,
        gid: uid,
        chroot_base: cache.join("jail"),
        memory_mib: state.memory_mib,
        vcpus: state.cpus.into(),
    }))
}

/// Boots container `id`: binds its ports, starts the VMM (jailed when
/// root), its virtiofsd daemons, and waits for the agent.
pub fn boot(runtime: &Runtime, id: &str) -> Result<Vm, ContainerError> {
    let dir = runtime.dir(id);
    let state = state::update(&dir, |s| s.supervisor = ProcId::current())?;
    let listeners = ports::bind(&state.ports)?;
    let text = std::fs::read_to_string(config_path(&dir))
        .map_err(io_at(format!("reading {}", config_path(&dir).display())))?;
    let mut config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ContainerError::Internal(format!("the VM config: {e}")))?;
    // The kernel's messages go to the console log (COM1: the VMM's stdout).
    if let Some(args) = config["boot-source"]["boot_args"].as_str() {
        config["boot-source"]["boot_args"] = args.replace("console=ttyS1", "console=ttyS0").into();
    }
    let _ = std::fs::remove_file(vsock_path(&dir));
    let console = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(console_path(&dir))
        .map_err(io_at("opening the console log".into()))?;
    let flint = std::env::current_exe().map_err(io_at("finding flint's executable".into()))?;
    let spec = jail_spec(&state, &flint)?;
    let uid_dir = Path::new(jail::UID_DIR);
    let spawned = jail::spawn(
        spec.as_ref().ok().map(|s| (s, uid_dir)),
        &flint,
        &api_path(&dir),
        console,
    );
    let vmm = match spawned {
        Ok(v) => v,
        Err(e) => {
            if let Ok(s) = &spec {
                let _ = std::fs::remove_file(uid_dir.join(s.uid.to_string()));
            }
            return Err(e);
        }
    };
    let state = state::update(&dir, |s| {
        s.flint = ProcId::of(vmm.pid() as i32);
        s.jail = vmm.jail.clone();
        s.unjailed = spec.as_ref().err().cloned();
    })?;
    let log = Arc::new(
        LogWriter::open(&log_path(&dir)).map_err(io_at("opening the container log".into()))?,
    );
    let mut vm = Vm {
        dir: dir.clone(),
        state,
        vmm: Some(vmm),
        listeners,
        _virtiofsd: Vec::new(),
        log,
    };
    vm.configure(&config)?;
    vm.wait_for_agent()?;
    Ok(vm)
}

impl Drop for Vm {
    /// A VM given up on (a failed boot) leaves no VMM or jail behind.
    fn drop(&mut self) {
        self.stop_vmm();
    }
}

impl Vm {
    /// Puts the VM's files into the jail, starts the volumes' daemons (their
    /// sockets in the jail) and boots the VM.
    fn configure(&mut self, config: &serde_json::Value) -> Result<(), ContainerError> {
        let vmm = self
            .vmm
            .as_ref()
            .ok_or_else(|| ContainerError::Internal("no VMM".into()))?;
        let seen = vmm.prepare(config)?;
        let socket_dir = match &vmm.jail {
            Some(j) => {
                // Host-side code (exec, ports, the CLI) finds the agent
                // where it always did.
                std::os::unix::fs::symlink(j.root.join("vsock.sock"), vsock_path(&self.dir))
                    .map_err(io_at("linking the vsock socket".into()))?;
                j.root.clone()
            }
            None => self.dir.clone(),
        };
        self._virtiofsd = volumes::start_daemons(&self.dir, &socket_dir, &self.state.volumes)?;
        for v in &self.state.volumes {
            vmm.give_socket(&volumes::socket_path(&socket_dir, v))?;
        }
        vmm.start(&seen)
    }

    /// Why the VMM has ended, once it has.
    fn vm_ended(&mut self) -> Option<String> {
        let vmm = self.vmm.as_mut()?;
        let status = vmm.child.try_wait().ok()??;
        let why = format!(
            "flint process {} died: {}",
            vmm.pid(),
            describe_exit(status)
        );
        let _ = vmm.remove_jail();
        self.vmm = None;
        Some(why)
    }

    /// Kills the VMM and removes its jail.
    fn stop_vmm(&mut self) {
        if let Some(mut vmm) = self.vmm.take() {
            vmm.kill();
        }
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
    /// a new agent connection for its status. An agent the guest's PID 1
    /// restarted does not know it, but the process lives on, orphaned: the
    /// container runs until it is gone from the guest (or the VM ends), and
    /// then ends with an unknown status.
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
        loop {
            if let Some(why) = self.vm_ended() {
                return Err(why);
            }
            // An error: the agent is (re)starting; ask again.
            if let Ok(all) = agent(&self.dir).and_then(|a| a.list_processes()) {
                if !all.iter().any(|p| p.pid == pid as i32 && p.state != 'Z') {
                    return Err(format!(
                        "the main process ended after its agent session broke ({error}); \
                         the restarted agent does not know its exit status"
                    ));
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
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
        if self.vmm.is_some() {
            let _ = agent(&self.dir).and_then(|a| a.shutdown());
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.vm_ended().is_none() && self.vmm.is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop_vmm();
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
    // A supervisor that died leaves its VMM: end it and remove its jail.
    if let Ok(s) = state::load(&dir) {
        if s.status != Status::Exited {
            if let Some(vmm) = s.flint.filter(|p| p.alive()) {
                vmm.kill(libc::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(10);
                while vmm.alive() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            if let Some(j) = &s.jail {
                let _ = jail::remove(j);
            }
        }
    }
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
