//! The two-phase hand-off that ends a migration, so the guest never runs in
//! two places:
//!
//! 1. the source has sent the final state (DONE);
//! 2. the destination restores it **paused** and answers READY (or ERROR);
//! 3. the source stops for good and answers COMMIT — from the moment the
//!    COMMIT frame is handed to the kernel the source never resumes;
//! 4. the destination resumes on COMMIT (even if the source is gone by then)
//!    and answers RUNNING;
//! 5. the source exits; without RUNNING it exits with an error saying the
//!    guest's fate is with the destination.
//!
//! Any failure before COMMIT is sent: the source resumes, the destination
//! discards what it restored. Fault injection ([`Fault`]) stops either side
//! at each step so tests can check that exactly one guest runs.

use std::io::{Read, Write};
use std::time::Duration;

use super::channel::Channel;
use super::MigrationError;

/// The destination has restored the state, paused.
pub const TAG_READY: u8 = 7;
/// The source has stopped for good: the destination owns the guest.
pub const TAG_COMMIT: u8 = 8;
/// The destination runs the guest.
pub const TAG_RUNNING: u8 = 9;
/// The destination could not take the guest (payload: why).
pub const TAG_ERROR: u8 = 6;

/// Where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Source: DONE sent, READY not yet received.
    SourceBeforeReady,
    /// Source: READY received, COMMIT not yet sent.
    SourceAfterReady,
    /// Source: COMMIT sent, RUNNING not yet received.
    SourceAfterCommit,
    /// Destination: state restored, READY not yet sent.
    DestBeforeReady,
    /// Destination: READY sent, COMMIT not yet received.
    DestAfterReady,
    /// Destination: COMMIT received, guest not yet resumed.
    DestAfterCommit,
    /// Destination: guest resumed, RUNNING not yet sent.
    DestBeforeRunning,
}

/// What happens at the fault point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The connection is cut (this side carries on with the failure).
    Cut,
    /// The process dies on the spot (`_exit(137)`, as if killed). In unit
    /// tests the side's thread just stops instead, unless the test runs the
    /// side in a child process (`REAL_EXIT_IN_TESTS`, see `flow_tests`).
    Exit,
}

/// A test-only fault: set `FLINT_MIGRATION_FAULT=POINT:ACTION` (e.g.
/// `source-after-ready:cut`, `dest-after-commit:exit`) in a flint's
/// environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Where.
    pub point: Point,
    /// What.
    pub action: Action,
}

/// The environment variable naming a [`Fault`] to inject.
pub const FAULT_ENV: &str = "FLINT_MIGRATION_FAULT";

impl Fault {
    /// Parses `POINT:ACTION`.
    pub fn parse(text: &str) -> Option<Self> {
        let (point, action) = text.split_once(':')?;
        let point = match point {
            "source-before-ready" => Point::SourceBeforeReady,
            "source-after-ready" => Point::SourceAfterReady,
            "source-after-commit" => Point::SourceAfterCommit,
            "dest-before-ready" => Point::DestBeforeReady,
            "dest-after-ready" => Point::DestAfterReady,
            "dest-after-commit" => Point::DestAfterCommit,
            "dest-before-running" => Point::DestBeforeRunning,
            _ => return None,
        };
        let action = match action {
            "cut" => Action::Cut,
            "exit" => Action::Exit,
            _ => return None,
        };
        Some(Self { point, action })
    }

    /// The fault the environment asks for, if any (read once per migration,
    /// before seccomp matters: `getenv` makes no system call).
    pub fn from_env() -> Option<Self> {
        let fault = std::env::var(FAULT_ENV).ok().and_then(|v| Self::parse(&v));
        if let Some(f) = fault {
            log::warn!("migration fault injection armed: {f:?}");
        }
        fault
    }
}

/// In unit tests, whether an `Exit` fault really ends the process (set by
/// a test that runs one side in a child process, see `flow_tests`).
#[cfg(test)]
pub(crate) static REAL_EXIT_IN_TESTS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Whether an `Exit` fault ends the process here.
fn exits_for_real() -> bool {
    #[cfg(test)]
    return REAL_EXIT_IN_TESTS.load(std::sync::atomic::Ordering::SeqCst);
    #[cfg(not(test))]
    true
}

/// Whether `fault` fires at `point`: `Exit` ends the process (outside unit
/// tests, or in a test's child process), `Cut` and a unit test's `Exit`
/// return the error to fail with.
fn hit(fault: Option<Fault>, point: Point) -> Result<(), MigrationError> {
    match fault {
        Some(f) if f.point == point => {
            log::warn!("migration fault injected at {point:?}: {:?}", f.action);
            if f.action == Action::Exit && exits_for_real() {
                // SAFETY: _exit ends the process at once; nothing is
                // touched afterwards. That is the point: a killed flint.
                unsafe { libc::_exit(137) }
            }
            Err(MigrationError::Protocol(format!(
                "fault injected at {point:?}"
            )))
        }
        _ => Ok(()),
    }
}

/// How the source's side ended.
#[derive(Debug)]
pub enum SourceEnd {
    /// The destination runs the guest.
    Running,
    /// Failed before COMMIT was sent: the source must resume its guest.
    BeforeCommit(MigrationError),
    /// Failed after COMMIT was sent: the source must never resume; the
    /// guest's fate is with the destination.
    AfterCommit(MigrationError),
}

/// Something whose read timeout can be set (the stream under a channel).
pub trait Timeouts {
    /// Sets the read timeout.
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()>;
}

impl Timeouts for std::os::unix::net::UnixStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, timeout)
    }
}

/// The source, after sending DONE: waits for READY (up to `ready_timeout`,
/// the destination's restore time), calls `stop_for_good`, sends COMMIT,
/// waits for RUNNING (up to `running_timeout`).
pub fn source<S: Read + Write + Timeouts>(
    ch: &mut Channel<S>,
    fault: Option<Fault>,
    ready_timeout: Duration,
    running_timeout: Duration,
    stop_for_good: &mut dyn FnMut(),
) -> SourceEnd {
    let ready = (|| {
        hit(fault, Point::SourceBeforeReady)?;
        ch.stream().set_read_timeout(Some(ready_timeout))?;
        let (tag, payload) = ch.receive()?;
        match tag {
            TAG_READY => {}
            TAG_ERROR => {
                return Err(MigrationError::Destination(
                    String::from_utf8_lossy(&payload).into_owned(),
                ))
            }
            other => {
                return Err(MigrationError::Protocol(format!(
                    "expected READY, got {other}"
                )))
            }
        }
        hit(fault, Point::SourceAfterReady)
    })();
    if let Err(e) = ready {
        return SourceEnd::BeforeCommit(e);
    }
    stop_for_good();
    match ch.send_whole(TAG_COMMIT) {
        Ok(()) => {}
        // Not a byte of COMMIT left: the destination cannot commit.
        Err((e, false)) => return SourceEnd::BeforeCommit(e),
        Err((e, true)) => return SourceEnd::AfterCommit(e),
    }
    let running = (|| {
        hit(fault, Point::SourceAfterCommit)?;
        ch.stream().set_read_timeout(Some(running_timeout))?;
        match ch.receive()? {
            (TAG_RUNNING, _) => Ok(()),
            (TAG_ERROR, payload) => Err(MigrationError::Destination(
                String::from_utf8_lossy(&payload).into_owned(),
            )),
            (other, _) => Err(MigrationError::Protocol(format!(
                "expected RUNNING, got {other}"
            ))),
        }
    })();
    match running {
        Ok(()) => SourceEnd::Running,
        Err(e) => SourceEnd::AfterCommit(e),
    }
}

/// The destination, after restoring the state paused (`restored` says
/// whether that worked): answers READY, waits for COMMIT (up to
/// `commit_timeout`), then `resume`s and answers RUNNING. `Ok` means the
/// guest runs here; on `Err` the caller discards the restored VM.
pub fn destination<S: Read + Write + Timeouts>(
    ch: &mut Channel<S>,
    fault: Option<Fault>,
    restored: Result<(), String>,
    commit_timeout: Duration,
    resume: &mut dyn FnMut() -> Result<(), String>,
) -> Result<(), MigrationError> {
    if let Err(why) = restored {
        let _ = ch.send(TAG_ERROR, &[why.as_bytes()]);
        return Err(MigrationError::State(why));
    }
    hit(fault, Point::DestBeforeReady)?;
    ch.send(TAG_READY, &[])?;
    hit(fault, Point::DestAfterReady)?;
    ch.stream().set_read_timeout(Some(commit_timeout))?;
    match ch.receive()? {
        (TAG_COMMIT, _) => {}
        (other, _) => {
            return Err(MigrationError::Protocol(format!(
                "expected COMMIT, got {other}"
            )))
        }
    }
    // From here the guest is ours whatever the source does: a cut
    // connection only means RUNNING is not sent.
    let mut cut = false;
    if let Err(e) = hit(fault, Point::DestAfterCommit) {
        if fault.is_some_and(|f| f.action == Action::Exit) {
            return Err(e); // a unit test's "killed" destination
        }
        cut = true;
    }
    if let Err(why) = resume() {
        let _ = ch.send(TAG_ERROR, &[why.as_bytes()]);
        return Err(MigrationError::State(format!(
            "resuming the committed guest failed (it is lost): {why}"
        )));
    }
    if !cut && hit(fault, Point::DestBeforeRunning).is_ok() {
        if let Err(e) = ch.send(TAG_RUNNING, &[]) {
            log::warn!("the guest runs here, but telling the source failed: {e}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
