//! The VMM's side of a vCPU thread: commands with bounded waits, and
//! all-or-nothing pause/resume of every vCPU.

use super::*;

/// The VMM's handle on a running vCPU thread.
pub struct VcpuHandle {
    pub(super) id: u8,
    pub(super) commands: Sender<VcpuCommand>,
    pub(super) responses: Receiver<VcpuResponse>,
    pub(super) immediate_exit: Arc<ImmediateExit>,
    pub(super) thread: Option<JoinHandle<()>>,
}

/// How long a vCPU may take to answer a command or to end its thread.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

impl VcpuHandle {
    /// The vCPU's index.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Makes the thread leave (or not enter) `KVM_RUN` once: sets
    /// `immediate_exit`, then signals it.
    fn kick(&self) {
        self.immediate_exit.store(1);
        if let Some(thread) = &self.thread {
            if let Err(e) = thread.kill(kick_signal()) {
                log::debug!("kicking vCPU {}: {e}", self.id);
            }
        }
    }

    /// Sends `command`, kicking the thread out of the guest once if the
    /// command is one a running vCPU must see.
    fn send(&self, command: VcpuCommand) -> Result<(), VcpuTimeout> {
        let timeout = VcpuTimeout {
            id: self.id,
            command,
        };
        if self.thread.is_none() {
            return Err(timeout);
        }
        // Answers to earlier, timed-out commands are stale now.
        while self.responses.try_recv().is_ok() {}
        self.commands.send(command).map_err(|_| timeout)?;
        if matches!(command, VcpuCommand::Pause | VcpuCommand::Exit) {
            self.kick();
        }
        Ok(())
    }

    /// Waits until `deadline` for the answer `expected` to `command`.
    fn wait(
        &self,
        command: VcpuCommand,
        expected: fn(&VcpuResponse) -> bool,
        deadline: Instant,
    ) -> Result<VcpuResponse, VcpuTimeout> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.responses.recv_timeout(left) {
                Ok(answer) if expected(&answer) => return Ok(answer),
                Ok(_) => {}
                Err(_) => {
                    return Err(VcpuTimeout {
                        id: self.id,
                        command,
                    })
                }
            }
        }
    }

    fn command(
        &self,
        command: VcpuCommand,
        expected: fn(&VcpuResponse) -> bool,
    ) -> Result<VcpuResponse, VcpuTimeout> {
        self.send(command)?;
        self.wait(command, expected, Instant::now() + COMMAND_TIMEOUT)
    }

    /// Takes the vCPU out of the guest and keeps it out until [`Self::resume`].
    pub fn pause(&self) -> Result<(), VcpuTimeout> {
        self.command(VcpuCommand::Pause, is_paused).map(drop)
    }

    /// Lets a paused vCPU run the guest again.
    pub fn resume(&self) -> Result<(), VcpuTimeout> {
        self.command(VcpuCommand::Resume, is_resumed).map(drop)
    }

    /// Reads the state of a paused vCPU (on its own thread).
    pub fn save_state(&self) -> Result<VcpuState, String> {
        match self.command(VcpuCommand::SaveState, |r| {
            matches!(r, VcpuResponse::State(_))
        }) {
            Ok(VcpuResponse::State(state)) => state.map(|s| *s),
            Ok(_) => Err("unexpected answer".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Tells the vCPU to exit and waits (at most [`COMMAND_TIMEOUT`]) for
    /// its thread to end. A thread that does not end in time (stuck in a
    /// device) is logged and left behind, never joined, so stopping flint
    /// cannot hang on it.
    pub fn stop(&mut self) {
        if self.thread.is_none() {
            return;
        }
        // A send error means the thread already ended; joining is all that is left.
        let _ = self.send(VcpuCommand::Exit);
        let Some(thread) = self.thread.take() else {
            return;
        };
        // The thread drops its end of the response channel as it ends.
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let ended = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.responses.recv_timeout(left) {
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => break true,
                Err(RecvTimeoutError::Timeout) => break false,
            }
        };
        if !ended {
            log::error!(
                "vCPU {} did not stop within {COMMAND_TIMEOUT:?}; leaving its thread behind",
                self.id
            );
            return;
        }
        if thread.join().is_err() {
            log::error!("vCPU {} thread panicked", self.id);
        }
    }
}

fn is_paused(r: &VcpuResponse) -> bool {
    matches!(r, VcpuResponse::Paused)
}

fn is_resumed(r: &VcpuResponse) -> bool {
    matches!(r, VcpuResponse::Resumed)
}

/// Why the vCPUs could not all be paused or resumed.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// These vCPUs did not pause in time; the others were resumed, so the
    /// VM runs as before.
    #[error("vCPUs {ids:?} did not pause within {COMMAND_TIMEOUT:?}; the VM was resumed")]
    Pause {
        /// The vCPUs that did not answer.
        ids: Vec<u8>,
    },
    /// These vCPUs did not resume in time (the others run).
    #[error("vCPUs {ids:?} did not resume within {COMMAND_TIMEOUT:?}")]
    Resume {
        /// The vCPUs that did not answer.
        ids: Vec<u8>,
    },
}

/// Pauses every vCPU, or none: all are asked at once and waited for until one
/// shared deadline; if any does not answer, all are told to resume (a late
/// one then resumes right after it pauses) and the error names the stragglers.
pub fn pause_all(vcpus: &[VcpuHandle]) -> Result<(), PauseError> {
    let sent: Vec<bool> = vcpus
        .iter()
        .map(|v| v.send(VcpuCommand::Pause).is_ok())
        .collect();
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let failed: Vec<u8> = vcpus
        .iter()
        .zip(&sent)
        .filter(|(v, &sent)| !sent || v.wait(VcpuCommand::Pause, is_paused, deadline).is_err())
        .map(|(v, _)| v.id)
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    log::error!("vCPUs {failed:?} did not pause in time; resuming the others");
    for v in vcpus {
        if failed.contains(&v.id) {
            // Queued behind its Pause: it resumes as soon as it pauses.
            let _ = v.send(VcpuCommand::Resume);
        } else if let Err(e) = v.resume() {
            log::error!("{e}");
        }
    }
    Err(PauseError::Pause { ids: failed })
}

/// Resumes every vCPU (each is asked even if another does not answer).
pub fn resume_all(vcpus: &[VcpuHandle]) -> Result<(), PauseError> {
    let failed: Vec<u8> = vcpus
        .iter()
        .filter(|v| v.resume().is_err())
        .map(|v| v.id)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(PauseError::Resume { ids: failed })
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
