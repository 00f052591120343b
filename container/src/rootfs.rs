//! The ext4 root image: built from a tree with `mkfs.ext4 -d` (no root, no
//! mount), completed with `debugfs` (flint's init, mount points, the image's
//! owners and modes, special files), and copied privately for each run
//! (the cache is [`crate::cache`]).

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::unpack::{is_special, shown, Meta, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFMT};
use crate::ContainerError;

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

/// The image size for a tree needing `usage` bytes: 1.3 × usage + 32 MiB,
/// rounded up to a whole MiB.
pub fn image_size(usage: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    (usage + usage.div_ceil(10) * 3 + 32 * MIB).div_ceil(MIB) * MIB
}

/// The inode count to give `mkfs.ext4 -N` for a tree of `inodes` inodes
/// (plus flint's own and some room): the default ratio (an inode per
/// 16 KiB) is far too few for images of many small files.
pub fn inode_count(inodes: u64) -> u64 {
    inodes + inodes / 4 + 1024
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

/// Runs a tool to completion (killing it if a stop signal arrives);
/// returns its stderr.
fn run_tool(cmd: &mut Command, what: &str) -> Result<String, ContainerError> {
    let io_err = |source| ContainerError::Io {
        what: format!("running {what}"),
        source,
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err)?;
    let mut stderr_pipe = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        if let Some(pipe) = &mut stderr_pipe {
            let _ = pipe.read_to_end(&mut text);
        }
        text
    });
    let status = loop {
        if let Err(stop) = crate::interrupt::check() {
            let _ = child.kill();
            let _ = child.wait();
            // The reader ends when the pipe closes; not waited for, in case
            // the tool left a process holding it open.
            drop(reader);
            return Err(stop);
        }
        match child.try_wait().map_err(io_err)? {
            Some(status) => break status,
            None => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    };
    let stderr = reader.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    if !status.success() {
        return Err(ContainerError::Mkfs(format!(
            "{what} failed ({status}): {}",
            stderr.trim()
        )));
    }
    Ok(stderr)
}

/// `mkfs.ext4 -q -F -N INODES -d TREE -L flintroot IMAGE SIZE`.
pub fn mkfs(tree: &Path, image: &Path, size: u64, inodes: u64) -> Result<(), ContainerError> {
    run_tool(
        Command::new(tool("mkfs.ext4")?)
            .args(["-q", "-F", "-N"])
            .arg(inodes.to_string())
            .arg("-d")
            .arg(tree)
            .args(["-L", "flintroot"])
            .arg(image)
            .arg(format!("{}k", size / 1024))
            .stdout(Stdio::null()),
        "mkfs.ext4",
    )?;
    Ok(())
}

/// Longest debugfs script line: debugfs reads its script with an 8 KiB
/// buffer.
const MAX_LINE: usize = 8000;

/// A path as a debugfs argument: `"/..."` with `"` doubled (debugfs's
/// parser has no other escapes; every other byte but NUL, newline and
/// carriage return stands for itself). `None` for names it cannot express.
pub fn quote(path: &Path) -> Option<Vec<u8>> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.iter().any(|b| matches!(b, b'\n' | b'\r' | 0)) || bytes.len() > MAX_LINE - 64 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() + 4);
    out.extend_from_slice(b"\"/");
    for &b in bytes {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
    Some(out)
}

/// debugfs commands giving every entry of the tree the owner and mode the
/// image says (the tree on disk was written as the current user, with
/// modes reduced for unpacking), and creating its FIFOs and device nodes
/// (which exist in the metadata only). Names debugfs cannot express
/// refuse the image.
pub fn fixups<'a>(
    tree: &Path,
    meta: impl IntoIterator<Item = (&'a PathBuf, &'a Meta)>,
) -> Result<Vec<u8>, ContainerError> {
    let inexpressible = |rel: &Path| {
        ContainerError::Image(format!(
            "\"{}\": a name the root image builder cannot express",
            shown(rel)
        ))
    };
    let mut script = Vec::new();
    for (rel, want) in meta {
        let q = if rel.as_os_str().is_empty() {
            b"/".to_vec()
        } else {
            quote(rel).ok_or_else(|| inexpressible(rel))?
        };
        let have = if is_special(want.mode) {
            // debugfs's mknod makes an entry of that literal name in its
            // working directory.
            let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
                continue;
            };
            let node = match (want.mode & S_IFMT, want.device) {
                (S_IFIFO, _) => "p".to_owned(),
                (S_IFCHR, Some((major, minor))) => format!("c {major} {minor}"),
                (S_IFBLK, Some((major, minor))) => format!("b {major} {minor}"),
                _ => continue,
            };
            let parent_q = quote(parent).ok_or_else(|| inexpressible(rel))?;
            let name_q = quote(Path::new(name)).ok_or_else(|| inexpressible(rel))?;
            script.extend_from_slice(b"cd ");
            script.extend_from_slice(&parent_q);
            script.extend_from_slice(b"\nmknod \"");
            script.extend_from_slice(&name_q[2..]); // `"/name"` without `"/`
            script.extend_from_slice(format!(" {node}\ncd /\n").as_bytes());
            None
        } else {
            let Ok(have) = fs::symlink_metadata(tree.join(rel)) else {
                continue;
            };
            if have.mode() & S_IFMT != want.mode & S_IFMT {
                continue; // not what the metadata describes (should not happen)
            }
            Some(have)
        };
        let mut sif = |field: &str, value: String| {
            script.extend_from_slice(b"sif ");
            script.extend_from_slice(&q);
            script.extend_from_slice(format!(" {field} {value}\n").as_bytes());
        };
        if have.as_ref().map(|h| h.mode()) != Some(want.mode) {
            sif("mode", format!("0{:o}", want.mode));
        }
        if have.as_ref().map(|h| h.uid()) != Some(want.uid) {
            sif("uid", want.uid.to_string());
        }
        if have.as_ref().map(|h| h.gid()) != Some(want.gid) {
            sif("gid", want.gid.to_string());
        }
    }
    Ok(script)
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
pub fn debugfs(
    image: &Path,
    script: impl AsRef<[u8]>,
    scratch: &Path,
) -> Result<(), ContainerError> {
    let mut file = tempfile::Builder::new()
        .prefix("debugfs-")
        .tempfile_in(scratch)
        .map_err(|source| ContainerError::Io {
            what: "writing a debugfs script".into(),
            source,
        })?;
    file.write_all(script.as_ref())
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
    private_copy_from(&File::open(src)?, dst)
}

/// [`private_copy`] from an open file (a checked cache entry).
pub fn private_copy_from(from: &File, dst: &Path) -> io::Result<()> {
    let to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)?;
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
        if crate::interrupt::pending().is_some() {
            return Err(io::ErrorKind::Interrupted.into());
        }
        copy_range(from, &to, data, hole - data)?;
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
