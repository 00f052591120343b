//! Puts the jailer (and so the process it execs) into a per-jail cgroup
//! with the requested limits, on cgroup v1 or v2 hosts.

mod mounts;
mod translate;
mod v1;
mod v2;

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;

use crate::args::CgroupVersionArg;
use crate::validate::JailConfig;
use crate::JailError;
pub(crate) use mounts::CgroupMounts;

/// One `--cgroup KEY=VALUE` setting; `KEY` is the file name in the cgroup
/// directory and its part before the first `.` names the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Setting {
    pub key: String,
    pub value: String,
}

impl Setting {
    pub fn new(key: &str, value: &str) -> Self {
        Setting {
            key: key.to_owned(),
            value: value.to_owned(),
        }
    }

    /// The controller owning this key, e.g. `cpu` for `cpu.max`.
    pub fn controller(&self) -> &str {
        self.key.split('.').next().unwrap_or(&self.key)
    }
}

/// The hierarchy the jail's cgroup goes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V1,
    V2,
}

/// Creates `<parent>/<id>` cgroups for the requested settings, writes the
/// values and moves the calling process in (children and exec inherit it).
///
/// Fails closed: a setting that cannot be applied (no such hierarchy, a
/// controller not mounted or not delegated, an unknown file) is an error,
/// never a skip, so a jail never runs with fewer limits than requested.
pub(crate) fn apply(cfg: &JailConfig) -> Result<(), JailError> {
    if cfg.cgroups.is_empty() {
        return Ok(());
    }
    let mounts = CgroupMounts::read()?;
    let v2_controllers = match &mounts.v2 {
        Some(root) => read_controllers(root),
        None => Vec::new(),
    };
    let pid = std::process::id();
    match choose_version(cfg.cgroup_version, &mounts, &cfg.cgroups, &v2_controllers) {
        None => {
            let wanted = match cfg.cgroup_version {
                CgroupVersionArg::V1 => "cgroup v1 hierarchy",
                CgroupVersionArg::V2 => "cgroup v2 (unified) hierarchy",
                CgroupVersionArg::Auto => "cgroup hierarchy",
            };
            let first = &cfg.cgroups[0];
            Err(JailError::CgroupUnavailable {
                key: first.key.clone(),
                value: first.value.clone(),
                reason: format!("no {wanted} is mounted on this host"),
            })
        }
        Some(Version::V1) => {
            let settings = translate::to_v1(&cfg.cgroups)?;
            v1::apply(&mounts, &settings, &cfg.parent_cgroup, &cfg.id, pid)
        }
        Some(Version::V2) => {
            let root = mounts.v2.as_deref().unwrap_or(Path::new("/sys/fs/cgroup"));
            let settings = translate::to_v2(&cfg.cgroups)?;
            v2::apply(
                root,
                &v2_controllers,
                &settings,
                &cfg.parent_cgroup,
                &cfg.id,
                pid,
            )
        }
    }
}

/// Picks the hierarchy: the requested one if mounted; for `auto`, v2 when it
/// is mounted and either no v1 controller hierarchy exists or v2 offers every
/// requested controller (hybrid hosts often leave v2 without controllers).
pub(crate) fn choose_version(
    requested: CgroupVersionArg,
    mounts: &CgroupMounts,
    settings: &[Setting],
    v2_controllers: &[String],
) -> Option<Version> {
    let has_v2 = mounts.v2.is_some();
    let has_v1 = !mounts.v1.is_empty();
    match requested {
        CgroupVersionArg::V1 => has_v1.then_some(Version::V1),
        CgroupVersionArg::V2 => has_v2.then_some(Version::V2),
        CgroupVersionArg::Auto => {
            let needed: BTreeSet<&str> = settings.iter().map(Setting::controller).collect();
            let v2_covers = needed.iter().all(|c| v2_controllers.iter().any(|a| a == c));
            if has_v2 && (!has_v1 || v2_covers) {
                Some(Version::V2)
            } else if has_v1 {
                Some(Version::V1)
            } else {
                None
            }
        }
    }
}

/// The error for a setting whose controller this host cannot apply.
fn unavailable(setting: &Setting, reason: String) -> JailError {
    JailError::CgroupUnavailable {
        key: setting.key.clone(),
        value: setting.value.clone(),
        reason,
    }
}

/// The controllers a v2 cgroup offers (its `cgroup.controllers`).
fn read_controllers(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("cgroup.controllers"))
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Creates one cgroup directory, accepting one left by an earlier jail.
fn mkdir(dir: &Path) -> Result<(), JailError> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(JailError::Fs {
            what: "creating cgroup",
            path: dir.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Writes `value` to an existing cgroup file in a single write(2), as
/// cgroupfs expects.
fn write_file(path: &Path, key: &str, value: &str) -> Result<(), JailError> {
    let err = |source| JailError::Cgroup {
        key: key.to_owned(),
        what: format!("writing {value:?} to"),
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new().write(true).open(path).map_err(err)?;
    file.write_all(value.as_bytes()).map_err(err)
}

/// Writes one setting, naming the key if the controller has no such file.
fn write_setting(dir: &Path, setting: &Setting) -> Result<(), JailError> {
    let path = dir.join(&setting.key);
    if !path.exists() {
        return Err(JailError::CgroupNoSuchFile {
            key: setting.key.clone(),
            dir: dir.to_owned(),
        });
    }
    write_file(&path, &setting.key, &setting.value)
}

/// Moves process `pid` into the cgroup at `dir`.
fn join(dir: &Path, pid: u32) -> Result<(), JailError> {
    let procs = dir.join("cgroup.procs");
    let file = if procs.exists() {
        procs
    } else {
        dir.join("tasks")
    };
    write_file(&file, "cgroup.procs", &pid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "cgroup2 /u cgroup2 rw 0 0\ncgroup /c cgroup rw,cpu,cpuacct 0 0\ncgroup /m cgroup rw,memory 0 0\n";

    fn settings(keys: &[&str]) -> Vec<Setting> {
        keys.iter().map(|k| Setting::new(k, "1")).collect()
    }

    #[test]
    fn version_choice() {
        use CgroupVersionArg::*;
        let hybrid = CgroupMounts::parse(HYBRID);
        let cpu_mem = settings(&["cpu.max", "memory.max"]);
        let hugetlb = vec!["hugetlb".to_owned()];
        let all = vec!["cpu".to_owned(), "memory".to_owned()];
        // Hybrid host whose v2 lacks cpu/memory: auto falls back to v1.
        assert_eq!(
            choose_version(Auto, &hybrid, &cpu_mem, &hugetlb),
            Some(Version::V1)
        );
        assert_eq!(
            choose_version(Auto, &hybrid, &settings(&["hugetlb.2MB.max"]), &hugetlb),
            Some(Version::V2)
        );
        assert_eq!(
            choose_version(Auto, &hybrid, &cpu_mem, &all),
            Some(Version::V2)
        );
        assert_eq!(
            choose_version(V2, &hybrid, &cpu_mem, &hugetlb),
            Some(Version::V2)
        );
        assert_eq!(
            choose_version(V1, &hybrid, &cpu_mem, &all),
            Some(Version::V1)
        );
        // Pure v2 host.
        let v2 = CgroupMounts::parse("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n");
        assert_eq!(choose_version(Auto, &v2, &cpu_mem, &[]), Some(Version::V2));
        assert_eq!(choose_version(V1, &v2, &cpu_mem, &all), None);
        // Pure v1 host.
        let v1 = CgroupMounts::parse("cgroup /c cgroup rw,cpu 0 0\n");
        assert_eq!(choose_version(Auto, &v1, &cpu_mem, &[]), Some(Version::V1));
        assert_eq!(choose_version(V2, &v1, &cpu_mem, &[]), None);
        // Nothing mounted.
        assert_eq!(
            choose_version(Auto, &CgroupMounts::default(), &cpu_mem, &[]),
            None
        );
    }

    #[test]
    fn setting_controller() {
        assert_eq!(Setting::new("hugetlb.2MB.max", "0").controller(), "hugetlb");
        assert_eq!(
            Setting::new("memory.limit_in_bytes", "0").controller(),
            "memory"
        );
    }
}
