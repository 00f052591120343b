//! Output that never blocks its writer: a bounded buffer drained by a
//! dedicated thread that owns the host file.
//!
//! Guest console output is written on vCPU threads under the UART's lock,
//! and log lines on every thread; a host reader that stalls (a full pipe,
//! a FIFO nobody reads, a terminal stopped with Ctrl-S) must not stall them.
//! [`BoundedWriter::write`] only copies into a buffer of fixed capacity and
//! wakes the drain thread; bytes that do not fit are dropped and counted.
//! The drain thread may block on the host file for as long as it likes:
//! nobody waits for it, and flint does not join it at exit (it only gives it
//! a bounded time to [`BoundedWriter::drain`] what is buffered).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long the drain thread waits before retrying a host file that is
/// open non-blocking and full (`EAGAIN`).
const RETRY_FULL: Duration = Duration::from_millis(10);

/// At most one warning about dropped output per writer in this period.
pub const WARN_PERIOD: Duration = Duration::from_secs(10);

struct State {
    buf: Vec<u8>,
    /// The drain thread holds bytes it took from `buf` and is writing them.
    writing: bool,
    /// A sink to switch to once the bytes before it are written.
    next_sink: Option<Box<dyn Write + Send>>,
    /// The last handle is gone: the thread ends once `buf` is written.
    closed: bool,
    /// When the last warning about dropped bytes was logged.
    last_warning: Option<Instant>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when there is work for the drain thread.
    work: Condvar,
    /// Signalled when the drain thread has written everything it had.
    idle: Condvar,
    capacity: usize,
    dropped: &'static AtomicU64,
    /// What to name in the warning about dropped bytes (none for the logger,
    /// which cannot log about itself).
    what: Option<&'static str>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while !state.buf.is_empty() || state.writing || state.next_sink.is_some() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .idle
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// Every writer, for [`drain_all`] at exit.
static ALL: Mutex<Vec<Drainer>> = Mutex::new(Vec::new());

/// Gives every writer's thread up to `timeout` (in all) to write what is
/// buffered; returns whether all did. For the end of the process: a host
/// reader that is stuck does not keep flint alive.
pub fn drain_all(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut all = ALL.lock().unwrap_or_else(|p| p.into_inner());
    // Writers that are gone and have written everything need no more waiting.
    all.retain(|d| {
        let closed = d.shared.lock().closed;
        !(closed && d.drain(Duration::ZERO))
    });
    all.iter()
        .all(|d| d.drain(deadline.saturating_duration_since(Instant::now())))
}

/// A non-blocking writer in front of a (possibly blocking) sink.
pub struct BoundedWriter {
    shared: Arc<Shared>,
}

impl BoundedWriter {
    /// Starts a drain thread named `name` writing to `sink`; at most
    /// `capacity` bytes wait for it. Bytes that do not fit are added to
    /// `dropped` (a static so several writers can feed one metric) and,
    /// with `what`, reported in a warning at most every
    /// [`WARN_PERIOD`].
    pub fn spawn(
        name: &str,
        sink: Box<dyn Write + Send>,
        capacity: usize,
        dropped: &'static AtomicU64,
        what: Option<&'static str>,
    ) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: Vec::with_capacity(capacity.min(64 * 1024)),
                writing: false,
                next_sink: None,
                closed: false,
                last_warning: None,
            }),
            work: Condvar::new(),
            idle: Condvar::new(),
            capacity,
            dropped,
            what,
        });
        let worker = Arc::clone(&shared);
        // Spawned by a confined thread, it inherits that filter (and may not
        // add one); otherwise it confines itself when flint uses filters.
        let confine = crate::seccomp::enabled() && !crate::seccomp::thread_confined();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                if confine {
                    if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Output) {
                        // Output matters more than this thread's filter.
                        eprintln!("flint: {e}");
                    }
                }
                drain_loop(&worker, sink)
            })?;
        let writer = Self { shared };
        ALL.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(writer.drainer());
        Ok(writer)
    }

    /// Queues as much of `bytes` as fits; returns how many were taken. The
    /// rest is counted as dropped. Never blocks on the sink.
    pub fn push(&self, bytes: &[u8]) -> usize {
        let mut state = self.shared.lock();
        let room = self.shared.capacity.saturating_sub(state.buf.len());
        let take = bytes.len().min(room);
        state.buf.extend_from_slice(&bytes[..take]);
        let lost = bytes.len() - take;
        let warn = lost > 0
            && self.shared.what.is_some()
            && state
                .last_warning
                .is_none_or(|at| at.elapsed() >= WARN_PERIOD);
        if warn {
            state.last_warning = Some(Instant::now());
        }
        drop(state);
        if lost > 0 {
            let total = self
                .shared
                .dropped
                .fetch_add(lost as u64, Ordering::Relaxed)
                + lost as u64;
            if let (true, Some(what)) = (warn, self.shared.what) {
                log::warn!(
                    "{what}: the host side does not keep up; dropping output ({total} bytes so far)"
                );
            }
        }
        if take > 0 {
            self.shared.work.notify_one();
        }
        take
    }

    /// Queues all of `bytes` or nothing (for whole log lines); returns
    /// whether they were taken. A refused record counts as dropped once.
    pub fn push_whole(&self, bytes: &[u8]) -> bool {
        let mut state = self.shared.lock();
        if self.shared.capacity.saturating_sub(state.buf.len()) < bytes.len() {
            drop(state);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        state.buf.extend_from_slice(bytes);
        drop(state);
        self.shared.work.notify_one();
        true
    }

    /// Switches to `sink` once what is queued now has gone to the old one.
    pub fn replace_sink(&self, sink: Box<dyn Write + Send>) {
        self.shared.lock().next_sink = Some(sink);
        self.shared.work.notify_one();
    }

    /// Waits up to `timeout` for everything queued to be written; returns
    /// whether it was (false: the sink is stuck and the rest is abandoned).
    pub fn drain(&self, timeout: Duration) -> bool {
        self.shared.drain(timeout)
    }

    /// A handle that can wait for this writer's output after the writer
    /// itself was handed to a device (for draining at exit).
    pub fn drainer(&self) -> Drainer {
        Drainer {
            shared: Arc::clone(&self.shared),
        }
    }

    /// How many bytes (or, through [`Self::push_whole`], records) were dropped.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

/// Waits for a [`BoundedWriter`]'s queued output (see [`BoundedWriter::drainer`]).
pub struct Drainer {
    shared: Arc<Shared>,
}

impl Drainer {
    /// As [`BoundedWriter::drain`].
    pub fn drain(&self, timeout: Duration) -> bool {
        self.shared.drain(timeout)
    }
}

impl Write for BoundedWriter {
    /// Always "writes" everything: what does not fit is dropped and counted,
    /// because a guest must never wait for the host's reader.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push(buf);
        Ok(buf.len())
    }

    /// Nothing to do here: flushing would mean waiting for the sink.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for BoundedWriter {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_one();
    }
}

fn drain_loop(shared: &Shared, mut sink: Box<dyn Write + Send>) {
    let mut chunk = Vec::new();
    let mut broken = false;
    loop {
        let mut state = shared.lock();
        loop {
            if !state.buf.is_empty() {
                break;
            }
            if let Some(next) = state.next_sink.take() {
                sink = next;
                broken = false;
                continue;
            }
            state.writing = false;
            shared.idle.notify_all();
            if state.closed {
                return;
            }
            state = shared.work.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        std::mem::swap(&mut chunk, &mut state.buf);
        state.writing = true;
        drop(state);
        if broken {
            // A sink that failed for good (closed stdout): discard and count.
            shared
                .dropped
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        } else if let Err(e) = write_all_patiently(&mut *sink, &chunk) {
            shared
                .dropped
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            // Reporting through `log` could come back here; stderr is the
            // one place left.
            eprintln!("flint: output stopped: {e}; further output is dropped");
            broken = true;
        }
        let _ = sink.flush();
        chunk.clear();
    }
}

/// `write_all` that also waits out `EAGAIN` (a sink opened non-blocking).
fn write_all_patiently(sink: &mut dyn Write, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match sink.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(RETRY_FULL),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A log or metrics file: written directly when it is a regular file
/// (whose writes never wait for a reader, and whose content tests and
/// tools expect to see at once), through a [`BoundedWriter`] otherwise
/// (a FIFO, a socket, a character device).
pub enum FileOutput {
    /// A regular file.
    Direct(File),
    /// Anything else.
    Buffered(BoundedWriter),
}

impl FileOutput {
    /// Opens `path` with [`open_output`]; a non-regular file gets a drain
    /// thread named `thread` with `capacity` bytes of buffer, whose dropped
    /// records are counted in `dropped`.
    pub fn open(
        path: &Path,
        thread: &str,
        capacity: usize,
        dropped: &'static AtomicU64,
    ) -> io::Result<Self> {
        Self::from_file(open_output(path)?, thread, capacity, dropped)
    }

    /// Like [`FileOutput::open`] for a file another thread opened with
    /// [`open_output`] (the device thread may not open files).
    pub fn from_file(
        file: File,
        thread: &str,
        capacity: usize,
        dropped: &'static AtomicU64,
    ) -> io::Result<Self> {
        if file.metadata()?.is_file() {
            return Ok(Self::Direct(file));
        }
        BoundedWriter::spawn(thread, Box::new(file), capacity, dropped, None).map(Self::Buffered)
    }

    /// Writes a whole record or (if it does not fit) nothing; returns
    /// whether it was written or queued.
    pub fn write_record(&mut self, bytes: &[u8]) -> io::Result<bool> {
        match self {
            Self::Direct(file) => write_all_patiently(file, bytes).map(|()| true),
            Self::Buffered(writer) => Ok(writer.push_whole(bytes)),
        }
    }

    /// Waits up to `timeout` for queued records to be written.
    pub fn drain(&self, timeout: Duration) -> bool {
        match self {
            Self::Direct(_) => true,
            Self::Buffered(writer) => writer.drain(timeout),
        }
    }
}

/// Opens `path` for appended output without ever blocking: created if
/// missing, `O_WRONLY|O_APPEND|O_NONBLOCK|O_CLOEXEC`. A FIFO that nobody has
/// open for reading (where `O_WRONLY` fails with `ENXIO`, and a blocking
/// open would hang) is opened `O_RDWR` instead: output then waits in the
/// pipe for a reader that comes later, and when the pipe is full the drain
/// thread waits (and the buffer in front of it drops).
pub fn open_output(path: &Path) -> io::Result<File> {
    let flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    match OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(flags)
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => OpenOptions::new()
            .read(true)
            .append(true)
            .custom_flags(flags)
            .open(path),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that blocks until told to go on, then records everything.
    #[derive(Clone)]
    struct Gate {
        open: Arc<(Mutex<bool>, Condvar)>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Gate {
        fn new() -> Self {
            Self {
                open: Arc::new((Mutex::new(false), Condvar::new())),
                got: Arc::default(),
            }
        }
        fn release(&self) {
            *self.open.0.lock().unwrap() = true;
            self.open.1.notify_all();
        }
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut open = self.open.0.lock().unwrap();
            while !*open {
                open = self.open.1.wait(open).unwrap();
            }
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_sink_never_blocks_the_writer_and_excess_is_counted() {
        let gate = Gate::new();
        let dropped: &'static AtomicU64 = Box::leak(Box::default());
        let mut w =
            BoundedWriter::spawn("test_drain", Box::new(gate.clone()), 100, dropped, None).unwrap();
        // The sink is stuck: 10 000 bytes go in without blocking, at most
        // 100 (+ the chunk the thread holds) are kept.
        for _ in 0..100 {
            w.write_all(&[b'x'; 100]).unwrap();
        }
        assert!(!w.drain(Duration::from_millis(10)), "the sink is stuck");
        let lost = dropped.load(Ordering::Relaxed);
        assert!((10_000 - 200..=10_000 - 100).contains(&lost), "{lost}");
        gate.release();
        assert!(w.drain(Duration::from_secs(60)));
        assert_eq!(gate.got.lock().unwrap().len() as u64 + lost, 10_000);
        assert_eq!(w.dropped(), lost);
    }

    #[test]
    fn whole_records_or_nothing_and_sinks_switch_in_order() {
        let first = Gate::new();
        first.release();
        let second = Gate::new();
        second.release();
        let dropped: &'static AtomicU64 = Box::leak(Box::default());
        let w =
            BoundedWriter::spawn("test_drain", Box::new(first.clone()), 8, dropped, None).unwrap();
        assert!(w.push_whole(b"abc"));
        assert!(!w.push_whole(b"too long!"));
        w.replace_sink(Box::new(second.clone()));
        assert!(w.drain(Duration::from_secs(60)));
        assert!(w.push_whole(b"def"));
        assert!(w.drain(Duration::from_secs(60)));
        assert_eq!(first.got.lock().unwrap().as_slice(), b"abc");
        assert_eq!(second.got.lock().unwrap().as_slice(), b"def");
        assert_eq!(w.dropped(), 1);
    }

    #[test]
    fn drain_all_forgets_finished_writers_and_waits_for_the_others() {
        let dropped: &'static AtomicU64 = Box::leak(Box::default());
        let gate = Gate::new();
        gate.release();
        let done =
            BoundedWriter::spawn("test_drain", Box::new(gate.clone()), 64, dropped, None).unwrap();
        done.push(b"abc");
        drop(done);
        let live =
            BoundedWriter::spawn("test_drain", Box::new(gate.clone()), 64, dropped, None).unwrap();
        live.push(b"def");
        // Writers of other tests in this process may be stuck for good, so
        // only the outcome for these two is checked.
        drain_all(Duration::from_secs(1));
        assert!(live.drain(Duration::from_secs(60)));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = gate.got.lock().unwrap().clone();
            let has = |s: &[u8]| got.windows(3).any(|w| w == s);
            if has(b"abc") && has(b"def") {
                break;
            }
            assert!(Instant::now() < deadline, "{got:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_fifo_without_reader_opens_and_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("out.fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let file = open_output(&fifo).unwrap();
        let dropped: &'static AtomicU64 = Box::leak(Box::default());
        let mut w = BoundedWriter::spawn("test_drain", Box::new(file), 4096, dropped, Some("test"))
            .unwrap();
        // Far more than the pipe (64 KiB) and the buffer hold: the writes
        // still return, and the excess is counted.
        for _ in 0..1000 {
            w.write_all(&[b'y'; 1024]).unwrap();
        }
        assert!(dropped.load(Ordering::Relaxed) > 0);
    }
}
