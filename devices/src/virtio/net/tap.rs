//! A host TAP interface opened through `/dev/net/tun`.
//!
//! Frames cross it with a 12-byte virtio-net header in front (the virtio 1.x
//! layout, `num_buffers` included), so checksum and segmentation offloads
//! pass between guest and host kernel without the VMM touching them. The fd
//! is non-blocking: reads return `WouldBlock` when no frame is queued.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::{NetBackend, VNET_HDR_LEN};

const TUN_PATH: &str = "/dev/net/tun";
/// Longest interface name Linux accepts (IFNAMSIZ minus the NUL).
pub const MAX_IFACE_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// Why a TAP interface could not be opened or configured.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name cannot be a Linux interface name.
    #[error("invalid tap name {0:?}: must be 1-15 bytes without '/', ':', whitespace or NUL")]
    BadName(String),
    /// The host has no TUN/TAP driver (or it is not visible here).
    #[error("{TUN_PATH} is missing (load the tun module or expose the device): {0}")]
    NoTunDevice(#[source] io::Error),
    /// Opening the TUN control device failed otherwise.
    #[error("opening {TUN_PATH}: {0}")]
    OpenTun(#[source] io::Error),
    /// No interface of that name exists (flint attaches to taps the host
    /// made; it never creates one).
    #[error(
        "{0}: no such network interface; create the tap first (ip tuntap add dev {0} mode tap)"
    )]
    Missing(String),
    /// Another process (or VM) has the interface open.
    #[error("{name} is busy: it is already attached to another process ({source})")]
    Busy {
        /// The interface.
        name: String,
        /// The kernel's answer (EBUSY).
        #[source]
        source: io::Error,
    },
    /// An interface of that name exists but is not a single-queue tap.
    #[error("{name} exists but is not a usable tap device (a tun, multi-queue tap or other link?): {source}")]
    NotATap {
        /// The interface.
        name: String,
        /// The kernel's answer (EINVAL).
        #[source]
        source: io::Error,
    },
    /// TUNSETIFF failed for another reason (e.g. EPERM without CAP_NET_ADMIN).
    #[error("attaching to {name}: {source}")]
    SetIff {
        /// The interface.
        name: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Setting the vnet header size or the offloads failed.
    #[error("configuring {name} ({what}): {source}")]
    Configure {
        /// The interface.
        name: String,
        /// Which ioctl failed.
        what: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
}

/// An open TAP interface with virtio-net headers enabled.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// Checks what Linux's `dev_valid_name` checks, so the kernel never sees a
/// name it would reject or truncate.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFACE_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

impl Tap {
    /// Attaches to the existing tap `name`. A missing interface is an
    /// error rather than a new tap: a typo must not give the guest a
    /// network nobody configured, and the host's operator owns its links.
    pub fn open(name: &str) -> Result<Self, TapError> {
        if !valid_name(name) {
            return Err(TapError::BadName(name.to_string()));
        }
        let c_name =
            std::ffi::CString::new(name).map_err(|_| TapError::BadName(name.to_string()))?;
        // SAFETY: `c_name` is a valid NUL-terminated string for the call.
        if unsafe { libc::if_nametoindex(c_name.as_ptr()) } == 0 {
            return Err(TapError::Missing(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => TapError::NoTunDevice(e),
                _ => TapError::OpenTun(e),
            })?;

        // SAFETY: ifreq is plain old data (bytes, integers, a union of such
        // and a pointer nobody reads here); all-zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, &src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: `file` is an open /dev/net/tun fd and TUNSETIFF reads and
        // writes one `ifreq`, which `ifr` is and outlives the call. The name
        // is NUL-terminated: it is at most 15 bytes of a zeroed 16-byte array.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if ret < 0 {
            let source = io::Error::last_os_error();
            let name = name.to_string();
            return Err(match source.raw_os_error() {
                Some(libc::EBUSY) => TapError::Busy { name, source },
                Some(libc::EINVAL) => TapError::NotATap { name, source },
                _ => TapError::SetIff { name, source },
            });
        }
        let tap = Self {
            file,
            name: name.to_string(),
        };
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one c_int through the pointer, which
        // points at `hdr_len` for the whole call.
        let ret = unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if ret < 0 {
            return Err(tap.configure_error("TUNSETVNETHDRSZ"));
        }
        tap.set_offload(0)?;
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the kernel which offloads (`TUN_F_*`) frames sent to us may
    /// use; must match what the guest accepted.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned
        // long); no memory is accessed.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(self.configure_error("TUNSETOFFLOAD"));
        }
        Ok(())
    }

    fn configure_error(&self, what: &'static str) -> TapError {
        TapError::Configure {
            name: self.name.clone(),
            what,
            source: io::Error::last_os_error(),
        }
    }
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.file.write(frame)
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        Tap::set_offload(self, flags).map_err(io::Error::other)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
