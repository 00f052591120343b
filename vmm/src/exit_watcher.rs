//! Decides when a running microVM ends, from the VMM's event loop.
//!
//! It watches the guest's i8042 reset line, the vCPU threads' event channel
//! and the SIGINT/SIGTERM self-pipes, and records the first outcome.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::Receiver;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use crate::vstate::vcpu::VcpuEvent;

const RESET: u32 = 0;
const VCPU: u32 = 1;
const SIGINT: u32 = 2;
const SIGTERM: u32 = 3;

/// How a microVM run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest reset or shut itself down: a normal end.
    GuestStopped,
    /// flint was asked to stop by a signal.
    Signal(&'static str),
    /// A vCPU hit a fatal exit.
    Fatal {
        /// Which vCPU.
        vcpu: u8,
        /// What happened.
        reason: String,
    },
}

/// The event-loop subscriber that notices the end of a run.
pub struct ExitWatcher {
    reset_evt: EventFd,
    vcpu_wake: EventFd,
    vcpu_events: Receiver<VcpuEvent>,
    sigint: UnixStream,
    sigterm: UnixStream,
    outcome: Option<Outcome>,
}

impl ExitWatcher {
    /// Watches `reset_evt`, the vCPU channel (woken through `vcpu_wake`) and
    /// the read ends of the signal pipes.
    pub fn new(
        reset_evt: EventFd,
        vcpu_wake: EventFd,
        vcpu_events: Receiver<VcpuEvent>,
        sigint: UnixStream,
        sigterm: UnixStream,
    ) -> Self {
        Self {
            reset_evt,
            vcpu_wake,
            vcpu_events,
            sigint,
            sigterm,
            outcome: None,
        }
    }

    /// The outcome, once there is one.
    pub fn take_outcome(&mut self) -> Option<Outcome> {
        self.outcome.take()
    }

    fn decide(&mut self, outcome: Outcome) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome);
        }
    }

    fn drain_vcpu_events(&mut self) {
        let _ = self.vcpu_wake.read();
        while let Ok(event) = self.vcpu_events.try_recv() {
            match event {
                VcpuEvent::GuestStop { id } => {
                    log::info!("vCPU {id}: the guest stopped itself");
                    self.decide(Outcome::GuestStopped);
                }
                VcpuEvent::Fatal { id, reason } => self.decide(Outcome::Fatal { vcpu: id, reason }),
                VcpuEvent::Exited { id } => log::debug!("vCPU {id} exited"),
            }
        }
    }
}

fn drain(pipe: &mut UnixStream) {
    let mut buf = [0u8; 16];
    while matches!(pipe.read(&mut buf), Ok(n) if n > 0) {}
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        let sources = [
            Events::with_data(&self.reset_evt, RESET, EventSet::IN),
            Events::with_data(&self.vcpu_wake, VCPU, EventSet::IN),
            Events::with_data(&self.sigint, SIGINT, EventSet::IN),
            Events::with_data(&self.sigterm, SIGTERM, EventSet::IN),
        ];
        for source in sources {
            if let Err(e) = ops.add(source) {
                // Without these the VM could never be stopped: fail loudly.
                log::error!("event loop: cannot watch an exit source: {e}");
                self.decide(Outcome::Fatal {
                    vcpu: 0,
                    reason: format!("event loop setup failed: {e}"),
                });
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            RESET => {
                let _ = self.reset_evt.read();
                log::info!("the guest reset itself through the i8042");
                self.decide(Outcome::GuestStopped);
            }
            VCPU => self.drain_vcpu_events(),
            SIGINT => {
                drain(&mut self.sigint);
                self.decide(Outcome::Signal("SIGINT"));
            }
            SIGTERM => {
                drain(&mut self.sigterm);
                self.decide(Outcome::Signal("SIGTERM"));
            }
            other => log::warn!("exit watcher: unexpected event {other}"),
        }
    }
}
