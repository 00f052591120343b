//! The host side's Unix sockets: the listener at `uds_path`, the
//! `CONNECT <port>\n` line a host program sends first, and connecting to
//! `<uds_path>_<port>` for the guest. Nothing here blocks.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Longest `CONNECT <port>\n` line accepted, newline included.
pub const MAX_CONNECT_LINE: usize = 32;

/// Binds the listener at `path`, non-blocking. A stale socket file is
/// removed first; any other kind of file in the way is an error (it is
/// never deleted).
pub fn bind_listener(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// `<uds_path>_<port>`: where a guest connection to host port `port` goes.
pub fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut s = OsString::from(uds_path.as_os_str());
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Connects to a host listener without blocking: a listener that is absent,
/// refusing or has a full backlog is an error now, never a wait.
pub fn connect(path: &Path) -> io::Result<UnixStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let addr = SockAddr::unix(path)?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.connect(&addr)?;
    Ok(UnixStream::from(std::os::fd::OwnedFd::from(socket)))
}

/// What the bytes of a `CONNECT` line so far amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectLine {
    /// A complete, valid line naming this guest port.
    Port(u32),
    /// Valid so far; wait for more.
    Incomplete,
    /// Not a `CONNECT <port>\n` line.
    Bad,
}

const PREFIX: &[u8] = b"CONNECT ";

/// Parses `CONNECT <port>\n` strictly: the exact prefix, 1 to 10 decimal
/// digits fitting a u32, the newline, nothing else (no `\r`, no spaces).
/// Rejects as soon as the bytes cannot become a valid line.
pub fn parse_connect_line(bytes: &[u8]) -> ConnectLine {
    let n = bytes.len().min(PREFIX.len());
    if bytes[..n] != PREFIX[..n] {
        return ConnectLine::Bad;
    }
    if bytes.len() <= PREFIX.len() {
        return ConnectLine::Incomplete;
    }
    let rest = &bytes[PREFIX.len()..];
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits > 10 {
        return ConnectLine::Bad;
    }
    match &rest[digits..] {
        [] if bytes.len() < MAX_CONNECT_LINE => ConnectLine::Incomplete,
        [b'\n'] if digits > 0 => std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|d| d.parse::<u32>().ok())
            .map_or(ConnectLine::Bad, ConnectLine::Port),
        _ => ConnectLine::Bad,
    }
}

/// A host program connected to the listener and has not finished its
/// `CONNECT` line yet.
pub struct PendingHost {
    pub(super) stream: UnixStream,
    /// Its epoll token (see `Muxer::register`).
    pub(super) token: u64,
    line: [u8; MAX_CONNECT_LINE],
    len: usize,
    pub(super) deadline: Instant,
}

impl PendingHost {
    /// A freshly accepted host connection (already non-blocking and in the
    /// epoll set under `token`).
    pub fn new(stream: UnixStream, token: u64, deadline: Instant) -> Self {
        Self {
            stream,
            token,
            line: [0; MAX_CONNECT_LINE],
            len: 0,
            deadline,
        }
    }

    /// Reads the line one byte at a time, so nothing past the newline (the
    /// start of the stream for the guest) is consumed.
    pub fn read_line(&mut self) -> ConnectLine {
        while self.len < MAX_CONNECT_LINE {
            let mut byte = [0u8; 1];
            match self.stream.read(&mut byte) {
                Ok(0) => return ConnectLine::Bad,
                Ok(_) => {
                    self.line[self.len] = byte[0];
                    self.len += 1;
                    match parse_connect_line(&self.line[..self.len]) {
                        ConnectLine::Incomplete => {}
                        done => return done,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ConnectLine::Incomplete,
                Err(_) => return ConnectLine::Bad,
            }
        }
        ConnectLine::Bad
    }
}
