//! The root image cache: entries keyed by what the image is built from,
//! each checked (regular file, size, content digest in a check file) before
//! use and stored atomically; and the per-run scratch directories beside
//! them, locked while in use and swept when their run died.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::image::{Format, LayerRef};
use crate::unpack::shown;

/// Bumped whenever the image layout changes, so old cache entries are not
/// reused.
const CACHE_FORMAT: u32 = 2;

/// The first line of a cache entry's check file.
const CHECK_HEADER: &str = "flint root image check v1";

/// The cache file name (without extension) for an image: what the built
/// image depends on, all verified before building: the tarball's format,
/// every layer's blob digest and diff_id in order, the init's digest and
/// the build's format version. (Not the manifest or config digest: a JSON
/// document can be valid as both an OCI manifest and a `docker save`
/// config, and the run settings are not part of the image.)
pub fn cache_key(format: Format, layers: &[LayerRef], init_digest: &str) -> String {
    let mut text = format!(
        "flint root image v{CACHE_FORMAT}\nformat {}\ninit {init_digest}\nlayers {}\n",
        format.name(),
        layers.len()
    );
    for layer in layers {
        let _ = writeln!(
            text,
            "layer {} {}",
            layer.digest.as_deref().unwrap_or("-"),
            layer.diff_id.as_deref().unwrap_or("-")
        );
    }
    crate::image::hex(&<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()))
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

/// File name for a cache entry.
pub fn cache_file(cache_dir: &Path, key: &str) -> PathBuf {
    cache_dir.join(format!("{key}.ext4"))
}

/// The check file recorded beside a cache entry when it is stored: its size
/// and [`content_digest`].
pub fn check_file(entry: &Path) -> PathBuf {
    let mut name = entry.as_os_str().to_owned();
    name.push(".check");
    PathBuf::from(name)
}

/// Creates the cache directory (and missing parents) private to the user
/// (0700), and narrows an existing one the user owns to 0700: cache entries
/// are the guests' disks.
pub fn create_cache_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let m = fs::metadata(dir)?;
    // SAFETY: geteuid has no preconditions.
    if m.mode() & 0o077 != 0 && m.uid() == unsafe { libc::geteuid() } {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Chunk size of [`content_digest`].
const CHUNK: u64 = 1 << 20;

/// A digest of a file's content that skips reading its holes: sha256 over
/// the length and the sha256 of each 1 MiB chunk (a chunk in a hole hashes
/// as zeros without being read). It depends on the content only, not on
/// which parts are holes.
pub fn content_digest(file: &File) -> io::Result<(u64, String)> {
    use sha2::{Digest, Sha256};
    let len = file.metadata()?.len();
    let zero_chunk = Sha256::digest(vec![0u8; CHUNK as usize]);
    let mut top = Sha256::new();
    top.update(len.to_le_bytes());
    let mut buf = vec![0u8; CHUNK as usize];
    let mut at = 0u64;
    while at < len {
        if crate::interrupt::pending().is_some() {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = CHUNK.min(len - at);
        // SAFETY: lseek on an fd we hold.
        let data = unsafe { libc::lseek(file.as_raw_fd(), at as i64, libc::SEEK_DATA) };
        if n == CHUNK && (data < 0 || data as u64 >= at + CHUNK) {
            top.update(zero_chunk);
        } else {
            let chunk = &mut buf[..n as usize];
            std::os::unix::fs::FileExt::read_exact_at(file, chunk, at)?;
            top.update(Sha256::digest(chunk));
        }
        at += n;
    }
    Ok((
        len,
        format!("sha256:{}", crate::image::hex(&top.finalize())),
    ))
}

/// Opens a regular file without following a symlink or blocking on a FIFO.
fn open_regular(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// Opens the cache entry at `entry` if it is sound: a regular file (not a
/// symlink, directory or FIFO) whose size and content digest match its
/// check file. `Err` says what is wrong with it.
pub fn open_cached(entry: &Path) -> Result<File, String> {
    let file = match open_regular(entry) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err("absent".into()),
        Err(e) => return Err(format!("unusable ({e})")),
    };
    let check = open_regular(&check_file(entry))
        .and_then(|f| {
            let mut text = String::new();
            f.take(4096).read_to_string(&mut text)?;
            Ok(text)
        })
        .map_err(|e| format!("no usable check file ({e})"))?;
    let mut lines = check.lines();
    let (Some(CHECK_HEADER), Some(size), Some(digest)) = (
        lines.next(),
        lines.next().and_then(|l| l.strip_prefix("size ")),
        lines.next().and_then(|l| l.strip_prefix("digest ")),
    ) else {
        return Err("malformed check file".into());
    };
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if size.parse::<u64>().ok() != Some(len) {
        return Err(format!("its size {len} is not the recorded {size}"));
    }
    let (_, got) = content_digest(&file).map_err(|e| format!("unreadable ({e})"))?;
    if got != digest {
        return Err("its content does not match the recorded digest".into());
    }
    Ok(file)
}

/// Removes a (broken) cache entry and its check file, whatever they are,
/// without following symlinks.
pub fn remove_entry(entry: &Path) -> io::Result<()> {
    for path in [check_file(entry), entry.to_owned()] {
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&path)?,
            Ok(_) => fs::remove_file(&path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Stores the finished image `built` (in `scratch`, on the cache's file
/// system) as the cache entry `entry`, atomically: the image and its check
/// file are synced and renamed into place (the image last-but-one, so a
/// crash leaves an entry without a matching check file, which is rebuilt),
/// then the directory is synced.
pub fn store(built: &Path, entry: &Path, scratch: &Path) -> io::Result<()> {
    let file = OpenOptions::new().read(true).write(true).open(built)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.sync_all()?;
    let (len, digest) = content_digest(&file)?;
    drop(file);
    let check_tmp = scratch.join("entry.check");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&check_tmp)?;
        writeln!(f, "{CHECK_HEADER}\nsize {len}\ndigest {digest}")?;
        f.sync_all()?;
    }
    remove_entry(entry)?;
    fs::rename(built, entry)?;
    fs::rename(&check_tmp, check_file(entry))?;
    if let Some(dir) = entry.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The prefix of this process's scratch directories in the cache
/// directory: `.run-<pid>-`.
pub fn scratch_prefix() -> String {
    format!(".run-{}-", std::process::id())
}

/// Locks a scratch directory for this process's lifetime (an `flock` on
/// the directory, released by the kernel when the process dies however it
/// dies).
pub fn lock_scratch(dir: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)?;
    // SAFETY: flock on an fd we hold.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(f)
}

/// Removes scratch directories (`.run-<pid>-*`) left in `cache_dir` by
/// runs that died without cleaning up: their pid is gone and their lock is
/// free. Returns how many were removed.
pub fn sweep_stale_scratch(cache_dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(cache_dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(".run-"))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<libc::pid_t>().ok())
            .filter(|&pid| pid > 0)
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the pid exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
        if alive {
            continue;
        }
        let path = entry.path();
        if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        // The lock guards against a live owner in another pid namespace.
        let Ok(_lock) = lock_scratch(&path) else {
            continue;
        };
        if fs::remove_dir_all(&path).is_ok() {
            log::info!("removed stale scratch directory {}", shown(&path));
            removed += 1;
        }
    }
    removed
}
