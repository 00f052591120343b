//! The jailer's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can stop the jailer before it execs the jailed binary.
///
/// Each variant carries enough context (the argument, path or cgroup key
/// involved) that the one-line `Display` output is actionable on its own; the
/// caller prefixes it with `flint jail: `.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// `--id` is empty, too long or has characters outside `[A-Za-z0-9-]`.
    #[error("invalid --id {0:?}: must be 1 to 64 characters of A-Z, a-z, 0-9 and '-'")]
    InvalidId(String),

    /// `--uid` names no user in the host's user database.
    #[error("--uid {0}: no such user on this host")]
    UnknownUid(u32),

    /// `--gid` names no group in the host's group database.
    #[error("--gid {0}: no such group on this host")]
    UnknownGid(u32),

    /// The user/group database lookup itself failed.
    #[error("looking up {what} {id}: {source}")]
    IdLookup {
        /// "uid" or "gid".
        what: &'static str,
        /// The numeric id looked up.
        id: u32,
        /// The error from getpwuid_r/getgrgid_r.
        source: io::Error,
    },

    /// `--uid 0` or `--gid 0` without `--allow-root`.
    #[error(
        "--{what} 0: refusing to run the jailed process as root (a jail that keeps root \
         privileges confines little); pass --allow-root to force it"
    )]
    RootRefused {
        /// "uid" or "gid".
        what: &'static str,
    },

    /// `--exec-file` is missing, not a regular file or not executable.
    #[error("--exec-file {path}: {reason}")]
    ExecFile {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// `--chroot-base` is relative, missing or not a directory.
    #[error("--chroot-base {path}: {reason}")]
    ChrootBase {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A directory the jail is built in is a symlink or could be replaced
    /// by someone other than root.
    #[error("{path}: {reason}; refusing to build the jail there")]
    UnsafePath {
        /// The offending path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The exec file's shared libraries could not be resolved.
    #[error("--exec-file: resolving shared libraries: {0}")]
    SharedLibraries(#[from] crate::elf::ElfError),

    /// The jail directory for this exec file and id already exists.
    #[error(
        "jail directory {0} already exists (a jail with this id exists or was not cleaned up)"
    )]
    JailExists(PathBuf),

    /// `--netns` does not name an existing namespace file.
    #[error("--netns {path}: {reason}")]
    Netns {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A `--cgroup KEY=VALUE` argument is malformed or unsafe.
    #[error("--cgroup {arg:?}: {reason}")]
    CgroupArg {
        /// The argument as given.
        arg: String,
        /// What is wrong with it.
        reason: String,
    },

    /// `--parent-cgroup` is empty or would escape the cgroup mount.
    #[error("--parent-cgroup {arg:?}: {reason}")]
    ParentCgroup {
        /// The argument as given.
        arg: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A `--resource-limit NAME=N` argument is malformed.
    #[error("--resource-limit {arg:?}: {reason}")]
    ResourceLimitArg {
        /// The argument as given.
        arg: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A path or argument contains a NUL byte and cannot be passed to the kernel.
    #[error("{0:?}: contains a NUL byte")]
    NulInPath(PathBuf),

    /// A filesystem operation while building the jail failed.
    #[error("{what} {path}: {source}")]
    Fs {
        /// What was being done, e.g. "creating device node".
        what: &'static str,
        /// The path operated on.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// Reading the cgroup mount table failed.
    #[error("reading cgroup mounts from {path}: {source}")]
    CgroupMounts {
        /// Usually /proc/mounts.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// A requested cgroup setting cannot be applied on this host (no such
    /// hierarchy or controller): the jailer fails rather than run unlimited.
    #[error("--cgroup {key}={value}: {reason}")]
    CgroupUnavailable {
        /// The key as requested (after v1/v2 translation).
        key: String,
        /// The value requested.
        value: String,
        /// Why it cannot be applied.
        reason: String,
    },

    /// A cgroup key names a file the controller's cgroup does not have.
    #[error("cgroup {key}: no such file in {dir} (unknown key for this controller?)")]
    CgroupNoSuchFile {
        /// The key as written to the cgroupfs.
        key: String,
        /// The cgroup directory it was looked up in.
        dir: PathBuf,
    },

    /// Creating, writing or joining a cgroup failed.
    #[error("cgroup {key}: {what} {path}: {source}")]
    Cgroup {
        /// The key (or cgroup core file) involved.
        key: String,
        /// What was being done, e.g. "writing 50000 to".
        what: String,
        /// The cgroupfs path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// A system call needed to build the sandbox failed.
    #[error("{op}: {source}")]
    Syscall {
        /// The call and its main argument, e.g. "pivot_root(/srv/jail/...)".
        op: String,
        /// The errno it failed with.
        source: io::Error,
    },

    /// execve of the jailed binary returned.
    #[error("exec {path}: {source}")]
    Exec {
        /// The path inside the jail.
        path: PathBuf,
        /// The errno execve failed with.
        source: io::Error,
    },
}

impl JailError {
    /// Wraps the current `errno` as a failed system call; used right after a
    /// libc call returned -1.
    pub(crate) fn last_os(op: impl Into<String>) -> Self {
        JailError::Syscall {
            op: op.into(),
            source: io::Error::last_os_error(),
        }
    }

    /// Builds a filesystem error closure for `map_err`.
    pub(crate) fn fs(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| JailError::Fs { what, path, source }
    }
}
