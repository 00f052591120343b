//! The structured messages: the JSON payloads of `Hello`, `Request` and
//! `Response` frames. Bulk bytes (process I/O, file contents) never go
//! through JSON; they travel as raw data frames (see [`crate::Frame`]).

use serde::{Deserialize, Serialize};

/// The first frame on every connection, both ways: the host states the
/// protocol version it speaks; the agent answers with its own `Hello` when it
/// speaks the same version, or with [`Response::Error`] and closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`crate::PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    /// Free-form name and version of the sender's software, for logs.
    #[serde(default)]
    pub software: String,
}

/// What the host asks for; one request per connection, after the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Liveness check; answered with [`Response::Pong`].
    Ping,
    /// Starts a process. Answered with a `Started` frame (or an error), then
    /// the connection carries the process's I/O until its `Exited` frame.
    Exec(ExecSpec),
    /// The guest's processes, from `/proc`: [`Response::Processes`].
    ListProcesses,
    /// Memory and CPU totals: [`Response::Stats`].
    Stats,
    /// Creates or truncates `path` with `mode` (before the umask). The agent
    /// answers `Ok` when the file is open; the host then sends `Data` frames
    /// and a `DataEnd`; the agent answers `Ok` once everything is written.
    WriteFile { path: String, mode: u32 },
    /// Reads `path`: the agent answers [`Response::File`], then `Data`
    /// frames and a `DataEnd` (or an `Error` response if reading fails).
    ReadFile { path: String },
    /// Sends signal `signal` to process `pid`: `Ok` or `Error`.
    Signal { pid: i32, signal: i32 },
    /// Waits for a process the agent started to end: [`Response::Exited`].
    Wait { pid: i32 },
    /// Powers the guest off after answering `Ok`.
    Shutdown,
    /// Connects to TCP `127.0.0.1:port` in the guest (a published port,
    /// `flint container run -p`). The agent answers `Ok` once connected (or
    /// `Error`); from then on the connection carries raw bytes both ways,
    /// no frames, and a half-close on either side is passed on.
    Connect { port: u16 },
    /// Mounts a file system in the guest (creating the target directory):
    /// `Ok` or `Error`. The containerd shim mounts each container's root
    /// drive and its `/proc`, `/dev`, `/sys` this way.
    Mount(MountSpec),
    /// Unmounts `target` (lazily, so a busy mount still goes): `Ok` or
    /// `Error`.
    Unmount { target: String },
}

/// A mount in the guest ([`Request::Mount`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// Device or pseudo file system name (`/dev/vdb`, `proc`, ...). A block
    /// device's buffers are flushed first: it may have been swapped to
    /// another image since the guest last read it.
    pub source: String,
    /// Absolute directory; created with its parents when missing.
    pub target: String,
    /// `ext4`, `proc`, `devtmpfs`, ...
    pub fstype: String,
    /// `ro`, `nosuid`, `nodev`, `noexec` become flags; the rest is data.
    #[serde(default)]
    pub options: Vec<String>,
}

/// The agent's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// The request succeeded and carries no data.
    Ok,
    /// The request failed; `message` says why, for a human.
    Error { message: String },
    /// Answer to `Ping`.
    Pong { version: u32, software: String },
    /// Answer to `ListProcesses`.
    Processes { processes: Vec<ProcessInfo> },
    /// Answer to `Stats`.
    Stats(Stats),
    /// Answer to `ReadFile`: the file's size when opened (the data that
    /// follows may differ if the file changes meanwhile).
    File { size: u64 },
    /// Answer to `Wait`.
    Exited { status: ExitStatus },
}

/// How to run a process ([`Request::Exec`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// argv; `argv[0]` is looked up in `PATH` when it has no `/`.
    pub argv: Vec<String>,
    /// The complete environment, `KEY=VALUE` (nothing is inherited).
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory; `None`: `/`.
    #[serde(default)]
    pub cwd: Option<String>,
    /// `USER[:GROUP]`, names or numeric ids; `None`: root.
    #[serde(default)]
    pub user: Option<String>,
    /// Run on a pseudo-terminal of this size instead of pipes; stderr is
    /// then merged into stdout, as on any terminal.
    #[serde(default)]
    pub tty: Option<WindowSize>,
    /// Run chrooted into this guest directory (a container's root, mounted
    /// with [`Request::Mount`]); `cwd` and `user` are then resolved inside
    /// it. `None`: the guest's own root.
    #[serde(default)]
    pub root: Option<String>,
    /// Resource limits set in the child before it executes (an OCI
    /// spec's `process.rlimits`); limits not named keep the agent's. Left
    /// out of the JSON when empty, so a request without limits reads as
    /// before; an agent older than this field ignores it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<Rlimit>,
}

/// One resource limit for [`ExecSpec::rlimits`], as the OCI runtime spec
/// writes it: `{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096}`.
/// `u64::MAX` is `RLIM_INFINITY`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// `RLIMIT_NOFILE`, `RLIMIT_NPROC`, ...: the `setrlimit(2)` resource's
    /// name. The agent refuses a name it does not know (as runc does)
    /// rather than run the process without the limit.
    #[serde(rename = "type")]
    pub kind: String,
    /// The soft limit (what the process gets); at most `hard`.
    pub soft: u64,
    /// The hard limit (the ceiling an unprivileged process can raise its
    /// soft limit to).
    pub hard: u64,
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// It called `exit(code)`.
    Code(i32),
    /// A signal killed it (a shell reports this as 128 + the signal).
    Signal(i32),
}

impl ExitStatus {
    /// The status as a shell reports it: the code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

/// One process, as `/proc` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: i32,
    pub ppid: i32,
    /// The state letter of `/proc/PID/stat` (`R`, `S`, `Z`, ...).
    pub state: char,
    /// From `/proc/PID/cmdline`; empty for kernel threads.
    pub argv: Vec<String>,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
    /// User + system CPU time, in clock ticks (`USER_HZ`, 100 on Linux).
    pub cpu_ticks: u64,
}

/// Guest-wide resource figures ([`Request::Stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// `MemTotal` of `/proc/meminfo`, in bytes.
    pub mem_total_bytes: u64,
    /// `MemAvailable` of `/proc/meminfo`, in bytes.
    pub mem_available_bytes: u64,
    /// The `cpu` line of `/proc/stat`, in clock ticks.
    pub cpu: CpuTimes,
    /// How many processes `/proc` lists.
    pub processes: u32,
}

/// Aggregate CPU time of all CPUs since boot, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlimits_are_optional_both_ways() {
        // A request from a host older than the field still parses.
        let old: Request =
            serde_json::from_str(r#"{"type": "exec", "argv": ["sh"], "root": null}"#).unwrap();
        assert_eq!(
            old,
            Request::Exec(ExecSpec {
                argv: vec!["sh".into()],
                ..ExecSpec::default()
            })
        );
        // Without limits the JSON is what an older agent has always read.
        let plain = serde_json::to_string(&Request::Exec(ExecSpec::default())).unwrap();
        assert!(!plain.contains("rlimits"), "{plain}");
        // With limits: the OCI spec's shape.
        let spec = ExecSpec {
            argv: vec!["sh".into()],
            rlimits: vec![Rlimit {
                kind: "RLIMIT_NOFILE".into(),
                soft: 64,
                hard: 128,
            }],
            ..ExecSpec::default()
        };
        let json = serde_json::to_value(Request::Exec(spec.clone())).unwrap();
        assert_eq!(
            json["rlimits"],
            serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 64, "hard": 128}])
        );
        assert_eq!(
            serde_json::from_value::<Request>(json).unwrap(),
            Request::Exec(spec)
        );
    }
}
