//! `WriteFile` and `ReadFile`: files streamed in bounded data frames. The
//! guest is the container, so any path is allowed; only sizes are bounded
//! (per frame), and neither side holds a whole file in memory.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;

use agent_protocol::{read_frame, write_frame, Frame, FrameError, Response, MAX_CHUNK};

fn reply(conn: &mut UnixStream, response: Response) -> Result<(), FrameError> {
    write_frame(conn, &Frame::Response(response))
}

fn error(message: String) -> Response {
    Response::Error { message }
}

/// Receives the host's data frames into `path`.
pub fn write_file(conn: &mut UnixStream, path: &str, mode: u32) -> Result<(), FrameError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode & 0o7777)
        .open(path);
    let mut file = match file {
        Ok(f) => f,
        Err(e) => return reply(conn, error(format!("{path}: {e}"))),
    };
    reply(conn, Response::Ok)?;
    // A write error is kept and reported after the host's last frame, so
    // the host reads an answer instead of a broken connection.
    let mut failure: Option<String> = None;
    loop {
        match read_frame(conn)? {
            Some(Frame::Data(bytes)) => {
                if failure.is_none() {
                    if let Err(e) = file.write_all(&bytes) {
                        failure = Some(format!("writing {path}: {e}"));
                    }
                }
            }
            Some(Frame::DataEnd) => break,
            Some(other) => {
                return reply(
                    conn,
                    error(format!(
                        "expected file data, got frame {:#04x}",
                        other.kind()
                    )),
                )
            }
            None => return Err(FrameError::Truncated),
        }
    }
    if failure.is_none() {
        if let Err(e) = file.sync_all() {
            failure = Some(format!("syncing {path}: {e}"));
        }
    }
    reply(conn, failure.map_or(Response::Ok, error))
}

/// Sends `path` to the host in data frames.
pub fn read_file(conn: &mut UnixStream, path: &str) -> Result<(), FrameError> {
    let opened = File::open(path).and_then(|f| {
        let meta = f.metadata()?;
        if meta.is_dir() {
            return Err(io::Error::other("is a directory"));
        }
        Ok((f, meta.len()))
    });
    let (mut file, size) = match opened {
        Ok(x) => x,
        Err(e) => return reply(conn, error(format!("{path}: {e}"))),
    };
    reply(conn, Response::File { size })?;
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return write_frame(conn, &Frame::DataEnd),
            Ok(n) => write_frame(conn, &Frame::Data(buf[..n].to_vec()))?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return reply(conn, error(format!("reading {path}: {e}"))),
        }
    }
}
