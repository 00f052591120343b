//! The control thread (`flint_ctl`): the slow, file- and socket-bound half
//! of snapshots and live migration, off the thread that serves the guest's
//! devices.
//!
//! The VMM thread still does what needs the VM itself and is quick: pausing,
//! collecting device and vCPU state, reading the dirty log. It hands the
//! control thread a [`Job`] (guest memory is shared, so no copy), returns
//! to its event loop, and answers the control thread's [`Event`]s when the
//! shared API eventfd wakes it. While a pre-copy migration streams RAM the
//! guest runs and its disk and network keep being served.
//!
//! It also opens the files API requests name once the VMM thread is
//! confined (a drive's new image, log and metrics files): the VMM thread's
//! filter has no `open`/`openat` ([`Job::Open`]).
//!
//! The control thread has its own seccomp filter
//! ([`crate::seccomp::ThreadKind::Control`]): files and sockets, no KVM.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Instant;

use api::{ApiRequest, ApiResponse};
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemory;
use crate::migration::{MigrationError, MigrationKey, MigrationReport, SourceVm};
use crate::snapshot::format;
use crate::snapshot::memory::{dump, Pages};

/// Work for the control thread.
pub(super) enum Job {
    /// Write a snapshot whose state is already collected.
    WriteSnapshot(SnapshotJob),
    /// Stream the running VM to another flint.
    Migrate(MigrateJob),
    /// Open a file for the VMM thread, which may not open files once
    /// confined (a drive's new image, a log or metrics file).
    Open(OpenJob),
}

/// How to open a file for the VMM thread.
#[derive(Debug, Clone, Copy)]
pub(super) enum OpenHow {
    /// A drive image ([`devices::virtio::block::open_image`]).
    Image { read_only: bool },
    /// Log or metrics output ([`crate::bounded_writer::open_output`]:
    /// appended, never blocking, FIFOs included).
    Output,
}

/// A file to open, and the API request that needs it (served by the VMM
/// thread once the file is open, see `Vmm::preopened`).
pub(super) struct OpenJob {
    pub path: PathBuf,
    pub how: OpenHow,
    pub request: ApiRequest,
    pub reply: Sender<ApiResponse>,
}

/// A snapshot to write: memory (all of it, or the pages in `dirty`) and the
/// encoded state, to temporary names, then renamed into place.
pub(super) struct SnapshotJob {
    pub mem: GuestMemory,
    pub dirty: Option<Vec<Vec<u64>>>,
    pub mem_path: PathBuf,
    pub state_path: PathBuf,
    pub state_bytes: Vec<u8>,
    pub id: u64,
    pub kind: &'static str,
    pub reply: Sender<ApiResponse>,
}

/// A migration to run.
pub(super) struct MigrateJob {
    pub mem: GuestMemory,
    pub destination: String,
    pub key_path: PathBuf,
    pub reply: Sender<ApiResponse>,
}

/// A paused VM's pages dirtied since the last look, and its encoded state.
pub(super) type Collected = (Vec<Vec<u64>>, Vec<u8>);

/// What the control thread tells or asks the VMM thread.
pub(super) enum Event {
    /// A snapshot job ended; answer the API with `result`.
    SnapshotWritten {
        result: Result<(), String>,
        reply: Sender<ApiResponse>,
    },
    /// Read and reset the dirty log.
    DirtyPages {
        answer: Sender<Result<Vec<Vec<u64>>, String>>,
    },
    /// Pause the vCPUs, read the dirty log, collect and encode the state.
    PauseAndCollect {
        answer: Sender<Result<Collected, String>>,
    },
    /// A file asked for with [`Job::Open`] was opened (or not).
    Opened {
        path: PathBuf,
        file: std::io::Result<std::fs::File>,
        request: ApiRequest,
        reply: Sender<ApiResponse>,
    },
    /// A migration ended.
    MigrationEnded {
        result: Result<MigrationReport, MigrationError>,
        destination: String,
        reply: Sender<ApiResponse>,
    },
}

/// The VMM thread's handle on the control thread.
pub(super) struct Control {
    jobs: Sender<Job>,
    events: Receiver<Event>,
}

/// The control thread's way back to the VMM thread: an event, then a kick
/// of the API eventfd the event loop watches.
#[derive(Clone)]
struct Back {
    events: Sender<Event>,
    wake: std::sync::Arc<EventFd>,
}

impl Back {
    fn send(&self, event: Event) -> bool {
        if self.events.send(event).is_err() {
            return false;
        }
        if let Err(e) = self.wake.write(1) {
            log::error!("waking the VMM thread: {e}");
        }
        true
    }

    /// Asks the VMM thread something and waits for the answer.
    fn ask<T>(&self, event: impl FnOnce(Sender<T>) -> Event) -> Result<T, MigrationError> {
        let (tx, rx) = channel();
        if !self.send(event(tx)) {
            return Err(MigrationError::State("the VMM thread is gone".into()));
        }
        rx.recv()
            .map_err(|_| MigrationError::State("the VMM thread is gone".into()))
    }
}

impl Control {
    /// Starts the control thread; `wake` is (a duplicate of) the eventfd the
    /// event loop watches for API requests.
    pub fn spawn(wake: EventFd, seccomp: bool) -> std::io::Result<Self> {
        let (jobs, job_rx) = channel();
        let (event_tx, events) = channel();
        let back = Back {
            events: event_tx,
            wake: std::sync::Arc::new(wake),
        };
        std::thread::Builder::new()
            .name("flint_ctl".into())
            .spawn(move || {
                if seccomp {
                    if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Control) {
                        log::error!("control thread: installing its seccomp filter: {e}");
                        return;
                    }
                }
                for job in job_rx {
                    match job {
                        Job::WriteSnapshot(job) => write_snapshot(job, &back),
                        Job::Migrate(job) => migrate(job, &back),
                        Job::Open(job) => open(job, &back),
                    }
                }
            })?;
        Ok(Self { jobs, events })
    }

    /// Queues `job`; false if the thread is gone.
    pub fn submit(&self, job: Job) -> bool {
        self.jobs.send(job).is_ok()
    }

    /// The next event from the control thread, if any.
    pub fn next_event(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }
}

fn open(job: OpenJob, back: &Back) {
    let file = match job.how {
        OpenHow::Image { read_only } => devices::virtio::block::open_image(&job.path, read_only),
        OpenHow::Output => crate::bounded_writer::open_output(&job.path),
    };
    back.send(Event::Opened {
        path: job.path,
        file,
        request: job.request,
        reply: job.reply,
    });
}

fn write_snapshot(job: SnapshotJob, back: &Back) {
    let started = Instant::now();
    let result = (|| {
        let mem_tmp = format::temp_path(&job.mem_path);
        let pages = match &job.dirty {
            Some(dirty) => Pages::Dirty(dirty),
            None => Pages::All,
        };
        let written = dump(&job.mem, &mem_tmp, pages, job.id).map_err(|e| e.to_string())?;
        let state_tmp = match format::write_temp(&job.state_path, &job.state_bytes) {
            Ok(tmp) => tmp,
            Err(e) => {
                let _ = std::fs::remove_file(&mem_tmp);
                return Err(e.to_string());
            }
        };
        let committed = format::commit(&mem_tmp, &job.mem_path)
            .and_then(|()| format::commit(&state_tmp, &job.state_path));
        if let Err(e) = committed {
            let _ = std::fs::remove_file(&mem_tmp);
            let _ = std::fs::remove_file(&state_tmp);
            return Err(e.to_string());
        }
        Ok(written)
    })();
    if let Ok(written) = &result {
        let latency = if job.kind == "Diff" {
            crate::metrics::Latency::DiffCreateSnapshot
        } else {
            crate::metrics::Latency::FullCreateSnapshot
        };
        crate::metrics::record_latency(latency, started.elapsed());
        log::info!(
            "{} snapshot written in {} ms: state {}, memory {} ({:.1} MiB of data)",
            job.kind,
            started.elapsed().as_millis(),
            job.state_path.display(),
            job.mem_path.display(),
            *written as f64 / (1 << 20) as f64
        );
    }
    back.send(Event::SnapshotWritten {
        result: result.map(|_| ()),
        reply: job.reply,
    });
}

/// The running VM as the control thread sees it.
struct Remote<'a> {
    mem: GuestMemory,
    back: &'a Back,
}

impl SourceVm for Remote<'_> {
    fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    fn take_dirty(&mut self) -> Result<Vec<Vec<u64>>, MigrationError> {
        self.back
            .ask(|answer| Event::DirtyPages { answer })?
            .map_err(MigrationError::State)
    }

    fn pause_and_collect(&mut self) -> Result<(Vec<Vec<u64>>, Vec<u8>), MigrationError> {
        self.back
            .ask(|answer| Event::PauseAndCollect { answer })?
            .map_err(MigrationError::State)
    }
}

fn migrate(job: MigrateJob, back: &Back) {
    let result = MigrationKey::from_file(&job.key_path).and_then(|key| {
        let mut vm = Remote {
            mem: job.mem.clone(),
            back,
        };
        crate::migration::send_vm(&mut vm, &job.destination, &key)
    });
    back.send(Event::MigrationEnded {
        result,
        destination: job.destination,
        reply: job.reply,
    });
}
