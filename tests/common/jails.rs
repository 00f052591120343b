//! What a removed jail must not leave behind, for the tests of
//! `flint container` and the shim (both jail their VMMs the same way).

use std::path::{Path, PathBuf};

/// Checks that nothing of `jail` (as `inspect` or the shim records it) is left: no directory, no mount, no cgroup.
pub fn assert_jail_gone(jail: &serde_json::Value) {
    let root = PathBuf::from(jail["root"].as_str().unwrap());
    let top = root.parent().unwrap();
    assert!(!top.exists(), "{} is left", top.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(top.to_str().unwrap()),
        "a mount is left: {mounts}"
    );
    let cgroup = jail["cgroup"].as_str().unwrap();
    for entry in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let left = entry.path().join(cgroup);
        assert!(!left.exists(), "{} is left", left.display());
    }
    assert!(!Path::new("/sys/fs/cgroup").join(cgroup).exists());
    let uid = jail["uid"].as_u64().unwrap();
    assert!(
        !Path::new("/run/flint/jail-uids")
            .join(uid.to_string())
            .exists(),
        "uid {uid} still taken"
    );
}

/// Checks that process `pid` is in `cgroup`'s memory hierarchy (v1 here,
/// v2 where mounted) and returns that cgroup's memory limit as written.
pub fn memory_cgroup_limit(pid: u32, cgroup: &str) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let memory = cgroups
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
            (ctl.split(',').any(|c| c == "memory") || ctl.is_empty()).then(|| path.to_owned())
        })
        .expect("no memory cgroup");
    assert_eq!(memory, format!("/{cgroup}"), "{cgroups}");
    let v1 = Path::new("/sys/fs/cgroup/memory").join(cgroup);
    std::fs::read_to_string(v1.join("memory.limit_in_bytes"))
        .or_else(|_| {
            std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(cgroup).join("memory.max"))
        })
        .unwrap()
        .trim()
        .to_owned()
}
