//! Published ports (`run -p [HOST_IP:]HOST_PORT:GUEST_PORT`): the
//! container's flint listens on the host port and carries each accepted TCP
//! connection over a fresh agent connection (`Request::Connect`) to
//! `127.0.0.1:GUEST_PORT` in the guest. No network device, no iptables, no
//! root. Each connection is spliced with one fixed buffer per direction
//! (`agent_protocol::splice`), so backpressure holds both ways.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use agent_protocol::{connect_hybrid_vsock, AgentClient, DEFAULT_PORT};

use super::state::PortMap;
use crate::ContainerError;

/// Connections carried at once per published port; further
/// connections are closed at once (a bound on threads).
pub const MAX_CONNECTIONS: usize = 512;

/// Parses `[HOST_IP:]HOST_PORT:GUEST_PORT` (`HOST_IP` an IPv4 address, or
/// an IPv6 one in brackets).
pub fn parse_publish(text: &str) -> Result<PortMap, ContainerError> {
    let bad = |why: &str| {
        ContainerError::Usage(format!(
            "-p {text:?}: {why} (expected [HOST_IP:]HOST_PORT:GUEST_PORT)"
        ))
    };
    let (rest, guest) = text.rsplit_once(':').ok_or_else(|| bad("no ':'"))?;
    let (ip, host) = match rest.rsplit_once(':') {
        Some((ip, host)) => (ip.trim_start_matches('[').trim_end_matches(']'), host),
        None => ("0.0.0.0", rest),
    };
    let port = |p: &str| p.parse::<u16>().ok().filter(|&p| p != 0);
    let host_port = port(host).ok_or_else(|| bad("bad host port"))?;
    let guest_port = port(guest).ok_or_else(|| bad("bad container port"))?;
    ip.parse::<std::net::IpAddr>()
        .map_err(|_| bad("bad host IP address"))?;
    Ok(PortMap {
        host_ip: ip.to_owned(),
        host_port,
        guest_port,
    })
}

/// Binds every published port, or says which one is taken.
pub fn bind(maps: &[PortMap]) -> Result<Vec<(TcpListener, u16)>, ContainerError> {
    maps.iter()
        .map(|m| {
            let ip: std::net::IpAddr = m
                .host_ip
                .parse()
                .map_err(|_| ContainerError::Usage(format!("bad host IP {}", m.host_ip)))?;
            match TcpListener::bind((ip, m.host_port)) {
                Ok(l) => Ok((l, m.guest_port)),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(ContainerError::Usage(
                    format!("port {}:{} is already in use", m.host_ip, m.host_port),
                )),
                Err(e) => Err(ContainerError::Io {
                    what: format!("listening on {}:{}", m.host_ip, m.host_port),
                    source: e,
                }),
            }
        })
        .collect()
}

/// Accepts connections on `listener` forever, each carried to
/// `guest_port` through the vsock device's socket `uds`.
pub fn serve(listener: TcpListener, guest_port: u16, uds: PathBuf) {
    let active = Arc::new(AtomicUsize::new(0));
    let spawned = std::thread::Builder::new()
        .name(format!("port-{guest_port}"))
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                let (uds, active) = (uds.clone(), active.clone());
                let started =
                    std::thread::Builder::new()
                        .name("port-conn".into())
                        .spawn(move || {
                            if let Err(e) = carry(conn, guest_port, &uds) {
                                log::info!("published port {guest_port}: {e}");
                            }
                            active.fetch_sub(1, Ordering::SeqCst);
                        });
                if started.is_err() {
                    log::warn!("published port {guest_port}: no thread for a connection");
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("published port {guest_port}: {e}");
    }
}

/// One connection: a new agent connection, `Connect`, then the splice.
fn carry(tcp: TcpStream, guest_port: u16, uds: &Path) -> Result<(), String> {
    let _ = tcp.set_nodelay(true);
    let vsock = connect_hybrid_vsock(uds, DEFAULT_PORT).map_err(|e| e.to_string())?;
    let stream = AgentClient::handshake(vsock)
        .and_then(|c| c.connect_port(guest_port))
        .map_err(|e| e.to_string())?;
    agent_protocol::splice(tcp, stream).map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_specs_parse() {
        let p = parse_publish("8080:80").unwrap();
        assert_eq!(
            (p.host_ip.as_str(), p.host_port, p.guest_port),
            ("0.0.0.0", 8080, 80)
        );
        let p = parse_publish("127.0.0.1:8080:80").unwrap();
        assert_eq!(p.host_ip, "127.0.0.1");
        let p = parse_publish("[::1]:8080:80").unwrap();
        assert_eq!(p.host_ip, "::1");
        for bad in ["80", "0:80", "x:80", "8080:70000", "1.2.3:8080:80", ""] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_taken_port_is_named() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = bind(&[parse_publish(&format!("127.0.0.1:{port}:80")).unwrap()]).unwrap_err();
        assert!(err.to_string().contains("already in use"), "{err}");
    }
}
