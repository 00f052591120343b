//! The ext4 root image: built from a tree with `mkfs.ext4 -d` (no root, no
//! mount), completed with `debugfs` (flint's init, mount points, the image's
//! owners and modes), cached by content, and copied privately for each run.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::unpack::{Meta, S_IFDIR, S_IFMT};
use crate::ContainerError;

/// Bumped whenever the image layout changes, so old cache entries are not
/// reused.
const CACHE_FORMAT: u32 = 1;

/// Where flint's init lives in the guest.
pub const INIT_PATH: &str = "/.flint/init";

/// Directories the init mounts on; created (root-owned) when the image
/// lacks them.
const MOUNT_POINTS: [(&str, u32); 4] = [
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("tmp", 0o1777),
];

/// The cache file name (without extension) for an image + init pair.
pub fn cache_key(image_digest: &str, init_digest: &str) -> String {
    let text =
        format!("flint root image v{CACHE_FORMAT}\nimage {image_digest}\ninit {init_digest}\n");
    crate::image::hex(&<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()))
}

/// The image size for a tree needing `usage` bytes: 1.3 × usage + 32 MiB,
/// rounded up to a whole MiB.
pub fn image_size(usage: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    (usage + usage.div_ceil(10) * 3 + 32 * MIB).div_ceil(MIB) * MIB
}

/// `$XDG_CACHE_HOME/flint/images`, else `~/.cache/flint/images`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let nonempty = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    nonempty("XDG_CACHE_HOME")
        .or_else(|| nonempty("HOME").map(|h| h.join(".cache")))
        .map(|c| c.join("flint").join("images"))
}

/// Finds an e2fsprogs tool on PATH or in the sbin directories (which
/// unprivileged users often lack on PATH).
fn tool(name: &str) -> Result<PathBuf, ContainerError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            ContainerError::Mkfs(format!(
                "{name} not found (install e2fsprogs, which builds the root image)"
            ))
        })
}

fn run_tool(cmd: &mut Command, what: &str) -> Result<String, ContainerError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ContainerError::Io {
            what: format!("running {what}"),
            source,
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(ContainerError::Mkfs(format!(
            "{what} failed ({}): {}",
            out.status,
            stderr.trim()
        )));
    }
    Ok(stderr)
}

/// `mkfs.ext4 -q -F -d TREE -L flintroot IMAGE SIZE`.
pub fn mkfs(tree: &Path, image: &Path, size: u64) -> Result<(), ContainerError> {
    run_tool(
        Command::new(tool("mkfs.ext4")?)
            .args(["-q", "-F", "-d"])
            .arg(tree)
            .args(["-L", "flintroot"])
            .arg(image)
            .arg(format!("{}k", size / 1024)),
        "mkfs.ext4",
    )?;
    Ok(())
}

/// A path as a debugfs argument (double-quoted, `"` doubled). `None` for
/// names debugfs cannot take (newlines).
fn quote(path: &Path) -> Option<String> {
    let s = std::str::from_utf8(path.as_os_str().as_bytes()).ok()?;
    if s.contains(['\n', '\r']) {
        return None;
    }
    Some(format!("\"/{}\"", s.replace('"', "\"\"")))
}

/// debugfs commands giving every entry of the tree the owner and mode the
/// image says (the tree on disk was written as the current user, with
/// modes widened for unpacking).
pub fn fixups<'a>(tree: &Path, meta: impl IntoIterator<Item = (&'a PathBuf, &'a Meta)>) -> String {
    let mut script = String::new();
    for (rel, want) in meta {
        let Ok(have) = fs::symlink_metadata(tree.join(rel)) else {
            continue;
        };
        if have.mode() & S_IFMT != want.mode & S_IFMT {
            continue; // not what the metadata describes (should not happen)
        }
        let Some(q) = quote(rel) else {
            log::warn!(
                "{}: cannot set its owner and mode in the image (odd name)",
                rel.display()
            );
            continue;
        };
        let q = if rel.as_os_str().is_empty() {
            "/".to_owned()
        } else {
            q
        };
        if have.mode() != want.mode {
            let _ = writeln!(script, "sif {q} mode 0{:o}", want.mode);
        }
        if have.uid() != want.uid {
            let _ = writeln!(script, "sif {q} uid {}", want.uid);
        }
        if have.gid() != want.gid {
            let _ = writeln!(script, "sif {q} gid {}", want.gid);
        }
    }
    script
}

/// debugfs commands adding flint's init (from `init_host`) and the mount
/// points the tree at `tree` lacks.
pub fn additions(tree: &Path, init_host: &Path) -> Result<String, ContainerError> {
    let host = init_host
        .to_str()
        .filter(|s| !s.contains(['"', '\n', '\r']))
        .ok_or_else(|| ContainerError::Mkfs(format!("odd scratch path {}", init_host.display())))?;
    let mut script = String::new();
    for (dir, mode) in MOUNT_POINTS {
        if fs::symlink_metadata(tree.join(dir)).is_err() {
            let _ = writeln!(
                script,
                "mkdir /{dir}\nsif /{dir} mode 0{:o}",
                S_IFDIR | mode
            );
            let _ = writeln!(script, "sif /{dir} uid 0\nsif /{dir} gid 0");
        }
    }
    let flint = tree.join(".flint");
    match fs::symlink_metadata(&flint) {
        Ok(m) if m.is_dir() => {
            if fs::symlink_metadata(flint.join("init")).is_ok() {
                let _ = writeln!(script, "rm {INIT_PATH}");
            }
        }
        Ok(_) => {
            return Err(ContainerError::Image(
                "the image has a /.flint that is not a directory (flint's init goes there)".into(),
            ))
        }
        Err(_) => {
            let _ = writeln!(
                script,
                "mkdir /.flint\nsif /.flint mode 040755\nsif /.flint uid 0\nsif /.flint gid 0"
            );
        }
    }
    let _ = writeln!(script, "write \"{host}\" {INIT_PATH}");
    let _ = writeln!(
        script,
        "sif {INIT_PATH} mode 0100755\nsif {INIT_PATH} uid 0\nsif {INIT_PATH} gid 0"
    );
    Ok(script)
}

/// Runs a debugfs script on `image` (read-write); any error it reports
/// fails the build.
pub fn debugfs(image: &Path, script: &str, scratch: &Path) -> Result<(), ContainerError> {
    let mut file = tempfile::Builder::new()
        .prefix("debugfs-")
        .tempfile_in(scratch)
        .map_err(|source| ContainerError::Io {
            what: "writing a debugfs script".into(),
            source,
        })?;
    file.write_all(script.as_bytes())
        .map_err(|source| ContainerError::Io {
            what: "writing a debugfs script".into(),
            source,
        })?;
    let stderr = run_tool(
        Command::new(tool("debugfs")?)
            .arg("-w")
            .arg("-f")
            .arg(file.path())
            .arg(image)
            .stdout(Stdio::null()),
        "debugfs",
    )?;
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    if !errors.is_empty() {
        return Err(ContainerError::Mkfs(format!(
            "debugfs reported errors while completing the root image: {}",
            errors.join("; ")
        )));
    }
    Ok(())
}

/// Checks that `image` holds a regular file of `size` bytes at `path`.
pub fn check_file_in_image(image: &Path, path: &str, size: u64) -> Result<(), ContainerError> {
    let out = Command::new(tool("debugfs")?)
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(image)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|source| ContainerError::Io {
            what: "running debugfs".into(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Type: regular") && text.contains(&format!("Size: {size}\n")) {
        Ok(())
    } else {
        Err(ContainerError::Mkfs(format!(
            "the root image lacks {path} after building it"
        )))
    }
}

/// Copies `src` to a new file `dst`: a reflink where the file system can,
/// else a sparse copy (holes stay holes) with `copy_file_range`.
pub fn private_copy(src: &Path, dst: &Path) -> io::Result<()> {
    let from = File::open(src)?;
    let to = OpenOptions::new().write(true).create_new(true).open(dst)?;
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: FICLONE takes the source fd as its argument; both fds are open.
    if unsafe { libc::ioctl(to.as_raw_fd(), FICLONE, from.as_raw_fd()) } == 0 {
        return Ok(());
    }
    let len = from.metadata()?.len();
    to.set_len(len)?;
    let mut pos: i64 = 0;
    while (pos as u64) < len {
        // SAFETY: lseek on an fd we hold.
        let data = unsafe { libc::lseek(from.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: only a hole is left
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(from.as_raw_fd(), data, libc::SEEK_HOLE) };
        let hole = if hole < data { len as i64 } else { hole };
        copy_range(&from, &to, data, hole - data)?;
        pos = hole;
    }
    Ok(())
}

fn copy_range(from: &File, to: &File, offset: i64, len: i64) -> io::Result<()> {
    let (mut off_in, mut off_out, mut left) = (offset, offset, len);
    while left > 0 {
        // SAFETY: offsets are valid pointers to i64s; fds are open.
        let n = unsafe {
            libc::copy_file_range(
                from.as_raw_fd(),
                &mut off_in,
                to.as_raw_fd(),
                &mut off_out,
                left as usize,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.raw_os_error(),
                Some(libc::EXDEV | libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP)
            ) {
                return copy_range_slow(from, to, off_in, left);
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        left -= n as i64;
    }
    Ok(())
}

fn copy_range_slow(from: &File, mut to: &File, offset: i64, len: i64) -> io::Result<()> {
    let mut from = from.try_clone()?;
    from.seek(SeekFrom::Start(offset as u64))?;
    to.seek(SeekFrom::Start(offset as u64))?;
    let copied = io::copy(&mut (&from).take(len as u64), &mut to)?;
    if copied != len as u64 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Whether a cached image at `path` looks usable.
pub fn cached(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() > 0)
}

/// File name for a cache entry.
pub fn cache_file(cache_dir: &Path, key: &str) -> PathBuf {
    cache_dir.join(format!("{key}.ext4"))
}
