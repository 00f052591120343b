//! The protocol between flint (host) and its guest agent (`guest-init` in
//! agent mode), and a blocking host-side client.
//!
//! # Why this shape
//!
//! * **One connection per operation.** Each process session (`Exec`) and
//!   each short request (`Ping`, `Stats`, `ReadFile`, ...) uses its own
//!   vsock connection, so vsock's per-connection credit gives every process
//!   its own backpressure, and a slow reader of one process never stalls
//!   another. No multiplexing layer, no request ids.
//! * **Own framing, not ttrpc/gRPC.** The agent is a small static PID 1
//!   without an async runtime; a length-prefixed frame with a kind byte is a
//!   few hundred lines both sides can share, and is easy to fuzz.
//! * **JSON for control, raw bytes for data.** Requests and responses are
//!   rare and benefit from being readable and extensible (serde, unknown
//!   fields ignored); stdin/stdout/stderr and file contents are raw frame
//!   payloads, never encoded.
//!
//! # Wire format
//!
//! A frame is `u32 length (big-endian) | u8 kind | payload`, `length` being
//! the payload's size, at most [`MAX_PAYLOAD`] (1 MiB). Kinds are listed in
//! [`frame::kind`]. Every connection starts with a `Hello` each way carrying
//! [`PROTOCOL_VERSION`]; an agent that does not speak the host's version
//! answers `Response::Error` and closes. Then the host sends one `Request`.
//! `agent-protocol/README.md` has the full message flow.
//!
//! Reaching the agent from the host: flint's vsock device exposes the guest
//! through a Unix socket (`uds_path`); [`connect_hybrid_vsock`] performs its
//! `CONNECT <port>` handshake and [`AgentClient::handshake`] the protocol's.

mod client;
pub mod frame;
mod messages;
mod splice;

use thiserror::Error;

pub use client::{
    connect_hybrid_vsock, AgentClient, ExecEvent, ExecInput, ExecOutput, ExecSession,
    MAX_COLLECTED_OUTPUT,
};
pub use frame::{decode_frame, read_frame, write_frame, Frame, MAX_CHUNK, MAX_PAYLOAD};
pub use messages::{
    CpuTimes, ExecSpec, ExitStatus, Hello, MountSpec, ProcessInfo, Request, Response, Rlimit,
    Stats, WindowSize,
};
pub use splice::{splice, splice_with, Duplex, SPLICE_BUFFER};

/// The protocol version this crate speaks. Bumped on any incompatible
/// change to frames or messages; both sides must speak the same one.
pub const PROTOCOL_VERSION: u32 = 1;

/// The vsock port the agent listens on unless told otherwise.
pub const DEFAULT_PORT: u32 = 1024;

/// Refuses a peer's `Hello` that carries another protocol version.
pub fn check_version(peer: u32) -> Result<(), ClientError> {
    if peer == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ClientError::VersionMismatch {
            peer,
            ours: PROTOCOL_VERSION,
        })
    }
}

/// A frame that could not be read, decoded or encoded.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The buffer holds only part of a frame; the frame needs this many
    /// bytes in all.
    #[error("incomplete frame: {0} bytes needed")]
    Incomplete(usize),
    #[error("frame payload of {0} bytes exceeds the limit of {MAX_PAYLOAD}")]
    TooLarge(usize),
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    #[error("bad payload in a frame of kind {kind:#04x}: {reason}")]
    BadPayload { kind: u8, reason: String },
    #[error("the stream ended inside a frame")]
    Truncated,
    #[error("encoding a message: {0}")]
    Encode(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a client operation failed.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("protocol version mismatch: the peer speaks {peer}, we speak {ours}")]
    VersionMismatch { peer: u32, ours: u32 },
    /// The agent answered `Response::Error`.
    #[error("the agent refused: {0}")]
    Agent(String),
    #[error("the agent closed the connection")]
    Closed,
    #[error("unexpected frame from the agent: {0}")]
    Unexpected(String),
    /// `ExecSession::wait_output` stopped collecting at this many bytes.
    #[error("the process wrote more than {0} bytes")]
    TooMuchOutput(usize),
    /// The vsock device's `CONNECT <port>` handshake failed.
    #[error("vsock CONNECT to port {port}: {reason}")]
    Connect { port: u32, reason: String },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}
