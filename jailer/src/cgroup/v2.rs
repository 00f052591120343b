//! cgroup v2: a single unified hierarchy with delegated controllers.

use std::collections::BTreeSet;
use std::path::Path;

use log::warn;

use super::{join, mkdir, write_file, write_setting, Setting};
use crate::JailError;

/// Creates `<root>/<parent>/<id>`, enables the needed controllers down the
/// chain (`cgroup.subtree_control`), writes the settings and joins `pid`.
///
/// `available` is the root's `cgroup.controllers`; settings for any other
/// controller are skipped with a warning.
pub(crate) fn apply(
    root: &Path,
    available: &[String],
    settings: &[Setting],
    parent: &Path,
    id: &str,
    pid: u32,
) -> Result<(), JailError> {
    let kept: Vec<&Setting> = settings
        .iter()
        .filter(|s| {
            let ok = available.iter().any(|c| c == s.controller());
            if !ok {
                warn!(
                    "cgroup v2 controller {} is not available in {}; skipping {}={}",
                    s.controller(),
                    root.display(),
                    s.key,
                    s.value
                );
            }
            ok
        })
        .collect();
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
