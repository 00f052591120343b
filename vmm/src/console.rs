//! The guest's console: output to stdout or a file, input from flint's terminal.
//!
//! Output never blocks a vCPU: the UART writes into a bounded buffer
//! ([`crate::bounded_writer`]) drained by a `flint_serial` thread that
//! owns the host fd; when the host reader stalls, output beyond
//! [`SERIAL_BUFFER`] bytes is dropped and counted ([`serial_missed_bytes`],
//! `serial.missed_bytes` in the metrics file).
//!
//! stdin is read on the VMM's event loop and queued into the UART's receive
//! FIFO. When the FIFO is full, stdin is left unread (the bytes wait in the
//! host's tty buffer) and a short timer retries, so nothing is dropped and a
//! paste larger than the FIFO arrives whole.

use std::fs::File;
use std::io::{IsTerminal, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::legacy::serial::SerialOutput;
use devices::legacy::Serial;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::timerfd::TimerFd;

const STDIN: u32 = 0;
const RETRY: u32 = 1;
const RETRY_PERIOD: Duration = Duration::from_millis(5);

/// How many bytes of guest console output may wait for a slow host reader.
pub const SERIAL_BUFFER: usize = 64 * 1024;

static SERIAL_MISSED_BYTES: AtomicU64 = AtomicU64::new(0);

/// Why a console output could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The output file could not be opened.
    #[error("serial output file {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// stdout could not be duplicated or the writer thread not started.
    #[error("serial output: {0}")]
    Setup(std::io::Error),
}

/// Guest console output to flint's stdout, through the non-blocking path.
pub fn output_to_stdout() -> Result<SerialOutput, ConsoleError> {
    let fd = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(ConsoleError::Setup)?;
    bounded(File::from(fd))
}

/// [`output_to_stdout`], or (if no thread can be started) stdout written
/// directly, as a last resort that still gives the guest a console.
pub fn stdout_output() -> SerialOutput {
    output_to_stdout().unwrap_or_else(|e| {
        log::warn!("{e}; writing the console directly to stdout");
        Box::new(std::io::stdout())
    })
}

/// Guest console output appended to `path` (Firecracker's `serial_out_path`),
/// through the non-blocking path. The file is created if missing and opened
/// `O_WRONLY|O_CREAT|O_APPEND|O_NONBLOCK|O_CLOEXEC`, so opening never hangs;
/// a FIFO without a reader is opened `O_RDWR` instead (output waits in the
/// pipe for a reader that comes later; see
/// [`crate::bounded_writer::open_output`]).
pub fn output_to_path(path: &Path) -> Result<SerialOutput, ConsoleError> {
    let file = crate::bounded_writer::open_output(path).map_err(|source| ConsoleError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    bounded(file)
}

fn bounded(file: File) -> Result<SerialOutput, ConsoleError> {
    let writer = crate::bounded_writer::BoundedWriter::spawn(
        "flint_serial",
        Box::new(file),
        SERIAL_BUFFER,
        &SERIAL_MISSED_BYTES,
        Some("serial console"),
    )
    .map_err(ConsoleError::Setup)?;
    Ok(Box::new(writer))
}

/// Guest console bytes dropped because the host side did not keep up
/// (all console outputs together, since flint started).
pub fn serial_missed_bytes() -> u64 {
    SERIAL_MISSED_BYTES.load(Ordering::Relaxed)
}

/// Feeds host stdin into the guest's serial console.
pub struct ConsoleInput {
    input: File,
    serial: Arc<Mutex<Serial>>,
    retry: TimerFd,
}

impl ConsoleInput {
    /// Console input from this process's stdin into `serial`.
    pub fn from_stdin(serial: Arc<Mutex<Serial>>) -> std::io::Result<Self> {
        let input = File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
        Ok(Self {
            input,
            serial,
            retry: TimerFd::new()?,
        })
    }

    fn capacity(&self) -> usize {
        lock(&self.serial).input_capacity()
    }

    fn forward_input(&mut self, ops: &mut EventOps) {
        let capacity = self.capacity();
        if capacity == 0 {
            self.wait_for_room(ops);
            return;
        }
        let mut buf = [0u8; 64];
        let want = capacity.min(buf.len());
        match self.input.read(&mut buf[..want]) {
            Ok(0) => {
                log::debug!("console: stdin closed");
                let _ = ops.remove(Events::new(&self.input, EventSet::IN));
            }
            Ok(n) => {
                if let Err(e) = lock(&self.serial).enqueue_input(&buf[..n]) {
                    log::error!("console: queueing input: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("console: reading stdin: {e}; console input disabled");
                let _ = ops.remove(Events::new(&self.input, EventSet::IN));
            }
        }
    }

    fn wait_for_room(&mut self, ops: &mut EventOps) {
        let _ = ops.remove(Events::new(&self.input, EventSet::IN));
        if let Err(e) = self.retry.reset(RETRY_PERIOD, Some(RETRY_PERIOD)) {
            log::error!("console: arming the retry timer: {e}");
            return;
        }
        if let Err(e) = ops.add(Events::with_data(&self.retry, RETRY, EventSet::IN)) {
            log::error!("console: watching the retry timer: {e}");
        }
    }

    fn room_again(&mut self, ops: &mut EventOps) {
        let _ = self.retry.wait();
        if self.capacity() == 0 {
            return;
        }
        let _ = self.retry.clear();
        let _ = ops.remove(Events::new(&self.retry, EventSet::IN));
        if let Err(e) = ops.add(Events::with_data(&self.input, STDIN, EventSet::IN)) {
            log::error!("console: watching stdin again: {e}");
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        // Regular files and /dev/null cannot be polled: then the guest simply
        // gets no console input.
        if let Err(e) = ops.add(Events::with_data(&self.input, STDIN, EventSet::IN)) {
            log::debug!("console: stdin cannot be polled ({e}); no console input");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            STDIN => self.forward_input(ops),
            RETRY => self.room_again(ops),
            other => log::warn!("console: unexpected event {other}"),
        }
    }
}

fn lock(serial: &Mutex<Serial>) -> std::sync::MutexGuard<'_, Serial> {
    serial.lock().unwrap_or_else(|p| p.into_inner())
}

/// Puts an interactive terminal into character-at-a-time mode without local
/// echo (the guest echoes) while flint runs, and restores it afterwards.
/// Signal keys stay on: Ctrl-C stops flint cleanly.
pub struct TerminalMode {
    saved: Option<libc::termios>,
}

impl TerminalMode {
    /// Switches stdin's terminal, if stdin is one.
    pub fn enter() -> Self {
        if !std::io::stdin().is_terminal() {
            return Self { saved: None };
        }
        // SAFETY: termios is plain old data; tcgetattr fully initializes it
        // on success and we only use it then.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 is open (it is a terminal) and `saved` is a valid termios.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return Self { saved: None };
        }
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::IEXTEN);
        raw.c_iflag &= !(libc::ICRNL | libc::IXON);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: as above; `raw` is a valid termios derived from the current one.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return Self { saved: None };
        }
        Self { saved: Some(saved) }
    }
}

impl Drop for TerminalMode {
    fn drop(&mut self) {
        if let Some(saved) = self.saved {
            // SAFETY: restores the termios read from the same fd in `enter`.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &saved) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn output_to_path_appends_and_explains_failures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        std::fs::write(&path, b"before\n").unwrap();
        let mut out = output_to_path(&path).unwrap();
        out.write_all(b"guest says hi\n").unwrap();
        // Wait for this writer's thread only (other tests in this process
        // own writers whose sinks are stuck on purpose).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut text = String::new();
        while std::time::Instant::now() < deadline {
            text = std::fs::read_to_string(&path).unwrap();
            if text.len() >= "before\nguest says hi\n".len() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(text, "before\nguest says hi\n");
        let err = output_to_path(dir.path()).err().unwrap().to_string();
        assert!(
            err.starts_with(&format!("serial output file {}: ", dir.path().display())),
            "{err}"
        );
    }
}
