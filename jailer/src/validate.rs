//! Turns [`JailArgs`] into a checked [`JailConfig`] before anything on the
//! host is touched.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::args::{CgroupVersionArg, JailArgs};
use crate::cgroup::Setting;
use crate::ids::{check_group, check_user};
use crate::rlimit::{Resource, ResourceLimit, DEFAULT_NO_FILE};
use crate::JailError;

/// The jail, fully validated: every field is safe to act on.
#[derive(Debug, Clone)]
pub(crate) struct JailConfig {
    pub id: String,
    pub exec_file: PathBuf,
    /// The exec file's name; it is copied to `/<exec_name>` in the jail.
    pub exec_name: OsString,
    pub uid: u32,
    pub gid: u32,
    /// `--chroot-base`, under which the jail directories are made.
    pub chroot_base: PathBuf,
    /// `<chroot-base>/<exec-name>/<id>/root`.
    pub jail_root: PathBuf,
    pub netns: Option<PathBuf>,
    pub new_pid_ns: bool,
    pub cgroups: Vec<Setting>,
    pub cgroup_version: CgroupVersionArg,
    pub parent_cgroup: PathBuf,
    pub rlimits: Vec<ResourceLimit>,
    pub daemonize: bool,
    pub exec_args: Vec<OsString>,
}

/// Checks every argument and the host state they refer to.
pub(crate) fn validate(args: JailArgs) -> Result<JailConfig, JailError> {
    validate_id(&args.id)?;
    check_not_root(args.uid, args.gid, args.allow_root)?;
    if !args.unnamed_ids {
        check_user(args.uid)?;
        check_group(args.gid)?;
    }
    let exec_name = check_exec_file(&args.exec_file)?;
    check_chroot_base(&args.chroot_base)?;
    let jail_root = crate::jail_root(&args.chroot_base, &args.exec_file, &args.id);
    check_jail_absent(&jail_root)?;
    if let Some(netns) = &args.netns {
        check_netns(netns)?;
    }
    let cgroups = args
        .cgroups
        .iter()
        .map(|arg| parse_cgroup_arg(arg))
        .collect::<Result<Vec<_>, _>>()?;
    let parent_cgroup = parse_parent_cgroup(&args.parent_cgroup)?;
    let rlimits = parse_rlimits(&args.resource_limits)?;
    Ok(JailConfig {
        id: args.id,
        exec_file: args.exec_file,
        exec_name,
        uid: args.uid,
        gid: args.gid,
        chroot_base: args.chroot_base,
        jail_root,
        netns: args.netns,
        new_pid_ns: args.new_pid_ns,
        cgroups,
        cgroup_version: args.cgroup_version,
        parent_cgroup,
        rlimits,
        daemonize: args.daemonize,
        exec_args: args.exec_args,
    })
}

/// The id becomes a directory and cgroup name, so it is restricted to a
/// charset that can never form a path separator or `..`.
pub(crate) fn validate_id(id: &str) -> Result<(), JailError> {
    let ok =
        (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(JailError::InvalidId(id.to_owned()))
    }
}

/// Refuses uid or gid 0 unless `allow_root`: a jailed process that keeps
/// root can undo most of the jail (it may mknod, remount, ptrace the host).
pub(crate) fn check_not_root(uid: u32, gid: u32, allow_root: bool) -> Result<(), JailError> {
    if allow_root {
        if uid == 0 || gid == 0 {
            log::warn!("--allow-root: the jailed process keeps uid {uid} / gid {gid}");
        }
        return Ok(());
    }
    if uid == 0 {
        return Err(JailError::RootRefused { what: "uid" });
    }
    if gid == 0 {
        return Err(JailError::RootRefused { what: "gid" });
    }
    Ok(())
}

/// The exec file must be a regular executable; returns its file name.
fn check_exec_file(path: &Path) -> Result<OsString, JailError> {
    let err = |reason: String| JailError::ExecFile {
        path: path.to_owned(),
        reason,
    };
    let name = path
        .file_name()
        .ok_or_else(|| err("does not name a file".into()))?;
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(err("not executable".into()));
    }
    Ok(name.to_owned())
}

fn check_chroot_base(path: &Path) -> Result<(), JailError> {
    let err = |reason: String| JailError::ChrootBase {
        path: path.to_owned(),
        reason,
    };
    if !path.is_absolute() {
        return Err(err("must be an absolute path".into()));
    }
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_dir() {
        return Err(err("not a directory".into()));
    }
    Ok(())
}

/// A leftover jail dir means a live or unclean jail with this id; reusing it
/// could hand the new jail someone else's files.
pub(crate) fn check_jail_absent(root: &Path) -> Result<(), JailError> {
    match std::fs::symlink_metadata(root) {
        Ok(_) => Err(JailError::JailExists(root.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(JailError::Fs {
            what: "checking jail directory",
            path: root.to_owned(),
            source,
        }),
    }
}

fn check_netns(path: &Path) -> Result<(), JailError> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|e| JailError::Netns {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// Parses `controller.file=value`, refusing anything that could name a file
/// outside the jail's cgroup directory or inject extra lines.
pub(crate) fn parse_cgroup_arg(arg: &str) -> Result<Setting, JailError> {
    let err = |reason: &str| JailError::CgroupArg {
        arg: arg.to_owned(),
        reason: reason.to_owned(),
    };
    let (key, value) = arg
        .split_once('=')
        .ok_or_else(|| err("expected KEY=VALUE"))?;
    let Some((controller, file)) = key.split_once('.') else {
        return Err(err("key must be <controller>.<file>, e.g. cpu.max"));
    };
    if controller.is_empty() || file.is_empty() || key.contains("..") {
        return Err(err("key must be <controller>.<file>, e.g. cpu.max"));
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(err(
            "key may only contain A-Z, a-z, 0-9, '.', '_' and '-' (no '/')",
        ));
    }
    if controller == "cgroup" {
        return Err(err("cgroup.* core files are managed by the jailer"));
    }
    if value.is_empty() {
        return Err(err("value is empty"));
    }
    if value.contains(['\n', '\r', '\0']) {
        return Err(err("value must be a single line"));
    }
    Ok(Setting::new(key, value))
}

/// The parent cgroup is joined onto each hierarchy's mount point, so it must
/// be a plain relative path.
pub(crate) fn parse_parent_cgroup(arg: &str) -> Result<PathBuf, JailError> {
    let err = |reason: &str| JailError::ParentCgroup {
        arg: arg.to_owned(),
        reason: reason.to_owned(),
    };
    let path = Path::new(arg);
    if arg.is_empty() {
        return Err(err("is empty"));
    }
    if arg.contains(['\n', '\0']) {
        return Err(err("contains a newline or NUL"));
    }
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(err(
            "must be a relative path without '.' or '..' components",
        ));
    }
    Ok(path.to_owned())
}

/// Parses `--resource-limit` values, adding the no-file default when absent.
pub(crate) fn parse_rlimits(args: &[String]) -> Result<Vec<ResourceLimit>, JailError> {
    let mut limits: Vec<ResourceLimit> = Vec::new();
    for arg in args {
        let err = |reason: &str| JailError::ResourceLimitArg {
            arg: arg.clone(),
            reason: reason.to_owned(),
        };
        let (name, value) = arg
            .split_once('=')
            .ok_or_else(|| err("expected RESOURCE=N"))?;
        let resource = match name {
            "no-file" => Resource::NoFile,
            "fsize" => Resource::Fsize,
            _ => return Err(err("resource must be no-file or fsize")),
        };
        let value: u64 = value
            .parse()
            .map_err(|_| err("value must be a non-negative integer"))?;
        limits.retain(|l| l.resource != resource);
        limits.push(ResourceLimit { resource, value });
    }
    if !limits.iter().any(|l| l.resource == Resource::NoFile) {
        limits.push(ResourceLimit {
            resource: Resource::NoFile,
            value: DEFAULT_NO_FILE,
        });
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("vm-1").is_ok());
        assert!(validate_id(&"a".repeat(64)).is_ok());
        for bad in ["", "a/b", "..", "a.b", "a b", "ä", "a_b", &"a".repeat(65)] {
            assert!(
                matches!(validate_id(bad), Err(JailError::InvalidId(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn root_ids_need_allow_root() {
        for (uid, gid, what) in [(0, 65534, "uid"), (65534, 0, "gid"), (0, 0, "uid")] {
            match check_not_root(uid, gid, false) {
                Err(e @ JailError::RootRefused { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains(&format!("--{what} 0")), "{msg}");
                    assert!(msg.contains("--allow-root"), "{msg}");
                }
                other => panic!("{uid}:{gid}: {other:?}"),
            }
            assert!(check_not_root(uid, gid, true).is_ok());
        }
        assert!(check_not_root(65534, 65534, false).is_ok());
    }

    #[test]
    fn existing_jail_dir_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(check_jail_absent(&dir.path().join("root")).is_ok());
        assert!(matches!(
            check_jail_absent(dir.path()),
            Err(JailError::JailExists(_))
        ));
        // A dangling symlink counts as existing too.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/nonexistent", &link).expect("symlink");
        assert!(matches!(
            check_jail_absent(&link),
            Err(JailError::JailExists(_))
        ));
    }

    #[test]
    fn exec_file_and_chroot_base() {
        assert!(check_exec_file(Path::new("/bin/sh")).is_ok());
        assert!(check_exec_file(Path::new("/etc/passwd")).is_err());
        assert!(check_exec_file(Path::new("/etc")).is_err());
        assert!(check_exec_file(Path::new("/nonexistent/x")).is_err());
        assert!(check_chroot_base(Path::new("/tmp")).is_ok());
        assert!(check_chroot_base(Path::new("tmp")).is_err());
        assert!(check_chroot_base(Path::new("/nonexistent")).is_err());
    }

    #[test]
    fn cgroup_args() {
        let s = parse_cgroup_arg("cpu.max=50000 100000").expect("valid");
        assert_eq!(
            (s.key.as_str(), s.value.as_str()),
            ("cpu.max", "50000 100000")
        );
        assert_eq!(s.controller(), "cpu");
        assert!(parse_cgroup_arg("hugetlb.2MB.max=0").is_ok());
        for bad in [
            "cpu.max",
            "cpumax=1",
            ".max=1",
            "cpu.=1",
            "../cpu.max=1",
            "cpu/../../x.y=1",
            "cpu.max/x=1",
            "cpu..max=1",
            "cgroup.procs=1",
            "cpu.max=",
            "cpu.max=1\n2",
        ] {
            assert!(
                matches!(parse_cgroup_arg(bad), Err(JailError::CgroupArg { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn parent_cgroups() {
        assert_eq!(
            parse_parent_cgroup("flint").expect("ok"),
            PathBuf::from("flint")
        );
        assert!(parse_parent_cgroup("a/b").is_ok());
        for bad in ["", "/abs", "..", "a/../b", "./a", "a\nb"] {
            assert!(parse_parent_cgroup(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rlimits() {
        let l = parse_rlimits(&[]).expect("ok");
        assert_eq!(
            l,
            vec![ResourceLimit {
                resource: Resource::NoFile,
                value: 2048
            }]
        );
        let l = parse_rlimits(&["fsize=10".into(), "no-file=7".into()]).expect("ok");
        assert_eq!(
            l,
            vec![
                ResourceLimit {
                    resource: Resource::Fsize,
                    value: 10
                },
                ResourceLimit {
                    resource: Resource::NoFile,
                    value: 7
                },
            ]
        );
        for bad in ["no-file", "nofile=1", "fsize=-1", "fsize=x"] {
            assert!(parse_rlimits(&[bad.into()]).is_err(), "{bad:?}");
        }
    }
}
