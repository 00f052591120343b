//! A hostile guest driver against one virtio device (see the crate docs).
//!
//! Input layout: the first [`IMAGE_LEN`] bytes become guest memory from
//! address 0 (rings and buffers; the queues are placed in that range, so the
//! fuzzer owns every descriptor and ring index), the rest is a program of
//! operations ([`run_ops`]). A short input still gets every queue notified
//! once after a full driver set-up.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::cell::RefCell;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use devices::bus::BusDevice;
use devices::virtio::balloon::{Balloon, BalloonConfig};
use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::mmio::MmioTransport;
use devices::virtio::net::{Net, NetBackend, NetConfig};
use devices::virtio::rng::Rng;
use devices::virtio::vsock::{Vsock, VsockConfig};
use devices::virtio::{status, GuestMemory, IrqTrigger, VirtioDevice};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};

/// Guest RAM (buffers may point anywhere in it; beyond is "outside memory").
const MEM_SIZE: usize = 0x1_0000;
/// Bytes of input copied to guest memory at address 0.
pub const IMAGE_LEN: usize = 2048;
/// Queue size the driver picks (small, so rings fit the image).
const QUEUE_SIZE: u32 = 8;
/// Event-loop turns after a notification (devices re-arm themselves when
/// they stop early for their work budget).
const TURNS: usize = 4;
/// How often, and how long each time (ms), [`Rig::settle`] waits for the
/// vsock connector thread at most.
const SETTLE_ROUNDS: usize = 100;
const SETTLE_WAIT_MS: i32 = 100;

/// Which device model to drive.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// virtio-blk on a scratch image.
    Block,
    /// virtio-net on a socket pair standing for the tap.
    Net,
    /// virtio-rng.
    Rng,
    /// virtio-balloon with every feature offered.
    Balloon,
    /// virtio-vsock with its host listener in a scratch directory.
    Vsock,
}

/// A socket pair standing for a tap: frames the device writes are dropped,
/// frames the fuzzer injects are read by the device.
struct PairBackend(UnixDatagram);

impl AsRawFd for PairBackend {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl NetBackend for PairBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.recv(buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        Ok(frame.len())
    }
    fn set_offload(&mut self, _flags: u32) -> std::io::Result<()> {
        Ok(())
    }
}

/// The device model and what it is wired to: its event loop (a real
/// `EventManager`), clones of its queue eventfds (the fuzzer's
/// notifications) and, for network cards, both ends of the tap's stand-in.
///
/// Made once per process and reused for every input (see [`reusable`]):
/// building a device per input (a listener socket bound in a directory, a
/// connector thread spawned and ended for vsock; an epoll set, eventfds and
/// a file opened for the others) cost more than the input's own work.
/// Between inputs [`Rig::clean`] puts it back in the state a fresh device
/// has, so an input run alone (a fresh process, hence a fresh device) does
/// what it did mid-run and a crash reproduces.
struct Rig {
    device: Arc<Mutex<dyn VirtioDevice>>,
    events: Vec<vmm_sys_util::eventfd::EventFd>,
    manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    /// The host's end of the tap stand-in (frames the fuzzer injects).
    host_side: Option<UnixDatagram>,
    /// A clone of the device's end, to drop frames left unread by an input.
    tap_side: Option<UnixDatagram>,
    /// The vsock device, to wait for its connector thread ([`Rig::settle`]).
    vsock: Option<Arc<Mutex<Vsock>>>,
    /// The balloon, whose reset keeps state a new device does not have
    /// ([`Rig::clean`] uses `Balloon::reset_to_new`).
    balloon: Option<Arc<Mutex<Balloon>>>,
}

/// Whether the device is reused across inputs: yes (every device's reset
/// leaves nothing of an input behind but counters, which no code path reads
/// back; the balloon's reset keeps its config space, statistics and
/// hinting state, so it gets `Balloon::reset_to_new`), unless
/// `FLINT_FUZZ_FRESH_DEVICE=1` asks for one per input (to compare).
fn reusable() -> bool {
    static FRESH: OnceLock<bool> = OnceLock::new();
    !*FRESH.get_or_init(|| std::env::var_os("FLINT_FUZZ_FRESH_DEVICE").is_some())
}

/// Whether `FLINT_FUZZ_CHECK_RESET` is set (see [`check_against_fresh`]).
fn checking_reset() -> bool {
    static CHECK: OnceLock<bool> = OnceLock::new();
    *CHECK.get_or_init(|| std::env::var_os("FLINT_FUZZ_CHECK_RESET").is_some())
}

/// What every input of a fuzz process shares, made once: guest memory
/// (zeroed before each input), a scratch directory (on tmpfs when there is
/// one, see [`crate::scratch_base`]), the block device's image (rewritten
/// before each input) and the reusable device. Creating them per input (a
/// directory, a file, a mapping, a device) cost most of an execution;
/// resetting them gives each input the same starting point for a fraction
/// of that.
struct Process {
    mem: GuestMemory,
    scratch: PathBuf,
    image: std::fs::File,
    rig: RefCell<Option<Rig>>,
}

/// What guest memory is reset to.
static ZEROS: [u8; MEM_SIZE] = [0; MEM_SIZE];

/// The block device's image: 8 sectors of 0x5a.
const IMAGE_BYTES: [u8; 8 * 512] = [0x5a; 8 * 512];

impl Process {
    fn new() -> Option<Self> {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).ok()?;
        let scratch = process_scratch()?;
        let image = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(scratch.join("disk.img"))
            .ok()?;
        Some(Self {
            mem,
            scratch,
            image,
            rig: RefCell::new(None),
        })
    }

    /// Back to the state a fresh process starts an input in: zeroed guest
    /// memory and, for a block device, the image's original bytes and size.
    fn reset(&self, kind: Kind) -> Option<()> {
        use std::os::unix::fs::FileExt;
        self.mem.write_slice(&ZEROS, GuestAddress(0)).ok()?;
        if matches!(kind, Kind::Block) {
            self.image.set_len(IMAGE_BYTES.len() as u64).ok()?;
            self.image.write_all_at(&IMAGE_BYTES, 0).ok()?;
        }
        Some(())
    }
}

/// This process's scratch directory, `flint-fuzz/<pid>` under
/// [`crate::scratch_base`]. libFuzzer ends the process with `exit()`, so
/// nothing of ours is dropped and the directory stays behind: each new
/// process removes those of processes that are gone, so at most the ones of
/// running (or last crashed) fuzzers exist.
fn process_scratch() -> Option<PathBuf> {
    let base = crate::scratch_base().join("flint-fuzz");
    std::fs::create_dir_all(&base).ok()?;
    for entry in std::fs::read_dir(&base).ok()?.flatten() {
        let name = entry.file_name();
        let gone = name
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new("/proc").join(pid.to_string()).exists());
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = base.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).ok()?;
    Some(dir)
}

thread_local! {
    static PROCESS: Option<Process> = Process::new();
}

impl Rig {
    /// A fresh device of `kind`; a vsock listener is bound at `socket` in
    /// the scratch directory.
    fn new(kind: Kind, process: &Process, socket: &str) -> Option<Self> {
        let scratch = &process.scratch;
        let mut manager = EventManager::new().ok()?;
        let mut host_side = None;
        let mut tap_side = None;
        let mut vsock = None;
        let mut balloon = None;
        macro_rules! wire_shared {
            ($device:expr) => {{
                let device = $device;
                let events = lock(&device)
                    .queue_events()
                    .iter()
                    .map(|e| e.try_clone().ok())
                    .collect::<Option<Vec<_>>>()?;
                manager.add_subscriber(device.clone() as Arc<Mutex<dyn MutEventSubscriber + Send>>);
                (device as Arc<Mutex<dyn VirtioDevice>>, events)
            }};
        }
        macro_rules! wire {
            ($dev:expr) => {
                wire_shared!(Arc::new(Mutex::new($dev)))
            };
        }
        let (device, events) = match kind {
            Kind::Block => {
                let image = scratch.join("disk.img");
                wire!(Block::new(BlockConfig {
                    drive_id: "fuzz".into(),
                    path: image,
                    read_only: false,
                    rate_limiter: None,
                })
                .ok()?)
            }
            Kind::Net => {
                let (ours, theirs) = UnixDatagram::pair().ok()?;
                ours.set_nonblocking(true).ok()?;
                theirs.set_nonblocking(true).ok()?;
                tap_side = Some(ours.try_clone().ok()?);
                host_side = Some(theirs);
                let config = NetConfig {
                    iface_id: "fuzz".into(),
                    tap_name: String::new(),
                    mac: Some([6, 0, 0, 0, 0, 1]),
                    rx_rate_limiter: None,
                    tx_rate_limiter: None,
                };
                wire!(Net::with_backend(config, Box::new(PairBackend(ours))).ok()?)
            }
            Kind::Rng => wire!(Rng::new(None).ok()?),
            Kind::Balloon => {
                let device = Arc::new(Mutex::new(
                    Balloon::new(BalloonConfig {
                        amount_mib: 1,
                        deflate_on_oom: true,
                        stats_polling_interval_s: 1,
                        free_page_hinting: true,
                        free_page_reporting: true,
                    })
                    .ok()?,
                ));
                balloon = Some(device.clone());
                wire_shared!(device)
            }
            Kind::Vsock => {
                let device = Arc::new(Mutex::new(
                    Vsock::new(VsockConfig {
                        guest_cid: 3,
                        uds_path: scratch.join(socket),
                    })
                    .ok()?,
                ));
                vsock = Some(device.clone());
                wire_shared!(device)
            }
        };
        Some(Self {
            device,
            events,
            manager,
            host_side,
            tap_side,
            vsock,
            balloon,
        })
    }

    /// Turns the event loop until the vsock connector thread has answered
    /// every guest connect asked of it and the device has acted on the
    /// answers (an RST to the guest, or a live connection). Without this,
    /// whether an answer arrives within the same input depends on thread
    /// scheduling: an input would not always do the same thing, and an
    /// answer arriving during the next input would be handled there (and
    /// its allocations freed there, which makes libFuzzer run a full leak
    /// check after almost every input). A no-op for other devices.
    fn settle(&mut self) {
        let Some(vsock) = &self.vsock else {
            return;
        };
        // The connects go to paths where nothing listens, so each answer
        // takes the helper thread microseconds; the bound is only a guard.
        for _ in 0..SETTLE_ROUNDS {
            if lock(vsock).connects_in_flight() == 0 {
                return;
            }
            // Blocks until the connector's eventfd (in the device's epoll
            // set, on this event loop) is readable.
            let _ = self.manager.run_with_timeout(SETTLE_WAIT_MS);
        }
    }

    /// Back to a fresh device's state after an input: the device reset
    /// (queues dropped; vsock: every connection closed, pending connects
    /// forgotten), notifications and frames the input left unread dropped,
    /// and the event loop turned until quiet so no event of this input is
    /// handled during the next one.
    fn clean(&mut self) {
        match &self.balloon {
            Some(balloon) => {
                let _ = lock(balloon).reset_to_new();
            }
            None => lock(&self.device).reset(),
        }
        for evt in &self.events {
            let _ = evt.read();
        }
        if let Some(tap) = &self.tap_side {
            let mut buf = [0u8; 1];
            while tap.recv(&mut buf).is_ok() {}
        }
        self.settle();
        for _ in 0..TURNS {
            if !matches!(self.manager.run_with_timeout(0), Ok(n) if n > 0) {
                break;
            }
        }
    }
}

/// Locks a device, also after a panic elsewhere poisoned the lock.
fn lock<D: ?Sized>(device: &Mutex<D>) -> std::sync::MutexGuard<'_, D> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

/// One input's view: a fresh transport (register file, interrupt) on the
/// process's device and memory.
struct Harness<'a> {
    transport: MmioTransport,
    rig: &'a mut Rig,
    mem: GuestMemory,
}

impl Harness<'_> {
    fn write32(&mut self, offset: u64, value: u32) {
        self.transport.write(0, offset, &value.to_le_bytes());
    }

    fn read32(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.transport.read(0, offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// A driver's set-up: features (offered ∩ `mask`), every queue placed in
    /// the fuzzer's image, DRIVER_OK.
    fn set_up(&mut self, mask: u64) {
        self.write32(0x70, status::ACKNOWLEDGE | status::DRIVER);
        for sel in 0..2u32 {
            self.write32(0x14, sel);
            let offered = self.read32(0x10);
            self.write32(0x24, sel);
            self.write32(0x20, offered & (mask >> (32 * sel)) as u32);
        }
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.write32(0x70, s);
        for q in 0..self.rig.events.len() as u64 {
            self.write32(0x30, q as u32);
            self.write32(0x38, QUEUE_SIZE);
            let desc = q * 0x80;
            let avail = 0x300 + q * 0x20;
            let used = 0x400 + q * 0x50;
            for (off, addr) in [(0x80, desc), (0x90, avail), (0xa0, used)] {
                self.write32(off, addr as u32);
                self.write32(off + 4, 0);
            }
            self.write32(0x44, 1);
        }
        self.write32(0x70, s | status::DRIVER_OK);
    }

    fn notify(&mut self, queue: usize) {
        if let Some(evt) = self.rig.events.get(queue) {
            let _ = evt.write(1);
        }
        for _ in 0..TURNS {
            let _ = self.rig.manager.run_with_timeout(0);
        }
        self.rig.settle();
    }
}

/// Runs one fuzz input against a device of `kind`.
pub fn run(kind: Kind, data: &[u8]) {
    PROCESS.with(|process| {
        if let Some(process) = process {
            run_in(kind, data, process);
        }
    });
}

fn run_in(kind: Kind, data: &[u8], process: &Process) {
    if process.reset(kind).is_none() {
        return;
    }
    let cached = process.rig.borrow_mut().take();
    let Some(mut rig) = cached.or_else(|| Rig::new(kind, process, "v.sock")) else {
        return;
    };
    run_on(&mut rig, data, &process.mem);
    if reusable() {
        rig.clean();
        if checking_reset() {
            check_against_fresh(kind, data, process);
        }
        *process.rig.borrow_mut() = Some(rig);
    }
}

/// `FLINT_FUZZ_CHECK_RESET=1` (a check of [`Rig::clean`], not for long
/// runs): runs the input again on a device built for it alone and panics if
/// guest memory ends up different from the run on the reused device. Run
/// it over a corpus (`-runs=0`): a difference is state one input left to
/// the next. Not for virtio-rng, whose buffers get random bytes.
fn check_against_fresh(kind: Kind, data: &[u8], process: &Process) {
    if matches!(kind, Kind::Rng) {
        return;
    }
    let mut reused = vec![0u8; MEM_SIZE];
    let _ = process.mem.read_slice(&mut reused, GuestAddress(0));
    if process.reset(kind).is_none() {
        return;
    }
    let Some(mut fresh) = Rig::new(kind, process, "check.sock") else {
        return;
    };
    run_on(&mut fresh, data, &process.mem);
    let mut alone = vec![0u8; MEM_SIZE];
    let _ = process.mem.read_slice(&mut alone, GuestAddress(0));
    if let Some(at) = reused.iter().zip(&alone).position(|(a, b)| a != b) {
        let window = at & !0xf..(at & !0xf) + 16;
        panic!(
            "{kind:?}: guest memory differs at {at:#x} between a reused and a fresh device \
             ({:02x?} vs {:02x?})",
            &reused[window.clone()],
            &alone[window]
        );
    }
}

/// One input on `rig` (a fresh device or one [`Rig::clean`] left as one).
fn run_on(rig: &mut Rig, data: &[u8], mem: &GuestMemory) {
    let Some(irq) = IrqTrigger::new().ok().map(Arc::new) else {
        return;
    };
    let Ok(transport) = MmioTransport::new(rig.device.clone(), mem.clone(), irq) else {
        return;
    };
    let mut h = Harness {
        transport,
        rig,
        mem: mem.clone(),
    };
    let (image, ops) = data.split_at(data.len().min(IMAGE_LEN));
    let _ = h.mem.write_slice(image, GuestAddress(0));
    // Feature mask: every offered feature unless the program says otherwise.
    let mask = ops
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(u64::MAX, u64::from_le_bytes);
    h.set_up(mask);
    if ops.len() <= 8 {
        for q in 0..h.rig.events.len() {
            h.notify(q);
        }
        return;
    }
    run_ops(&mut h, &ops[8..]);
}

/// The program: one opcode byte, then its operands.
/// 0: register write (u16 offset, u32 value); 1: register read (u16);
/// 2: notify queue (u8); 3: host frame (u8 length, bytes) then RX turn;
/// 4: guest memory write (u16 address, 4 bytes); 5: event-loop turn.
fn run_ops(h: &mut Harness, mut ops: &[u8]) {
    let mut steps = 0;
    while let Some((&op, rest)) = ops.split_first() {
        ops = rest;
        steps += 1;
        if steps > 256 {
            break;
        }
        let take = |ops: &mut &[u8], n: usize| -> Option<Vec<u8>> {
            let (a, b) = (ops.get(..n)?.to_vec(), ops.get(n..)?);
            *ops = b;
            Some(a)
        };
        match op % 6 {
            0 => {
                let Some(b) = take(&mut ops, 6) else { break };
                let off = u64::from(u16::from_le_bytes([b[0], b[1]]) & 0x1ff);
                h.write32(off, u32::from_le_bytes([b[2], b[3], b[4], b[5]]));
            }
            1 => {
                let Some(b) = take(&mut ops, 2) else { break };
                h.read32(u64::from(u16::from_le_bytes([b[0], b[1]]) & 0x1ff));
            }
            2 => {
                let Some(b) = take(&mut ops, 1) else { break };
                h.notify(usize::from(b[0]) % h.rig.events.len().max(1));
            }
            3 => {
                let Some(n) = take(&mut ops, 1) else { break };
                let len = usize::from(n[0]).min(ops.len());
                let Some(frame) = take(&mut ops, len) else {
                    break;
                };
                if let Some(host) = &h.rig.host_side {
                    let _ = host.send(&frame);
                }
                for _ in 0..TURNS {
                    let _ = h.rig.manager.run_with_timeout(0);
                }
                h.rig.settle();
            }
            4 => {
                let Some(b) = take(&mut ops, 6) else { break };
                let addr = u64::from(u16::from_le_bytes([b[0], b[1]]));
                let _ = h.mem.write_slice(&b[2..], GuestAddress(addr));
            }
            _ => {
                let _ = h.rig.manager.run_with_timeout(0);
                h.rig.settle();
            }
        }
    }
    // Let timers (rate limiters, stats) that fired be handled too.
    std::thread::sleep(Duration::from_millis(0));
    let _ = h.rig.manager.run_with_timeout(0);
    h.rig.settle();
}
