//! A long-lived container's state on the host: one directory per container
//! under the runtime root (`/run/flint` for root, `$XDG_RUNTIME_DIR/flint`
//! otherwise, `$FLINT_RUNTIME_DIR` when set), holding `state.json` (written
//! atomically), a `lock` file every writer `flock`s, the vsock socket, the
//! logs; and `names/NAME` files mapping a name to its container id (created
//! with `O_EXCL`, so two `run --name N` cannot both win).
//!
//! Processes are identified by pid *and* start time (`/proc/PID/stat`
//! field 22), so a reused pid never makes a dead container look alive.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ContainerError;

/// A published port: `[host_ip:]host_port:guest_port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMap {
    pub host_ip: String,
    pub host_port: u16,
    pub guest_port: u16,
}

/// A shared directory: `host_dir:guest_dir[:ro]`, served by virtiofsd as
/// the virtio-fs device tagged `tag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMap {
    pub host_dir: PathBuf,
    pub guest_dir: String,
    pub read_only: bool,
    pub tag: String,
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Its flint process is booting the VM.
    Created,
    /// The main process runs.
    Running,
    /// The main process (or the container's flint) has ended.
    Exited,
}

/// A host process, by pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: i32,
    /// Field 22 of `/proc/PID/stat` (clock ticks after boot).
    pub start: u64,
}

/// The start time and state letter of process `pid`, from `/proc`.
fn proc_stat(pid: i32) -> Option<(u64, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: parse after the
    // last `)`. Fields from there: state (3), ... starttime (22).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    Some((fields.get(19)?.parse().ok()?, state))
}

impl ProcId {
    /// The running process `pid`.
    pub fn of(pid: i32) -> Option<ProcId> {
        proc_stat(pid).map(|(start, _)| ProcId { pid, start })
    }

    /// This process.
    pub fn current() -> Option<ProcId> {
        ProcId::of(std::process::id() as i32)
    }

    /// Whether this very process still runs (not a zombie, not a new
    /// process that got the same pid).
    pub fn alive(&self) -> bool {
        matches!(proc_stat(self.pid), Some((start, state)) if start == self.start && state != 'Z' && state != 'X')
    }

    /// Sends `signal` if the process is still this one.
    pub fn kill(&self, signal: i32) -> bool {
        // SAFETY: kill(2) with plain integers, on a process just checked.
        self.alive() && unsafe { libc::kill(self.pid, signal) } == 0
    }
}

/// Everything known about one container; `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// 64 hex digits; commands accept any unique prefix.
    pub id: String,
    pub name: String,
    /// What `run` was given: `name:tag` or a tarball path.
    pub image: String,
    /// Unix seconds.
    pub created: u64,
    /// The main process: argv, environment, working directory, user.
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    #[serde(default)]
    pub user: Option<String>,
    /// Whether the main process runs on a terminal (`run -t`).
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub ports: Vec<PortMap>,
    #[serde(default)]
    pub volumes: Vec<VolumeMap>,
    pub memory_mib: u64,
    pub cpus: u8,
    /// The container's private disks (root image, settings drive), in the
    /// image cache's file system.
    pub disk_dir: PathBuf,
    pub status: Status,
    /// The process watching the container's flint (records how it died).
    #[serde(default)]
    pub monitor: Option<ProcId>,
    /// The container's supervisor (`__vm`: the ports, the log, the agent
    /// session; unjailed).
    #[serde(default)]
    pub supervisor: Option<ProcId>,
    /// The container's VMM (a child `flint` process, jailed as root).
    #[serde(default)]
    pub flint: Option<ProcId>,
    /// `run --no-jail`.
    #[serde(default)]
    pub no_jail: bool,
    /// The VMM's jail (root directory, uid, cgroup), when jailed.
    #[serde(default)]
    pub jail: Option<crate::jail::JailInfo>,
    /// Why the VMM runs unjailed (not root, `--no-jail`, `FLINT_NO_JAIL=1`).
    #[serde(default)]
    pub unjailed: Option<String>,
    /// The main process's pid in the guest.
    #[serde(default)]
    pub main_pid: Option<u32>,
    #[serde(default)]
    pub started_at: Option<u64>,
    #[serde(default)]
    pub finished_at: Option<u64>,
    /// The main process's status as a shell reports it.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Why the container ended, when not by its main process exiting.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Unix time in seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl State {
    /// The state as it really is: a container recorded as created or
    /// running whose flint process is gone has exited.
    pub fn effective(mut self) -> State {
        if self.status != Status::Exited {
            let watched = self.flint.or(self.supervisor).or(self.monitor);
            if let Some(p) = watched.filter(|p| !p.alive()) {
                self.status = Status::Exited;
                self.reason
                    .get_or_insert_with(|| format!("flint process {} died", p.pid));
            }
        }
        self
    }

    /// `Up`/`Exited (n)`, as `ps` shows it.
    pub fn describe(&self) -> String {
        match self.status {
            Status::Created => "Created".into(),
            Status::Running => "Up".into(),
            Status::Exited => match (self.exit_code, &self.reason) {
                (Some(c), _) => format!("Exited ({c})"),
                (None, Some(r)) => format!("Exited ({r})"),
                (None, None) => "Exited".into(),
            },
        }
    }
}

/// The runtime root and the containers in it.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub root: PathBuf,
}

fn usage(message: impl Into<String>) -> ContainerError {
    ContainerError::Usage(message.into())
}

fn io_at(what: String) -> impl FnOnce(io::Error) -> ContainerError {
    move |source| ContainerError::Io { what, source }
}

/// A random container id: 32 bytes of `/dev/urandom`, in hex.
fn new_id() -> io::Result<String> {
    let mut bytes = [0u8; 32];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(crate::image::hex(&bytes))
}

/// Whether `name` is a valid container name (Docker's rule).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && name.len() <= 128
}

impl Runtime {
    /// `$FLINT_RUNTIME_DIR`, else `/run/flint` for root, else
    /// `$XDG_RUNTIME_DIR/flint`, else `/tmp/flint-UID`.
    pub fn default_root() -> PathBuf {
        if let Some(dir) = std::env::var_os("FLINT_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            return dir.into();
        }
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        if uid == 0 {
            return "/run/flint".into();
        }
        match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            Some(d) => Path::new(&d).join("flint"),
            None => format!("/tmp/flint-{uid}").into(),
        }
    }

    /// The runtime at [`Runtime::default_root`], created `0700` if needed.
    pub fn open() -> Result<Runtime, ContainerError> {
        Runtime::at(Runtime::default_root())
    }

    /// The runtime at `root`, created `0700` if needed.
    pub fn at(root: PathBuf) -> Result<Runtime, ContainerError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root.join("names"))
            .map_err(io_at(format!("creating {}", root.display())))?;
        Ok(Runtime { root })
    }

    /// Container `id`'s directory.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn name_file(&self, name: &str) -> PathBuf {
        self.root.join("names").join(name)
    }

    /// Reserves `name` (a generated one when `None`) for a new container;
    /// returns its id, name and new directory.
    pub fn create(&self, name: Option<&str>) -> Result<(String, String, PathBuf), ContainerError> {
        let id = new_id().map_err(io_at("reading /dev/urandom".into()))?;
        let name = match name {
            Some(n) if !valid_name(n) => {
                return Err(usage(format!(
                    "invalid container name {n:?}: use letters, digits, _ . - (starting with a letter or digit)"
                )))
            }
            Some(n) => n.to_owned(),
            None => format!("flint-{}", &id[..12]),
        };
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.name_file(&name));
        match file {
            Ok(mut f) => f
                .write_all(id.as_bytes())
                .map_err(io_at(format!("writing the name {name}")))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(usage(format!(
                    "the container name {name:?} is already in use (flint container rm {name} frees it)"
                )))
            }
            Err(e) => return Err(io_at(format!("reserving the name {name}"))(e)),
        }
        let dir = self.dir(&id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io_at(format!("creating {}", dir.display())))?;
        Ok((id, name, dir))
    }

    /// The id of the container named `key`, or whose id starts with `key`.
    pub fn resolve(&self, key: &str) -> Result<String, ContainerError> {
        if valid_name(key) {
            if let Ok(id) = std::fs::read_to_string(self.name_file(key)) {
                if self.dir(&id).join("state.json").exists() {
                    return Ok(id);
                }
            }
        }
        let matches: Vec<String> = self
            .ids()
            .into_iter()
            .filter(|id| !key.is_empty() && id.starts_with(key))
            .collect();
        match matches.as_slice() {
            [id] => Ok(id.clone()),
            [] => Err(usage(format!("no such container: {key}"))),
            _ => Err(usage(format!("{key} matches more than one container"))),
        }
    }

    /// Every container id with a state file.
    pub fn ids(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            .filter(|id| self.dir(id).join("state.json").exists())
            .collect()
    }

    /// Every container's effective state, oldest first.
    pub fn list(&self) -> Vec<State> {
        let mut all: Vec<State> = self
            .ids()
            .iter()
            .filter_map(|id| load(&self.dir(id)).ok())
            .map(State::effective)
            .collect();
        all.sort_by_key(|s| s.created);
        all
    }

    /// Removes container `state`'s directory, disks and name.
    pub fn remove(&self, state: &State) -> Result<(), ContainerError> {
        let dir = self.dir(&state.id);
        if let Some(j) = &state.jail {
            crate::jail::remove(j)?;
        }
        if state.disk_dir.exists() {
            std::fs::remove_dir_all(&state.disk_dir)
                .map_err(io_at(format!("removing {}", state.disk_dir.display())))?;
        }
        if std::fs::read_to_string(self.name_file(&state.name))
            .ok()
            .as_deref()
            == Some(&state.id)
        {
            let _ = std::fs::remove_file(self.name_file(&state.name));
        }
        std::fs::remove_dir_all(&dir).map_err(io_at(format!("removing {}", dir.display())))
    }

    /// Frees a name reserved by [`Runtime::create`] for a container that
    /// never got a state file.
    pub fn abandon(&self, id: &str, name: &str) {
        if std::fs::read_to_string(self.name_file(name))
            .ok()
            .as_deref()
            == Some(id)
        {
            let _ = std::fs::remove_file(self.name_file(name));
        }
        let _ = std::fs::remove_dir_all(self.dir(id));
    }
}

/// Takes container directory `dir`'s lock (blocking); held until the
/// returned file is dropped.
pub fn lock(dir: &Path) -> Result<File, ContainerError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.join("lock"))
        .map_err(io_at(format!("opening {}/lock", dir.display())))?;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(file);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(io_at("locking the container".into())(e));
        }
    }
}

/// Reads `dir/state.json`.
pub fn load(dir: &Path) -> Result<State, ContainerError> {
    let text = std::fs::read(dir.join("state.json"))
        .map_err(io_at(format!("reading {}/state.json", dir.display())))?;
    serde_json::from_slice(&text)
        .map_err(|e| ContainerError::Internal(format!("{}/state.json: {e}", dir.display())))
}

/// Writes `dir/state.json` atomically (temporary file, fsync, rename).
pub fn save(dir: &Path, state: &State) -> Result<(), ContainerError> {
    let tmp = dir.join(".state.json.tmp");
    let json = serde_json::to_vec_pretty(state)
        .map_err(|e| ContainerError::Internal(format!("encoding the state: {e}")))?;
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join("state.json"))
    };
    write().map_err(io_at(format!("writing {}/state.json", dir.display())))
}

/// Changes `dir`'s state under its lock; returns the new state.
pub fn update(dir: &Path, change: impl FnOnce(&mut State)) -> Result<State, ContainerError> {
    let _lock = lock(dir)?;
    let mut state = load(dir)?;
    change(&mut state);
    save(dir, &state)?;
    Ok(state)
}
