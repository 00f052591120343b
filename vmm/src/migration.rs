//! Live migration between flint processes: pre-copy over a Unix or TCP stream.
//!
//! The source sends all of guest RAM while the guest runs, then rounds of
//! the pages dirtied meanwhile (KVM's dirty log plus the VMM's own writes)
//! until what is left is small, then pauses the guest, sends the rest and
//! the complete state, and waits for the destination to say it runs the
//! guest. Only then does the source stop; on any failure before that the
//! source resumes the guest and keeps it.
//!
//! Wire format: messages of `tag: u8 | length: u64 LE | payload`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::GuestMemory;
use crate::microvm::MicroVm;
use crate::snapshot::memory::{count_pages, take_dirty_pages, PAGE_SIZE};
use crate::snapshot::{format, MemoryKind, MemoryLayout, MicroVmState};

const TAG_HELLO: u8 = 1;
const TAG_PAGES: u8 = 2;
const TAG_STATE: u8 = 3;
const TAG_DONE: u8 = 4;
const TAG_ACK: u8 = 5;
const TAG_ERROR: u8 = 6;
/// 2: the HELLO is postcard-encoded and the state is the sectioned state file.
const PROTOCOL_VERSION: u32 = 2;
/// Stop iterating when a round leaves at most this many dirty pages (1 MiB).
const CONVERGED_PAGES: u64 = 256;
/// Give up iterating (and pause anyway) after this many rounds.
const MAX_ROUNDS: u32 = 12;
/// A page run sent in one message is at most this long.
const MAX_RUN: usize = 1 << 20;
/// The largest message accepted (a hostile peer must not make us allocate).
const MAX_MESSAGE: u64 = 512 << 20;
/// How long the destination waits for the next message before giving up.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the destination may take to restore and answer.
const ACK_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a migration failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The address is not `unix:PATH` or `tcp:IP:PORT`.
    #[error(
        "bad migration address {0:?}: use unix:PATH or tcp:IP:PORT with an IP literal \
         (e.g. tcp:10.0.0.2:4444 or tcp:[fd00::2]:4444; host names are not resolved)"
    )]
    Address(String),
    /// The connection failed.
    #[error("migration stream: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something unexpected.
    #[error("migration protocol: {0}")]
    Protocol(String),
    /// The destination could not take over.
    #[error("the destination failed: {0}")]
    Destination(String),
    /// Reading or restoring state failed.
    #[error("{0}")]
    State(String),
    /// A signal ended the wait for the source.
    #[error("cancelled while waiting for the source")]
    Cancelled,
}

/// A migration endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A Unix socket path.
    Unix(PathBuf),
    /// `ip:port`, always an IP literal (checked by [`Address::parse`]), so
    /// connecting or binding never needs a DNS lookup, which flint's seccomp
    /// filters forbid.
    Tcp(String),
}

impl Address {
    /// Parses `unix:PATH` or `tcp:IP:PORT`. Host names are refused: the
    /// resolver's syscalls are outside flint's seccomp filters.
    pub fn parse(text: &str) -> Result<Self, MigrationError> {
        if let Some(path) = text.strip_prefix("unix:").filter(|p| !p.is_empty()) {
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Some(hostport) = text.strip_prefix("tcp:") {
            if hostport.parse::<std::net::SocketAddr>().is_ok() {
                return Ok(Self::Tcp(hostport.to_string()));
            }
        }
        Err(MigrationError::Address(text.to_string()))
    }
}

/// A connected migration stream.
pub enum Stream {
    /// Over a Unix socket.
    Unix(UnixStream),
    /// Over TCP.
    Tcp(TcpStream),
}

impl Stream {
    fn connect(address: &Address) -> Result<Self, MigrationError> {
        Ok(match address {
            Address::Unix(path) => Self::Unix(UnixStream::connect(path)?),
            Address::Tcp(hostport) => {
                let s = TcpStream::connect(hostport)?;
                s.set_nodelay(true)?;
                Self::Tcp(s)
            }
        })
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        match self {
            Self::Unix(s) => s.set_read_timeout(timeout),
            Self::Tcp(s) => s.set_read_timeout(timeout),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Unix(s) => s.read(buf),
            Self::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Unix(s) => s.write(buf),
            Self::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Unix(s) => s.flush(),
            Self::Tcp(s) => s.flush(),
        }
    }
}

fn send(stream: &mut Stream, tag: u8, parts: &[&[u8]]) -> Result<(), MigrationError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    stream.write_all(&[tag])?;
    stream.write_all(&(len as u64).to_le_bytes())?;
    for part in parts {
        stream.write_all(part)?;
    }
    Ok(())
}

fn receive(stream: &mut Stream) -> Result<(u8, Vec<u8>), MigrationError> {
    let mut header = [0u8; 9];
    stream.read_exact(&mut header)?;
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[1..]);
    let len = u64::from_le_bytes(len);
    if len > MAX_MESSAGE {
        return Err(MigrationError::Protocol(format!(
            "message of {len} bytes is too large"
        )));
    }
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload)?;
    Ok((header[0], payload))
}

/// What a migration did, for the log.
#[derive(Debug, Clone, Default)]
pub struct MigrationReport {
    /// Copy rounds while the guest ran (the first sends all memory).
    pub rounds: u32,
    /// Bytes of guest memory sent.
    pub bytes: u64,
    /// Bytes of state sent.
    pub state_bytes: u64,
    /// From start to the destination's acknowledgement.
    pub total: Duration,
    /// From pausing the guest to the destination's acknowledgement.
    pub downtime: Duration,
}

/// Sends the pages set in `bitmaps` (or every non-zero page) as runs.
fn send_pages(
    stream: &mut Stream,
    mem: &GuestMemory,
    bitmaps: Option<&[Vec<u64>]>,
) -> Result<u64, MigrationError> {
    let mut sent = 0u64;
    let mut buf = vec![0u8; MAX_RUN];
    for (index, region) in mem.iter().enumerate() {
        let pages = (region.len() as usize).div_ceil(PAGE_SIZE);
        let selected = |p: usize| match bitmaps {
            Some(b) => b
                .get(index)
                .is_some_and(|words| words.get(p / 64).is_some_and(|w| w & (1 << (p % 64)) != 0)),
            None => true,
        };
        let mut p = 0;
        while p < pages {
            if !selected(p) {
                p += 1;
                continue;
            }
            let start = p;
            while p < pages && selected(p) && (p - start + 1) * PAGE_SIZE <= MAX_RUN {
                p += 1;
            }
            let offset = (start * PAGE_SIZE) as u64;
            let len = ((p - start) * PAGE_SIZE).min((region.len() - offset) as usize);
            let gpa = region.start_addr().0 + offset;
            mem.read_slice(&mut buf[..len], GuestAddress(gpa))
                .map_err(|e| MigrationError::State(e.to_string()))?;
            // The destination starts from zeroed memory: zero runs in the
            // first round need not travel.
            if bitmaps.is_none() && buf[..len].iter().all(|&b| b == 0) {
                continue;
            }
            send(stream, TAG_PAGES, &[&gpa.to_le_bytes(), &buf[..len]])?;
            sent += len as u64;
        }
    }
    Ok(sent)
}

/// Migrates `vm` to `destination`. On success the guest runs there and this
/// VM stays paused (the caller ends the process); on failure the VM is
/// resumed if it was running and the error returned.
pub fn migrate_out(vm: &mut MicroVm, destination: &str) -> Result<MigrationReport, MigrationError> {
    let address = Address::parse(destination)?;
    let was_paused = vm.is_paused();
    let logging_before = vm.dirty_logging();
    let result = run_source(vm, &address);
    if result.is_err() {
        if !was_paused && vm.is_paused() {
            if let Err(e) = vm.resume() {
                log::error!("migration failed and the VM could not be resumed: {e}");
            }
        }
        if !logging_before {
            if let Err(e) = vm.set_dirty_logging(false) {
                log::warn!("turning dirty logging off again: {e}");
            }
        }
    }
    result
}

fn run_source(vm: &mut MicroVm, address: &Address) -> Result<MigrationReport, MigrationError> {
    let start = Instant::now();
    let mut stream = Stream::connect(address)?;
    let layout = MemoryLayout::of(vm.memory());
    let hello = format::to_bytes(&(PROTOCOL_VERSION, &layout))
        .map_err(|e| MigrationError::State(e.to_string()))?;
    send(&mut stream, TAG_HELLO, &[&hello])?;

    vm.set_dirty_logging(true)
        .map_err(|e| MigrationError::State(e.to_string()))?;
    let mut report = MigrationReport::default();
    // Start tracking now: everything written from here on is sent again.
    take_dirty_pages(vm.vm().fd(), vm.memory())
        .map_err(|e| MigrationError::State(e.to_string()))?;
    report.bytes += send_pages(&mut stream, vm.memory(), None)?;
    report.rounds = 1;
    loop {
        let dirty = take_dirty_pages(vm.vm().fd(), vm.memory())
            .map_err(|e| MigrationError::State(e.to_string()))?;
        let count = count_pages(&dirty);
        if count <= CONVERGED_PAGES || report.rounds >= MAX_ROUNDS {
            // Put this round's pages back in play for the final copy.
            let paused_at = Instant::now();
            if !vm.is_paused() {
                vm.pause()
                    .map_err(|e| MigrationError::State(e.to_string()))?;
            }
            report.bytes += send_pages(&mut stream, vm.memory(), Some(&dirty))?;
            let last = take_dirty_pages(vm.vm().fd(), vm.memory())
                .map_err(|e| MigrationError::State(e.to_string()))?;
            report.bytes += send_pages(&mut stream, vm.memory(), Some(&last))?;
            let state = vm
                .save_state(MemoryKind::Full)
                .map_err(|e| MigrationError::State(e.to_string()))?;
            let encoded = crate::snapshot::encode_state(&state)
                .map_err(|e| MigrationError::State(e.to_string()))?;
            report.state_bytes = encoded.len() as u64;
            send(&mut stream, TAG_STATE, &[&encoded])?;
            send(&mut stream, TAG_DONE, &[])?;
            stream.set_read_timeout(Some(ACK_TIMEOUT))?;
            let (tag, payload) = receive(&mut stream)?;
            match tag {
                TAG_ACK => {}
                TAG_ERROR => {
                    return Err(MigrationError::Destination(
                        String::from_utf8_lossy(&payload).into_owned(),
                    ))
                }
                other => {
                    return Err(MigrationError::Protocol(format!(
                        "unexpected answer {other}"
                    )))
                }
            }
            report.downtime = paused_at.elapsed();
            report.total = start.elapsed();
            return Ok(report);
        }
        report.bytes += send_pages(&mut stream, vm.memory(), Some(&dirty))?;
        report.rounds += 1;
    }
}

/// Waits on `address` for one incoming migration and returns the guest's
/// memory and state, plus the stream to acknowledge on once it runs.
/// Accepts one connection, checking `cancelled` every 100 ms so that a
/// signal still stops a flint that is waiting.
fn accept_one<T>(
    mut try_accept: impl FnMut() -> std::io::Result<T>,
    cancelled: &mut dyn FnMut() -> bool,
) -> Result<T, MigrationError> {
    loop {
        match try_accept() {
            Ok(conn) => return Ok(conn),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if cancelled() {
                    return Err(MigrationError::Cancelled);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Removes a socket left at `path` by a flint that is gone, so the listener
/// can bind there. Anything else is refused: a file that is not a socket
/// (never delete a user's file), or a socket another process still serves.
fn remove_stale_socket(path: &std::path::Path) -> Result<(), MigrationError> {
    use std::os::unix::fs::FileTypeExt;
    let refuse = |why: String| {
        MigrationError::Io(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{}: {why}; refusing to replace it", path.display()),
        ))
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if !meta.file_type().is_socket() {
        return Err(refuse("exists and is not a socket".into()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(refuse("another process is listening on it".into())),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path)?;
            Ok(())
        }
        Err(e) => Err(refuse(format!("cannot tell whether it is stale ({e})"))),
    }
}

/// Waits on `address` for one incoming migration (giving up when `cancelled`
/// says so) and returns the guest's memory and state, plus the stream to
/// acknowledge on once it runs. A source that stalls for [`STALL_TIMEOUT`]
/// fails the migration.
pub fn accept_incoming(
    address: &str,
    cancelled: &mut dyn FnMut() -> bool,
) -> Result<(GuestMemory, MicroVmState, Stream), MigrationError> {
    let mut stream = match Address::parse(address)? {
        Address::Unix(path) => {
            remove_stale_socket(&path)?;
            let listener = UnixListener::bind(&path)?;
            listener.set_nonblocking(true)?;
            log::info!(
                "waiting for an incoming migration on unix:{}",
                path.display()
            );
            let accepted = accept_one(|| listener.accept(), cancelled);
            let _ = std::fs::remove_file(&path);
            let (s, _) = accepted?;
            s.set_nonblocking(false)?;
            Stream::Unix(s)
        }
        Address::Tcp(hostport) => {
            let listener = TcpListener::bind(&hostport)?;
            listener.set_nonblocking(true)?;
            log::info!("waiting for an incoming migration on tcp:{hostport}");
            let (s, peer) = accept_one(|| listener.accept(), cancelled)?;
            s.set_nonblocking(false)?;
            log::info!("migration from {peer}");
            Stream::Tcp(s)
        }
    };
    stream.set_read_timeout(Some(STALL_TIMEOUT))?;
    let (tag, payload) = receive(&mut stream)?;
    if tag != TAG_HELLO {
        return Err(MigrationError::Protocol(format!(
            "expected HELLO, got {tag}"
        )));
    }
    let (version, layout): (u32, MemoryLayout) =
        format::from_bytes(&payload).map_err(|e| MigrationError::Protocol(e.to_string()))?;
    if version != PROTOCOL_VERSION {
        return Err(MigrationError::Protocol(format!(
            "protocol version {version}, this flint speaks {PROTOCOL_VERSION}"
        )));
    }
    let max = crate::snapshot::memory::host_ram().min(crate::memory::MAX_GUEST_MEMORY);
    layout
        .validate(max)
        .map_err(|e| MigrationError::Protocol(e.to_string()))?;
    let mem = layout
        .create_memory()
        .map_err(|e| MigrationError::State(e.to_string()))?;
    let mut state = None;
    loop {
        let (tag, payload) = receive(&mut stream)?;
        match tag {
            TAG_PAGES => {
                if payload.len() < 8 {
                    return Err(MigrationError::Protocol("short page message".into()));
                }
                let mut gpa = [0u8; 8];
                gpa.copy_from_slice(&payload[..8]);
                mem.write_slice(&payload[8..], GuestAddress(u64::from_le_bytes(gpa)))
                    .map_err(|e| {
                        MigrationError::Protocol(format!("pages outside guest memory: {e}"))
                    })?;
            }
            TAG_STATE => {
                let decoded: MicroVmState = crate::snapshot::decode_state(
                    &payload,
                    std::path::Path::new("migration stream"),
                )
                .map_err(|e| MigrationError::Protocol(e.to_string()))?;
                if decoded.memory != layout {
                    return Err(MigrationError::Protocol(
                        "state and memory layouts differ".into(),
                    ));
                }
                state = Some(decoded);
            }
            TAG_DONE => break,
            other => {
                return Err(MigrationError::Protocol(format!(
                    "unexpected message {other}"
                )))
            }
        }
    }
    let state = state.ok_or_else(|| MigrationError::Protocol("no state before DONE".into()))?;
    crate::snapshot::memory::reset_vmm_bitmaps(&mem);
    Ok((mem, state, stream))
}

/// Tells the source the guest runs here (or why it does not).
pub fn acknowledge(stream: &mut Stream, result: Result<(), String>) {
    let sent = match result {
        Ok(()) => send(stream, TAG_ACK, &[]),
        Err(e) => send(stream, TAG_ERROR, &[e.as_bytes()]),
    };
    if let Err(e) = sent {
        log::error!("answering the migration source: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            Address::parse("unix:/tmp/m.sock").unwrap(),
            Address::Unix("/tmp/m.sock".into())
        );
        assert_eq!(
            Address::parse("tcp:127.0.0.1:4444").unwrap(),
            Address::Tcp("127.0.0.1:4444".into())
        );
        assert_eq!(
            Address::parse("tcp:[::1]:4444").unwrap(),
            Address::Tcp("[::1]:4444".into())
        );
        for bad in [
            "",
            "unix:",
            "tcp:nohost",
            "tcp::80",
            "tcp:h:99999",
            "udp:x:1",
            "/tmp/x",
            // Host names would need DNS, which seccomp kills flint for.
            "tcp:localhost:4444",
            "tcp:example.com:80",
            "tcp:::1:80",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
        let msg = Address::parse("tcp:localhost:4444")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("IP literal"), "{msg}");
    }

    #[test]
    fn only_a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file is kept and refused.
        let file = dir.path().join("file");
        std::fs::write(&file, b"precious").unwrap();
        let err = remove_stale_socket(&file).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"precious");
        // A directory and a symlink to a socket are not sockets either.
        assert!(remove_stale_socket(dir.path()).is_err());
        // A live socket is refused and kept.
        let live = dir.path().join("live.sock");
        let listener = UnixListener::bind(&live).unwrap();
        let err = remove_stale_socket(&live).unwrap_err().to_string();
        assert!(err.contains("listening"), "{err}");
        assert!(live.exists());
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&live, &link).unwrap();
        assert!(remove_stale_socket(&link).is_err());
        assert!(live.exists());
        // Once nobody serves it, it is stale and removed.
        drop(listener);
        remove_stale_socket(&live).unwrap();
        assert!(!live.exists());
        // Nothing there: nothing to do.
        remove_stale_socket(&live).unwrap();
    }
}
