//! Everything that wakes the VMM's control loop, as one event-loop subscriber.
//!
//! The guest's i8042 reset line, the vCPU threads' event channel, the
//! SIGINT/SIGTERM self-pipes, API requests and the metrics timer. The
//! subscriber only notes what happened; the control loop
//! ([`crate::controller`]) acts on it with full access to the VMM, outside
//! the epoll dispatch.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::vstate::vcpu::VcpuEvent;

const RESET: u32 = 0;
const VCPU: u32 = 1;
const SIGINT: u32 = 2;
const SIGTERM: u32 = 3;
const API: u32 = 4;
const METRICS: u32 = 5;
const EXIT_STATUS: u32 = 6;

/// How often metrics are written when a metrics file is configured.
pub const METRICS_PERIOD: Duration = Duration::from_secs(60);

/// How a microVM run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest reset or shut itself down: a normal end.
    GuestStopped,
    /// flint was asked to stop by a signal.
    Signal(&'static str),
    /// The API asked flint to stop.
    ApiStop,
    /// The guest reported an exit status through the exit-status port.
    GuestExit(u8),
    /// The VM migrated to another flint.
    Migrated,
    /// A vCPU hit a fatal exit.
    Fatal {
        /// Which vCPU.
        vcpu: u8,
        /// What happened.
        reason: String,
    },
}

/// The sources the control loop listens to.
pub struct WakeupSources {
    /// The i8042 reset line.
    pub reset_evt: EventFd,
    /// Written by vCPU threads after sending a [`VcpuEvent`].
    pub vcpu_wake: EventFd,
    /// The vCPU threads' events.
    pub vcpu_events: Receiver<VcpuEvent>,
    /// SIGINT self-pipe (read end).
    pub sigint: UnixStream,
    /// SIGTERM self-pipe (read end).
    pub sigterm: UnixStream,
    /// Written by the API server after queueing a request.
    pub api_wake: EventFd,
    /// The exit-status port's event.
    pub exit_evt: EventFd,
    /// The status the guest wrote there.
    pub exit_status: Arc<AtomicI32>,
}

/// The subscriber noting wake-ups for the control loop.
pub struct Wakeups {
    sources: WakeupSources,
    metrics_timer: TimerFd,
    outcome: Option<Outcome>,
    api_pending: bool,
    metrics_due: bool,
}

impl Wakeups {
    /// Watches `sources`.
    pub fn new(sources: WakeupSources) -> std::io::Result<Self> {
        Ok(Self {
            sources,
            metrics_timer: TimerFd::new()?,
            outcome: None,
            api_pending: false,
            metrics_due: false,
        })
    }

    /// The end of the run, once there is one.
    pub fn take_outcome(&mut self) -> Option<Outcome> {
        self.outcome.take()
    }

    /// Whether API requests are waiting (resets the flag).
    pub fn take_api_pending(&mut self) -> bool {
        std::mem::take(&mut self.api_pending)
    }

    /// Whether the periodic metrics flush is due (resets the flag).
    pub fn take_metrics_due(&mut self) -> bool {
        std::mem::take(&mut self.metrics_due)
    }

    /// Checks the signal pipes without the event loop (for waits that happen
    /// outside it): the signal's name if SIGINT or SIGTERM arrived.
    pub fn poll_signals(&mut self) -> Option<&'static str> {
        let mut buf = [0u8; 16];
        if matches!(self.sources.sigint.read(&mut buf), Ok(n) if n > 0) {
            return Some("SIGINT");
        }
        if matches!(self.sources.sigterm.read(&mut buf), Ok(n) if n > 0) {
            return Some("SIGTERM");
        }
        None
    }

    /// Starts the periodic metrics timer.
    pub fn start_metrics_timer(&mut self) -> std::io::Result<()> {
        self.metrics_timer
            .reset(METRICS_PERIOD, Some(METRICS_PERIOD))
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    fn decide(&mut self, outcome: Outcome) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome);
        }
    }

    fn drain_vcpu_events(&mut self) {
        let _ = self.sources.vcpu_wake.read();
        while let Ok(event) = self.sources.vcpu_events.try_recv() {
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

impl MutEventSubscriber for Wakeups {
    fn init(&mut self, ops: &mut EventOps) {
        let s = &self.sources;
        let watched = [
            Events::with_data(&s.reset_evt, RESET, EventSet::IN),
            Events::with_data(&s.vcpu_wake, VCPU, EventSet::IN),
            Events::with_data(&s.sigint, SIGINT, EventSet::IN),
            Events::with_data(&s.sigterm, SIGTERM, EventSet::IN),
            Events::with_data(&s.api_wake, API, EventSet::IN),
            Events::with_data(&self.metrics_timer, METRICS, EventSet::IN),
            Events::with_data(&s.exit_evt, EXIT_STATUS, EventSet::IN),
        ];
        for source in watched {
            if let Err(e) = ops.add(source) {
                // Without these the VM could never be stopped: fail loudly.
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
                let _ = self.sources.reset_evt.read();
                log::info!("the guest reset itself through the i8042");
                self.decide(Outcome::GuestStopped);
            }
            VCPU => self.drain_vcpu_events(),
            SIGINT => {
                drain(&mut self.sources.sigint);
                self.decide(Outcome::Signal("SIGINT"));
            }
            SIGTERM => {
                drain(&mut self.sources.sigterm);
                self.decide(Outcome::Signal("SIGTERM"));
            }
            API => {
                let _ = self.sources.api_wake.read();
                self.api_pending = true;
            }
            EXIT_STATUS => {
                let _ = self.sources.exit_evt.read();
                let code = self.sources.exit_status.load(Ordering::SeqCst);
                log::info!("the guest reported exit status {code}");
                self.decide(Outcome::GuestExit(code.clamp(0, 255) as u8));
            }
            METRICS => {
                let _ = self.metrics_timer.wait();
                self.metrics_due = true;
            }
            other => log::warn!("wakeups: unexpected event {other}"),
        }
    }
}
