//! The guest agent: serves the `agent_protocol` on AF_VSOCK (in a guest)
//! or on a Unix socket (tests on the host), one thread per connection.
//!
//! In a guest, PID 1 runs the agent as a child process (the same binary
//! with `FLINT_AGENT_LISTEN=vsock:PORT`) and restarts it if it dies; a
//! panic in the agent (the release build aborts on panic) thus costs the
//! open sessions but not the guest. The agent exits with status 0 only when
//! asked to `Shutdown`.

mod exec;
mod files;
mod mount;
mod pty;
mod reaper;
mod rlimit;
mod vsock;
mod workers;

pub mod procfs;

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

use agent_protocol::{
    read_frame, write_frame, Frame, FrameError, Hello, Request, Response, PROTOCOL_VERSION,
};

use reaper::Reaper;

/// The environment variable naming what the agent listens on.
pub const LISTEN_ENV: &str = "FLINT_AGENT_LISTEN";

/// The agent's name and version, sent in `Hello` and `Pong`.
pub fn software() -> String {
    format!("flint-agent {}", env!("CARGO_PKG_VERSION"))
}

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `unix:/path`: a Unix socket (tests on the host).
    Unix(PathBuf),
    /// `vsock:PORT`: AF_VSOCK, any CID.
    Vsock(u32),
}

impl Listen {
    /// Parses `unix:/path` or `vsock:PORT`.
    pub fn parse(text: &str) -> Result<Listen, String> {
        if let Some(path) = text.strip_prefix("unix:").filter(|p| !p.is_empty()) {
            Ok(Listen::Unix(path.into()))
        } else if let Some(port) = text.strip_prefix("vsock:") {
            port.parse()
                .map(Listen::Vsock)
                .map_err(|_| format!("bad vsock port in {text:?}"))
        } else {
            Err(format!("{text:?}: expected unix:/path or vsock:PORT"))
        }
    }
}

/// Serves connections forever (until a `Shutdown` request exits the
/// process). Call from the main thread before any other thread exists.
pub fn serve(listen: &Listen) -> Result<(), String> {
    reaper::block_sigchld();
    let reaper = Reaper::start();
    workers::POOL.prestart(workers::PRESTART);
    let accept: Box<dyn Fn() -> io::Result<UnixStream>> = match listen {
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let listener = UnixListener::bind(path)
                .map_err(|e| format!("listening on {}: {e}", path.display()))?;
            Box::new(move || listener.accept().map(|(s, _)| s))
        }
        Listen::Vsock(port) => {
            let listener = vsock::VsockListener::bind(*port)
                .map_err(|e| format!("listening on vsock port {port}: {e}"))?;
            Box::new(move || listener.accept())
        }
    };
    loop {
        match accept() {
            Ok(conn) => {
                let reaper = reaper.clone();
                workers::run(move || handle(conn, &reaper));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("flint-agent: accept: {e}");
                // Out of fds or memory: let connections finish first.
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

/// A published port's connection: TCP to `127.0.0.1:port`, then the two
/// streams spliced until both directions end.
fn connect(mut conn: UnixStream, port: u16) -> Result<(), FrameError> {
    let tcp = match std::net::TcpStream::connect(("127.0.0.1", port)) {
        Ok(tcp) => tcp,
        Err(e) => {
            return reply(
                &mut conn,
                Response::Error {
                    message: format!("connecting to 127.0.0.1:{port}: {e}"),
                },
            )
        }
    };
    let _ = tcp.set_nodelay(true);
    reply(&mut conn, Response::Ok)?;
    agent_protocol::splice_with(conn, tcp, |forward| {
        let done = workers::run(forward);
        Ok(move || done.join().unwrap_or(0))
    })?;
    Ok(())
}

fn reply(conn: &mut UnixStream, response: Response) -> Result<(), FrameError> {
    write_frame(conn, &Frame::Response(response))
}

fn refuse(conn: &mut UnixStream, message: String) {
    let _ = reply(conn, Response::Error { message });
}

/// One connection: the handshake, then one request.
fn handle(mut conn: UnixStream, reaper: &Arc<Reaper>) {
    match read_frame(&mut conn) {
        Ok(Some(Frame::Hello(h))) if h.version == PROTOCOL_VERSION => {
            let hello = Hello {
                version: PROTOCOL_VERSION,
                software: software(),
            };
            if write_frame(&mut conn, &Frame::Hello(hello)).is_err() {
                return;
            }
        }
        Ok(Some(Frame::Hello(h))) => {
            return refuse(
                &mut conn,
                format!(
                    "protocol version {} not supported; this agent speaks {PROTOCOL_VERSION}",
                    h.version
                ),
            )
        }
        Ok(Some(other)) => {
            return refuse(
                &mut conn,
                format!("expected Hello, got frame {:#04x}", other.kind()),
            )
        }
        Ok(None) => return,
        Err(e) => return refuse(&mut conn, format!("bad frame: {e}")),
    }
    let request = match read_frame(&mut conn) {
        Ok(Some(Frame::Request(r))) => r,
        Ok(Some(other)) => {
            return refuse(
                &mut conn,
                format!("expected a request, got frame {:#04x}", other.kind()),
            )
        }
        Ok(None) => return,
        Err(e) => return refuse(&mut conn, format!("bad frame: {e}")),
    };
    let result = match request {
        Request::Ping => reply(
            &mut conn,
            Response::Pong {
                version: PROTOCOL_VERSION,
                software: software(),
            },
        ),
        Request::Exec(spec) => exec::session(conn, spec, reaper).map_err(FrameError::Io),
        Request::ListProcesses => reply(
            &mut conn,
            Response::Processes {
                processes: procfs::list_processes(),
            },
        ),
        Request::Stats => reply(&mut conn, Response::Stats(procfs::stats())),
        Request::WriteFile { path, mode } => files::write_file(&mut conn, &path, mode),
        Request::ReadFile { path } => files::read_file(&mut conn, &path),
        Request::Signal { pid, signal } => {
            // SAFETY: kill(2) with plain integers.
            let response = if unsafe { libc::kill(pid, signal) } == 0 {
                Response::Ok
            } else {
                Response::Error {
                    message: format!("kill({pid}, {signal}): {}", io::Error::last_os_error()),
                }
            };
            reply(&mut conn, response)
        }
        Request::Wait { pid } => reply(
            &mut conn,
            match reaper.wait(pid) {
                Some(status) => Response::Exited { status },
                None => Response::Error {
                    message: format!("process {pid} was not started by the agent"),
                },
            },
        ),
        Request::Connect { port } => connect(conn, port),
        Request::Mount(spec) => reply(&mut conn, mount::mount(&spec)),
        Request::Unmount { target } => reply(&mut conn, mount::unmount(&target)),
        Request::Shutdown => {
            let _ = reply(&mut conn, Response::Ok);
            drop(conn);
            std::process::exit(0);
        }
    };
    if let Err(e) = result {
        // The host went away or sent garbage; nothing more to say to it.
        eprintln!("flint-agent: connection: {e}");
    }
}
