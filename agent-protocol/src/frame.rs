//! Frames: `u32 length (big-endian) | u8 kind | payload (length bytes)`.
//!
//! Every byte read is treated as hostile: the length is checked against
//! [`MAX_PAYLOAD`] before anything is allocated, an unknown kind or a payload
//! of the wrong shape is an error, and nothing here panics on any input.

use std::io::{self, Read, Write};

use crate::messages::{ExitStatus, Hello, Request, Response};
use crate::FrameError;

/// Bytes before the payload: the length and the kind.
pub const HEADER_LEN: usize = 5;
/// The largest payload a frame may carry (1 MiB). Larger lengths are
/// refused before any allocation.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// The largest chunk of bytes senders put in one data frame (64 KiB): small
/// enough to interleave stdout and stderr fairly.
pub const MAX_CHUNK: usize = 64 << 10;

/// The frame kinds on the wire.
pub mod kind {
    /// JSON [`crate::Hello`], both ways.
    pub const HELLO: u8 = 0x01;
    /// JSON [`crate::Request`], host to guest.
    pub const REQUEST: u8 = 0x02;
    /// JSON [`crate::Response`], guest to host.
    pub const RESPONSE: u8 = 0x03;
    /// Raw bytes for the process's stdin.
    pub const STDIN: u8 = 0x10;
    /// Empty: close the process's stdin.
    pub const CLOSE_STDIN: u8 = 0x11;
    /// `i32` (big-endian): a signal for the process.
    pub const SIGNAL: u8 = 0x12;
    /// `u16 rows, u16 cols` (big-endian): the terminal's new size.
    pub const RESIZE: u8 = 0x13;
    /// `u32` (big-endian): the process's pid.
    pub const STARTED: u8 = 0x20;
    /// Raw bytes the process wrote to stdout (or to its terminal).
    pub const STDOUT: u8 = 0x21;
    /// Raw bytes the process wrote to stderr.
    pub const STDERR: u8 = 0x22;
    /// `u8 tag (0 code, 1 signal), i32 value` (big-endian): how it ended.
    pub const EXITED: u8 = 0x23;
    /// Raw file bytes, both ways.
    pub const DATA: u8 = 0x30;
    /// Empty: the end of the file's bytes.
    pub const DATA_END: u8 = 0x31;
}

/// One protocol frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Request(Request),
    Response(Response),
    Stdin(Vec<u8>),
    CloseStdin,
    Signal(i32),
    Resize { rows: u16, cols: u16 },
    Started(u32),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exited(ExitStatus),
    Data(Vec<u8>),
    DataEnd,
}

impl Frame {
    /// The frame's kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Hello(_) => kind::HELLO,
            Frame::Request(_) => kind::REQUEST,
            Frame::Response(_) => kind::RESPONSE,
            Frame::Stdin(_) => kind::STDIN,
            Frame::CloseStdin => kind::CLOSE_STDIN,
            Frame::Signal(_) => kind::SIGNAL,
            Frame::Resize { .. } => kind::RESIZE,
            Frame::Started(_) => kind::STARTED,
            Frame::Stdout(_) => kind::STDOUT,
            Frame::Stderr(_) => kind::STDERR,
            Frame::Exited(_) => kind::EXITED,
            Frame::Data(_) => kind::DATA,
            Frame::DataEnd => kind::DATA_END,
        }
    }

    /// The frame's bytes on the wire, header included.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let payload: Vec<u8> = match self {
            Frame::Hello(h) => json(h)?,
            Frame::Request(r) => json(r)?,
            Frame::Response(r) => json(r)?,
            Frame::Stdin(b) | Frame::Stdout(b) | Frame::Stderr(b) | Frame::Data(b) => b.clone(),
            Frame::CloseStdin | Frame::DataEnd => Vec::new(),
            Frame::Signal(s) => s.to_be_bytes().to_vec(),
            Frame::Resize { rows, cols } => [rows.to_be_bytes(), cols.to_be_bytes()].concat(),
            Frame::Started(pid) => pid.to_be_bytes().to_vec(),
            Frame::Exited(status) => {
                let (tag, value) = match status {
                    ExitStatus::Code(c) => (0u8, *c),
                    ExitStatus::Signal(s) => (1u8, *s),
                };
                let mut b = vec![tag];
                b.extend_from_slice(&value.to_be_bytes());
                b
            }
        };
        if payload.len() > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(payload.len()));
        }
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.push(self.kind());
        out.extend_from_slice(&payload);
        Ok(out)
    }
}

/// A message's JSON payload.
fn json<T: serde::Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    serde_json::to_vec(message).map_err(|e| FrameError::Encode(e.to_string()))
}

/// Checks a frame header; returns the payload length and the kind.
fn parse_header(header: [u8; HEADER_LEN]) -> Result<(usize, u8), FrameError> {
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    Ok((len, header[4]))
}

/// Decodes the frame at the start of `buf`; returns it and the number of
/// bytes it took. [`FrameError::Incomplete`] says how many bytes in all the
/// frame needs when `buf` holds only part of it. (This is the fuzz target.)
pub fn decode_frame(buf: &[u8]) -> Result<(Frame, usize), FrameError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Err(FrameError::Incomplete(HEADER_LEN));
    };
    let (len, kind) = parse_header(*header)?;
    let total = HEADER_LEN + len;
    let Some(payload) = buf.get(HEADER_LEN..total) else {
        return Err(FrameError::Incomplete(total));
    };
    Ok((decode_payload(kind, payload)?, total))
}

/// Builds the frame of `kind` from its payload.
pub fn decode_payload(kind: u8, payload: &[u8]) -> Result<Frame, FrameError> {
    let bad = |reason: &str| FrameError::BadPayload {
        kind,
        reason: reason.to_owned(),
    };
    let json_err = |e: serde_json::Error| FrameError::BadPayload {
        kind,
        reason: e.to_string(),
    };
    let empty = |frame: Frame| {
        if payload.is_empty() {
            Ok(frame)
        } else {
            Err(bad("expected no payload"))
        }
    };
    let fixed4 = || -> Result<[u8; 4], FrameError> {
        payload.try_into().map_err(|_| bad("expected 4 bytes"))
    };
    Ok(match kind {
        kind::HELLO => Frame::Hello(serde_json::from_slice(payload).map_err(json_err)?),
        kind::REQUEST => Frame::Request(serde_json::from_slice(payload).map_err(json_err)?),
        kind::RESPONSE => Frame::Response(serde_json::from_slice(payload).map_err(json_err)?),
        kind::STDIN => Frame::Stdin(payload.to_vec()),
        kind::CLOSE_STDIN => empty(Frame::CloseStdin)?,
        kind::SIGNAL => Frame::Signal(i32::from_be_bytes(fixed4()?)),
        kind::RESIZE => {
            let b = fixed4()?;
            Frame::Resize {
                rows: u16::from_be_bytes([b[0], b[1]]),
                cols: u16::from_be_bytes([b[2], b[3]]),
            }
        }
        kind::STARTED => Frame::Started(u32::from_be_bytes(fixed4()?)),
        kind::STDOUT => Frame::Stdout(payload.to_vec()),
        kind::STDERR => Frame::Stderr(payload.to_vec()),
        kind::EXITED => {
            let [tag, a, b, c, d] = payload else {
                return Err(bad("expected 5 bytes"));
            };
            let value = i32::from_be_bytes([*a, *b, *c, *d]);
            Frame::Exited(match tag {
                0 => ExitStatus::Code(value),
                1 => ExitStatus::Signal(value),
                _ => return Err(bad("unknown exit status tag")),
            })
        }
        kind::DATA => Frame::Data(payload.to_vec()),
        kind::DATA_END => empty(Frame::DataEnd)?,
        other => return Err(FrameError::UnknownKind(other)),
    })
}

/// Reads one frame; `Ok(None)` on a clean end of stream (before any byte of
/// a frame). A stream ending inside a frame is [`FrameError::Truncated`].
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let (len, kind) = parse_header(header)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    decode_payload(kind, &payload).map(Some)
}

/// Writes one frame (in a single `write_all`, so frames from threads sharing
/// a locked writer never interleave).
pub fn write_frame(w: &mut impl Write, frame: &Frame) -> Result<(), FrameError> {
    w.write_all(&frame.encode()?)?;
    w.flush()?;
    Ok(())
}
