//! Finds the cgroup hierarchies from the mount table.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::JailError;

/// Mount options of a v1 cgroup mount that are not controller names.
const GENERIC_OPTIONS: &[&str] = &[
    "rw",
    "ro",
    "nosuid",
    "nodev",
    "noexec",
    "relatime",
    "norelatime",
    "noatime",
    "nodiratime",
    "strictatime",
    "lazytime",
    "sync",
    "async",
    "dirsync",
    "mand",
    "nomand",
    "silent",
    "xattr",
    "noprefix",
    "clone_children",
    "cpuset_v2_mode",
    "favordynmods",
    "none",
    "all",
];

/// One v1 hierarchy: a mount point and the controllers bound to it (several
/// for comma-joined mounts such as `cpu,cpuacct`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct V1Mount {
    pub path: PathBuf,
    pub controllers: Vec<String>,
}

impl V1Mount {
    /// Whether `controller` is bound to this hierarchy.
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// The cgroup hierarchies mounted on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CgroupMounts {
    /// v1 hierarchies that carry at least one controller (named-only
    /// hierarchies like `name=systemd` are left out).
    pub v1: Vec<V1Mount>,
    /// The first cgroup2 (unified) mount, if any.
    pub v2: Option<PathBuf>,
}

impl CgroupMounts {
    /// Reads the calling process's mount table.
    pub fn read() -> Result<Self, JailError> {
        let path = Path::new("/proc/self/mounts");
        let text = std::fs::read(path).map_err(|source| JailError::CgroupMounts {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::parse(&String::from_utf8_lossy(&text)))
    }

    /// Parses `/proc/mounts` text; lines that are not cgroup mounts are ignored.
    pub fn parse(text: &str) -> Self {
        let mut mounts = CgroupMounts::default();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, mount_point, fs_type, options, ..] = fields[..] else {
                continue;
            };
            let path = unescape(mount_point);
            match fs_type {
                "cgroup2" if mounts.v2.is_none() => mounts.v2 = Some(path),
                "cgroup" => {
                    let controllers: Vec<String> = options
                        .split(',')
                        .filter(|o| !o.contains('=') && !GENERIC_OPTIONS.contains(o))
                        .map(str::to_owned)
                        .collect();
                    // The same hierarchy may be mounted twice; the first wins.
                    let known = mounts
                        .v1
                        .iter()
                        .any(|m| controllers.iter().any(|c| m.has(c)));
                    if !controllers.is_empty() && !known {
                        mounts.v1.push(V1Mount { path, controllers });
                    }
                }
                _ => {}
            }
        }
        mounts
    }

    /// The v1 hierarchy carrying `controller`.
    pub fn v1_mount(&self, controller: &str) -> Option<&V1Mount> {
        self.v1.iter().find(|m| m.has(controller))
    }
}

/// Undoes the octal escaping (`\040` for space, ...) of /proc/mounts fields.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                let v = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(v as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,nosuid,nodev,noexec,relatime,xattr,name=systemd 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
cgroup /sys/fs/cgroup/net_cls,net_prio cgroup rw,nosuid,nodev,noexec,relatime,net_cls,net_prio 0 0
cgroup /mnt/other\\040dir cgroup rw,relatime,memory 0 0
cgroup /mnt/my\\040cpuset cgroup rw,relatime,cpuset,release_agent=/x 0 0
";

    #[test]
    fn parses_hybrid_and_comma_joined_mounts() {
        let m = CgroupMounts::parse(HYBRID);
        assert_eq!(m.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        let cpu = m.v1_mount("cpu").expect("cpu mount");
        assert_eq!(cpu.path, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(cpu.controllers, ["cpu", "cpuacct"]);
        assert_eq!(m.v1_mount("cpuacct"), Some(cpu));
        // First mount of a hierarchy wins over a later bind of it.
        assert_eq!(
            m.v1_mount("memory").expect("memory").path,
            Path::new("/sys/fs/cgroup/memory")
        );
        assert_eq!(
            m.v1_mount("net_prio").expect("net_prio").controllers,
            ["net_cls", "net_prio"]
        );
        // Escaped mount point, and `key=value` options are not controllers.
        let cpuset = m.v1_mount("cpuset").expect("cpuset");
        assert_eq!(cpuset.path, Path::new("/mnt/my cpuset"));
        assert_eq!(cpuset.controllers, ["cpuset"]);
        // Named-only hierarchies carry no controller.
        assert!(m.v1_mount("systemd").is_none() && m.v1_mount("name=systemd").is_none());
        assert_eq!(m.v1.len(), 4);
    }

    #[test]
    fn parses_pure_v2_and_none() {
        let m = CgroupMounts::parse(
            "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n",
        );
        assert_eq!(m.v2.as_deref(), Some(Path::new("/sys/fs/cgroup")));
        assert!(m.v1.is_empty());
        assert_eq!(
            CgroupMounts::parse("proc /proc proc rw 0 0\nbad line\n"),
            CgroupMounts::default()
        );
    }
}
