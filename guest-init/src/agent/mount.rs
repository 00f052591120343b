//! Mounts for the containerd shim: each container's root drive (and its
//! `/proc`, `/dev`, `/sys`) is mounted by the agent before the container's
//! process runs chrooted into it.

use std::ffi::CString;
use std::io;

use agent_protocol::{MountSpec, Response};

/// `_IO(0x12, 97)`: drop a block device's buffers.
const BLKFLSBUF: libc::c_ulong = 0x1261;

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

/// Splits mount options into flags and the file system's data string.
fn flags_and_data(options: &[String]) -> (libc::c_ulong, String) {
    let mut flags = 0;
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "rw" | "defaults" => {}
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// Flushes the buffers of block device `path`: a stub drive swapped to a
/// container's image must not be read through the placeholder's cache.
fn flush_buffers(path: &str) {
    if let Ok(dev) = std::fs::File::open(path) {
        use std::os::fd::AsRawFd;
        // SAFETY: an ioctl without argument on a descriptor we own.
        unsafe { libc::ioctl(dev.as_raw_fd(), BLKFLSBUF as _, 0) };
    }
}

/// Performs `spec`; the answer for the host.
pub fn mount(spec: &MountSpec) -> Response {
    match try_mount(spec) {
        Ok(()) => Response::Ok,
        Err(message) => Response::Error { message },
    }
}

fn try_mount(spec: &MountSpec) -> Result<(), String> {
    if !spec.target.starts_with('/') {
        return Err(format!("mount target {:?} is not absolute", spec.target));
    }
    std::fs::create_dir_all(&spec.target).map_err(|e| format!("mkdir {}: {e}", spec.target))?;
    if spec.source.starts_with("/dev/") {
        flush_buffers(&spec.source);
    }
    let (flags, data) = flags_and_data(&spec.options);
    let (source, target, fstype, data) = (
        cstr(&spec.source)?,
        cstr(&spec.target)?,
        cstr(&spec.fstype)?,
        cstr(&data)?,
    );
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "mount {} on {} ({}): {}",
            spec.source,
            spec.target,
            spec.fstype,
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Unmounts `target` lazily (`MNT_DETACH`); the answer for the host.
pub fn unmount(target: &str) -> Response {
    let path = match cstr(target) {
        Ok(p) => p,
        Err(message) => return Response::Error { message },
    };
    // SAFETY: umount2(2) with a NUL-terminated string.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
        Response::Ok
    } else {
        Response::Error {
            message: format!("umount {target}: {}", io::Error::last_os_error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let (flags, data) = flags_and_data(&["ro".into(), "nosuid".into(), "mode=0755".into()]);
        assert_eq!(flags, libc::MS_RDONLY | libc::MS_NOSUID);
        assert_eq!(data, "mode=0755");
    }

    #[test]
    fn relative_targets_are_refused() {
        let spec = MountSpec {
            source: "proc".into(),
            target: "rel".into(),
            fstype: "proc".into(),
            options: vec![],
        };
        assert!(matches!(mount(&spec), Response::Error { .. }));
    }
}
