//! The blocking host-side client: one [`AgentClient`] per connection, one
//! request per client.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::frame::{read_frame, write_frame, Frame, MAX_CHUNK};
use crate::messages::{
    ExecSpec, ExitStatus, Hello, MountSpec, ProcessInfo, Request, Response, Stats,
};
use crate::{check_version, ClientError, PROTOCOL_VERSION};

/// Connects to guest port `port` through flint's vsock device, whose host
/// side is the Unix socket `uds_path`: writes `CONNECT <port>\n` and expects
/// `OK <host port>\n`; the stream is then connected to the guest listener.
pub fn connect_hybrid_vsock(uds_path: &Path, port: u32) -> Result<UnixStream, ClientError> {
    let mut stream = UnixStream::connect(uds_path)?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Byte by byte, so nothing after the line is consumed.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        if line.len() > 64 {
            return Err(ClientError::Connect {
                port,
                reason: "reply line too long".into(),
            });
        }
        if stream.read(&mut byte)? == 0 {
            return Err(ClientError::Connect {
                port,
                reason: "closed before replying (no listener on that port?)".into(),
            });
        }
        line.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&line);
    if text.starts_with("OK ") {
        Ok(stream)
    } else {
        Err(ClientError::Connect {
            port,
            reason: format!("unexpected reply {:?}", text.trim_end()),
        })
    }
}

/// A connection to the agent after the version handshake.
pub struct AgentClient<S> {
    stream: S,
}

fn recv(stream: &mut impl Read) -> Result<Frame, ClientError> {
    read_frame(stream)?.ok_or(ClientError::Closed)
}

fn unexpected(frame: Frame) -> ClientError {
    match frame {
        Frame::Response(Response::Error { message }) => ClientError::Agent(message),
        other => ClientError::Unexpected(format!("{other:?}")),
    }
}

impl<S: Read + Write> AgentClient<S> {
    /// Exchanges `Hello`s on a fresh connection; refuses an agent speaking
    /// another protocol version.
    pub fn handshake(mut stream: S) -> Result<Self, ClientError> {
        let hello = Hello {
            version: PROTOCOL_VERSION,
            software: format!("flint {}", env!("CARGO_PKG_VERSION")),
        };
        write_frame(&mut stream, &Frame::Hello(hello))?;
        match recv(&mut stream)? {
            Frame::Hello(h) => check_version(h.version)?,
            other => return Err(unexpected(other)),
        }
        Ok(AgentClient { stream })
    }

    fn request(&mut self, request: Request) -> Result<Response, ClientError> {
        write_frame(&mut self.stream, &Frame::Request(request))?;
        self.response()
    }

    fn response(&mut self) -> Result<Response, ClientError> {
        match recv(&mut self.stream)? {
            Frame::Response(Response::Error { message }) => Err(ClientError::Agent(message)),
            Frame::Response(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    fn expect_ok(&mut self, request: Request) -> Result<(), ClientError> {
        match self.request(request)? {
            Response::Ok => Ok(()),
            other => Err(unexpected(Frame::Response(other))),
        }
    }

    /// `Ping`: the agent's protocol version and software name.
    pub fn ping(mut self) -> Result<(u32, String), ClientError> {
        match self.request(Request::Ping)? {
            Response::Pong { version, software } => Ok((version, software)),
            other => Err(unexpected(Frame::Response(other))),
        }
    }

    /// The guest's processes.
    pub fn list_processes(mut self) -> Result<Vec<ProcessInfo>, ClientError> {
        match self.request(Request::ListProcesses)? {
            Response::Processes { processes } => Ok(processes),
            other => Err(unexpected(Frame::Response(other))),
        }
    }

    /// The guest's memory and CPU figures.
    pub fn stats(mut self) -> Result<Stats, ClientError> {
        match self.request(Request::Stats)? {
            Response::Stats(stats) => Ok(stats),
            other => Err(unexpected(Frame::Response(other))),
        }
    }

    /// Sends `signal` to guest process `pid`.
    pub fn signal(mut self, pid: i32, signal: i32) -> Result<(), ClientError> {
        self.expect_ok(Request::Signal { pid, signal })
    }

    /// Waits for a process the agent started to end.
    pub fn wait(mut self, pid: i32) -> Result<ExitStatus, ClientError> {
        match self.request(Request::Wait { pid })? {
            Response::Exited { status } => Ok(status),
            other => Err(unexpected(Frame::Response(other))),
        }
    }

    /// Opens a TCP connection to `127.0.0.1:port` in the guest; the returned
    /// stream then carries that connection's bytes, unframed.
    pub fn connect_port(mut self, port: u16) -> Result<S, ClientError> {
        self.expect_ok(Request::Connect { port })?;
        Ok(self.stream)
    }

    /// Mounts a file system in the guest.
    pub fn mount(mut self, spec: MountSpec) -> Result<(), ClientError> {
        self.expect_ok(Request::Mount(spec))
    }

    /// Unmounts `target` in the guest (lazily).
    pub fn unmount(mut self, target: &str) -> Result<(), ClientError> {
        self.expect_ok(Request::Unmount {
            target: target.to_owned(),
        })
    }

    /// Asks the agent to power the guest off.
    pub fn shutdown(mut self) -> Result<(), ClientError> {
        self.expect_ok(Request::Shutdown)
    }

    /// Writes everything `data` yields to guest file `path` (created or
    /// truncated, with `mode`), in chunks; returns the byte count.
    pub fn write_file(
        mut self,
        path: &str,
        mode: u32,
        mut data: impl Read,
    ) -> Result<u64, ClientError> {
        self.expect_ok(Request::WriteFile {
            path: path.to_owned(),
            mode,
        })?;
        let mut buf = vec![0u8; MAX_CHUNK];
        let mut total = 0u64;
        loop {
            let n = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            write_frame(&mut self.stream, &Frame::Data(buf[..n].to_vec()))?;
            total += n as u64;
        }
        write_frame(&mut self.stream, &Frame::DataEnd)?;
        match self.response()? {
            Response::Ok => Ok(total),
            other => Err(unexpected(Frame::Response(other))),
        }
    }

    /// Copies guest file `path` into `out`; returns the byte count.
    pub fn read_file(mut self, path: &str, mut out: impl Write) -> Result<u64, ClientError> {
        match self.request(Request::ReadFile {
            path: path.to_owned(),
        })? {
            Response::File { .. } => {}
            other => return Err(unexpected(Frame::Response(other))),
        }
        let mut total = 0u64;
        loop {
            match recv(&mut self.stream)? {
                Frame::Data(bytes) => {
                    out.write_all(&bytes)?;
                    total += bytes.len() as u64;
                }
                Frame::DataEnd => return Ok(total),
                other => return Err(unexpected(other)),
            }
        }
    }

    /// Starts a process; the session carries its I/O.
    pub fn exec(mut self, spec: ExecSpec) -> Result<ExecSession<S>, ClientError> {
        write_frame(&mut self.stream, &Frame::Request(Request::Exec(spec)))?;
        match recv(&mut self.stream)? {
            Frame::Started(pid) => Ok(ExecSession {
                stream: self.stream,
                pid,
            }),
            other => Err(unexpected(other)),
        }
    }
}

/// What a running process produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The last event of a session.
    Exited(ExitStatus),
}

/// All of a process's output and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
}

/// The most output [`ExecSession::wait_output`] collects (64 MiB).
pub const MAX_COLLECTED_OUTPUT: usize = 64 << 20;

/// A running process's connection.
pub struct ExecSession<S> {
    stream: S,
    pid: u32,
}

impl<S: Read + Write> ExecSession<S> {
    /// The process's pid in the guest.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Input for the process, on this session's stream. To send input while
    /// another thread reads events, use [`ExecInput::new`] on a second
    /// handle to the same connection (e.g. `UnixStream::try_clone`).
    pub fn input(&mut self) -> ExecInput<&mut S> {
        ExecInput::new(&mut self.stream)
    }

    /// The next output or the exit; output that follows no more.
    pub fn next_event(&mut self) -> Result<ExecEvent, ClientError> {
        match recv(&mut self.stream)? {
            Frame::Stdout(b) => Ok(ExecEvent::Stdout(b)),
            Frame::Stderr(b) => Ok(ExecEvent::Stderr(b)),
            Frame::Exited(status) => Ok(ExecEvent::Exited(status)),
            other => Err(unexpected(other)),
        }
    }

    /// Collects the output until the process exits. The guest decides how
    /// much that is, so more than [`MAX_COLLECTED_OUTPUT`] in all is an
    /// error; stream with [`ExecSession::next_event`] instead.
    pub fn wait_output(mut self) -> Result<ExecOutput, ClientError> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            let event = self.next_event()?;
            if stdout.len() + stderr.len() > MAX_COLLECTED_OUTPUT {
                return Err(ClientError::TooMuchOutput(MAX_COLLECTED_OUTPUT));
            }
            match event {
                ExecEvent::Stdout(b) => stdout.extend_from_slice(&b),
                ExecEvent::Stderr(b) => stderr.extend_from_slice(&b),
                ExecEvent::Exited(status) => {
                    return Ok(ExecOutput {
                        stdout,
                        stderr,
                        status,
                    })
                }
            }
        }
    }

    /// The underlying connection, e.g. to clone a handle for input.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// The underlying connection.
    pub fn into_stream(self) -> S {
        self.stream
    }
}

/// The host-to-guest half of an exec session, over any writer.
pub struct ExecInput<W> {
    writer: W,
}

impl<W: Write> ExecInput<W> {
    /// Input frames written to `writer` (a handle to the session's stream).
    pub fn new(writer: W) -> Self {
        ExecInput { writer }
    }

    /// Bytes for the process's stdin (split into chunks as needed).
    pub fn stdin(&mut self, data: &[u8]) -> Result<(), ClientError> {
        for chunk in data.chunks(MAX_CHUNK) {
            write_frame(&mut self.writer, &Frame::Stdin(chunk.to_vec()))?;
        }
        Ok(())
    }

    /// Closes the process's stdin (on a terminal: sends the EOF character).
    pub fn close_stdin(&mut self) -> Result<(), ClientError> {
        Ok(write_frame(&mut self.writer, &Frame::CloseStdin)?)
    }

    /// Sends `signal` to the process.
    pub fn signal(&mut self, signal: i32) -> Result<(), ClientError> {
        Ok(write_frame(&mut self.writer, &Frame::Signal(signal))?)
    }

    /// Resizes the process's terminal.
    pub fn resize(&mut self, rows: u16, cols: u16) -> Result<(), ClientError> {
        Ok(write_frame(
            &mut self.writer,
            &Frame::Resize { rows, cols },
        )?)
    }
}
