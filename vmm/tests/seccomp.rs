//! The seccomp filters in real processes: each test re-runs this test binary
//! as a child (only that test, with `FLINT_SECCOMP_CHILD` set), the child
//! installs a filter and then does either the work its thread kind does in
//! flint (and must survive) or something forbidden (and must die of SIGSYS
//! after printing the report line).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use vmm::seccomp::{install, ThreadKind};
use vmm_sys_util::eventfd::EventFd;

const CHILD_ENV: &str = "FLINT_SECCOMP_CHILD";
const CHILD_OK: &str = "SECCOMP-CHILD-OK";

struct ChildResult {
    status: std::process::ExitStatus,
    stderr: String,
}

impl ChildResult {
    fn assert_survived(&self) {
        assert!(
            self.status.success() && self.stderr.contains(CHILD_OK),
            "the child should have survived: {:?}\n{}",
            self.status,
            self.stderr
        );
    }

    fn assert_crashed_with(&self, thread: &str, signal: i32, name: &str) {
        assert_eq!(
            self.status.signal(),
            Some(signal),
            "the child should have died of {name}: {:?}\n{}",
            self.status,
            self.stderr
        );
        let line = format!(
            "flint: thread {thread} got fatal signal {signal} ({name}); killing the process"
        );
        assert!(
            self.stderr.contains(&line),
            "missing report {line:?} in:\n{}",
            self.stderr
        );
        assert!(
            !self.stderr.contains("forbidden system call"),
            "{}",
            self.stderr
        );
    }

    fn assert_killed_for(&self, thread: &str, nr: i64, name: &str) {
        assert_eq!(
            self.status.signal(),
            Some(libc::SIGSYS),
            "the child should have died of SIGSYS: {:?}\n{}",
            self.status,
            self.stderr
        );
        let line = format!(
            "flint: seccomp: thread {thread} made forbidden system call {nr} ({name}); killing the process"
        );
        assert!(
            self.stderr.contains(&line),
            "missing report {line:?} in:\n{}",
            self.stderr
        );
        assert!(!self.stderr.contains(CHILD_OK), "{}", self.stderr);
    }
}

/// In the child (`test` is the one named in the environment): runs
/// `scenario`, reports success and exits at once, without returning to the
/// test harness under the filter. In the parent: runs this test in a child
/// and returns how it ended.
fn in_child(test: &str, scenario: fn()) -> ChildResult {
    if std::env::var(CHILD_ENV).as_deref() == Ok(test) {
        scenario();
        eprintln!("{CHILD_OK}");
        // SAFETY: ends the process; exit_group is allowed by every filter.
        unsafe { libc::_exit(0) };
    }
    // The child's temporary files go here, removed once it is done (a
    // confined child may not remove directories itself).
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, test)
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the child did not finish: {}", reader.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    ChildResult {
        status,
        stderr: reader.join().unwrap(),
    }
}

/// Runs `body` on a new thread named `name` (as flint names its threads)
/// and waits for it.
fn on_thread(name: &str, body: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(body)
        .unwrap()
        .join()
        .unwrap();
}

// --- vCPU threads ----------------------------------------------------------

/// A 4 KiB real-mode guest whose first instruction is `hlt`, run once.
struct TinyGuest {
    vcpu: kvm_ioctls::VcpuFd,
    _vm: kvm_ioctls::VmFd,
    _mem: *mut libc::c_void,
}

// SAFETY: the mapping is only used by KVM while the guest runs.
unsafe impl Send for TinyGuest {}

fn tiny_guest() -> Option<TinyGuest> {
    let kvm = kvm_ioctls::Kvm::new().ok()?;
    let vm = kvm.create_vm().unwrap();
    // SAFETY: a fresh anonymous mapping; the guest owns it from here on.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            0x1000,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(mem, libc::MAP_FAILED);
    // SAFETY: the mapping is 4 KiB long and writable.
    unsafe { mem.cast::<u8>().write(0xf4) }; // hlt
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0x1000,
        memory_size: 0x1000,
        userspace_addr: mem as u64,
    };
    // SAFETY: the mapping outlives the VM (it is never unmapped).
    unsafe { vm.set_user_memory_region(region) }.unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let regs = kvm_bindings::kvm_regs {
        rip: 0x1000,
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).unwrap();
    Some(TinyGuest {
        vcpu,
        _vm: vm,
        _mem: mem,
    })
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// What a vCPU thread does in flint, under its filter: KVM_RUN and register
/// access on its own vCPU, eventfd kicks, log lines, channels with
/// timeouts, allocation, being kicked by a signal, exiting.
fn vcpu_work() {
    let mut guest = tiny_guest();
    if guest.is_none() {
        eprintln!("no /dev/kvm: skipping the KVM part");
    }
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let evt_reader = evt.try_clone().unwrap();
    let (to_vcpu, commands) = channel::<u32>();
    let (ready_tx, ready) = channel::<()>();
    let (pipe_rx, pipe_tx) = UnixStream::pair().unwrap();
    vmm_sys_util::signal::register_signal_handler(vmm_sys_util::signal::SIGRTMIN(), on_kick)
        .unwrap();
    let vcpu = std::thread::Builder::new()
        .name("flint_vcpu0".into())
        .spawn(move || {
            install(ThreadKind::Vcpu).unwrap();
            if let Some(guest) = guest.as_mut() {
                match guest.vcpu.run().unwrap() {
                    kvm_ioctls::VcpuExit::Hlt => {}
                    other => panic!("unexpected exit {other:?}"),
                }
                let regs = guest.vcpu.get_regs().unwrap();
                assert_eq!(regs.rip, 0x1001);
                guest.vcpu.set_regs(&regs).unwrap();
                guest.vcpu.get_sregs().unwrap();
                guest.vcpu.get_fpu().unwrap();
                guest.vcpu.get_mp_state().unwrap();
                guest
                    .vcpu
                    .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
                    .unwrap();
            }
            evt.write(1).unwrap();
            // Opening files fails (glibc's malloc copes with that), no trap.
            let open = std::fs::File::open("/proc/sys/vm/overcommit_memory");
            assert_eq!(
                open.unwrap_err().kind(),
                std::io::ErrorKind::PermissionDenied
            );
            eprintln!("vcpu: a log line");
            std::io::stdout().write_all(b"serial output\n").unwrap();
            // Allocation: small, large (mmap), and a HashMap (random keys).
            let big = vec![7u8; 8 << 20];
            let mut map = std::collections::HashMap::new();
            map.insert(1, big.len());
            drop(big);
            // signal-hook's self-pipe write, as if SIGINT landed here.
            // SAFETY: valid fd and buffer.
            let sent = unsafe {
                libc::send(
                    pipe_tx.as_raw_fd(),
                    b"X".as_ptr().cast(),
                    1,
                    libc::MSG_DONTWAIT,
                )
            };
            assert_eq!(sent, 1);
            ready_tx.send(()).unwrap();
            // Paused: waiting for commands (futex with a timeout), kicked
            // out of it by SIGRTMIN meanwhile.
            let deadline = Instant::now() + Duration::from_secs(10);
            while commands.recv_timeout(Duration::from_millis(5)).is_err() {
                assert!(Instant::now() < deadline, "no command");
            }
            std::thread::sleep(Duration::from_millis(1));
        })
        .unwrap();
    ready.recv().unwrap();
    use std::os::unix::thread::JoinHandleExt;
    // SAFETY: the thread is alive until it receives the command below.
    unsafe { libc::pthread_kill(vcpu.as_pthread_t(), vmm_sys_util::signal::SIGRTMIN()) };
    std::thread::sleep(Duration::from_millis(20));
    to_vcpu.send(1).unwrap();
    vcpu.join().unwrap();
    assert_eq!(evt_reader.read().unwrap(), 1);
    let mut byte = [0u8; 1];
    (&pipe_rx).read_exact(&mut byte).unwrap();
}

use std::os::fd::AsRawFd;

#[test]
fn seccomp_vcpu_filter_allows_what_a_vcpu_thread_does() {
    in_child(
        "seccomp_vcpu_filter_allows_what_a_vcpu_thread_does",
        vcpu_work,
    )
    .assert_survived();
}

#[test]
fn seccomp_vcpu_filter_kills_a_socket_call_with_a_report() {
    in_child(
        "seccomp_vcpu_filter_kills_a_socket_call_with_a_report",
        || {
            on_thread("flint_vcpu0", || {
                install(ThreadKind::Vcpu).unwrap();
                // SAFETY: a plain syscall; it never returns here.
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            })
        },
    )
    .assert_killed_for("flint_vcpu0", libc::SYS_socket, "socket");
}

#[test]
fn seccomp_a_segfault_under_the_filter_is_reported_as_sigsegv() {
    in_child(
        "seccomp_a_segfault_under_the_filter_is_reported_as_sigsegv",
        || {
            on_thread("flint_vcpu0", || {
                install(ThreadKind::Vcpu).unwrap();
                // SAFETY: deliberately faults (address 8 is never mapped):
                // the crash is what this test is about.
                unsafe { std::ptr::without_provenance_mut::<u8>(8).write_volatile(1) };
            })
        },
    )
    .assert_crashed_with("flint_vcpu0", libc::SIGSEGV, "SIGSEGV");
}

#[test]
fn seccomp_an_abort_under_the_filter_is_reported_as_sigabrt() {
    in_child(
        "seccomp_an_abort_under_the_filter_is_reported_as_sigabrt",
        || {
            on_thread("flint_api", || {
                install(ThreadKind::Api).unwrap();
                std::process::abort();
            })
        },
    )
    .assert_crashed_with("flint_api", libc::SIGABRT, "SIGABRT");
}

#[test]
fn seccomp_vcpu_filter_kills_an_ioctl_outside_its_list() {
    in_child(
        "seccomp_vcpu_filter_kills_an_ioctl_outside_its_list",
        || {
            let evt = EventFd::new(0).unwrap();
            on_thread("flint_vcpu3", move || {
                install(ThreadKind::Vcpu).unwrap();
                let mut n: libc::c_int = 0;
                // SAFETY: FIONREAD writes an int; it never returns here.
                unsafe { libc::ioctl(evt.as_raw_fd(), libc::FIONREAD, &mut n) };
            })
        },
    )
    .assert_killed_for("flint_vcpu3", libc::SYS_ioctl, "ioctl");
}

// --- the API thread --------------------------------------------------------

/// Blocking-pool threads alive at once in [`api_work`].
const BLOCKED: usize = 24;

/// What the API thread does in flint: a current-thread tokio runtime (built
/// before, on the spawning thread) accepting on an already-bound Unix
/// socket, reading a request, waiting for the "VMM" on a blocking-pool
/// thread (a new thread, spawned under the filter), timers, answering.
fn api_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let listener = UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(64)
        .thread_name("flint_api_wait")
        .build()
        .unwrap();
    let wake = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let wake_vmm = wake.try_clone().unwrap();
    let (to_vmm, requests) = channel::<std::sync::mpsc::Sender<String>>();
    let server = std::thread::Builder::new()
        .name("flint_api".into())
        .spawn(move || {
            install(ThreadKind::Api).unwrap();
            runtime.block_on(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                // Many requests waiting at once: more threads than glibc's
                // first eight malloc arenas, each allocating.
                let all = std::sync::Arc::new(std::sync::Barrier::new(BLOCKED));
                let waiting: Vec<_> = (0..BLOCKED)
                    .map(|i| {
                        let all = all.clone();
                        tokio::task::spawn_blocking(move || {
                            let buf = vec![i as u8; 64 << 10];
                            all.wait();
                            buf.len()
                        })
                    })
                    .collect();
                for wait in waiting {
                    assert_eq!(wait.await.unwrap(), 64 << 10);
                }
                let listener = tokio::net::UnixListener::from_std(listener).unwrap();
                for _ in 0..2 {
                    let (mut stream, _) = listener.accept().await.unwrap();
                    let mut request = [0u8; 5];
                    stream.read_exact(&mut request).await.unwrap();
                    let (reply, answer) = channel();
                    to_vmm.send(reply).unwrap();
                    wake_vmm.write(1).unwrap();
                    let answer = tokio::task::spawn_blocking(move || {
                        answer.recv_timeout(Duration::from_secs(10))
                    });
                    let answer = tokio::time::timeout(Duration::from_secs(10), answer)
                        .await
                        .unwrap()
                        .unwrap()
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    stream.write_all(answer.as_bytes()).await.unwrap();
                    stream.shutdown().await.unwrap();
                }
            });
            runtime.shutdown_background();
        })
        .unwrap();
    // The "VMM": answers each request it is woken for.
    let vmm = std::thread::spawn(move || {
        for reply in requests {
            let _ = wake.read();
            reply.send("pong!".to_string()).unwrap();
        }
    });
    for _ in 0..2 {
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"ping?").unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "pong!");
    }
    server.join().unwrap();
    vmm.join().unwrap();
}

#[test]
fn seccomp_api_filter_allows_a_tokio_unix_socket_server() {
    in_child(
        "seccomp_api_filter_allows_a_tokio_unix_socket_server",
        api_work,
    )
    .assert_survived();
}

#[test]
fn seccomp_api_filter_kills_spawning_a_process() {
    in_child("seccomp_api_filter_kills_spawning_a_process", || {
        on_thread("flint_api", || {
            install(ThreadKind::Api).unwrap();
            // clone3 is answered ENOSYS (so glibc falls back to clone)...
            // SAFETY: a null clone_args is refused before anything happens.
            let ret = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0) };
            assert_eq!(ret, -1);
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::ENOSYS)
            );
            // ... and clone without CLONE_THREAD (a process, as fork and
            // posix_spawn make) traps. A raw call: glibc's fork and
            // posix_spawn block all signals first, and a trap with SIGSYS
            // blocked kills the process without the report.
            // SAFETY: a plain syscall; it never returns here.
            unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
        })
    })
    .assert_killed_for("flint_api", libc::SYS_clone, "clone");
}

// --- the VMM thread --------------------------------------------------------

/// What the VMM's event loop does after boot: epoll over eventfds and
/// timerfds, block-image style file I/O, snapshot-style file handling,
/// sockets for migration (Unix and TCP on loopback, a name lookup),
/// kicking a vCPU thread with SIGRTMIN, the terminal check at exit.
fn vmm_work() {
    use std::fs::{self, OpenOptions};
    use std::os::unix::fs::FileExt;
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
    use vmm_sys_util::timerfd::TimerFd;

    let dir = tempfile::tempdir().unwrap();
    vmm_sys_util::signal::register_signal_handler(vmm_sys_util::signal::SIGRTMIN(), on_kick)
        .unwrap();
    let (stop_tx, stop) = channel::<()>();
    let vcpu = std::thread::Builder::new()
        .name("flint_vcpu0".into())
        .spawn(move || {
            let _ = stop.recv_timeout(Duration::from_secs(10));
        })
        .unwrap();
    let epoll = Epoll::new().unwrap();
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut timer = TimerFd::new().unwrap();

    // The user's FIFO for logs.
    let fifo = dir.path().join("log.fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mknodat(libc::AT_FDCWD, c.as_ptr(), libc::S_IFIFO | 0o600, 0) },
        0
    );

    // Files named through the API after boot are opened by the control
    // thread (controller::control, Job::Open) and handed over: here, before
    // the filter, as that thread would.
    let fifo_file = vmm::bounded_writer::open_output(&fifo).unwrap();
    let image = dir.path().join("disk.img");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&image)
        .unwrap();
    let mut log = vmm::bounded_writer::open_output(&dir.path().join("flint.log")).unwrap();

    install(ThreadKind::Vmm).unwrap();

    // The device thread itself may not open files: EACCES, not a kill.
    let refused = OpenOptions::new().read(true).open(&image).unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::EACCES));

    // A log or metrics FIFO set through the API after boot: opened without
    // a reader, and drained by a new thread spawned under this filter.
    let mut fifo_out = vmm::bounded_writer::FileOutput::from_file(
        fifo_file,
        "flint_log_out",
        1024,
        Box::leak(Box::default()),
    )
    .unwrap();
    assert!(fifo_out.write_record(b"a log line\n").unwrap());
    assert!(fifo_out.drain(Duration::from_secs(10)));

    // The event loop.
    epoll
        .ctl(
            ControlOperation::Add,
            evt.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 1),
        )
        .unwrap();
    epoll
        .ctl(
            ControlOperation::Add,
            timer.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 2),
        )
        .unwrap();
    timer.reset(Duration::from_millis(1), None).unwrap();
    evt.write(1).unwrap();
    let mut seen = 0;
    let mut events = vec![EpollEvent::default(); 4];
    while seen != 3 {
        let n = epoll.wait(1000, &mut events).unwrap();
        for event in &events[..n] {
            match event.data() {
                1 => {
                    evt.read().unwrap();
                }
                _ => {
                    timer.wait().unwrap();
                }
            }
            seen |= event.data();
        }
    }
    let new_evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    drop(new_evt.try_clone().unwrap());

    // A block image: positioned I/O, flush, discard, resize.
    file.set_len(1 << 20).unwrap();
    file.write_all_at(&[0xab; 4096], 8192).unwrap();
    let mut back = [0u8; 4096];
    file.read_exact_at(&mut back, 8192).unwrap();
    assert_eq!(back, [0xab; 4096]);
    file.sync_data().unwrap();
    // SAFETY: valid fd, offsets within the file.
    let punched = unsafe {
        libc::fallocate64(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            8192,
            4096,
        )
    };
    assert_eq!(punched, 0);
    (&file).write_all(b"seq").unwrap();

    // Log and metrics files, appended.
    writeln!(log, "a log line").unwrap();
    eprintln!("vmm: a log line on stderr");

    // Kicking a vCPU thread, then stopping it.
    use std::os::unix::thread::JoinHandleExt;
    // SAFETY: the thread is alive until it is told to stop below.
    unsafe { libc::pthread_kill(vcpu.as_pthread_t(), vmm_sys_util::signal::SIGRTMIN()) };
    std::thread::sleep(Duration::from_millis(2));
    stop_tx.send(()).unwrap();
    vcpu.join().unwrap();

    // The terminal check at exit (TCGETS), and removing the API socket.
    // SAFETY: isatty only queries fd 0.
    unsafe { libc::isatty(0) };
    let sock = dir.path().join("api.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    fs::remove_file(&sock).unwrap();
    // The child exits next; the parent removes the directory (TMPDIR):
    // the VMM thread removes no directories.
    std::mem::forget(dir);
}

#[test]
fn seccomp_vmm_filter_allows_what_the_event_loop_does() {
    in_child(
        "seccomp_vmm_filter_allows_what_the_event_loop_does",
        vmm_work,
    )
    .assert_survived();
}

/// What the control thread does: snapshot files and migration streams
/// (the peers listen on an unconfined thread, as the destination would).
fn control_work() {
    use std::fs::{self, OpenOptions};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("migrate.sock");
    let unix = UnixListener::bind(&sock).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let mut buf = [0u8; 5];
        let (mut inc, _) = unix.accept().unwrap();
        inc.read_exact(&mut buf).unwrap();
        inc.write_all(b"ready").unwrap();
        let (mut server, _) = tcp.accept().unwrap();
        server.read_exact(&mut buf).unwrap();
    });
    install(ThreadKind::Control).unwrap();
    // Snapshot files: written to a temporary name, synced, renamed.
    let snap_dir = dir.path().join("snap");
    fs::create_dir(&snap_dir).unwrap();
    let tmp = snap_dir.join("vm.state.tmp");
    fs::write(&tmp, b"state").unwrap();
    OpenOptions::new()
        .write(true)
        .open(&tmp)
        .unwrap()
        .sync_all()
        .unwrap();
    fs::rename(&tmp, snap_dir.join("vm.state")).unwrap();
    assert_eq!(fs::read(snap_dir.join("vm.state")).unwrap(), b"state");
    assert_eq!(fs::read_dir(&snap_dir).unwrap().count(), 1);
    fs::remove_file(snap_dir.join("vm.state")).unwrap();
    // Migration: a Unix socket and TCP on loopback, read timeouts, nonces.
    let mut out = UnixStream::connect(&sock).unwrap();
    out.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    out.write_all(b"pages").unwrap();
    let mut buf = [0u8; 5];
    out.read_exact(&mut buf).unwrap();
    let mut client = std::net::TcpStream::connect(tcp_addr).unwrap();
    client.set_nodelay(true).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.write_all(b"state").unwrap();
    let mut nonce = [0u8; 32];
    // SAFETY: the buffer is valid for its length.
    assert_eq!(
        unsafe { libc::getrandom(nonce.as_mut_ptr().cast(), 32, 0) },
        32
    );
    peer.join().unwrap();
    drop((client, out));
    fs::remove_file(&sock).unwrap();
    // The child exits next; the parent removes the directory (TMPDIR).
    std::mem::forget(dir);
}

#[test]
fn seccomp_control_filter_allows_snapshot_files_and_migration_streams() {
    in_child(
        "seccomp_control_filter_allows_snapshot_files_and_migration_streams",
        || on_thread("flint_ctl", control_work),
    )
    .assert_survived();
}

#[test]
fn seccomp_vmm_filter_kills_a_tcp_socket() {
    // Migration streams are the control thread's; the device thread has
    // no business with IP sockets.
    in_child("seccomp_vmm_filter_kills_a_tcp_socket", || {
        on_thread("fc_vmm", || {
            install(ThreadKind::Vmm).unwrap();
            // SAFETY: a plain syscall; it never returns here.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        })
    })
    .assert_killed_for("fc_vmm", libc::SYS_socket, "socket");
}

#[test]
fn seccomp_vmm_filter_kills_a_unix_connect() {
    // vsock's connects for the guest are its connector thread's: the
    // device thread cannot reach a host socket even if a guest took it over.
    in_child("seccomp_vmm_filter_kills_a_unix_connect", || {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("service.sock");
        let _service = UnixListener::bind(&path).unwrap();
        on_thread("fc_vmm", move || {
            install(ThreadKind::Vmm).unwrap();
            let _ = devices::virtio::vsock::connect_host_socket(&path);
        })
    })
    .assert_killed_for("fc_vmm", libc::SYS_connect, "connect");
}

/// What vsock's connector thread does: the devices crate's own
/// non-blocking connect, the result over a channel, an eventfd kick.
fn vsock_connect_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock_5");
    let service = UnixListener::bind(&path).unwrap();
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let (tx, rx) = channel();
    let wake = evt.try_clone().unwrap();
    let missing = dir.path().join("v.sock_6");
    on_thread("flint_vsockconn", move || {
        install(ThreadKind::VsockConnect).unwrap();
        for p in [path, missing] {
            tx.send(devices::virtio::vsock::connect_host_socket(&p))
                .unwrap();
            wake.write(1).unwrap();
        }
    });
    assert_eq!(evt.read().unwrap(), 2);
    let stream = rx.recv().unwrap().unwrap();
    let (mut accepted, _) = service.accept().unwrap();
    (&stream).write_all(b"hi").unwrap();
    let mut buf = [0u8; 2];
    accepted.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hi");
    assert!(rx.recv().unwrap().is_err(), "nothing listens there");
}

#[test]
fn seccomp_vsock_connector_filter_allows_its_nonblocking_connects() {
    in_child(
        "seccomp_vsock_connector_filter_allows_its_nonblocking_connects",
        vsock_connect_work,
    )
    .assert_survived();
}

#[test]
fn seccomp_vsock_connector_filter_kills_opening_a_tcp_socket() {
    in_child(
        "seccomp_vsock_connector_filter_kills_opening_a_tcp_socket",
        || {
            on_thread("flint_vsockconn", || {
                install(ThreadKind::VsockConnect).unwrap();
                // SAFETY: a plain syscall; it never returns here.
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            })
        },
    )
    .assert_killed_for("flint_vsockconn", libc::SYS_socket, "socket");
}

#[test]
fn seccomp_vmm_filter_kills_a_netlink_socket() {
    in_child("seccomp_vmm_filter_kills_a_netlink_socket", || {
        on_thread("fc_vmm", || {
            install(ThreadKind::Vmm).unwrap();
            // SAFETY: a plain syscall; it never returns here.
            unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0) };
        })
    })
    .assert_killed_for("fc_vmm", libc::SYS_socket, "socket");
}

#[test]
fn seccomp_vmm_filter_kills_execve() {
    in_child("seccomp_vmm_filter_kills_execve", || {
        on_thread("fc_vmm", || {
            install(ThreadKind::Vmm).unwrap();
            let path = c"/bin/true";
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: valid NUL-terminated arrays; it never returns here.
            unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        })
    })
    .assert_killed_for("fc_vmm", libc::SYS_execve, "execve");
}

#[test]
fn seccomp_executable_memory_is_refused() {
    in_child("seccomp_executable_memory_is_refused", || {
        on_thread("flint_vcpu1", || {
            install(ThreadKind::Vcpu).unwrap();
            // SAFETY: a plain syscall; it never returns here.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
        })
    })
    .assert_killed_for("flint_vcpu1", libc::SYS_mmap, "mmap");
}

// --- writer threads ---------------------------------------------------------

/// A writer thread's sink that does something no writer does.
struct SocketSink;

impl Write for SocketSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // SAFETY: a plain syscall; under the Output filter it never returns.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn writer_work() {
    use vmm::bounded_writer::{open_output, BoundedWriter};
    vmm::seccomp::set_enabled(true);
    let dir = tempfile::tempdir().unwrap();
    let first = open_output(&dir.path().join("first")).unwrap();
    let second = open_output(&dir.path().join("second")).unwrap();
    let writer = BoundedWriter::spawn(
        "flint_serial",
        Box::new(first),
        1 << 16,
        Box::leak(Box::default()),
        None,
    )
    .unwrap();
    for _ in 0..100 {
        writer.push(&[b'x'; 1000]);
    }
    assert!(writer.drain(Duration::from_secs(30)));
    // Switching files closes the first one on the writer thread.
    writer.replace_sink(Box::new(second));
    writer.push(b"y");
    assert!(writer.drain(Duration::from_secs(30)));
    // The thread ends once the writer is gone.
    drop(writer);
    std::thread::sleep(Duration::from_millis(200));
}

#[test]
fn seccomp_output_filter_allows_what_a_writer_thread_does() {
    in_child(
        "seccomp_output_filter_allows_what_a_writer_thread_does",
        writer_work,
    )
    .assert_survived();
}

#[test]
fn seccomp_writer_threads_are_confined() {
    in_child("seccomp_writer_threads_are_confined", || {
        vmm::seccomp::set_enabled(true);
        let writer = vmm::bounded_writer::BoundedWriter::spawn(
            "flint_serial",
            Box::new(SocketSink),
            64,
            Box::leak(Box::default()),
            None,
        )
        .unwrap();
        writer.push(b"x");
        std::thread::sleep(Duration::from_secs(30));
    })
    .assert_killed_for("flint_serial", libc::SYS_socket, "socket");
}
