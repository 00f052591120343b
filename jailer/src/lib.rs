//! flint's jailer: runs a binary (normally flint itself) chrooted via
//! `pivot_root` into a per-jail directory, in its own mount (and optionally
//! PID and network) namespace, in a per-jail cgroup, with resource limits,
//! no inherited descriptors, an empty environment and an unprivileged
//! uid/gid. This limits what a compromised VMM process can reach.
//!
//! The `flint jail` subcommand parses [`JailArgs`] and calls [`run`].

mod args;
mod cgroup;
mod elf;
mod error;
mod exec;
mod fs;
mod ids;
mod ns;
mod rlimit;
mod validate;

use std::convert::Infallible;
use std::path::{Path, PathBuf};

pub use args::{CgroupVersionArg, JailArgs};
pub use elf::ElfError;
pub use error::JailError;

/// The jail's root directory, `<chroot_base>/<exec_file name>/<id>/root`.
///
/// Public so callers (and tests) can find the jail's files, e.g. the API
/// socket the jailed flint creates at `/api.sock` inside it. `exec_file` is
/// expected to name a file; [`run`] rejects one that does not.
pub fn jail_root(chroot_base: &Path, exec_file: &Path, id: &str) -> PathBuf {
    let name = exec_file.file_name().unwrap_or_default();
    chroot_base.join(name).join(id).join("root")
}

/// Builds the jail described by `args` and execs the binary inside it.
///
/// On success it never returns: the process image is replaced (or, with
/// `--new-pid-ns`/`--daemonize`, the jailer side exits after forking). Any
/// failure before exec returns a [`JailError`] for the caller to print as
/// `flint jail: <error>`. Must be called from a single-threaded process
/// running as root, since it may fork and changes process-wide state.
pub fn run(args: JailArgs) -> Result<Infallible, JailError> {
    let cfg = validate::validate(args)?;
    fs::build_jail(&cfg)?;
    if let Err(e) = enter_jail(&cfg) {
        // Don't leave a half-built jail behind to block a retry with this id.
        if let Err(rm) = std::fs::remove_dir_all(&cfg.jail_root) {
            log::warn!("removing {}: {rm}", cfg.jail_root.display());
        }
        return Err(e);
    }
    ns::fork_if_needed(cfg.new_pid_ns, cfg.daemonize)?;
    rlimit::apply(&cfg.rlimits)?;
    exec::close_inherited_fds()?;
    if cfg.daemonize {
        exec::daemonize()?;
    }
    exec::drop_privileges(cfg.uid, cfg.gid)?;
    exec::exec(&cfg.exec_name, &cfg.exec_args)
}

/// The host-side steps after the jail directory exists: cgroups, network
/// namespace, then the pivot into the jail.
fn enter_jail(cfg: &validate::JailConfig) -> Result<(), JailError> {
    cgroup::apply(cfg)?;
    if let Some(netns) = &cfg.netns {
        ns::join_netns(netns)?;
    }
    ns::pivot_into(&cfg.jail_root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jail_root_layout() {
        assert_eq!(
            jail_root(
                Path::new("/srv/jailer"),
                Path::new("/usr/bin/flint"),
                "vm-1"
            ),
            PathBuf::from("/srv/jailer/flint/vm-1/root")
        );
    }
}
