//! `Request::Connect` (published ports) against the agent run on the host:
//! many concurrent connections, data both ways, half-close passed on,
//! backpressure, and a refused port.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use agent_protocol::*;

struct Agent {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Agent {
    fn start(name: &str) -> Agent {
        let dir = std::env::temp_dir().join(format!("flint-conn-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("agent.sock");
        let bin = std::env::var_os("FLINT_AGENT_TEST_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_guest-init").into());
        let child = Command::new(bin)
            .env("FLINT_AGENT_LISTEN", format!("unix:{}", socket.display()))
            .spawn()
            .unwrap();
        let agent = Agent { child, dir, socket };
        for _ in 0..1000 {
            if UnixStream::connect(&agent.socket).is_ok() {
                return agent;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the agent never listened");
    }

    fn connect_port(&self, port: u16) -> Result<UnixStream, ClientError> {
        AgentClient::handshake(UnixStream::connect(&self.socket).unwrap())?.connect_port(port)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An upper-casing echo server: reads until EOF, then writes everything
/// back upper-cased and closes (so it needs the half-close to answer).
fn upper_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut all = Vec::new();
                conn.read_to_end(&mut all).unwrap();
                conn.write_all(&all.to_ascii_uppercase()).unwrap();
            });
        }
    });
    port
}

#[test]
fn connections_carry_bytes_both_ways_with_half_close() {
    let agent = Agent::start("many");
    let port = upper_server();
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let mut stream = agent.connect_port(port).unwrap();
            std::thread::spawn(move || {
                // More than the splice buffer and the socket buffers, so
                // the copy has to wait for the reader at some point.
                let body: Vec<u8> = (0..300_000u32)
                    .map(|n| b'a' + ((n + i) % 26) as u8)
                    .collect();
                let writer = {
                    let mut w = stream.try_clone().unwrap();
                    let body = body.clone();
                    std::thread::spawn(move || {
                        w.write_all(&body).unwrap();
                        w.shutdown(Shutdown::Write).unwrap();
                    })
                };
                let mut back = Vec::new();
                stream.read_to_end(&mut back).unwrap();
                writer.join().unwrap();
                assert_eq!(back, body.to_ascii_uppercase());
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn a_closed_port_is_an_error_and_a_server_close_ends_the_stream() {
    let agent = Agent::start("refused");
    // A port nobody listens on: bind, note, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = agent.connect_port(port).unwrap_err();
    assert!(
        matches!(err, ClientError::Agent(ref m) if m.contains("127.0.0.1")),
        "{err}"
    );
    // A server that answers and closes at once: the host side sees EOF.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(b"bye").unwrap();
    });
    let mut stream = agent.connect_port(port).unwrap();
    let mut got = Vec::new();
    stream.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye");
    // The agent still serves.
    let (version, _) = AgentClient::handshake(UnixStream::connect(&agent.socket).unwrap())
        .unwrap()
        .ping()
        .unwrap();
    assert_eq!(version, PROTOCOL_VERSION);
}
