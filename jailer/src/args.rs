//! Command-line arguments of `flint jail`.

use std::ffi::OsString;
use std::path::PathBuf;

/// Which cgroup hierarchy to put the jailed process in.
///
/// Hosts run pure cgroup v2, pure v1 or a hybrid of both, so the user can pin
/// the version or let the jailer pick (`auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CgroupVersionArg {
    /// v2 when a cgroup2 mount offers every requested controller, else v1.
    Auto,
    /// The per-controller v1 hierarchies.
    #[value(name = "1")]
    V1,
    /// The unified v2 hierarchy.
    #[value(name = "2")]
    V2,
}

/// Arguments of `flint jail`: where to build the jail, who to run as, which
/// limits to apply and what to exec.
///
/// Kept as raw strings where the jailer has to validate them itself so that
/// every rejection comes back as a [`crate::JailError`] naming the argument.
#[derive(Debug, Clone, clap::Args)]
pub struct JailArgs {
    /// Jail id: 1 to 64 characters of [A-Za-z0-9-]; names the jail directory and cgroup.
    #[arg(long)]
    pub id: String,

    /// Binary to copy into the jail and exec (e.g. the flint binary).
    #[arg(long, value_name = "PATH")]
    pub exec_file: PathBuf,

    /// User id the jailed process runs as.
    #[arg(long)]
    pub uid: u32,

    /// Group id the jailed process runs as.
    #[arg(long)]
    pub gid: u32,

    /// Allow --uid 0 or --gid 0 (refused otherwise: a root jail confines little).
    #[arg(long)]
    pub allow_root: bool,

    /// Accept a --uid/--gid with no passwd/group entry (refused otherwise, as
    /// a likely typo): e.g. one uid per jail from a reserved range.
    #[arg(long)]
    pub unnamed_ids: bool,

    /// Absolute directory under which <exec-file-name>/<id>/root is built.
    #[arg(long, value_name = "DIR")]
    pub chroot_base: PathBuf,

    /// Network namespace to join, e.g. /var/run/netns/NAME.
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,

    /// Run the binary as PID 1 of a new PID namespace.
    #[arg(long)]
    pub new_pid_ns: bool,

    /// Cgroup setting, e.g. cpu.max="50000 100000" or memory.limit_in_bytes=268435456 (repeatable).
    #[arg(long = "cgroup", value_name = "KEY=VALUE")]
    pub cgroups: Vec<String>,

    /// Cgroup version to use.
    #[arg(long, value_enum, default_value_t = CgroupVersionArg::Auto)]
    pub cgroup_version: CgroupVersionArg,

    /// Cgroup (relative to each hierarchy's root) under which the <id> cgroup is created.
    #[arg(long, value_name = "NAME", default_value = "flint")]
    pub parent_cgroup: String,

    /// Resource limit no-file=N or fsize=N (repeatable; no-file defaults to 2048).
    #[arg(long = "resource-limit", value_name = "RESOURCE=N")]
    pub resource_limits: Vec<String>,

    /// Detach: new session, stdio to /dev/null, the jailer returns at once.
    #[arg(long)]
    pub daemonize: bool,

    /// Arguments passed to the jailed binary (after `--`).
    #[arg(last = true, value_name = "ARGS")]
    pub exec_args: Vec<OsString>,
}
