//! An AF_VSOCK listener (std has none). Accepted connections are handed
//! out as `UnixStream`s: std's `UnixStream` only reads, writes, shuts down
//! and duplicates its fd, which work the same on any stream socket.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// A listening AF_VSOCK socket.
pub struct VsockListener {
    fd: OwnedFd,
}

impl VsockListener {
    /// Listens on `port` for any CID.
    pub fn bind(port: u32) -> io::Result<VsockListener> {
        // SAFETY: a plain socket(2) call.
        let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh socket nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_vm is plain data; zeroed then filled in.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_port = port;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        // SAFETY: the pointer and length describe `addr`; `fd` is ours.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_vm).cast(),
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        };
        // SAFETY: listen(2) on our socket.
        if rc != 0 || unsafe { libc::listen(fd.as_raw_fd(), 128) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(VsockListener { fd })
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> io::Result<UnixStream> {
        // SAFETY: accept4 on our listening socket; the peer address is not
        // wanted (NULL pointers are allowed).
        let fd = unsafe {
            libc::accept4(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh connected socket nothing else owns.
        Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}
