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

/// The VMM's handle on a running vCPU thread.
pub struct VcpuHandle {
    id: u8,
    commands: Sender<VcpuCommand>,
    responses: Receiver<VcpuResponse>,
    immediate_exit: Arc<ImmediateExit>,
    thread: Option<JoinHandle<()>>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Condvar;

    /// A port device whose writes block until it is opened: a vCPU stuck in
    /// a device (a host file that does not answer, a lock held elsewhere).
    #[derive(Clone, Default)]
    struct Gate(Arc<(Mutex<(bool, bool)>, Condvar)>);

    impl Gate {
        /// Waits until a vCPU is inside the device (60 s at most).
        fn wait_entered(&self) {
            let (lock, cv) = &*self.0;
            let state = lock.lock().unwrap();
            let (state, _) = cv
                .wait_timeout_while(state, Duration::from_secs(60), |s| !s.0)
                .unwrap();
            assert!(state.0, "the vCPU never reached the device");
        }
        fn open(&self) {
            self.0 .0.lock().unwrap().1 = true;
            self.0 .1.notify_all();
        }
    }

    impl devices::bus::BusDevice for Gate {
        fn read(&mut self, _: u64, _: u64, _: &mut [u8]) {}
        fn write(&mut self, _: u64, _: u64, _: &[u8]) {
            let (lock, cv) = &*self.0;
            let mut state = lock.lock().unwrap();
            state.0 = true;
            cv.notify_all();
            while !state.1 {
                state = cv.wait(state).unwrap();
            }
        }
    }

    /// Real-mode code at guest 0x1000: vCPU 0 loops on `out 0x80, al`, vCPU 1
    /// on `out 0x81, al` (at 0x1010), vCPU 2 on `jmp $` (at 0x1020).
    const CODE: [(u64, &[u8]); 3] = [
        (0x1000, &[0xe6, 0x80, 0xeb, 0xfc]),
        (0x1010, &[0xe6, 0x81, 0xeb, 0xfc]),
        (0x1020, &[0xeb, 0xfe]),
    ];

    fn test_vm() -> Vm {
        let vm = Vm::new().expect("KVM is needed for the vCPU tests");
        // SAFETY: a fresh anonymous mapping, never unmapped (KVM uses it for
        // the rest of the test process).
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
        for (addr, code) in CODE {
            // SAFETY: every piece of code lies within the 4 KiB mapping.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    code.as_ptr(),
                    mem.cast::<u8>().add((addr - 0x1000) as usize),
                    code.len(),
                )
            };
        }
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0x1000,
            memory_size: 0x1000,
            userspace_addr: mem as u64,
        };
        // SAFETY: the mapping outlives the VM (it is never unmapped).
        unsafe { vm.fd().set_user_memory_region(region) }.unwrap();
        vm
    }

    /// vCPU `id` of `vm` running `CODE[id]`, its port bus holding `device`
    /// at 0x81; returns the vCPU and its port bus.
    fn test_vcpu(vm: &Vm, id: u8, device: Option<Gate>) -> (Vcpu, Arc<Bus>) {
        let mut pio = Bus::new();
        if let Some(device) = device {
            pio.insert(Arc::new(Mutex::new(device)), 0x81, 1).unwrap();
        }
        let pio = Arc::new(pio);
        let buses = VcpuBuses {
            pio: pio.clone(),
            mmio: Arc::new(Bus::new()),
            exits: Arc::default(),
        };
        let (tx, _rx) = channel();
        std::mem::forget(_rx);
        let events = VcpuEventSender::new(tx, EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let vcpu = Vcpu::new(
            id,
            vm,
            buses,
            events,
            Arc::new(StateCaps::default()),
            Instant::now(),
        )
        .unwrap();
        let mut sregs = vcpu.fd.get_sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.fd.set_sregs(&sregs).unwrap();
        let regs = kvm_bindings::kvm_regs {
            rip: CODE[usize::from(id)].0,
            rflags: 2,
            ..Default::default()
        };
        vcpu.fd.set_regs(&regs).unwrap();
        (vcpu, pio)
    }

    /// Runs `f` on a thread; fails if it has not returned after a generous
    /// timeout (the old code never returned).
    fn must_return<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("{what} hung"))
    }

    #[test]
    fn a_kick_before_kvm_run_is_not_lost() {
        let vm = test_vm();
        // vCPU 2 spins on `jmp $`: only a kick ever gets KVM_RUN to return.
        let (mut vcpu, _) = test_vcpu(&vm, 2, None);
        install_kick_handler().unwrap();
        // The kick lands while the thread is outside KVM_RUN (no signal
        // can interrupt a KVM_RUN that has not started): the flag alone
        // makes the next KVM_RUN return.
        vcpu.immediate_exit.store(1);
        let vcpu = must_return("KVM_RUN after a kick", move || {
            assert!(matches!(vcpu.run_once(), Step::Continue));
            vcpu
        });
        assert_eq!(vcpu.buses.exits.interrupted.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn pause_and_resume_answer_every_time() {
        let vm = test_vm();
        let (vcpu, pio) = test_vcpu(&vm, 0, None);
        let handle = vcpu.start(false, false).unwrap();
        must_return("pause/resume", move || {
            for _ in 0..50 {
                handle.pause().unwrap();
                handle.resume().unwrap();
            }
            drop(handle);
        });
        assert!(pio.unhandled().writes.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn stop_is_bounded_when_a_vcpu_is_stuck_in_a_device() {
        let vm = test_vm();
        let gate = Gate::default();
        let (vcpu, _) = test_vcpu(&vm, 1, Some(gate.clone()));
        let mut handle = vcpu.start(false, false).unwrap();
        gate.wait_entered();
        let handle = must_return("stop", move || {
            handle.stop();
            handle
        });
        assert!(handle.thread.is_none());
        gate.open();
    }

    #[test]
    fn pause_is_all_or_nothing() {
        let vm = test_vm();
        let gate = Gate::default();
        let (vcpu0, pio0) = test_vcpu(&vm, 0, None);
        let (vcpu1, _) = test_vcpu(&vm, 1, Some(gate.clone()));
        let handles = vec![
            vcpu0.start(false, false).unwrap(),
            vcpu1.start(false, false).unwrap(),
        ];
        gate.wait_entered();
        let (handles, result) = must_return("pause_all", move || {
            let result = pause_all(&handles);
            (handles, result)
        });
        match result {
            Err(PauseError::Pause { ids }) => assert_eq!(ids, vec![1]),
            other => panic!("expected vCPU 1 to fail to pause: {other:?}"),
        }
        // vCPU 0 was resumed: it keeps running its loop.
        let before = pio0.unhandled().writes.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(60);
        while pio0.unhandled().writes.load(Ordering::Relaxed) == before {
            assert!(Instant::now() < deadline, "vCPU 0 stayed paused");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Once the device lets go, vCPU 1 pauses and resumes (as queued),
        // and the whole VM pauses and resumes.
        gate.open();
        must_return("pause_all/resume_all", move || {
            pause_all(&handles).unwrap();
            resume_all(&handles).unwrap();
            drop(handles);
        });
    }
}
