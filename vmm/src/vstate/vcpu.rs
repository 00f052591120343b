//! vCPUs: their boot configuration and the thread that runs each one.
//!
//! Each vCPU runs `KVM_RUN` on its own thread, dispatches port-I/O and MMIO
//! exits to the buses, and reports anything that ends its run (a guest reset,
//! a fatal exit) to the VMM's event loop over a channel plus an eventfd.
//! The VMM talks back through a command channel and then kicks the thread
//! out of `KVM_RUN` so it reads the command promptly: it sets the vCPU's
//! `kvm_run.immediate_exit` and then sends a real-time signal. The signal
//! interrupts a `KVM_RUN` in progress; the flag makes a `KVM_RUN` that is
//! about to start return at once, so a kick that lands between the thread's
//! look at its commands and its next `KVM_RUN` is never lost, and one kick
//! per command is enough. Every wait for a vCPU is bounded
//! ([`COMMAND_TIMEOUT`]): a vCPU thread stuck in a device is reported (and,
//! at stop, left behind), never waited for forever.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arch::cpuid::{normalize_cpuid, CpuTemplate, VcpuTopology};
use devices::Bus;
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::memory::GuestMemory;
use crate::vstate::vcpu_state::{StateCaps, VcpuState, VcpuStateError};
use crate::vstate::vm::Vm;

/// `kvm_run.system_event.type` values (linux/kvm.h).
const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;

/// Why a vCPU could not be created, configured or started.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM ioctl failed.
    #[error("vCPU {id}: {op} failed: {source}")]
    Kvm {
        /// vCPU index.
        id: u8,
        /// The ioctl.
        op: &'static str,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
    /// CPUID normalization failed.
    #[error("vCPU {id}: CPUID: {source}")]
    Cpuid {
        /// vCPU index.
        id: u8,
        /// What was wrong.
        source: arch::cpuid::CpuidError,
    },
    /// Boot register setup failed.
    #[error("vCPU {id}: {source}")]
    Regs {
        /// vCPU index.
        id: u8,
        /// What failed.
        source: arch::regs::RegsError,
    },
    /// Building the MSR list failed.
    #[error("vCPU {id}: MSR list: {source:?}")]
    Msrs {
        /// vCPU index.
        id: u8,
        /// FAM wrapper error.
        source: vmm_sys_util::fam::Error,
    },
    /// A custom CPU template's MSR could not be applied.
    #[error("vCPU {id}: CPU template: {source}")]
    MsrTemplate {
        /// vCPU index.
        id: u8,
        /// Which MSR and why.
        source: crate::vstate::msr_template::MsrTemplateError,
    },
    /// An eventfd, signal handler or thread could not be created.
    #[error("vCPU {id}: {what}: {source}")]
    Os {
        /// vCPU index.
        id: u8,
        /// What was being created.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What a vCPU thread tells the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuEvent {
    /// The guest asked for a reset or shutdown (KVM system event).
    GuestStop {
        /// Which vCPU saw it.
        id: u8,
    },
    /// The vCPU hit an exit it cannot continue from; registers were logged.
    Fatal {
        /// Which vCPU.
        id: u8,
        /// What happened.
        reason: String,
    },
    /// The thread finished after an [`VcpuCommand::Exit`].
    Exited {
        /// Which vCPU.
        id: u8,
    },
}

/// What the VMM tells a vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuCommand {
    /// Stop running guest code until [`VcpuCommand::Resume`]; answered with
    /// [`VcpuResponse::Paused`] once the thread is out of `KVM_RUN`.
    Pause,
    /// Run guest code again; answered with [`VcpuResponse::Resumed`].
    Resume,
    /// Leave the run loop and end the thread.
    Exit,
    /// Read the vCPU's state (only while paused); answered with
    /// [`VcpuResponse::State`].
    SaveState,
}

/// A vCPU thread's answer to a command, on its own channel.
#[derive(Debug)]
pub enum VcpuResponse {
    /// The vCPU is paused.
    Paused,
    /// The vCPU runs again.
    Resumed,
    /// Its state, or why it could not be read.
    State(Result<Box<VcpuState>, String>),
}

/// A vCPU did not answer a command in time.
#[derive(Debug, thiserror::Error)]
#[error("vCPU {id} did not answer {command:?} in time")]
pub struct VcpuTimeout {
    /// Which vCPU.
    pub id: u8,
    /// The command.
    pub command: VcpuCommand,
}

/// Where the VMM sets a vCPU's `kvm_run.immediate_exit`: the address of
/// that byte in the vCPU's `kvm_run` mapping, for as long as the mapping
/// exists (the vCPU clears it, under the lock, before it unmaps).
struct ImmediateExit(Mutex<Option<*const AtomicU8>>);

// SAFETY: the pointer is only dereferenced under the mutex, while the
// mapping it points into is alive (see `detach`); the byte is only accessed
// atomically by flint.
unsafe impl Send for ImmediateExit {}
// SAFETY: as above.
unsafe impl Sync for ImmediateExit {}

impl ImmediateExit {
    fn new(fd: &mut VcpuFd) -> Self {
        let byte: *mut u8 = &mut fd.get_kvm_run().immediate_exit;
        Self(Mutex::new(Some(byte.cast_const().cast::<AtomicU8>())))
    }

    fn store(&self, value: u8) {
        let ptr = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(byte) = *ptr {
            // SAFETY: `byte` points into the vCPU's kvm_run mapping, which
            // stays mapped while the pointer is set (the vCPU detaches it
            // under this lock before dropping its fd); a u8 is always
            // aligned, and KVM only reads it at the start of KVM_RUN.
            unsafe { (*byte).store(value, Ordering::SeqCst) };
        }
    }

    /// Forgets the mapping (before it goes away).
    fn detach(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// The sending side of the vCPU → VMM channel: a message plus an eventfd
/// kick, so the VMM's epoll loop wakes up for it.
pub struct VcpuEventSender {
    tx: Sender<VcpuEvent>,
    wake: EventFd,
}

impl VcpuEventSender {
    /// A sender for `tx` waking `wake`.
    pub fn new(tx: Sender<VcpuEvent>, wake: EventFd) -> Self {
        Self { tx, wake }
    }

    /// Another sender on the same channel and eventfd.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            tx: self.tx.clone(),
            wake: self.wake.try_clone()?,
        })
    }

    fn send(&self, event: VcpuEvent) {
        // The VMM may already be gone while tearing down; nothing to tell then.
        if self.tx.send(event).is_ok() {
            if let Err(e) = self.wake.write(1) {
                log::error!("waking the VMM: {e}");
            }
        }
    }
}

/// The buses a vCPU dispatches exits to.
#[derive(Clone)]
pub struct VcpuBuses {
    /// Port I/O.
    pub pio: Arc<Bus>,
    /// Memory-mapped I/O.
    pub mmio: Arc<Bus>,
    /// Exit counters shared by all vCPUs of the VM.
    pub exits: Arc<ExitCounters>,
}

/// How often the vCPUs left the guest, by reason (for the metrics file).
#[derive(Debug, Default, serde::Serialize)]
pub struct ExitCounters {
    /// Port-I/O reads.
    pub io_in: AtomicU64,
    /// Port-I/O writes.
    pub io_out: AtomicU64,
    /// MMIO reads.
    pub mmio_read: AtomicU64,
    /// MMIO writes.
    pub mmio_write: AtomicU64,
    /// `KVM_RUN` interrupted by a signal (pause, stop).
    pub interrupted: AtomicU64,
    /// Everything else (system events, fatal exits).
    pub other: AtomicU64,
    /// Fatal exits alone (Firecracker's `vcpu.failures`).
    pub failures: AtomicU64,
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A configured vCPU, not yet running.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    buses: VcpuBuses,
    events: VcpuEventSender,
    commands: Receiver<VcpuCommand>,
    command_tx: Sender<VcpuCommand>,
    responses: Sender<VcpuResponse>,
    response_rx: Option<Receiver<VcpuResponse>>,
    caps: Arc<StateCaps>,
    started: Instant,
    immediate_exit: Arc<ImmediateExit>,
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        // The fd (and its kvm_run mapping) is dropped right after this.
        self.immediate_exit.detach();
    }
}

/// How the run loop goes on after one exit.
enum Step {
    Continue,
    GuestStop,
    Fatal(String),
}

static KICK_HANDLER: Once = Once::new();

/// The signal that interrupts `KVM_RUN` so a vCPU thread sees a command.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: being interrupted (KVM_RUN returns EINTR) is the point.
}

fn install_kick_handler() -> std::io::Result<()> {
    let mut result = Ok(());
    KICK_HANDLER.call_once(|| {
        result = register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

impl Vcpu {
    /// Creates vCPU `id` of `vm`. `started` is when flint started (for the
    /// boot-time log line).
    pub fn new(
        id: u8,
        vm: &Vm,
        buses: VcpuBuses,
        events: VcpuEventSender,
        caps: Arc<StateCaps>,
        started: Instant,
    ) -> Result<Self, VcpuError> {
        let mut fd = vm
            .fd()
            .create_vcpu(u64::from(id))
            .map_err(|source| VcpuError::Kvm {
                id,
                op: "KVM_CREATE_VCPU",
                source,
            })?;
        let (command_tx, commands) = channel();
        let (responses, response_rx) = channel();
        let immediate_exit = Arc::new(ImmediateExit::new(&mut fd));
        Ok(Self {
            immediate_exit,
            id,
            fd,
            buses,
            events,
            commands,
            command_tx,
            responses,
            response_rx: Some(response_rx),
            caps,
            started,
        })
    }

    /// Puts a saved state into this (new, not started) vCPU, after checking
    /// it against this host.
    pub fn restore_state(&self, state: &VcpuState) -> Result<(), VcpuStateError> {
        state.restore(&self.caps, &self.fd)
    }

    /// Reads this (not started) vCPU's state (a running vCPU saves itself
    /// on its thread: [`VcpuHandle::save_state`]).
    pub fn save_state(&self) -> Result<VcpuState, VcpuStateError> {
        VcpuState::save(&self.caps, &self.fd)
    }

    /// Sets CPUID, MSRs, FPU and LAPIC; for the boot vCPU (`boot_entry` given)
    /// also the long-mode registers that enter the kernel.
    pub fn configure(
        &self,
        kvm: &Kvm,
        mem: &GuestMemory,
        boot_entry: Option<GuestAddress>,
        vcpu_count: u8,
        template: CpuTemplate,
        cpuid_modifiers: &[arch::cpuid::CpuidModifier],
    ) -> Result<(), VcpuError> {
        let id = self.id;
        let kvm_err = |op| move |source| VcpuError::Kvm { id, op, source };
        let mut cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let topo = VcpuTopology {
            vcpu_id: id,
            vcpu_count,
        };
        normalize_cpuid(&mut cpuid, topo, template)
            .map_err(|source| VcpuError::Cpuid { id, source })?;
        arch::cpuid::apply_cpuid_modifiers(&mut cpuid, cpuid_modifiers)
            .map_err(|source| VcpuError::Cpuid { id, source })?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(kvm_err("KVM_SET_CPUID2"))?;

        let msrs = arch::msr::boot_msrs().map_err(|source| VcpuError::Msrs { id, source })?;
        let set = self.fd.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
        if set != msrs.as_slice().len() {
            let index = msrs.as_slice()[set].index;
            log::warn!("vCPU {id}: KVM refused boot MSR {index:#x}; continuing with its default");
        }

        arch::regs::setup_fpu(&self.fd).map_err(|source| VcpuError::Regs { id, source })?;
        if let Some(entry) = boot_entry {
            arch::regs::setup_boot_vcpu(&self.fd, mem, entry)
                .map_err(|source| VcpuError::Regs { id, source })?;
        }
        arch::lapic::setup_lapic(&self.fd).map_err(kvm_err("KVM_GET/SET_LAPIC"))
    }

    /// Applies a custom CPU template's MSR changes (after [`Vcpu::configure`],
    /// so they win over the boot MSRs).
    pub fn apply_msr_modifiers(&self, modifiers: &[api::MsrModifier]) -> Result<(), VcpuError> {
        crate::vstate::msr_template::apply_msr_modifiers(&self.fd, modifiers)
            .map(|_| ())
            .map_err(|source| VcpuError::MsrTemplate {
                id: self.id,
                source,
            })
    }

    /// Starts the vCPU's thread, running the guest at once or (`paused`,
    /// for a restored VM) waiting for [`VcpuHandle::resume`]. With `seccomp`
    /// the thread confines itself to the vCPU allow-list before anything else.
    pub fn start(mut self, paused: bool, seccomp: bool) -> Result<VcpuHandle, VcpuError> {
        let id = self.id;
        let responses = self.response_rx.take().ok_or(VcpuError::Os {
            id,
            what: "starting it twice",
            source: std::io::Error::other("already started"),
        })?;
        install_kick_handler().map_err(|source| VcpuError::Os {
            id,
            what: "installing the kick signal handler",
            source,
        })?;
        let commands = self.command_tx.clone();
        let immediate_exit = Arc::clone(&self.immediate_exit);
        let thread = std::thread::Builder::new()
            .name(format!("flint_vcpu{id}"))
            .spawn(move || {
                if seccomp {
                    if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Vcpu) {
                        let reason = format!("installing the seccomp filter: {e}");
                        self.events.send(VcpuEvent::Fatal {
                            id: self.id,
                            reason,
                        });
                        return;
                    }
                }
                if !paused || self.stay_paused() {
                    self.run();
                } else {
                    self.events.send(VcpuEvent::Exited { id: self.id });
                }
            })
            .map_err(|source| VcpuError::Os {
                id,
                what: "spawning its thread",
                source,
            })?;
        Ok(VcpuHandle {
            id,
            commands,
            responses,
            immediate_exit,
            thread: Some(thread),
        })
    }

    fn run(mut self) {
        let mut first_entry = true;
        loop {
            match self.commands.try_recv() {
                Ok(VcpuCommand::Exit) | Err(TryRecvError::Disconnected) => {
                    self.events.send(VcpuEvent::Exited { id: self.id });
                    return;
                }
                Ok(VcpuCommand::Pause) => {
                    if !self.stay_paused() {
                        self.events.send(VcpuEvent::Exited { id: self.id });
                        return;
                    }
                }
                Ok(VcpuCommand::Resume) => {
                    let _ = self.responses.send(VcpuResponse::Resumed);
                }
                Ok(VcpuCommand::SaveState) => {
                    let _ = self.responses.send(VcpuResponse::State(Err(
                        "the vCPU is running; pause it first".into(),
                    )));
                }
                Err(TryRecvError::Empty) => {}
            }
            if first_entry {
                first_entry = false;
                log::info!(
                    "vCPU {} entering the guest {:.1} ms after flint started",
                    self.id,
                    self.started.elapsed().as_secs_f64() * 1000.0
                );
            }
            match self.run_once() {
                Step::Continue => {}
                Step::GuestStop => {
                    count(&self.buses.exits.other);
                    self.events.send(VcpuEvent::GuestStop { id: self.id });
                    self.wait_for_exit();
                    return;
                }
                Step::Fatal(reason) => {
                    count(&self.buses.exits.other);
                    count(&self.buses.exits.failures);
                    log::error!("vCPU {}: {reason}\n{}", self.id, self.dump_registers());
                    self.events.send(VcpuEvent::Fatal {
                        id: self.id,
                        reason,
                    });
                    self.wait_for_exit();
                    return;
                }
            }
        }
    }

    /// Blocks outside `KVM_RUN` until resumed. Returns false when told to exit.
    fn stay_paused(&self) -> bool {
        let _ = self.responses.send(VcpuResponse::Paused);
        loop {
            match self.commands.recv() {
                Ok(VcpuCommand::Resume) => {
                    let _ = self.responses.send(VcpuResponse::Resumed);
                    return true;
                }
                Ok(VcpuCommand::Pause) => {
                    let _ = self.responses.send(VcpuResponse::Paused);
                }
                Ok(VcpuCommand::SaveState) => {
                    let state = VcpuState::save(&self.caps, &self.fd)
                        .map(Box::new)
                        .map_err(|e| e.to_string());
                    let _ = self.responses.send(VcpuResponse::State(state));
                }
                Ok(VcpuCommand::Exit) | Err(_) => return false,
            }
        }
    }

    /// After reporting the end of its run, a vCPU waits to be told to exit so
    /// that it never re-enters a guest the VMM is tearing down.
    fn wait_for_exit(&self) {
        while let Ok(command) = self.commands.recv() {
            match command {
                VcpuCommand::Exit => break,
                // It is out of the guest for good: as paused as it gets.
                VcpuCommand::Pause => {
                    let _ = self.responses.send(VcpuResponse::Paused);
                }
                VcpuCommand::Resume => {
                    let _ = self.responses.send(VcpuResponse::Resumed);
                }
                VcpuCommand::SaveState => {
                    let _ = self.responses.send(VcpuResponse::State(Err(
                        "the vCPU stopped after a guest stop or fatal exit".into(),
                    )));
                }
            }
        }
        self.events.send(VcpuEvent::Exited { id: self.id });
    }

    fn run_once(&mut self) -> Step {
        let buses = &self.buses;
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                count(&buses.exits.io_in);
                buses.pio.read(u64::from(port), data);
                Step::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                count(&buses.exits.io_out);
                buses.pio.write(u64::from(port), data);
                Step::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                count(&buses.exits.mmio_read);
                buses.mmio.read(addr, data);
                Step::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                count(&buses.exits.mmio_write);
                buses.mmio.write(addr, data);
                Step::Continue
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET => Step::GuestStop,
                other => Step::Fatal(format!("KVM_EXIT_SYSTEM_EVENT of type {other}")),
            },
            Ok(VcpuExit::Shutdown) => Step::Fatal("triple fault (KVM_EXIT_SHUTDOWN)".to_string()),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Step::Fatal(format!(
                "KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {reason:#x} on host CPU {cpu}"
            )),
            Ok(VcpuExit::InternalError) => Step::Fatal(self.internal_error_text()),
            Ok(VcpuExit::Hlt) => {
                Step::Fatal("unexpected KVM_EXIT_HLT with an in-kernel irqchip".into())
            }
            Ok(other) => Step::Fatal(format!("unexpected exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                count(&buses.exits.interrupted);
                // Kicked: clear the flag the kick set, then look at the
                // commands (in this order: a kick after the clearing sets it
                // again, for a command the run loop then sees).
                self.immediate_exit.store(0);
                Step::Continue
            }
            Err(e) => Step::Fatal(format!("KVM_RUN failed: {e}")),
        }
    }

    fn internal_error_text(&mut self) -> String {
        let run = self.fd.get_kvm_run();
        // SAFETY: KVM filled the `internal` member of the exit union because the
        // exit reason is KVM_EXIT_INTERNAL_ERROR; every bit pattern of its plain
        // integer fields is valid.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let count = (internal.ndata as usize).min(internal.data.len());
        let data: Vec<String> = internal.data[..count]
            .iter()
            .map(|d| format!("{d:#x}"))
            .collect();
        let kind = match internal.suberror {
            1 => " (emulation failure: an instruction this host's KVM cannot emulate)",
            2 => " (simultaneous exception)",
            3 => " (delivery event failure)",
            _ => "",
        };
        format!(
            "KVM_EXIT_INTERNAL_ERROR suberror {}{kind}, data [{}]",
            internal.suberror,
            data.join(", ")
        )
    }

    fn dump_registers(&self) -> String {
        let mut out = String::new();
        match self.fd.get_regs() {
            Ok(r) => {
                let _ = writeln!(
                    out,
                    "  rip={:#018x} rsp={:#018x} rbp={:#018x} rflags={:#x}\n  rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n  rsi={:#018x} rdi={:#018x} r8={:#018x} r9={:#018x}",
                    r.rip, r.rsp, r.rbp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.r8, r.r9
                );
            }
            Err(e) => {
                let _ = writeln!(out, "  (registers unavailable: {e})");
            }
        }
        match self.fd.get_sregs() {
            Ok(s) => {
                let _ = write!(
                    out,
                    "  cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}(l={}) ss={:#x}",
                    s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.cs.l, s.ss.selector
                );
            }
            Err(e) => {
                let _ = write!(out, "  (special registers unavailable: {e})");
            }
        }
        out
    }
}

mod handle;
#[cfg(test)]
mod tests;

pub use handle::{pause_all, resume_all, PauseError, VcpuHandle, COMMAND_TIMEOUT};
