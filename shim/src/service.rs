//! The shim: containerd's `start`/`delete` commands and the task service.
//! One serving shim per pod (or per container outside a pod) owns the VM;
//! the pod's containers are its tasks.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use agent_protocol::MountSpec;
use containerd_shim::api::{self, Status};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, Context, DeleteResponse, ExitSignal, Flags, StartOpts, TtrpcResult};

use crate::bundle::{sanitize, Resources, Role, Spec};
use crate::image::{self, RootMount};
use crate::process::{Process, Status as PStatus, StdioPaths};
use crate::settings::{Resolved, Settings};
use crate::vm::{self, Vm, VmSpec};
use crate::ShimError;

/// One container: its init process, its execs, and where its root is.
pub struct Container {
    pub bundle: PathBuf,
    pub role: Role,
    pub init: Arc<Process>,
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Its root image on the host.
    pub image: PathBuf,
    /// Its root in the guest.
    pub guest_root: String,
    /// Orders a process's start event before its exit event.
    events: Arc<Mutex<()>>,
    /// The limits of its last accepted `Update` (`Stats` reports the
    /// memory limit).
    limits: Mutex<Option<Resources>>,
}

/// State shared by the service's threads.
pub struct Inner {
    namespace: String,
    publisher: Mutex<Option<RemotePublisher>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    vm: Mutex<Option<Arc<Vm>>>,
    /// The VM's memory (MiB) and vCPUs: what an `Update` must fit in.
    vm_size: Mutex<(u64, u64)>,
    paused: AtomicBool,
    exit: Arc<ExitSignal>,
}

/// The shim (and its task service: the same object, cloned).
#[derive(Clone)]
pub struct Service {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) fn timestamp(at: SystemTime) -> Timestamp {
    Timestamp::from(at)
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    pub(crate) fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Some(publisher) = lock(&self.publisher).as_ref() {
            if let Err(e) = publisher.publish(Context::default(), topic, &self.namespace, event) {
                log::warn!("publishing {topic}: {e}");
            }
        }
    }

    pub(crate) fn container(&self, id: &str) -> Result<Arc<Container>, ShimError> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("container {id}")))
    }

    pub(crate) fn process(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<(Arc<Container>, Arc<Process>), ShimError> {
        let c = self.container(id)?;
        if exec_id.is_empty() {
            let init = c.init.clone();
            return Ok((c, init));
        }
        let p = lock(&c.execs)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("exec {exec_id} of {id}")))?;
        Ok((c, p))
    }

    pub(crate) fn vm(&self) -> Result<Arc<Vm>, ShimError> {
        lock(&self.vm)
            .clone()
            .ok_or_else(|| ShimError::State("this shim has no VM (its sandbox is gone)".into()))
    }

    /// Create: rootfs → ext4 image → (new VM | stub drive) → mounted in
    /// the guest.
    pub(crate) fn create(&self, req: &api::CreateTaskRequest) -> Result<u32, ShimError> {
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Usage(
                "checkpoint/restore is not supported".into(),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = Spec::load(&bundle)?;
        let process = spec
            .process
            .clone()
            .ok_or_else(|| ShimError::Spec("no process".into()))?;
        let rootfs = bundle.join("rootfs");
        let mounts: Vec<RootMount> = req
            .rootfs
            .iter()
            .map(|m| RootMount {
                fstype: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        image::mount_rootfs(&mounts, &rootfs)?;
        let root_image = bundle.join("flint-rootfs.ext4");
        let built = image::build_ext4(&rootfs, &root_image);
        // The guest works on the image; the snapshot mount is not needed
        // any more (and nothing is left mounted if the shim dies).
        if !mounts.is_empty() {
            image::unmount(&rootfs);
        }
        built?;
        let role = spec.role();
        let guest_root = format!("/c/{}", sanitize(&req.id));
        let result = self.place(&req.id, &role, &spec, &bundle, &root_image, &guest_root);
        if let Err(e) = result {
            // A pod member's drive slot goes back (its mount failed, e.g.
            // the agent died under it), so that a retry finds one.
            if let (Role::InPod(_), Some(vm)) = (&role, lock(&self.vm).clone()) {
                vm.detach(&req.id);
            }
            let _ = std::fs::remove_file(&root_image);
            return Err(e);
        }
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut exec = process.exec_spec(&guest_root);
        if req.terminal && exec.tty.is_none() {
            exec.tty = Some(agent_protocol::WindowSize { rows: 24, cols: 80 });
        }
        let container = Arc::new(Container {
            bundle,
            role,
            init: Process::new(exec, stdio),
            execs: Mutex::new(HashMap::new()),
            image: root_image,
            guest_root,
            events: Arc::new(Mutex::new(())),
            limits: Mutex::new(None),
        });
        lock(&self.containers).insert(req.id.clone(), container);
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: Some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            }),
        );
        Ok(0)
    }

    /// Puts the container's image into a VM and mounts it there.
    pub(crate) fn place(
        &self,
        id: &str,
        role: &Role,
        spec: &Spec,
        bundle: &Path,
        root_image: &Path,
        guest_root: &str,
    ) -> Result<(), ShimError> {
        let (vm, device) = match role {
            Role::Sandbox => {
                if lock(&self.vm).is_some() {
                    return Err(ShimError::State(format!(
                        "container {id}: this shim already runs a VM"
                    )));
                }
                let settings = Settings::load(&env)?.resolve(&env)?;
                let vm = Arc::new(start_vm(&settings, spec, bundle, root_image, id)?);
                *lock(&self.vm_size) =
                    spec.vm_size(settings.default_memory_mib, settings.default_vcpus);
                *lock(&self.vm) = Some(vm.clone());
                (vm, vm::slot_device(0))
            }
            Role::InPod(_) => {
                let vm = self.vm()?;
                let device = vm.attach(id, root_image)?;
                (vm, device)
            }
        };
        let mount = |source: &str, target: String, fstype: &str, options: &[&str]| {
            vm.agent()?
                .mount(MountSpec {
                    source: source.into(),
                    target,
                    fstype: fstype.into(),
                    options: options.iter().map(|o| o.to_string()).collect(),
                })
                .map_err(ShimError::from)
        };
        mount(&device, guest_root.to_owned(), "ext4", &[])?;
        mount(
            "proc",
            format!("{guest_root}/proc"),
            "proc",
            &["nosuid", "nodev", "noexec"],
        )?;
        mount(
            "sysfs",
            format!("{guest_root}/sys"),
            "sysfs",
            &["nosuid", "nodev", "noexec"],
        )?;
        mount(
            "devtmpfs",
            format!("{guest_root}/dev"),
            "devtmpfs",
            &["nosuid"],
        )?;
        Ok(())
    }

    pub(crate) fn start(&self, id: &str, exec_id: &str) -> Result<u32, ShimError> {
        let (c, p) = self.process(id, exec_id)?;
        let vm = self.vm()?;
        let events = c.events.clone();
        let c_events = c.events.clone();
        let order = lock(&c_events);
        let me = self.clone_handle();
        let (cid, eid) = (id.to_owned(), exec_id.to_owned());
        let on_exit = Box::new(move |pid: u32, code: u32, at: SystemTime| {
            // In containerd's log: how each process ended (an operator's
            // first question when a pod goes away).
            if eid.is_empty() {
                log::info!("container {cid}: its main process ({pid}) exited with status {code}");
            } else {
                log::info!("container {cid}: exec {eid} ({pid}) exited with status {code}");
            }
            let _order = lock(&events);
            if let Some(inner) = me.upgrade() {
                inner.publish(
                    topics::TASK_EXIT_EVENT_TOPIC,
                    Box::new(TaskExit {
                        container_id: cid.clone(),
                        id: if eid.is_empty() {
                            cid.clone()
                        } else {
                            eid.clone()
                        },
                        pid,
                        exit_status: code,
                        exited_at: Some(timestamp(at)).into(),
                        ..Default::default()
                    }),
                );
            }
        });
        let pid = p.start(vm.agent()?, vm.clone(), on_exit)?;
        if exec_id.is_empty() {
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: id.to_owned(),
                    pid,
                    ..Default::default()
                }),
            );
        } else {
            self.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: id.to_owned(),
                    exec_id: exec_id.to_owned(),
                    pid,
                    ..Default::default()
                }),
            );
        }
        drop(order);
        Ok(pid)
    }

    /// The VM's flint pid (0 without a VM), for `Connect`.
    pub(crate) fn vmm_pid(&self) -> u32 {
        lock(&self.vm).as_ref().map(|vm| vm.pid()).unwrap_or(0)
    }

    /// `Shutdown`: a pod's shim serves all its containers, and ends (its VM
    /// with it) after the last.
    pub(crate) fn shutdown(&self) {
        if lock(&self.containers).is_empty() {
            if let Some(vm) = lock(&self.vm).take() {
                vm.stop();
            }
            self.exit.signal();
        }
    }

    /// `e`, with why the VM is gone if its flint has exited (a failed
    /// request is often the first sign).
    pub(crate) fn explain(&self, e: ShimError) -> ShimError {
        match lock(&self.vm).as_ref().and_then(|vm| vm.exit_report()) {
            Some(report) => ShimError::Vm(format!("{e}; {report}")),
            None => e,
        }
    }

    pub(crate) fn clone_handle(&self) -> std::sync::Weak<Inner> {
        // Set by Service (the only owner of Inner) before any request.
        lock(&SELF).clone()
    }

    pub(crate) fn delete(&self, id: &str, exec_id: &str) -> Result<api::DeleteResponse, ShimError> {
        let (c, p) = self.process(id, exec_id)?;
        let (status, pid, exit) = p.snapshot();
        if status == PStatus::Running {
            return Err(ShimError::State(format!("{id} {exec_id} is still running")));
        }
        let (code, at) = exit.unwrap_or((0, SystemTime::now()));
        let response = api::DeleteResponse {
            pid,
            exit_status: code,
            exited_at: Some(timestamp(at)).into(),
            ..Default::default()
        };
        if !exec_id.is_empty() {
            lock(&c.execs).remove(exec_id);
            return Ok(response);
        }
        if lock(&c.execs)
            .values()
            .any(|e| e.snapshot().0 == PStatus::Running)
        {
            return Err(ShimError::State(format!("{id} has running execs")));
        }
        if let Ok(vm) = self.vm() {
            match c.role {
                Role::InPod(_) => {
                    for sub in ["dev", "sys", "proc", ""] {
                        let target = format!("{}/{sub}", c.guest_root);
                        let target = target.trim_end_matches('/').to_owned();
                        if let Err(e) = vm.agent().and_then(|a| Ok(a.unmount(&target)?)) {
                            log::warn!("unmounting {target} in the guest: {e}");
                        }
                    }
                    vm.detach(id);
                }
                Role::Sandbox => {
                    vm.stop();
                    *lock(&self.vm) = None;
                }
            }
        }
        let _ = std::fs::remove_file(&c.image);
        image::unmount(&c.bundle.join("rootfs"));
        lock(&self.containers).remove(id);
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: id.to_owned(),
                pid,
                exit_status: code,
                exited_at: Some(timestamp(at)).into(),
                id: id.to_owned(),
                ..Default::default()
            }),
        );
        Ok(response)
    }

    pub(crate) fn kill(&self, req: &api::KillRequest) -> Result<(), ShimError> {
        let (_, p) = self.process(&req.id, &req.exec_id)?;
        let signal = req.signal as i32;
        let (status, pid, _) = p.snapshot();
        match status {
            PStatus::Created => {
                p.mark_exited(128 + req.signal);
                Ok(())
            }
            PStatus::Stopped => Err(ShimError::NotFound("process already finished".into())),
            PStatus::Running if req.all => {
                // The process leads its own session and process group.
                let _ = self.vm()?.agent()?.signal(-(pid as i32), signal);
                p.record_signal(signal);
                Ok(())
            }
            PStatus::Running => p.signal(signal),
        }
    }

    pub(crate) fn state(&self, id: &str, exec_id: &str) -> Result<api::StateResponse, ShimError> {
        let (c, p) = self.process(id, exec_id)?;
        let (status, pid, exit) = p.snapshot();
        let status = match status {
            PStatus::Created => Status::CREATED,
            PStatus::Running if self.paused.load(Ordering::SeqCst) => Status::PAUSED,
            PStatus::Running => Status::RUNNING,
            PStatus::Stopped => Status::STOPPED,
        };
        Ok(api::StateResponse {
            id: id.to_owned(),
            bundle: c.bundle.display().to_string(),
            pid,
            status: status.into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exit.map(|e| e.0).unwrap_or(0),
            exited_at: exit.map(|e| timestamp(e.1)).into(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        })
    }

    pub(crate) fn exec(&self, req: &api::ExecProcessRequest) -> Result<(), ShimError> {
        let c = self.container(&req.id)?;
        let process: crate::bundle::Process = serde_json::from_slice(&req.spec.value)
            .map_err(|e| ShimError::Spec(format!("exec process: {e}")))?;
        let mut spec = process.exec_spec(&c.guest_root);
        if req.terminal && spec.tty.is_none() {
            spec.tty = Some(agent_protocol::WindowSize { rows: 24, cols: 80 });
        }
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        {
            let mut execs = lock(&c.execs);
            if execs.contains_key(&req.exec_id) {
                return Err(ShimError::State(format!("exec {} exists", req.exec_id)));
            }
            execs.insert(req.exec_id.clone(), Process::new(spec, stdio));
        }
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(())
    }

    pub(crate) fn pids(
        &self,
        id: &str,
    ) -> Result<Vec<containerd_shim::protos::types::task::ProcessInfo>, ShimError> {
        let c = self.container(id)?;
        let (_, init_pid, _) = c.init.snapshot();
        let all = self.vm()?.agent()?.list_processes()?;
        // The container's processes: its init, its execs and their
        // descendants.
        let mut roots: Vec<i32> = vec![init_pid as i32];
        roots.extend(lock(&c.execs).values().map(|e| e.snapshot().1 as i32));
        let mut ours: Vec<i32> = roots.into_iter().filter(|p| *p > 0).collect();
        loop {
            let before = ours.len();
            for p in &all {
                if ours.contains(&p.ppid) && !ours.contains(&p.pid) {
                    ours.push(p.pid);
                }
            }
            if ours.len() == before {
                break;
            }
        }
        Ok(ours
            .into_iter()
            .filter(|p| all.iter().any(|i| i.pid == *p))
            .map(|pid| containerd_shim::protos::types::task::ProcessInfo {
                pid: pid as u32,
                ..Default::default()
            })
            .collect())
    }

    pub(crate) fn set_paused(&self, id: &str, paused: bool) -> Result<(), ShimError> {
        self.container(id)?;
        self.vm()?.set_paused(paused)?;
        self.paused.store(paused, Ordering::SeqCst);
        if paused {
            self.publish(
                topics::TASK_PAUSED_EVENT_TOPIC,
                Box::new(TaskPaused {
                    container_id: id.to_owned(),
                    ..Default::default()
                }),
            );
        } else {
            self.publish(
                topics::TASK_RESUMED_EVENT_TOPIC,
                Box::new(TaskResumed {
                    container_id: id.to_owned(),
                    ..Default::default()
                }),
            );
        }
        Ok(())
    }

    /// Update: new limits for a running container. Accepted and recorded
    /// when the pod's VM already satisfies them (they only shrink within
    /// its size); a limit beyond the VM is refused, as flint does not grow
    /// a running VM. Nothing in the guest enforces them per container yet
    /// (no cgroups per container in the guest).
    pub(crate) fn update(&self, req: &api::UpdateTaskRequest) -> Result<(), ShimError> {
        let c = self.container(&req.id)?;
        let json = req.resources.as_ref().map_or(&[][..], |a| &a.value[..]);
        let resources = Resources::parse_update(if json.is_empty() { b"{}" } else { json })?;
        let (mem_mib, vcpus) = *lock(&self.vm_size);
        resources.check_fits(mem_mib, vcpus)?;
        *lock(&c.limits) = Some(resources);
        Ok(())
    }

    pub(crate) fn stats(&self, id: &str) -> Result<api::StatsResponse, ShimError> {
        use containerd_shim::protos::cgroups::metrics::{MemoryEntry, MemoryStat, Metrics};
        use containerd_shim::protos::protobuf::well_known_types::any::Any;
        let c = self.container(id)?;
        let stats = self.vm()?.agent()?.stats()?;
        let limit = lock(&c.limits).as_ref().and_then(Resources::memory_limit);
        let used = stats
            .mem_total_bytes
            .saturating_sub(stats.mem_available_bytes);
        let metrics = Metrics {
            memory: Some(MemoryStat {
                usage: Some(MemoryEntry {
                    usage: used,
                    limit: limit.map_or(stats.mem_total_bytes, |l| l.min(stats.mem_total_bytes)),
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let any = Any::pack(&metrics)
            .map_err(|e| ShimError::State(format!("encoding the metrics: {e}")))?;
        Ok(api::StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }
}

/// The service's shared state, for exit callbacks that outlive a request.
static SELF: Mutex<std::sync::Weak<Inner>> = Mutex::new(std::sync::Weak::new());

/// Starts a sandbox's VM and waits for its agent.
fn start_vm(
    settings: &Resolved,
    spec: &Spec,
    bundle: &Path,
    root_image: &Path,
    owner: &str,
) -> Result<Vm, ShimError> {
    let (mem_mib, vcpus) = spec.vm_size(settings.default_memory_mib, settings.default_vcpus);
    let vm = Vm::start(
        &VmSpec {
            flint: settings.flint.clone(),
            kernel: settings.kernel.clone(),
            mem_mib,
            vcpus,
            state_dir: bundle.to_owned(),
            first_image: root_image.to_owned(),
            stubs: settings.spare_drives,
            jail: settings.jail,
        },
        owner,
    )?;
    if let Err(e) = vm.wait_ready() {
        vm.stop();
        return Err(e);
    }
    Ok(vm)
}

impl std::ops::Deref for Service {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

pub(crate) fn ok<T>(r: Result<T, ShimError>) -> TtrpcResult<T> {
    r.map_err(|e| {
        log::warn!("{e}");
        e.into()
    })
}

impl containerd_shim::Shim for Service {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let inner = Arc::new(Inner {
            namespace: args.namespace.clone(),
            publisher: Mutex::new(None),
            containers: Mutex::new(HashMap::new()),
            vm: Mutex::new(None),
            vm_size: Mutex::new((0, 0)),
            paused: AtomicBool::new(false),
            exit: Arc::new(ExitSignal::default()),
        });
        *lock(&SELF) = Arc::downgrade(&inner);
        Service { inner }
    }

    /// Returns the address of the shim serving this container: for a
    /// container of a pod, the pod's sandbox shim (already running);
    /// otherwise a new shim.
    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        let spec = Spec::load(Path::new(".")).unwrap_or_default();
        let grouping = match spec.role() {
            Role::InPod(sandbox) => sandbox,
            Role::Sandbox => opts.id.clone(),
        };
        let address = containerd_shim::socket_address(&opts.address, &opts.namespace, &grouping);
        let path = address.trim_start_matches("unix://");
        if grouping != opts.id && UnixStream::connect(path).is_ok() {
            containerd_shim::util::write_address(&address)?;
            return Ok(address);
        }
        let (_, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    /// Cleanup after a shim that is gone (containerd runs `delete` in the
    /// bundle).
    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        let bundle = Path::new(".");
        vm::cleanup_bundle(bundle);
        image::unmount(&bundle.join("rootfs"));
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: Some(timestamp(SystemTime::now())).into(),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        *lock(&self.publisher) = Some(publisher);
        self.clone()
    }
}
