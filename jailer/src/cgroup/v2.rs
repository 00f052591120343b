//! cgroup v2: a single unified hierarchy with delegated controllers.

use std::collections::BTreeSet;
use std::path::Path;

use super::{join, mkdir, unavailable, write_file, write_setting, Setting};
use crate::JailError;

/// Creates `<root>/<parent>/<id>`, enables the needed controllers down the
/// chain (`cgroup.subtree_control`), writes the settings and joins `pid`.
///
/// `available` is the root's `cgroup.controllers`; a setting for any other
/// controller is an error, checked before anything is created.
pub(crate) fn apply(
    root: &Path,
    available: &[String],
    settings: &[Setting],
    parent: &Path,
    id: &str,
    pid: u32,
) -> Result<(), JailError> {
    if let Some(s) = settings
        .iter()
        .find(|s| !available.iter().any(|c| c == s.controller()))
    {
        return Err(unavailable(
            s,
            format!(
                "cgroup v2 controller {:?} is not available in {} (offered: {})",
                s.controller(),
                root.display(),
                if available.is_empty() {
                    "none".to_owned()
                } else {
                    available.join(" ")
                }
            ),
        ));
    }
    let kept: Vec<&Setting> = settings.iter().collect();
    if kept.is_empty() {
        return Ok(());
    }
    let controllers: BTreeSet<&str> = kept.iter().map(|s| s.controller()).collect();
    let enable: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
    let enable = enable.join(" ");

    // The root and every parent level must delegate the controllers to the
    // level below; only the leaf holds processes.
    let mut cur = root.to_owned();
    for comp in parent.components() {
        enable_in(&cur, &enable)?;
        cur.push(comp);
        mkdir(&cur)?;
    }
    enable_in(&cur, &enable)?;
    let leaf = cur.join(id);
    mkdir(&leaf)?;
    for setting in kept {
        write_setting(&leaf, setting)?;
    }
    join(&leaf, pid)
}

fn enable_in(dir: &Path, enable: &str) -> Result<(), JailError> {
    write_file(
        &dir.join("cgroup.subtree_control"),
        "cgroup.subtree_control",
        enable,
    )
}
