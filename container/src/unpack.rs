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
//! Entries whose path or hard-link target has a `..` component are refused,
//! and so are whiteouts naming nothing, `.` or `..` (`.wh.`, `.wh..`,
//! `.wh...`), and names with a newline or carriage return (which the
//! `debugfs` script that sets owners and modes cannot express). Every
//! parent directory is checked with `lstat` before use, so nothing is ever
//! written through a symlink, whatever the image's symlinks point at.
//!
//! The tree is written as the (unprivileged) current user: owners are not
//! set on disk, and modes are reduced to what unpacking needs: never a
//! setuid, setgid or sticky bit on the host (files are readable and
//! writable, directories `rwx`, for the owner). FIFOs and device nodes are
//! not created on the host at all. The image's real owner, group, mode and
//! device numbers of every entry are kept in [`Tree::meta`] and written into
//! the ext4 image afterwards (`rootfs::fixups`, which also creates the
//! special files there).
//!
//! The unpacked size is limited ([`Tree::limit`], default
//! [`DEFAULT_MAX_UNPACKED`]): every entry is charged its declared size (for
//! a GNU sparse file, its declared real size) plus [`ENTRY_OVERHEAD`]
//! before anything is written, so neither a gzip bomb nor a sparse file
//! declaring a terabyte fills the disk.

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
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFBLK: u32 = 0o060000;

/// Default limit on the bytes an image may unpack to (8 GiB).
pub const DEFAULT_MAX_UNPACKED: u64 = 8 << 30;

/// Bytes charged against the limit for each entry besides its data (an
/// inode and a directory entry, roughly), so millions of empty entries
/// count too.
pub const ENTRY_OVERHEAD: u64 = 512;

/// Whether `mode` is a FIFO or device node: kept in the metadata only and
/// created inside the image, never on the host.
pub fn is_special(mode: u32) -> bool {
    matches!(mode & S_IFMT, S_IFIFO | S_IFCHR | S_IFBLK)
}

/// A path for messages and logs: control characters and bytes that are
/// not UTF-8 escaped, so a hostile name cannot forge lines.
pub fn shown(path: &Path) -> String {
    let bytes = path.as_os_str().as_bytes();
    match std::str::from_utf8(bytes) {
        Ok(s) => s.escape_debug().to_string(),
        Err(_) => bytes.escape_ascii().to_string(),
    }
}

/// What an entry should look like in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Full `st_mode` (type and permission bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Major and minor numbers of a device node.
    pub device: Option<(u32, u32)>,
}

/// A root filesystem being assembled from layers.
pub struct Tree {
    root: PathBuf,
    /// The image's metadata for every path in the tree (relative paths; the
    /// empty path is the root directory).
    pub meta: BTreeMap<PathBuf, Meta>,
    /// Entries of a type that is not unpacked (tar extensions flint does
    /// not know).
    pub skipped: usize,
    /// The most bytes the layers may unpack to (see [`ENTRY_OVERHEAD`]).
    pub limit: u64,
    /// Bytes charged so far, all layers together.
    pub charged: u64,
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

/// Why copying an entry's data stopped.
enum CopyError {
    Read(io::Error),
    Write(io::Error),
    Stopped(ContainerError),
}

/// Copies `from` to `to` in 64 KiB steps, stopping when a stop signal
/// arrives.
fn copy_checked(mut from: impl io::Read, mut to: impl io::Write) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        crate::interrupt::check().map_err(CopyError::Stopped)?;
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
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
                    device: None,
                },
            )]),
            skipped: 0,
            limit: DEFAULT_MAX_UNPACKED,
            charged: 0,
        }
    }

    /// A tree whose layers may unpack to at most `limit` bytes.
    pub fn with_limit(root: &Path, limit: u64) -> Tree {
        Tree {
            limit,
            ..Tree::new(root)
        }
    }

    /// Charges `bytes` against the limit, before they are written.
    fn charge(&mut self, rel: &Path, bytes: u64) -> Result<(), ContainerError> {
        self.charged = self.charged.saturating_add(bytes);
        if self.charged > self.limit {
            return Err(ContainerError::Image(format!(
                "the image unpacks to more than the limit of {} bytes (at {}); raise it with \
                 --max-unpacked-size or FLINT_MAX_UNPACKED_SIZE if the image is trusted",
                self.limit,
                shown(rel)
            )));
        }
        Ok(())
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
                    device: None,
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
        let mut children = HashSet::new();
        for child in fs::read_dir(&host).map_err(io_at(&host))? {
            children.insert(rel.join(child.map_err(io_at(&host))?.file_name()));
        }
        // Special files exist in the metadata only.
        children.extend(
            self.meta
                .range(rel.to_path_buf()..)
                .take_while(|(k, _)| k.starts_with(rel))
                .filter(|(k, m)| is_special(m.mode) && k.parent() == Some(rel))
                .map(|(k, _)| k.clone()),
        );
        for child in children {
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
            crate::interrupt::check()?;
            let mut entry =
                entry.map_err(|e| ContainerError::Image(format!("reading the layer: {e}")))?;
            let raw = entry
                .path()
                .map_err(|e| ContainerError::Image(format!("bad entry name in the layer: {e}")))?
                .into_owned();
            let rel = normalize(&raw).ok_or_else(|| {
                ContainerError::Image(format!(
                    "layer entry \"{}\" escapes the root (has '..')",
                    shown(&raw)
                ))
            })?;
            if raw.as_os_str().as_bytes().contains(&b'\n')
                || raw.as_os_str().as_bytes().contains(&b'\r')
            {
                return Err(ContainerError::Image(format!(
                    "layer entry \"{}\": names with a newline or carriage return are not supported",
                    shown(&raw)
                )));
            }
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
            ContainerError::Image(format!("layer entry \"{}\": {what}: {e}", shown(rel)))
        };
        if let Some(name) = rel.file_name().map(|n| n.as_bytes()) {
            if name == b".wh..wh..opq" {
                let dir = rel.parent().unwrap_or(Path::new(""));
                return self.make_opaque(dir, layer);
            }
            if let Some(target) = name.strip_prefix(b".wh.") {
                if matches!(target, b"" | b"." | b"..") {
                    return Err(ContainerError::Image(format!(
                        "layer entry \"{}\": a whiteout must name an entry (not empty, . or ..)",
                        shown(rel)
                    )));
                }
                let target = rel.with_file_name(std::ffi::OsStr::from_bytes(target));
                return self.whiteout(&target, layer);
            }
        }
        let header = entry.header();
        let kind = header.entry_type();
        let device = match (header.device_major(), header.device_minor()) {
            (Ok(Some(major)), Ok(Some(minor))) => Some((major, minor)),
            _ => None,
        };
        let meta = Meta {
            mode: header.mode().map_err(|e| bad("mode", e))? & 0o7777,
            uid: u32::try_from(header.uid().map_err(|e| bad("uid", e))?)
                .map_err(|_| bad("uid", io::ErrorKind::InvalidData.into()))?,
            gid: u32::try_from(header.gid().map_err(|e| bad("gid", e))?)
                .map_err(|_| bad("gid", io::ErrorKind::InvalidData.into()))?,
            mtime: i64::try_from(header.mtime().map_err(|e| bad("mtime", e))?).unwrap_or(0),
            device: None,
        };
        // What the host copy may have: never setuid, setgid or sticky.
        let host_mode = meta.mode & 0o777;
        self.charge(rel, ENTRY_OVERHEAD)?;
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
                fs::set_permissions(&host, fs::Permissions::from_mode(host_mode | 0o700))
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
                // The declared size (a sparse file's real size), before
                // anything is written.
                self.charge(rel, entry.size())?;
                self.prepare_parents(rel, layer)?;
                self.remove(rel)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&host)
                    .map_err(io_at(&host))?;
                copy_checked(entry, &mut file).map_err(|e| match e {
                    CopyError::Read(e) => bad("reading its data", e),
                    CopyError::Write(e) => io_at(&host)(e),
                    CopyError::Stopped(e) => e,
                })?;
                file.set_permissions(fs::Permissions::from_mode(host_mode | 0o600))
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
                        ContainerError::Image(format!("symlink \"{}\" has no target", shown(rel)))
                    })?
                    .into_owned();
                self.charge(rel, target.as_os_str().len() as u64)?;
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
                        ContainerError::Image(format!("hard link \"{}\" has no target", shown(rel)))
                    })?
                    .into_owned();
                let target = normalize(&raw)
                    .filter(|t| !t.as_os_str().is_empty())
                    .ok_or_else(|| {
                        ContainerError::Image(format!(
                            "hard link \"{}\" -> \"{}\" escapes the root",
                            shown(rel),
                            shown(&raw)
                        ))
                    })?;
                if target == rel {
                    return Ok(());
                }
                let linked = self.meta.get(&target).copied();
                if let Some(special) = linked.filter(|m| is_special(m.mode)) {
                    // A link to a FIFO or device: another node like it
                    // (special files exist only in the metadata).
                    self.prepare_parents(rel, layer)?;
                    self.remove(rel)?;
                    self.meta.insert(rel.to_owned(), special);
                    layer.touched.insert(rel.to_owned());
                    return Ok(());
                }
                let target_host = self.host(&target);
                let target_ok = self.parents_are_dirs(&target)
                    && fs::symlink_metadata(&target_host).is_ok_and(|m| !m.file_type().is_dir());
                if !target_ok {
                    return Err(ContainerError::Image(format!(
                        "hard link \"{}\" -> \"{}\": no such file in the image",
                        shown(rel),
                        shown(&target)
                    )));
                }
                self.prepare_parents(rel, layer)?;
                self.remove(rel)?;
                fs::hard_link(&target_host, &host).map_err(io_at(&host))?;
                if let Some(m) = linked {
                    self.meta.insert(rel.to_owned(), m);
                }
            }
            T::Fifo | T::Char | T::Block => {
                // Recorded only: created inside the image by debugfs.
                let kind_bits = match kind {
                    T::Fifo => S_IFIFO,
                    T::Char => S_IFCHR,
                    _ => S_IFBLK,
                };
                if kind_bits != S_IFIFO && device.is_none() {
                    return Err(ContainerError::Image(format!(
                        "device node \"{}\" has no device numbers",
                        shown(rel)
                    )));
                }
                self.prepare_parents(rel, layer)?;
                self.remove(rel)?;
                self.meta.insert(
                    rel.to_owned(),
                    Meta {
                        mode: kind_bits | meta.mode,
                        device: if kind_bits == S_IFIFO { None } else { device },
                        ..meta
                    },
                );
            }
            other => {
                self.skipped += 1;
                log::debug!("skipping \"{}\" (tar entry type {other:?})", shown(rel));
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

/// What an ext4 file system needs for a tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes: data rounded up to 4 KiB blocks, directory blocks (by the
    /// size of their entries), long symlinks, 256 bytes per inode.
    pub bytes: u64,
    /// Inodes: one per directory, file, symlink and special file (hard
    /// links counted once).
    pub inodes: u64,
}

impl Usage {
    /// Adds `n` inodes that are not on the host (special files created in
    /// the image).
    pub fn plus_inodes(self, n: u64) -> Usage {
        Usage {
            bytes: self.bytes + n * 256,
            inodes: self.inodes + n,
        }
    }
}

/// What an ext4 file system needs for the tree at `root` (see [`Usage`]).
pub fn tree_usage(root: &Path) -> Result<Usage, ContainerError> {
    let io = |source| ContainerError::Io {
        what: format!("measuring {}", root.display()),
        source,
    };
    let mut seen = HashSet::new();
    let mut usage = Usage {
        bytes: 0,
        inodes: 1,
    };
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        crate::interrupt::check()?;
        usage.bytes += 256;
        // `.` and `..`, then each entry: 8 bytes + the name, 4-aligned.
        let mut dir_bytes = 24u64;
        for child in fs::read_dir(&dir).map_err(io)? {
            let child = child.map_err(io)?;
            dir_bytes += (8 + child.file_name().len() as u64).next_multiple_of(4);
            let m = child.metadata().map_err(io)?;
            if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            usage.inodes += 1;
            if m.is_dir() {
                stack.push(child.path());
                continue;
            }
            usage.bytes += 256;
            if m.is_file() || (m.file_type().is_symlink() && m.len() >= 60) {
                usage.bytes += m.len().div_ceil(4096) * 4096;
            }
        }
        // Directory blocks, plus an index block for the big ones.
        let blocks = dir_bytes.div_ceil(4096);
        usage.bytes += (blocks + u64::from(blocks > 1)) * 4096;
    }
    Ok(usage)
}
