//! cgroup v1: one directory per hierarchy (controller mount).

use std::path::{Path, PathBuf};

use super::{join, mkdir, unavailable, write_file, write_setting, CgroupMounts, Setting};
use crate::JailError;

/// Creates `<mount>/<parent>/<id>` in each hierarchy carrying a requested
/// controller, writes the settings there and joins `pid`. A controller with
/// no mounted hierarchy is an error, checked before anything is created.
pub(crate) fn apply(
    mounts: &CgroupMounts,
    settings: &[Setting],
    parent: &Path,
    id: &str,
    pid: u32,
) -> Result<(), JailError> {
    // Group the settings by hierarchy, keeping the user's order.
    let mut groups: Vec<(&Path, bool, Vec<&Setting>)> = Vec::new();
    for setting in settings {
        let Some(mount) = mounts.v1_mount(setting.controller()) else {
            return Err(unavailable(
                setting,
                format!(
                    "cgroup v1 controller {:?} is not mounted on this host",
                    setting.controller()
                ),
            ));
        };
        match groups.iter_mut().find(|(p, _, _)| *p == mount.path) {
            Some((_, _, group)) => group.push(setting),
            None => groups.push((&mount.path, mount.has("cpuset"), vec![setting])),
        }
    }
    for (mount, is_cpuset, group) in groups {
        let dir = create(mount, is_cpuset, &parent.join(id))?;
        for setting in group {
            write_setting(&dir, setting)?;
        }
        join(&dir, pid)?;
    }
    Ok(())
}

/// Creates each level of `rel` under `mount`. In the cpuset hierarchy a new
/// cgroup starts with empty `cpuset.cpus`/`cpuset.mems` and refuses tasks, so
/// those are copied down from the parent level.
fn create(mount: &Path, is_cpuset: bool, rel: &Path) -> Result<PathBuf, JailError> {
    let mut cur = mount.to_owned();
    for comp in rel.components() {
        let next = cur.join(comp);
        mkdir(&next)?;
        if is_cpuset {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                inherit(&cur, &next, file)?;
            }
        }
        cur = next;
    }
    Ok(cur)
}

fn inherit(parent: &Path, child: &Path, file: &str) -> Result<(), JailError> {
    let read = |dir: &Path| {
        let path = dir.join(file);
        std::fs::read_to_string(&path).map_err(|source| JailError::Cgroup {
            key: file.to_owned(),
            what: "reading".into(),
            path,
            source,
        })
    };
    if !read(child)?.trim().is_empty() {
        return Ok(());
    }
    let value = read(parent)?;
    let value = value.trim();
    if value.is_empty() {
        return Ok(());
    }
    write_file(&child.join(file), file, value)
}
