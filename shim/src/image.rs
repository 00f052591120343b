//! Disk images for the VM: the small boot image (flint's guest init, in
//! agent mode), each container's root filesystem as an ext4 image built
//! from the rootfs containerd mounted, and the placeholder files behind the
//! spare ("stub") drives.
//!
//! Why a block image and not virtio-fs: it works with every flint build and
//! guest kernel here, needs no host daemon per pod, and the guest reads its
//! root at block speed. The cost is building the image: `mkfs.ext4 -d`
//! copies the whole tree (about a second for busybox, and roughly linear in
//! the image's size), and the container's writes land in the image, not in
//! containerd's snapshot.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::ShimError;

/// Size of a stub drive's placeholder file.
pub const STUB_BYTES: u64 = 64 * 1024;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ShimError {
    let what = what.into();
    move |source| ShimError::Io { what, source }
}

/// One mount of a task's rootfs, as containerd passes it.
#[derive(Debug, Clone)]
pub struct RootMount {
    pub fstype: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Mounts the task's rootfs on `target` as runc does (an overlay snapshot
/// is one mount; a bind-mounted directory another), with mount(8): the
/// crate's `mount_rootfs` forks and needs the crate's reaper, which the
/// shim turns off (it waits for its own children).
pub fn mount_rootfs(mounts: &[RootMount], target: &Path) -> Result<(), ShimError> {
    std::fs::create_dir_all(target).map_err(io(format!("mkdir {}", target.display())))?;
    for m in mounts {
        let mut cmd = Command::new("mount");
        if !m.fstype.is_empty() && m.fstype != "bind" {
            cmd.args(["-t", &m.fstype]);
        }
        let options: Vec<&str> = m
            .options
            .iter()
            .map(String::as_str)
            .chain((m.fstype == "bind").then_some("bind"))
            .collect();
        if !options.is_empty() {
            cmd.arg("-o").arg(options.join(","));
        }
        let out = cmd
            .arg(&m.source)
            .arg(target)
            .output()
            .map_err(io("running mount"))?;
        if !out.status.success() {
            return Err(ShimError::Mount(format!(
                "{} on {}: {}",
                m.fstype,
                target.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(())
}

/// Unmounts whatever is mounted on `target` (lazily); nothing mounted is
/// fine.
pub fn unmount(target: &Path) {
    let Ok(path) = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // Stacked mounts (one per snapshot mount) go one by one.
    for _ in 0..16 {
        // SAFETY: umount2(2) with a NUL-terminated path.
        if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
            break;
        }
    }
}

/// Bytes and inodes in `tree` (`du`, counting each hard link once).
fn usage(tree: &Path) -> Result<(u64, u64), ShimError> {
    let du = |flag: &str| -> Result<u64, ShimError> {
        let out = Command::new("du")
            .args(["-s", "-x", flag])
            .arg(tree)
            .output()
            .map_err(io("running du"))?;
        if !out.status.success() {
            return Err(ShimError::Image(format!(
                "du {flag} {} failed: {}",
                tree.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| ShimError::Image("du printed no number".into()))
    };
    Ok((du("--block-size=1")?, du("--inodes")?))
}

/// Builds an ext4 image of `tree` at `dest` (`mkfs.ext4 -d`), sized from
/// `du` with the headroom `flint container` gives (1.3 × + 32 MiB).
pub fn build_ext4(tree: &Path, dest: &Path) -> Result<(), ShimError> {
    let (bytes, inodes) = usage(tree)?;
    let size = container::rootfs::image_size(bytes);
    container::rootfs::mkfs(tree, dest, size, container::rootfs::inode_count(inodes))
        .map_err(|e| ShimError::Image(e.to_string()))
}

/// Builds the VM's boot image at `dest`: flint's guest init as
/// `/.flint/init` and the directories it mounts on. `scratch` is a
/// directory the function may use (and empties).
pub fn build_boot_image(dest: &Path, scratch: &Path) -> Result<(), ShimError> {
    let tree = scratch.join("boot-tree");
    let _ = std::fs::remove_dir_all(&tree);
    for dir in [".flint", "dev", "proc", "sys", "tmp", "run", "c"] {
        std::fs::create_dir_all(tree.join(dir)).map_err(io("making the boot tree"))?;
    }
    let init = tree.join(".flint/init");
    std::fs::File::create(&init)
        .and_then(|mut f| f.write_all(container::INIT_BINARY))
        .and_then(|()| std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)))
        .map_err(io("writing the guest init"))?;
    let result = build_ext4(&tree, dest);
    let _ = std::fs::remove_dir_all(&tree);
    result
}

/// Writes a placeholder file for a stub drive (zeros).
pub fn write_stub(path: &Path) -> Result<(), ShimError> {
    let file = std::fs::File::create(path).map_err(io(format!("creating {}", path.display())))?;
    file.set_len(STUB_BYTES)
        .map_err(io(format!("sizing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_image_holds_the_init() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("boot.ext4");
        build_boot_image(&image, dir.path()).unwrap();
        container::rootfs::check_file_in_image(
            &image,
            container::rootfs::INIT_PATH,
            container::INIT_BINARY.len() as u64,
        )
        .unwrap();
        assert!(!dir.path().join("boot-tree").exists());
    }

    #[test]
    fn stubs_are_small_placeholders() {
        let dir = tempfile::tempdir().unwrap();
        let stub = dir.path().join("stub");
        write_stub(&stub).unwrap();
        assert_eq!(std::fs::metadata(&stub).unwrap().len(), STUB_BYTES);
    }
}
