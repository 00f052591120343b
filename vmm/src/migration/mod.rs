//! Live migration between flint processes: pre-copy over a Unix or TCP stream.
//!
//! The source sends all of guest RAM while the guest runs, then rounds of
//! the pages dirtied meanwhile (KVM's dirty log plus the VMM's own writes)
//! until what is left is small, then pauses the guest, sends the rest and
//! the complete state, and waits for the destination to say it runs the
//! guest. The end is a two-phase hand-off ([`handoff`]): the guest runs in
//! exactly one place whichever side or connection fails.
//!
//! Both sides hold a pre-shared key; the stream starts with a challenge-
//! response handshake and every message after it carries an HMAC
//! ([`channel`]). Nothing the peer sends is read before the handshake
//! proves it holds the key, and what an authenticated source asks for is
//! still capped by the destination's [`IncomingPolicy`].
//!
//! Wire format after the handshake: frames of `tag: u8 | length: u64 LE |
//! payload | HMAC`.

pub mod channel;
pub mod handoff;
pub mod policy;

pub use channel::{Channel, MigrationKey};
pub use handoff::{Fault, SourceEnd};
pub use policy::IncomingPolicy;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::GuestMemory;
use crate::snapshot::memory::{count_pages, PAGE_SIZE};
use crate::snapshot::{format, MemoryLayout, MicroVmState};

const TAG_HELLO: u8 = 1;
const TAG_PAGES: u8 = 2;
const TAG_STATE: u8 = 3;
const TAG_DONE: u8 = 4;
/// 3: authenticated frames and the two-phase hand-off.
const PROTOCOL_VERSION: u32 = 3;
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
/// How long the destination may take to restore and answer READY.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the destination waits for COMMIT after READY.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the source waits for RUNNING after COMMIT.
const RUNNING_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an unauthenticated peer may take over the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// The key file is unusable.
    #[error("migration key: {0}")]
    Key(String),
    /// The peer failed authentication.
    #[error("migration authentication failed: {0}")]
    Auth(String),
    /// The incoming VM asks for more than this flint allows.
    #[error("incoming migration refused: {0}")]
    Refused(String),
    /// COMMIT was sent and then something failed: the source must never
    /// resume; whether the guest runs is up to the destination.
    #[error("{0} (after COMMIT: this flint will not resume the guest; its fate is with the destination)")]
    AfterCommit(Box<MigrationError>),
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
}

impl handoff::Timeouts for Stream {
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
    stream: &mut Channel<Stream>,
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
            stream.send(TAG_PAGES, &[&gpa.to_le_bytes(), &buf[..len]])?;
            sent += len as u64;
        }
    }
    Ok(sent)
}

/// What the sending side needs of the running VM while it streams it. The
/// streaming runs on the control thread; these calls reach the thread that
/// owns the VM (and serves its devices), which answers them quickly.
pub trait SourceVm {
    /// The guest's memory (shared mappings: reading it needs no VMM help).
    fn memory(&self) -> &GuestMemory;
    /// The pages written since the last call, per region (KVM's dirty log
    /// plus the VMM's own writes).
    fn take_dirty(&mut self) -> Result<Vec<Vec<u64>>, MigrationError>;
    /// Pauses the vCPUs and returns the pages written since the last
    /// [`SourceVm::take_dirty`] and the encoded state.
    fn pause_and_collect(&mut self) -> Result<(Vec<Vec<u64>>, Vec<u8>), MigrationError>;
}

fn state_err(e: impl std::fmt::Display) -> MigrationError {
    MigrationError::State(e.to_string())
}

/// Sends the VM behind `vm` to `destination`, authenticating with `key`.
/// The caller has turned dirty logging on. On `Ok` the guest runs at the
/// destination and the source's VM must stay paused for good; on
/// [`MigrationError::AfterCommit`] too (and the source ends with that
/// error). On any other error the caller resumes the VM if it ran.
pub fn send_vm(
    vm: &mut dyn SourceVm,
    destination: &str,
    key: &MigrationKey,
) -> Result<MigrationReport, MigrationError> {
    let address = Address::parse(destination)?;
    run_source(vm, &address, key, handoff::Fault::from_env())
}

fn run_source(
    vm: &mut dyn SourceVm,
    address: &Address,
    key: &MigrationKey,
    fault: Option<Fault>,
) -> Result<MigrationReport, MigrationError> {
    let start = Instant::now();
    let stream = Stream::connect(address)?;
    handoff::Timeouts::set_read_timeout(&stream, Some(HANDSHAKE_TIMEOUT))?;
    let mut ch = Channel::connect(stream, key, MAX_MESSAGE)?;
    let layout = MemoryLayout::of(vm.memory());
    let hello = format::to_bytes(&(PROTOCOL_VERSION, &layout)).map_err(state_err)?;
    ch.send(TAG_HELLO, &[&hello])?;

    let mut report = MigrationReport::default();
    // Start tracking now: everything written from here on is sent again.
    vm.take_dirty()?;
    report.bytes += send_pages(&mut ch, vm.memory(), None)?;
    report.rounds = 1;
    loop {
        let dirty = vm.take_dirty()?;
        let count = count_pages(&dirty);
        if count > CONVERGED_PAGES && report.rounds < MAX_ROUNDS {
            report.bytes += send_pages(&mut ch, vm.memory(), Some(&dirty))?;
            report.rounds += 1;
            continue;
        }
        let paused_at = Instant::now();
        let (last, encoded) = vm.pause_and_collect()?;
        report.bytes += send_pages(&mut ch, vm.memory(), Some(&dirty))?;
        report.bytes += send_pages(&mut ch, vm.memory(), Some(&last))?;
        report.state_bytes = encoded.len() as u64;
        ch.send(TAG_STATE, &[&encoded])?;
        ch.send(TAG_DONE, &[])?;
        // The vCPUs are paused; "for good" means nothing resumes them
        // after COMMIT: the caller does not on Ok or AfterCommit.
        let end = handoff::source(&mut ch, fault, READY_TIMEOUT, RUNNING_TIMEOUT, &mut || {
            log::info!("destination READY: the guest stops here for good; sending COMMIT");
        });
        report.downtime = paused_at.elapsed();
        report.total = start.elapsed();
        return match end {
            SourceEnd::Running => Ok(report),
            SourceEnd::BeforeCommit(e) => Err(e),
            SourceEnd::AfterCommit(e) => Err(MigrationError::AfterCommit(Box::new(e))),
        };
    }
}

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

/// A received migration: the guest's memory and (policy-checked) state,
/// and the channel to finish the hand-off on ([`finish_incoming`]).
pub struct Incoming<S = Stream> {
    /// The guest's memory, filled.
    pub mem: GuestMemory,
    /// The guest's state, its host paths already the destination's own.
    pub state: MicroVmState,
    /// The authenticated channel to the source.
    pub channel: Channel<S>,
}

/// Waits on `address` for an incoming migration from a peer holding `key`
/// (giving up when `cancelled` says so) and receives it within `policy`.
///
/// A peer that fails the handshake (wrong key, not flint, silent for
/// [`HANDSHAKE_TIMEOUT`]) is logged, disconnected and the wait goes on:
/// nothing of its stream is read beyond the handshake, no memory is
/// allocated for it. Once a peer is authenticated, any failure ends the
/// migration with an error. A source that stalls for [`STALL_TIMEOUT`]
/// fails it too.
pub fn accept_incoming(
    address: &str,
    key: &MigrationKey,
    policy: &IncomingPolicy,
    cancelled: &mut dyn FnMut() -> bool,
) -> Result<Incoming, MigrationError> {
    match Address::parse(address)? {
        Address::Unix(path) => {
            remove_stale_socket(&path)?;
            let listener = UnixListener::bind(&path)?;
            listener.set_nonblocking(true)?;
            log::info!(
                "waiting for an incoming migration on unix:{}",
                path.display()
            );
            let channel = authenticated(
                || {
                    let (s, _) = accept_one(|| listener.accept(), cancelled)?;
                    s.set_nonblocking(false)?;
                    Ok((Stream::Unix(s), "a unix socket peer".to_string()))
                },
                key,
            );
            let _ = std::fs::remove_file(&path);
            receive_vm(channel?, policy)
        }
        Address::Tcp(hostport) => {
            let listener = TcpListener::bind(&hostport)?;
            listener.set_nonblocking(true)?;
            log::info!("waiting for an incoming migration on tcp:{hostport}");
            let channel = authenticated(
                || {
                    let (s, peer) = accept_one(|| listener.accept(), cancelled)?;
                    s.set_nonblocking(false)?;
                    Ok((Stream::Tcp(s), peer.to_string()))
                },
                key,
            )?;
            receive_vm(channel, policy)
        }
    }
}

/// Accepts peers until one passes the handshake.
fn authenticated(
    mut next: impl FnMut() -> Result<(Stream, String), MigrationError>,
    key: &MigrationKey,
) -> Result<Channel<Stream>, MigrationError> {
    loop {
        let (stream, peer) = next()?;
        handoff::Timeouts::set_read_timeout(&stream, Some(HANDSHAKE_TIMEOUT))?;
        match Channel::accept(stream, key, MAX_MESSAGE) {
            Ok(channel) => {
                log::info!("migration peer {peer} authenticated");
                return Ok(channel);
            }
            Err(e) => log::warn!("refused migration peer {peer}: {e}; still waiting"),
        }
    }
}

/// Receives the VM from an authenticated source: the memory layout (checked
/// against `policy` before anything is allocated), pages, the state
/// (checked and given the destination's host paths), DONE.
pub fn receive_vm<S: Read + Write + handoff::Timeouts>(
    mut ch: Channel<S>,
    policy: &IncomingPolicy,
) -> Result<Incoming<S>, MigrationError> {
    ch.stream().set_read_timeout(Some(STALL_TIMEOUT))?;
    let (tag, payload) = ch.receive()?;
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
    policy
        .check_layout(&layout)
        .map_err(MigrationError::Refused)?;
    let mem = layout.create_memory().map_err(state_err)?;
    let mut state = None;
    loop {
        let (tag, payload) = ch.receive()?;
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
                let mut decoded: MicroVmState = crate::snapshot::decode_state(
                    &payload,
                    std::path::Path::new("migration stream"),
                )
                .map_err(|e| MigrationError::Protocol(e.to_string()))?;
                if decoded.memory != layout {
                    return Err(MigrationError::Protocol(
                        "state and memory layouts differ".into(),
                    ));
                }
                policy
                    .apply(&mut decoded)
                    .map_err(MigrationError::Refused)?;
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
    Ok(Incoming {
        mem,
        state,
        channel: ch,
    })
}

/// Finishes an incoming migration once the VM is restored paused
/// (`restored` says whether that worked): READY, wait for COMMIT, `resume`,
/// RUNNING ([`handoff::destination`]). `Ok`: the guest runs here. `Err`:
/// the caller discards the restored VM (the source keeps or lost it).
pub fn finish_incoming<S: Read + Write + handoff::Timeouts>(
    channel: &mut Channel<S>,
    restored: Result<(), String>,
    resume: &mut dyn FnMut() -> Result<(), String>,
) -> Result<(), MigrationError> {
    handoff::destination(channel, Fault::from_env(), restored, COMMIT_TIMEOUT, resume)
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
    fn a_wrong_key_is_refused_and_the_wait_goes_on_then_caps_apply() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        let address = format!("unix:{}", path.display());
        let key = MigrationKey::from_bytes(&[1; 32]).unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let listener = {
            let (key, stop) = (key.clone(), stop.clone());
            std::thread::spawn(move || {
                let policy = IncomingPolicy {
                    max_mem: 64 << 20,
                    ..Default::default()
                };
                accept_incoming(&address, &key, &policy, &mut || stop.load(Ordering::SeqCst))
                    .err()
                    .unwrap()
            })
        };
        while !path.exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
        // A peer with the wrong key: the destination refuses it and
        // reads nothing of what follows.
        let wrong = MigrationKey::from_bytes(&[2; 32]).unwrap();
        let err = Channel::connect(UnixStream::connect(&path).unwrap(), &wrong, MAX_MESSAGE)
            .err()
            .unwrap();
        assert!(err.to_string().contains("does not hold"), "{err}");
        // Still waiting: the right key gets in, and its HELLO asking for
        // more memory than allowed is refused before any allocation.
        let mut ch =
            Channel::connect(UnixStream::connect(&path).unwrap(), &key, MAX_MESSAGE).unwrap();
        let layout = MemoryLayout {
            regions: vec![(0, 1 << 40)],
        };
        let hello = format::to_bytes(&(PROTOCOL_VERSION, &layout)).unwrap();
        ch.send(TAG_HELLO, &[&hello]).unwrap();
        let err = listener.join().unwrap();
        assert!(matches!(err, MigrationError::Refused(_)), "{err}");
        assert!(err.to_string().contains("--max-mem-mib"), "{err}");
        stop.store(true, Ordering::SeqCst);
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

#[cfg(test)]
mod flow_tests;
