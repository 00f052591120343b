//! Joining two byte streams both ways: how a published port's TCP
//! connection and its agent connection are tied together, on the host and
//! in the guest alike.
//!
//! One thread per direction, one fixed buffer each, blocking writes: a
//! slow reader on one side stops reading on the other (backpressure
//! without unbounded buffers). End-of-stream on one side is passed on as a
//! `shutdown(SHUT_WR)` to the other, so half-closed connections work; both
//! sockets are closed once both directions have ended.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;

/// Bytes buffered per direction.
pub const SPLICE_BUFFER: usize = 64 * 1024;

/// A stream socket that can be split into two handles and half-closed.
pub trait Duplex: Read + Write + Send + Sized + 'static {
    /// Another handle to the same socket.
    fn duplicate(&self) -> io::Result<Self>;
    /// Shuts down one or both directions.
    fn shut(&self, how: Shutdown) -> io::Result<()>;
}

impl Duplex for TcpStream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shut(&self, how: Shutdown) -> io::Result<()> {
        self.shutdown(how)
    }
}

impl Duplex for UnixStream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shut(&self, how: Shutdown) -> io::Result<()> {
        self.shutdown(how)
    }
}

/// Copies `from` to `to` until `from` ends, then half-closes `to`. A
/// failed write (the other side is gone) shuts `from` down for reading so
/// its peer sees the connection end.
fn pump<R: Duplex, W: Duplex>(mut from: R, mut to: W) -> u64 {
    let mut buf = vec![0u8; SPLICE_BUFFER];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if to.write_all(&buf[..n]).is_err() {
            let _ = from.shut(Shutdown::Read);
            let _ = to.shut(Shutdown::Both);
            return total;
        }
        total += n as u64;
    }
    let _ = to.shut(Shutdown::Write);
    total
}

/// Joins `a` and `b` both ways until both directions have ended; returns
/// the bytes copied (a to b, b to a). Blocks the calling thread, which
/// carries the b-to-a direction; a new thread carries the other.
pub fn splice<A: Duplex, B: Duplex>(a: A, b: B) -> io::Result<(u64, u64)> {
    splice_with(a, b, |forward| {
        let thread = std::thread::Builder::new()
            .name("splice".into())
            .spawn(forward)?;
        Ok(move || thread.join().unwrap_or(0))
    })
}

/// [`splice`] with the a-to-b direction run by `start` (the guest agent
/// runs it on a reused worker thread): `start` runs the job it is given
/// elsewhere and returns how to wait for its byte count.
pub fn splice_with<A: Duplex, B: Duplex, W: FnOnce() -> u64>(
    a: A,
    b: B,
    start: impl FnOnce(Box<dyn FnOnce() -> u64 + Send>) -> io::Result<W>,
) -> io::Result<(u64, u64)> {
    let (a2, b2) = (a.duplicate()?, b.duplicate()?);
    let forward = start(Box::new(move || pump(a2, b2)))?;
    let back = pump(b, a);
    Ok((forward(), back))
}
