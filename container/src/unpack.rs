//! Applying image layers to a directory tree, without root and without
//! following symlinks.
//!
//! Layers are applied in order with overlayfs semantics, as the OCI image
//! spec describes: `.wh.NAME` removes NAME from the lower layers,
//! `.wh..wh..opq` hides everything the lower layers had in its directory,
//! an entry replaces whatever lower entry had its path (a directory merges
//! into a lower directory), and a directory replaces a lower non-directory
//! (also implicitly, for a path whose parent is a symlink or file below).
//!
//! Entries whose path or hard-link target has a `..` component are refused.
//! Every parent directory is checked with `lstat` before use, so nothing is
//! ever written through a symlink, whatever the image's symlinks point at.
//! Device nodes are skipped (devtmpfs provides /dev in the guest).
//!
//! The tree is written as the (unprivileged) current user: owners are not
//! set on disk, and modes are widened where unpacking needs it (files
//! readable, directories `rwx` for the owner). The image's real owner, group
//! and mode of every entry are kept in [`Tree::meta`] and written into the
//! ext4 image afterwards (`rootfs::fixups`).

use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::ContainerError;

/// File type bits, as in `st_mode`.
pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFIFO: u32 = 0o010000;

/// What an entry should look like in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Full `st_mode` (type and permission bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

/// A root filesystem being assembled from layers.
pub struct Tree {
    root: PathBuf,
    /// The image's metadata for every path in the tree (relative paths; the
    /// empty path is the root directory).
    pub meta: BTreeMap<PathBuf, Meta>,
    /// Counts of entries skipped because they cannot or need not be unpacked.
    pub skipped_devices: usize,
}

/// Paths created or touched by the layer being applied.
struct LayerState {
    touched: HashSet<PathBuf>,
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> ContainerError + '_ {
    move |source| ContainerError::Io {
        what: format!("unpacking {}", path.display()),
        source,
    }
}

/// A relative, `..`-free form of a path from an archive (`/` and `.`
/// components dropped); `None` if it has a `..` or a prefix.
pub fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn is_dir_not_symlink(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_dir())
}

/// Removes whatever is at `path` (a directory with its contents), without
/// following symlinks. Missing is fine.
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn set_mtime(path: &Path, mtime: i64) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let t = libc::timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: `c` is a valid path and `times` two timespecs, as required.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn mkfifo(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Tree {
    /// A tree rooted at `root`, which must be an existing empty directory.
    pub fn new(root: &Path) -> Tree {
        Tree {
            root: root.to_owned(),
            meta: BTreeMap::from([(
                PathBuf::new(),
                Meta {
                    mode: S_IFDIR | 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                },
            )]),
            skipped_devices: 0,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn host(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    /// Drops the metadata of `rel` and everything under it.
    fn forget(&mut self, rel: &Path) {
        let doomed: Vec<PathBuf> = self
            .meta
            .range(rel.to_path_buf()..)
            .take_while(|(k, _)| k.starts_with(rel))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.meta.remove(&k);
        }
    }

    fn remove(&mut self, rel: &Path) -> Result<(), ContainerError> {
        let host = self.host(rel);
        remove_any(&host).map_err(io_at(&host))?;
        self.forget(rel);
        Ok(())
    }

    /// Makes `rel` a real directory (replacing a non-directory), keeping an
    /// existing directory's contents. New directories get 0755 root:root
    /// unless an entry says otherwise later.
    fn ensure_dir(&mut self, rel: &Path, layer: &mut LayerState) -> Result<(), ContainerError> {
        let host = self.host(rel);
        if !is_dir_not_symlink(&host) {
            self.remove(rel)?;
            fs::DirBuilder::new()
                .mode(0o755)
                .create(&host)
                .map_err(io_at(&host))?;
            self.meta.insert(
                rel.to_owned(),
                Meta {
                    mode: S_IFDIR | 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                },
            );
        }
        layer.touched.insert(rel.to_owned());
        Ok(())
    }

    /// Makes every ancestor of `rel` a real directory.
    fn prepare_parents(
        &mut self,
        rel: &Path,
        layer: &mut LayerState,
    ) -> Result<(), ContainerError> {
        let mut prefix = PathBuf::new();
        let parent = rel.parent().unwrap_or(Path::new(""));
        for c in parent.components() {
            prefix.push(c);
            self.ensure_dir(&prefix, layer)?;
        }
        Ok(())
    }

    /// Whether every ancestor of `rel` is a real directory (so `rel` can be
    /// looked at without following a symlink).
    fn parents_are_dirs(&self, rel: &Path) -> bool {
        let mut prefix = self.root.clone();
        let parent = rel.parent().unwrap_or(Path::new(""));
        parent.components().all(|c| {
            prefix.push(c);
            is_dir_not_symlink(&prefix)
        })
    }

    /// `.wh.NAME`: removes a lower layer's `rel`.
    fn whiteout(&mut self, rel: &Path, layer: &LayerState) -> Result<(), ContainerError> {
        if layer.touched.contains(rel) || !self.parents_are_dirs(rel) {
            return Ok(());
        }
        self.remove(rel)
    }

    /// `.wh..wh..opq`: hides the lower layers' contents of directory `rel`.
    fn make_opaque(&mut self, rel: &Path, layer: &mut LayerState) -> Result<(), ContainerError> {
        self.prepare_parents(rel, layer)?;
        self.ensure_dir(rel, layer)?;
        self.clear_lower(rel, layer)
    }

    /// Removes what lower layers put under directory `rel`, keeping what this
    /// layer wrote.
    fn clear_lower(&mut self, rel: &Path, layer: &LayerState) -> Result<(), ContainerError> {
        let host = self.host(rel);
        let mut children = Vec::new();
        for child in fs::read_dir(&host).map_err(io_at(&host))? {
            children.push(child.map_err(io_at(&host))?.file_name());
        }
        for name in children {
            let child = rel.join(&name);
            if !layer.touched.contains(&child) {
                self.remove(&child)?;
            } else if is_dir_not_symlink(&self.host(&child)) {
                self.clear_lower(&child, layer)?;
            }
        }
        Ok(())
    }

    /// Applies one layer (an uncompressed tar stream) on top of the tree.
    pub fn apply_layer<R: io::Read>(&mut self, stream: R) -> Result<(), ContainerError> {
        let mut archive = tar::Archive::new(stream);
        let mut layer = LayerState {
            touched: HashSet::new(),
        };
        let entries = archive
            .entries()
            .map_err(|e| ContainerError::Image(format!("reading the layer: {e}")))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| ContainerError::Image(format!("reading the layer: {e}")))?;
            let raw = entry
                .path()
                .map_err(|e| ContainerError::Image(format!("bad entry name in the layer: {e}")))?
                .into_owned();
            let rel = normalize(&raw).ok_or_else(|| {
                ContainerError::Image(format!(
                    "layer entry {:?} escapes the root (has '..')",
                    raw.display()
                ))
            })?;
            self.apply_entry(&mut entry, &rel, &mut layer)?;
        }
        Ok(())
    }

    fn apply_entry<R: io::Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &Path,
        layer: &mut LayerState,
    ) -> Result<(), ContainerError> {
        let bad = |what: &str, e: io::Error| {
            ContainerError::Image(format!("layer entry {}: {what}: {e}", rel.display()))
        };
        if let Some(name) = rel.file_name().and_then(|n| n.to_str()) {
            if name == ".wh..wh..opq" {
                let dir = rel.parent().unwrap_or(Path::new(""));
                return self.make_opaque(dir, layer);
            }
            if let Some(target) = name.strip_prefix(".wh.") {
                let target = rel.with_file_name(target);
                return self.whiteout(&target, layer);
            }
        }
        let header = entry.header();
        let kind = header.entry_type();
        let meta = Meta {
            mode: header.mode().map_err(|e| bad("mode", e))? & 0o7777,
            uid: header.uid().map_err(|e| bad("uid", e))? as u32,
            gid: header.gid().map_err(|e| bad("gid", e))? as u32,
            mtime: header.mtime().map_err(|e| bad("mtime", e))? as i64,
        };
        use tar::EntryType as T;
        if rel.as_os_str().is_empty() {
            // The layer's root directory itself ("./").
            if kind == T::Directory {
                self.meta.insert(
                    PathBuf::new(),
                    Meta {
                        mode: S_IFDIR | meta.mode,
                        ..meta
                    },
                );
            }
            return Ok(());
        }
        let host = self.host(rel);
        match kind {
            T::Directory => {
                self.prepare_parents(rel, layer)?;
                self.ensure_dir(rel, layer)?;
                fs::set_permissions(&host, fs::Permissions::from_mode(meta.mode | 0o700))
                    .map_err(io_at(&host))?;
                self.meta.insert(
                    rel.to_owned(),
                    Meta {
                        mode: S_IFDIR | meta.mode,
                        ..meta
                    },
                );
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                self.prepare_parents(rel, layer)?;
                self.remove(rel)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&host)
                    .map_err(io_at(&host))?;
                io::copy(entry, &mut file).map_err(|e| bad("reading its data", e))?;
                file.set_permissions(fs::Permissions::from_mode(meta.mode | 0o600))
                    .map_err(io_at(&host))?;
                drop(file);
                set_mtime(&host, meta.mtime).map_err(io_at(&host))?;
                self.meta.insert(
                    rel.to_owned(),
                    Meta {
                        mode: S_IFREG | meta.mode,
                        ..meta
                    },
                );
            }
            T::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| bad("link target", e))?
                    .ok_or_else(|| {
                        ContainerError::Image(format!("symlink {} has no target", rel.display()))
                    })?
                    .into_owned();
                self.prepare_parents(rel, layer)?;
                self.remove(rel)?;
                std::os::unix::fs::symlink(&target, &host).map_err(io_at(&host))?;
                set_mtime(&host, meta.mtime).map_err(io_at(&host))?;
                self.meta.insert(
                    rel.to_owned(),
                    Meta {
                        mode: S_IFLNK | 0o777,
                        ..meta
                    },
                );
            }
            T::Link => {
                let raw = entry
                    .link_name()
                    .map_err(|e| bad("link target", e))?
                    .ok_or_else(|| {
                        ContainerError::Image(format!("hard link {} has no target", rel.display()))
                    })?
                    .into_owned();
                let target = normalize(&raw)
                    .filter(|t| !t.as_os_str().is_empty())
                    .ok_or_else(|| {
                        ContainerError::Image(format!(
                            "hard link {} -> {:?} escapes the root",
                            rel.display(),
                            raw.display()
                        ))
                    })?;
                if target == rel {
                    return Ok(());
                }
                let target_host = self.host(&target);
                let target_ok = self.parents_are_dirs(&target)
                    && fs::symlink_metadata(&target_host).is_ok_and(|m| !m.file_type().is_dir());
                if !target_ok {
                    return Err(ContainerError::Image(format!(
                        "hard link {} -> {}: no such file in the image",
                        rel.display(),
                        target.display()
                    )));
                }
                self.prepare_parents(rel, layer)?;
                self.remove(rel)?;
                fs::hard_link(&target_host, &host).map_err(io_at(&host))?;
                let linked = self.meta.get(&target).copied();
                if let Some(m) = linked {
                    self.meta.insert(rel.to_owned(), m);
                }
            }
            T::Fifo => {
                self.prepare_parents(rel, layer)?;
                self.remove(rel)?;
                mkfifo(&host).map_err(io_at(&host))?;
                fs::set_permissions(&host, fs::Permissions::from_mode(meta.mode | 0o600))
                    .map_err(io_at(&host))?;
                self.meta.insert(
                    rel.to_owned(),
                    Meta {
                        mode: S_IFIFO | meta.mode,
                        ..meta
                    },
                );
            }
            T::Char | T::Block => {
                self.skipped_devices += 1;
                log::debug!("skipping device node {}", rel.display());
                return Ok(());
            }
            other => {
                log::debug!("skipping {} (tar entry type {other:?})", rel.display());
                return Ok(());
            }
        }
        layer.touched.insert(rel.to_owned());
        Ok(())
    }

    /// Gives directories their image mtimes (after everything is written
    /// into them).
    pub fn finish(&self) -> Result<(), ContainerError> {
        for (rel, meta) in self.meta.iter().rev() {
            if meta.mode & S_IFMT == S_IFDIR && meta.mtime != 0 {
                let host = self.host(rel);
                set_mtime(&host, meta.mtime).map_err(io_at(&host))?;
            }
        }
        Ok(())
    }
}

/// Bytes an ext4 file system needs for the tree at `root`: data rounded up
/// to 4 KiB blocks, a block per directory and long symlink, 256 bytes per
/// inode; hard links counted once.
pub fn tree_usage(root: &Path) -> io::Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        total += 4096 + 256;
        for child in fs::read_dir(&dir)? {
            let child = child?;
            let m = child.metadata()?;
            if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            total += 256;
            if m.is_dir() {
                stack.push(child.path());
            } else if m.is_file() || (m.file_type().is_symlink() && m.len() >= 60) {
                total += m.len().div_ceil(4096) * 4096;
            }
        }
    }
    Ok(total)
}
