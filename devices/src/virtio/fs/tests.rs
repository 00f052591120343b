//! virtio-fs against a real `virtiofsd` (scripts/install-virtiofsd), driven
//! as flint drives it: the handshake, config space, SET_MEM_TABLE and the
//! rings from guest memory made here, a FUSE_INIT through the request
//! queue, a reset, and the daemon going away. Hostile backends (silent,
//! closing, lying) are fakes on a socket pair.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, FileOffset, GuestAddress, GuestMemoryMmap};

use crate::persist::Persist;

use super::frontend::{Backend, VHOST_USER_F_PROTOCOL_FEATURES};
use super::*;
use crate::virtio::{status, Activation, GuestMemory, IrqKind, VirtioDevice, VIRTIO_F_VERSION_1};

/// The virtiofsd binary, or `None` (then the test is skipped, and fails
/// under CI).
fn virtiofsd() -> Option<PathBuf> {
    let candidates = std::env::var_os("FLINT_VIRTIOFSD")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::var_os("PATH").into_iter().flat_map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("virtiofsd"))
                .collect::<Vec<_>>()
        }))
        .chain(std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/virtiofsd")));
    for c in candidates {
        if c.is_file() {
            return Some(c);
        }
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("virtiofsd is not installed (scripts/install-virtiofsd installs it)");
    }
    eprintln!("skipped: virtiofsd is not installed (scripts/install-virtiofsd)");
    None
}

/// A running virtiofsd on a temporary directory; killed when dropped.
struct Daemon {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start() -> Option<Self> {
        let bin = virtiofsd()?;
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::write(shared.join("hello"), b"hello from the host\n").unwrap();
        let socket = dir.path().join("vfsd.sock");
        let child = Command::new(bin)
            .arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&shared)
            .args(["--sandbox", "none", "--log-level", "error"])
            .spawn()
            .unwrap();
        let started = Instant::now();
        while !socket.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "virtiofsd did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Self {
            child,
            socket,
            _dir: dir,
        })
    }

    fn args(&self) -> FsArgs {
        FsArgs {
            tag: "vol0".into(),
            socket: self.socket.clone(),
            num_request_queues: 1,
            queue_size: 16,
            thread_init: None,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 4 MiB of guest memory in a shared memfd, as flint backs a VM with an
/// `fs` device.
fn shared_memory() -> GuestMemory {
    let file = memfd::MemfdOptions::default()
        .create("test-guest-ram")
        .unwrap()
        .into_file();
    file.set_len(4 << 20).unwrap();
    GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        4 << 20,
        Some(FileOffset::new(file, 0)),
    )])
    .unwrap()
}

const REQ: u64 = 0x10_0000;
const REPLY: u64 = 0x20_0000;

/// Queue `i`'s rings, 64 KiB apart at the start of memory.
fn rings(mem: &GuestMemory, count: usize) -> Vec<MockSplitQueue<'_, GuestMemory>> {
    (0..count)
        .map(|i| MockSplitQueue::create(mem, GuestAddress(i as u64 * 0x1_0000), 16))
        .collect()
}

fn activate_with(
    mem: &GuestMemory,
    queues: &[MockSplitQueue<'_, GuestMemory>],
    fs: &Fs,
) -> (Activation, Arc<IrqTrigger>) {
    let interrupt = Arc::new(IrqTrigger::new().unwrap());
    let activation = Activation {
        mem: mem.clone(),
        queues: queues
            .iter()
            .map(|q| q.create_queue::<Queue>().unwrap())
            .collect(),
        interrupt: interrupt.clone(),
        acked_features: fs.avail_features(),
    };
    (activation, interrupt)
}

/// Posts a FUSE_INIT request on `queue` (head 0) and kicks it.
fn post_fuse_init(mem: &GuestMemory, queue: &MockSplitQueue<'_, GuestMemory>, kick: &EventFd) {
    let mut req = Vec::new();
    // fuse_in_header: len, opcode (26 = INIT), unique, nodeid, uid, gid,
    // pid, total_extlen, padding.
    req.extend_from_slice(&104u32.to_le_bytes());
    req.extend_from_slice(&26u32.to_le_bytes());
    req.extend_from_slice(&7u64.to_le_bytes());
    req.extend_from_slice(&0u64.to_le_bytes());
    req.extend_from_slice(&[0u8; 16]);
    // fuse_init_in: major 7, minor 31, max_readahead, flags, flags2, unused.
    req.extend_from_slice(&7u32.to_le_bytes());
    req.extend_from_slice(&31u32.to_le_bytes());
    req.extend_from_slice(&[0u8; 56]);
    assert_eq!(req.len(), 104);
    mem.write_slice(&req, GuestAddress(REQ)).unwrap();
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(REQ, 104, 1 /* NEXT */, 1)),
        RawDescriptor::from(SplitDescriptor::new(REPLY, 4096, 2 /* WRITE */, 0)),
    ];
    queue.add_desc_chains(&descs, 0).unwrap();
    kick.write(1).unwrap();
}

/// Waits (bounded) for the call eventfd of queue `i` to be signalled.
fn wait_for_call(fs: &Fs, i: usize) {
    let started = Instant::now();
    loop {
        if fs.calls[i].read().is_ok() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no call from virtiofsd"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn handshake_features_and_config_space() {
    let Some(daemon) = Daemon::start() else {
        return;
    };
    let fs = Fs::new(daemon.args()).unwrap();
    assert_eq!(fs.device_type(), TYPE_FS);
    let features = fs.avail_features();
    assert_ne!(features & VIRTIO_F_VERSION_1, 0);
    // Only ring features pass through: never the vhost-user bit.
    assert_eq!(features & VHOST_USER_F_PROTOCOL_FEATURES, 0);
    assert_eq!(features & !frontend::PASSTHROUGH_FEATURES, 0);
    assert_eq!(fs.queue_max_sizes(), &[16, 16]);
    assert_eq!(fs.queue_events().len(), 2);
    // Config space: tag[36] NUL-padded, then le32 num_request_queues.
    let mut tag = [0xffu8; TAG_LEN];
    fs.read_config(0, &mut tag);
    assert_eq!(&tag[..4], b"vol0");
    assert!(tag[4..].iter().all(|&b| b == 0));
    let mut n = [0u8; 4];
    fs.read_config(TAG_LEN as u64, &mut n);
    assert_eq!(u32::from_le_bytes(n), 1);
    let mut past = [0xffu8; 8];
    fs.read_config(CONFIG_SPACE_SIZE as u64 - 2, &mut past);
    assert_eq!(past, [0, 0, 0, 0, 0, 0, 0, 0]);
    // A 36-byte tag fills the field with no terminator.
    let long = "t".repeat(TAG_LEN);
    drop(fs);
    let daemon = Daemon::start().unwrap();
    let fs = Fs::new(FsArgs {
        tag: long.clone(),
        ..daemon.args()
    })
    .unwrap();
    let mut tag = [0u8; TAG_LEN];
    fs.read_config(0, &mut tag);
    assert_eq!(&tag[..], long.as_bytes());
    assert!(fs.save().unwrap_err().to_string().contains(&format!(
        "virtio-fs device {long} cannot be snapshotted: its state lives in virtiofsd"
    )));
}

#[test]
fn fuse_init_round_trips_through_virtiofsd_and_reset_stops_the_rings() {
    let Some(daemon) = Daemon::start() else {
        return;
    };
    let mut fs = Fs::new(daemon.args()).unwrap();
    let mem = shared_memory();
    let queues = rings(&mem, 2);
    let (activation, interrupt) = activate_with(&mem, &queues, &fs);
    fs.activate(activation).unwrap();
    // Drain the post-activation kick's (empty) round.
    post_fuse_init(&mem, &queues[1], &fs.kicks[1]);
    wait_for_call(&fs, 1);
    // The used ring has the request back, with a FUSE reply to unique 7.
    let used_idx: u16 = mem
        .read_obj(queues[1].used_addr().unchecked_add(2))
        .unwrap();
    assert_eq!(used_idx, 1);
    let len: u32 = mem.read_obj(GuestAddress(REPLY)).unwrap();
    let error: i32 = mem.read_obj(GuestAddress(REPLY + 4)).unwrap();
    let unique: u64 = mem.read_obj(GuestAddress(REPLY + 8)).unwrap();
    assert_eq!((error, unique), (0, 7));
    assert!(len >= 16 + 24, "FUSE_INIT reply of {len} bytes");
    let major: u32 = mem.read_obj(GuestAddress(REPLY + 16)).unwrap();
    assert_eq!(major, 7);
    // The call becomes the transport's interrupt, with its status bit.
    fs.handle_call(1);
    assert_eq!(interrupt.status(), IrqKind::Vring as u32);
    // Reset: the daemon gives the rings back at their positions.
    let bases = fs.backend.as_mut().unwrap().stop().unwrap();
    assert_eq!(bases, [0, 1]);
    fs.reset();
    assert!(!fs.is_activated());
    // The driver may start it again.
    let mem2 = shared_memory();
    let queues = rings(&mem2, 2);
    let (activation, _) = activate_with(&mem2, &queues, &fs);
    fs.activate(activation).unwrap();
    assert_eq!(fs.counters_snapshot().activations, 2);
}

#[test]
fn anonymous_guest_memory_is_refused() {
    let Some(daemon) = Daemon::start() else {
        return;
    };
    let mut fs = Fs::new(daemon.args()).unwrap();
    let mem: GuestMemory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let queues = rings(&mem, 2);
    let (activation, _) = activate_with(&mem, &queues, &fs);
    let err = fs.activate(activation).unwrap_err().to_string();
    assert!(err.contains("not shared"), "{err}");
}

#[test]
fn a_dead_daemon_flags_needs_reset_on_the_event_loop() {
    let Some(mut daemon) = Daemon::start() else {
        return;
    };
    let mut fs = Fs::new(daemon.args()).unwrap();
    let mem = shared_memory();
    let queues = rings(&mem, 2);
    let (activation, interrupt) = activate_with(&mem, &queues, &fs);
    fs.activate(activation).unwrap();
    let fs = Arc::new(Mutex::new(fs));
    let mut events =
        EventManager::<Arc<Mutex<dyn event_manager::MutEventSubscriber>>>::new().unwrap();
    events.add_subscriber(fs.clone());
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    let started = Instant::now();
    while fs.lock().unwrap().is_connected() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "hang-up not seen"
        );
        events.run_with_timeout(100).unwrap();
    }
    // The socket left the loop: further turns find nothing to do.
    assert_eq!(events.run_with_timeout(50).unwrap(), 0);
    let mut fs = fs.lock().unwrap();
    assert!(fs.needs_reset());
    assert_ne!(interrupt.status() & IrqKind::Config as u32, 0);
    // Reset and a new activation fail cleanly, without the daemon.
    fs.reset();
    let queues = rings(&mem, 2);
    let (activation, _) = activate_with(&mem, &queues, &fs);
    assert!(fs.activate(activation).is_err());
    let _ = status::DEVICE_NEEDS_RESET;
}

/// A fake backend: accepts one connection and runs `serve` on it.
fn fake_backend(serve: impl FnOnce(UnixStream) + Send + 'static) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            serve(stream);
        }
    });
    (dir, path)
}

#[test]
fn a_silent_backend_times_out() {
    let (_dir, path) = fake_backend(|mut s| {
        // Reads requests, never answers.
        let mut buf = [0u8; 256];
        while s.read(&mut buf).is_ok_and(|n| n > 0) {}
    });
    let err = Backend::connect(&path, 2, Duration::from_millis(200), None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("GET_FEATURES"), "{err}");
}

#[test]
fn a_closing_or_lying_backend_is_refused() {
    let (_dir, path) = fake_backend(drop);
    assert!(Backend::connect(&path, 2, Duration::from_secs(5), None).is_err());
    // Answers GET_FEATURES with a reply for another request and a size
    // larger than the body it sends.
    let (_dir, path) = fake_backend(|mut s| {
        let mut buf = [0u8; 12];
        // SET_OWNER (no reply without REPLY_ACK), then GET_FEATURES.
        let _ = s.read_exact(&mut buf);
        let _ = s.read_exact(&mut buf);
        let mut reply = Vec::new();
        reply.extend_from_slice(&2u32.to_le_bytes()); // request 2, not 1
        reply.extend_from_slice(&(0x4 | 0x1u32).to_le_bytes());
        reply.extend_from_slice(&0x1000u32.to_le_bytes());
        reply.extend_from_slice(&u64::MAX.to_le_bytes());
        let _ = s.write_all(&reply);
        std::thread::sleep(Duration::from_millis(500));
    });
    let err = Backend::connect(&path, 2, Duration::from_secs(5), None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("GET_FEATURES"), "{err}");
    // A backend offering everything still gets only what flint passes on.
    let (_dir, path) = fake_backend(|mut s| {
        let mut buf = [0u8; 12];
        let _ = s.read_exact(&mut buf);
        let _ = s.read_exact(&mut buf);
        let mut reply = Vec::new();
        reply.extend_from_slice(&1u32.to_le_bytes());
        reply.extend_from_slice(&(0x4 | 0x1u32).to_le_bytes());
        reply.extend_from_slice(&8u32.to_le_bytes());
        reply.extend_from_slice(&(!VHOST_USER_F_PROTOCOL_FEATURES).to_le_bytes());
        let _ = s.write_all(&reply);
        std::thread::sleep(Duration::from_millis(500));
    });
    let err = Backend::connect(&path, 2, Duration::from_secs(5), None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("protocol features"), "{err}");
}
