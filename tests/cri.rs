//! A Kubernetes-style pod in one flint microVM, driven through containerd's
//! CRI API over gRPC, as kubelet drives it: a private containerd (own
//! config, root, state and sockets in a temp dir) with the CRI plugin and
//! a runtime handler `flint` (`runtime_type = "io.containerd.flint.v2"`),
//! and a small CRI client (`tests/cri/client.rs`) calling `runtime.v1`:
//! RunPodSandbox (runtime handler `flint`) → CreateContainer ×2 →
//! StartContainer ×2 → ContainerStatus → ExecSync in each →
//! UpdateContainerResources (one that fits the VM, one that does not) →
//! StopPodSandbox → RemovePodSandbox.
//!
//! What it proves: the CRI plugin's own annotations (containerd sets
//! `io.kubernetes.cri.container-type` and `io.kubernetes.cri.sandbox-id`,
//! nothing is set by hand) put the pod's sandbox and both containers into
//! one VM (one flint process, one shim; both containers report the same
//! `/proc/sys/kernel/random/boot_id`); ExecSync's exit codes are exact;
//! `process.rlimits` reach the container's processes (Kubernetes has no
//! rlimits field: they come from the runtime entry's `base_runtime_spec`,
//! the way a node operator sets them, and CRI carries them into each
//! container's spec); a task `Update` that fits the VM is accepted and one that
//! does not is refused with the shim's error; after RemovePodSandbox no
//! flint, shim, socket directory or mount is left.
//!
//! No registry is reachable and there is no CNI here: the test builds its
//! pause and container images from busybox-static, imports them into the
//! `k8s.io` namespace under the names the config uses, and the pod uses
//! the host's network (`NamespaceOption.network = NODE`), for which
//! containerd sets up no CNI network. One guest boot.

#[path = "cri/client.rs"]
mod client;
mod common;

use common::containerd::{mounts_under, Containerd};
use common::oci::busybox_image;
use common::procs::{children_named, pids_with, rss_kib};

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use client::*;

/// The sandbox ("pause") image the containerd config names.
const PAUSE: &str = "flint.test/pause:1";
/// The pod's containers' image.
const BOX: &str = "flint.test/box:1";
/// CRI's containerd namespace.
const NS: &str = "k8s.io";
/// The runtime handler (a Kubernetes RuntimeClass's `handler`).
const HANDLER: &str = "flint";
/// A pod container's main process: lives until killed, and survives one of
/// its `sleep`s dying of the guest's SIGSEGV quirk (see EMULATION_SEGV).
/// (A single long `sleep` was tried: the shim then reported the paused
/// pod's task STOPPED, twice; not yet understood.)
const KEEP_RUNNING: &str = "while :; do sleep 5; done";
/// The `RLIMIT_NOFILE` (soft, hard) of the runtime's base spec.
const NOFILE: (u64, u64) = (1111, 2222);
/// Exit status of a guest process killed by SIGSEGV: on this emulating
/// host a guest busybox now and then dies so, shim or not.
const EMULATION_SEGV: i32 = 139;

/// The private containerd of this test: with the CRI plugin and the
/// `flint` runtime handler (see `Containerd::start`).
impl Containerd {
    fn start(bin_dir: &Path) -> Containerd {
        Containerd::launch("flint-cri-test", NS, bin_dir, |dir| {
            let d = dir.display();
            // The runtime entry a node adds for flint (README "Kubernetes /
            // containerd"), plus what this host needs: the test's pause image,
            // empty CNI directories (host-network pods need none), no AppArmor
            // profile (the spec's is not used inside a VM anyway). The default
            // runtime must name a configured one (the CRI plugin refuses to
            // load otherwise: this config's `runtimes` replaces containerd's
            // default `runc` entry); the pod still picks `flint` by handler.
            let config = format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  disable_apparmor = true
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "{HANDLER}"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{HANDLER}]
    runtime_type = "io.containerd.flint.v2"
    base_runtime_spec = "{d}/base-spec.json"
"#
            );
            // Kubernetes has no rlimits field: a node gives a runtime's pods
            // rlimits through its base spec, which CRI starts each spec from.
            let mut base: serde_json::Value =
                serde_json::from_str(&common::run(Command::new("ctr").args(["oci", "spec"])))
                    .unwrap();
            base["process"]["rlimits"] = serde_json::json!([
                {"type": "RLIMIT_NOFILE", "soft": NOFILE.0, "hard": NOFILE.1}
            ]);
            std::fs::write(dir.join("base-spec.json"), base.to_string()).unwrap();
            config
        })
    }

    /// The containerd log's last lines, for failure messages.
    fn tail(&self) -> String {
        self.log_tail(40)
    }
}

/// The pod's containers by index: their names and current ids. On this
/// host a container's main shell can die of the SIGSEGV quirk (see
/// EMULATION_SEGV) any time after its start, not only at it: such a
/// container is removed and created again (said, four times at most), so
/// the checks meant for it still run.
struct PodContainers {
    pod_id: String,
    names: [&'static str; 2],
    ids: Vec<String>,
    recreated: u32,
}

impl PodContainers {
    fn start(cri: &mut Cri, c: &Containerd, pod_id: &str, names: [&'static str; 2]) -> Self {
        let ids = names
            .iter()
            .map(|name| start_container(cri, c, pod_id, name))
            .collect();
        PodContainers {
            pod_id: pod_id.to_owned(),
            names,
            ids,
            recreated: 0,
        }
    }

    /// Container `i` after a failed request: waits (60 s at most) until
    /// containerd has seen its main process end; if that was the quirk,
    /// creates it again and returns true; anything else fails the test.
    fn recover(&mut self, cri: &mut Cri, c: &Containerd, i: usize, failure: &str) -> bool {
        let (name, id) = (self.names[i], self.ids[i].clone());
        let start = Instant::now();
        let mut status = container_state(cri, &id);
        while status.state != CONTAINER_EXITED && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(500));
            status = container_state(cri, &id);
        }
        if status.state != CONTAINER_EXITED
            || status.exit_code != EMULATION_SEGV
            || self.recreated == 4
        {
            panic!(
                "{failure}\ncontainer {name}: {status:?}\ncontainerd:\n{}",
                c.tail()
            );
        }
        println!(
            "container {name}: its shell died of SIGSEGV after its start (host quirk); \
             creating it again ({failure})"
        );
        let _: Empty = cri
            .runtime(
                "RemoveContainer",
                &ContainerIdRequest {
                    container_id: id.clone(),
                },
            )
            .unwrap_or_else(|e| panic!("RemoveContainer {name}: {e}\n{}", c.tail()));
        self.recreated += 1;
        self.ids[i] = start_container(cri, c, &self.pod_id, name);
        true
    }

    /// Makes sure each container still runs (re-creating any the quirk
    /// killed), so what follows sees only its own effects.
    fn ensure_running(&mut self, cri: &mut Cri, c: &Containerd) {
        for i in 0..self.ids.len() {
            if container_state(cri, &self.ids[i]).state != CONTAINER_RUNNING {
                self.recover(cri, c, i, "found not running");
            }
        }
    }
}

/// ExecSync of `sh -c script` in the pod's container `i`: its stdout and
/// exit code. Retried (up to 6 runs) when busybox died of the emulation's
/// SIGSEGV, when a guest pipeline printed nothing (both quirks of this
/// host, printed when seen), or when the container itself died of the
/// quirk (see [`PodContainers`]).
fn exec_sync(
    cri: &mut Cri,
    c: &Containerd,
    pod: &mut PodContainers,
    i: usize,
    script: &str,
) -> (String, i32) {
    exec_sync_timed(cri, c, pod, i, script).0
}

/// [`exec_sync`], and how long its last attempt took.
fn exec_sync_timed(
    cri: &mut Cri,
    c: &Containerd,
    pod: &mut PodContainers,
    i: usize,
    script: &str,
) -> ((String, i32), Duration) {
    let mut last = (String::new(), -1);
    let mut took = Duration::ZERO;
    for attempt in 0..6 {
        let id = pod.ids[i].clone();
        let t = Instant::now();
        let reply: Result<ExecSyncResponse, _> = cri.runtime(
            "ExecSync",
            &ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["sh".into(), "-c".into(), script.into()],
                timeout: 300,
            },
        );
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                pod.recover(cri, c, i, &format!("ExecSync {script:?} in {id}: {e}"));
                continue;
            }
        };
        took = t.elapsed();
        last = (
            String::from_utf8_lossy(&reply.stdout).into_owned(),
            reply.exit_code,
        );
        if last.1 == EMULATION_SEGV {
            println!(
                "ExecSync {script:?} in {id}: SIGSEGV (exit 139) on attempt {attempt}, retrying"
            );
        } else if last.0.trim().is_empty() {
            println!("ExecSync {script:?} in {id}: no output on attempt {attempt}, retrying");
        } else {
            break;
        }
    }
    (last, took)
}

/// The pod's config, sent with RunPodSandbox and each CreateContainer.
fn pod_config() -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "pod1".into(),
            uid: "flint-cri-test-uid".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "pod1".into(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: String::new(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NAMESPACE_NODE,
                    ..NamespaceOption::default()
                }),
            }),
        }),
        ..PodSandboxConfig::default()
    }
}

/// The `RLIMIT_NOFILE` (soft, hard) a task's `config.json` gives its
/// process.
fn nofile_limit(bundle: &Path) -> Option<(u64, u64)> {
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).ok()?).ok()?;
    let limit = spec["process"]["rlimits"]
        .as_array()?
        .iter()
        .find(|l| l["type"] == "RLIMIT_NOFILE")?
        .clone();
    Some((limit["soft"].as_u64()?, limit["hard"].as_u64()?))
}

fn container_state(cri: &mut Cri, id: &str) -> ContainerStatus {
    let reply: ContainerStatusResponse = cri
        .runtime(
            "ContainerStatus",
            &ContainerIdRequest {
                container_id: id.into(),
            },
        )
        .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"));
    reply.status.expect("a status")
}

/// CreateContainer + StartContainer of `name` in the pod; the container's
/// id once an exec in it answers. A main process that died of
/// the host's SIGSEGV quirk at start (see EMULATION_SEGV) is removed and
/// created again under the next `attempt` (five at most, each said);
/// anything else fails.
fn start_container(cri: &mut Cri, c: &Containerd, pod_id: &str, name: &str) -> String {
    for attempt in 0..5 {
        let created: CreateContainerResponse = cri
            .runtime(
                "CreateContainer",
                &CreateContainerRequest {
                    pod_sandbox_id: pod_id.into(),
                    config: Some(ContainerConfig {
                        metadata: Some(ContainerMetadata {
                            name: name.into(),
                            attempt,
                        }),
                        image: Some(ImageSpec { image: BOX.into() }),
                        command: vec!["sh".into(), "-c".into(), KEEP_RUNNING.into()],
                        args: vec![],
                    }),
                    sandbox_config: Some(pod_config()),
                },
            )
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}\n{}", c.tail()));
        let id = created.container_id;
        let started: Result<Empty, _> = cri.runtime(
            "StartContainer",
            &ContainerIdRequest {
                container_id: id.clone(),
            },
        );
        if let Err(e) = started {
            // The agent dying under it (the same host quirk, hitting one of
            // its system calls; the guest restarts it) is retried like a
            // shell that died at start.
            if !e.to_string().contains("agent closed the connection") || attempt == 4 {
                panic!("StartContainer {name}: {e}\n{}", c.tail());
            }
            println!("StartContainer {name}: {e} (host quirk); creating it again");
            let _: Result<Empty, _> = cri.runtime(
                "RemoveContainer",
                &ContainerIdRequest {
                    container_id: id.clone(),
                },
            );
            continue;
        }
        // Alive: an exec in it answers (each exec retried on the quirk).
        // A shell that died at start shows as exited, here or once the
        // shim's exit event has reached containerd (slow under load).
        loop {
            let status = container_state(cri, &id);
            if status.state == CONTAINER_RUNNING {
                let alive: Result<ExecSyncResponse, _> = cri.runtime(
                    "ExecSync",
                    &ExecSyncRequest {
                        container_id: id.clone(),
                        cmd: vec!["echo".into(), "alive".into()],
                        timeout: 300,
                    },
                );
                match alive {
                    Ok(reply) if reply.exit_code != EMULATION_SEGV => return id,
                    Ok(_) => continue,
                    Err(e) if e.to_string().contains("EXITED") => {}
                    Err(e) => panic!("ExecSync in {name}: {e}\n{}", c.tail()),
                }
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            assert_eq!(
                status.exit_code,
                EMULATION_SEGV,
                "container {name} ended at start: {status:?}\n{}",
                c.tail()
            );
            break;
        }
        println!(
            "container {name}: its shell died of SIGSEGV at start (host quirk); creating it again"
        );
        let _: Empty = cri
            .runtime(
                "RemoveContainer",
                &ContainerIdRequest {
                    container_id: id.clone(),
                },
            )
            .unwrap_or_else(|e| panic!("RemoveContainer {name}: {e}"));
    }
    panic!("container {name} died of SIGSEGV at start five times")
}

#[test]
fn a_cri_pod_runs_its_containers_in_one_flint_vm() {
    let bin_dir = match common::containerd::prerequisites() {
        Ok(dir) => dir,
        Err(why) => return common::cannot_run(&why),
    };
    let busybox = Path::new("/bin/busybox");
    let _boot = common::BOOT_LOCK.write().unwrap_or_else(|p| p.into_inner());

    let c = Containerd::start(&bin_dir);
    let prefix = c.dir.path().display().to_string();
    let mut cri = Cri::connect(&c.sock()).expect("connecting to containerd's socket");
    let version: VersionResponse = cri
        .runtime(
            "Version",
            &VersionRequest {
                version: "v1".into(),
            },
        )
        .unwrap_or_else(|e| panic!("CRI Version: {e}\n{}", c.tail()));
    println!(
        "CRI: {} {} (API {})",
        version.runtime_name, version.runtime_version, version.runtime_api_version
    );

    // Images: the config's pause image and the containers', imported into
    // CRI's namespace; CRI's image store picks them up from containerd's
    // events, so wait until ImageStatus knows them.
    let entrypoint = |argv: &[&str]| serde_json::json!({"Env": ["PATH=/bin"], "Entrypoint": argv});
    let pause = busybox_image(
        c.dir.path(),
        busybox,
        PAUSE,
        "1",
        entrypoint(&["sh", "-c", KEEP_RUNNING]),
    );
    let image = busybox_image(c.dir.path(), busybox, BOX, "1", entrypoint(&["sh"]));
    for tarball in [&pause, &image] {
        let out = c.ctr(&["images", "import", tarball.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
    }
    for name in [PAUSE, BOX] {
        let start = Instant::now();
        loop {
            let status: ImageStatusResponse = cri
                .image(
                    "ImageStatus",
                    &ImageStatusRequest {
                        image: Some(ImageSpec { image: name.into() }),
                    },
                )
                .unwrap_or_else(|e| panic!("ImageStatus {name}: {e}"));
            if status.image.is_some() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "CRI never saw {name}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // 1-7, run again (three times at most, each said) when the pod's
    // sandbox process, the pod's own main process, died of the host's
    // SIGSEGV quirk (the shim's line in containerd's log says status 139):
    // the sandbox's end is the pod's, as it would be for kubelet, which
    // would create the pod again too.
    for attempt in 1..=3 {
        let sandbox = std::sync::Mutex::new(String::new());
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pod_scenario(&mut cri, &c, &prefix, &sandbox)
        }));
        let Err(failure) = run else { return };
        let id = sandbox.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if attempt == 3 || id.is_empty() || !sandbox_died_of_segv(&c, &id) {
            std::panic::resume_unwind(failure);
        }
        println!(
            "attempt {attempt}: the pod's sandbox process died of SIGSEGV (host quirk); \
             removing the pod and running it again"
        );
        let request = PodSandboxIdRequest { pod_sandbox_id: id };
        let _: Result<Empty, _> = cri.runtime("StopPodSandbox", &request);
        let _: Result<Empty, _> = cri.runtime("RemovePodSandbox", &request);
    }
}

/// Whether the shim logged (into containerd's log) sandbox `id`'s main
/// process ending with status 139 (see EMULATION_SEGV).
fn sandbox_died_of_segv(c: &Containerd, id: &str) -> bool {
    let end = format!("container {id}: its main process");
    c.log()
        .lines()
        .any(|l| l.contains(&end) && l.contains("exited with status 139"))
}

/// Steps 1-7 on one pod; its sandbox id goes to `sandbox` as soon as known.
fn pod_scenario(cri: &mut Cri, c: &Containerd, prefix: &str, sandbox: &std::sync::Mutex<String>) {
    // 1. The pod: its sandbox boots the VM.
    let t = Instant::now();
    let pod: RunPodSandboxResponse = cri
        .runtime(
            "RunPodSandbox",
            &RunPodSandboxRequest {
                config: Some(pod_config()),
                runtime_handler: HANDLER.into(),
            },
        )
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.tail()));
    let pod_id = pod.pod_sandbox_id;
    *sandbox.lock().unwrap_or_else(|p| p.into_inner()) = pod_id.clone();
    println!(
        "figure: RunPodSandbox (VM boot included): {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // 2. Two containers in it.
    let mut pod = PodContainers::start(cri, c, &pod_id, ["c1", "c2"]);

    // 3. ExecSync in each: one VM (same boot id), exact exit codes.
    let boot_id = "cat /proc/sys/kernel/random/boot_id";
    let (b1, _) = exec_sync(cri, c, &mut pod, 0, boot_id);
    let (b2, _) = exec_sync(cri, c, &mut pod, 1, boot_id);
    assert!(!b1.trim().is_empty(), "no boot id");
    assert_eq!(b1, b2, "the pod's containers run in different VMs");
    for i in 0..2 {
        let ((out, code), took) = exec_sync_timed(
            cri,
            c,
            &mut pod,
            i,
            &format!("echo out-{i}; exit {}", 7 + i),
        );
        println!("figure: ExecSync round trip: {:.2} s", took.as_secs_f64());
        assert_eq!(
            (out.trim(), code),
            (format!("out-{i}").as_str(), 7 + i as i32)
        );
    }
    // Each container has its own root.
    let (wrote, _) = exec_sync(cri, c, &mut pod, 1, "echo mine > /tmp/only-c2 && echo ok");
    assert_eq!(wrote.trim(), "ok");
    let (seen, _) = exec_sync(cri, c, &mut pod, 0, "ls /tmp/only-c2 2>&1; echo done");
    assert!(seen.contains("No such file"), "{seen}");

    // 4. The spec's rlimits (from the runtime's base spec, through CRI)
    // reach the container's processes.
    assert_eq!(
        nofile_limit(&c.bundle(&pod.ids[0])),
        Some(NOFILE),
        "CRI kept the base spec's rlimits"
    );
    let (limit, _) = exec_sync(cri, c, &mut pod, 0, "ulimit -Sn; ulimit -Hn");
    assert_eq!(
        limit.trim(),
        format!("{}\n{}", NOFILE.0, NOFILE.1),
        "RLIMIT_NOFILE in the guest"
    );

    // 5. One flint and one shim serve the whole pod.
    let flint_pid: u32 = std::fs::read_to_string(c.bundle(&pod_id).join("flint.pid"))
        .expect("the sandbox's bundle names its flint")
        .trim()
        .parse()
        .unwrap();
    let sock_dir = std::fs::read_to_string(c.bundle(&pod_id).join("flint.sockdir")).unwrap();
    let shims: Vec<u32> = pids_with("containerd-shim-flint-v2")
        .into_iter()
        .filter(|p| pids_with(prefix).contains(p))
        .collect();
    assert_eq!(shims.len(), 1, "one shim for the pod: {shims:?}");
    // The pod's VMM: the shim's one child `flint` (jailed or not).
    let flints = children_named(shims[0], "flint");
    assert_eq!(flints, [flint_pid], "one flint for the pod");
    assert!(Path::new(&format!("/proc/{flint_pid}")).exists());
    println!(
        "figure: per pod RSS (sandbox + 2 containers): shim {} KiB + flint {} KiB",
        rss_kib(shims[0]),
        rss_kib(flint_pid)
    );

    // 6. Update (UpdateContainerResources → the task's Update): limits
    // within the VM are accepted; more memory than the VM has is refused.
    pod.ensure_running(cri, c);
    let first = pod.ids[0].clone();
    let update = |memory: i64| UpdateContainerResourcesRequest {
        container_id: first.clone(),
        linux: Some(LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            memory_limit_in_bytes: memory,
        }),
    };
    let _: Empty = cri
        .runtime("UpdateContainerResources", &update(64 << 20))
        .unwrap_or_else(|e| panic!("UpdateContainerResources 64 MiB: {e}\n{}", c.tail()));
    let refused = cri
        .runtime::<_, Empty>("UpdateContainerResources", &update(64 << 30))
        .expect_err("64 GiB does not fit the pod's VM");
    assert!(refused.message.contains("exceeds the pod VM"), "{refused}");

    // 7. Stop and remove the pod: the containers end (SIGKILL: 137), and
    // nothing is left.
    pod.ensure_running(cri, c);
    let _: Empty = cri
        .runtime(
            "StopPodSandbox",
            &PodSandboxIdRequest {
                pod_sandbox_id: pod_id.clone(),
            },
        )
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", c.tail()));
    for id in &pod.ids {
        let status = container_state(cri, id);
        assert_eq!(
            (status.state, status.exit_code),
            (CONTAINER_EXITED, 137),
            "{status:?}"
        );
    }
    let _: Empty = cri
        .runtime(
            "RemovePodSandbox",
            &PodSandboxIdRequest {
                pod_sandbox_id: pod_id.clone(),
            },
        )
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", c.tail()));
    let gone = cri
        .runtime::<_, ContainerStatusResponse>(
            "ContainerStatus",
            &ContainerIdRequest {
                container_id: pod.ids[0].clone(),
            },
        )
        .expect_err("the pod's containers are removed with it");
    assert_eq!(gone.code, 5, "NotFound: {gone}");
    let containerd_pid = c.child.id();
    let start = Instant::now();
    loop {
        let left: Vec<u32> = pids_with(prefix)
            .into_iter()
            .filter(|&p| p != containerd_pid && p != std::process::id())
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "processes left after RemovePodSandbox: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !Path::new(&format!("/proc/{flint_pid}")).exists(),
        "flint still runs"
    );
    assert!(
        !Path::new(&sock_dir).exists(),
        "the VM's socket directory is left"
    );
    let mounts = mounts_under(prefix);
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    assert!(!c.bundle(&pod_id).exists(), "the sandbox's bundle is left");
}
