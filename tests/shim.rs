//! containerd-shim-flint-v2 against a real containerd: a private daemon
//! (own config, root, state and socket in a temp dir) runs, execs into,
//! pauses, kills and deletes containers in flint microVMs, and puts a
//! pod's two containers into one VM (through the CRI annotations that
//! `ctr run --annotation` sets on the spec, as CRI would).
//!
//! Two guest boots in all: the `--rm` container, then the pod.

mod common;

use common::containerd::Containerd;
use common::jails::{assert_jail_gone, memory_cgroup_limit};
use common::oci::busybox_image;
use common::procs::{children_named, pids_with, rss_kib};

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const IMAGE: &str = "docker.io/library/flintbox:latest";
const RUNTIME: &str = "io.containerd.flint.v2";
const NS: &str = "default";
/// A pod container's main process: lives until killed, and survives one of
/// its `sleep`s dying of the guest's SIGSEGV quirk (see EMULATION_SEGV).
/// (A single long `sleep` was tried: the shim then reported the paused
/// pod's task STOPPED, twice; not yet understood.)
const KEEP_RUNNING: &str = "while :; do sleep 5; done";

/// The private containerd of this test: no CRI plugin; `ctr` sets the pod
/// annotations by hand.
impl Containerd {
    fn start(bin_dir: &Path) -> Containerd {
        Containerd::launch("flint-shim-test", NS, bin_dir, |dir| {
            let d = dir.display();
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{d}/c.sock\"\n[ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n"
            )
        })
    }

    /// Runs ctr, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}\n{}\ncontainerd log tail:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(30)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The status column of `ctr task ls` for `id`.
    fn task_status(&self, id: &str) -> Option<String> {
        self.ok(&["task", "ls"])
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
    }

    /// `ctr run -d ... ID ...` (`args`), until an exec in task `id` runs. A main process that died at start (on
    /// this host: the guest's SIGSEGV quirk, see EMULATION_SEGV) is
    /// deleted and run again (five runs at most, each said).
    fn run_detached(&self, args: &[&str], id: &str) {
        for attempt in 1..=5 {
            self.ok(args);
            let start = Instant::now();
            loop {
                match self.task_status(id).as_deref() {
                    Some("RUNNING") | Some("STOPPED") => break,
                    status => assert!(
                        start.elapsed() < Duration::from_secs(60),
                        "{id} never ran: {status:?}"
                    ),
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            // Alive: an exec in it runs (a shell that died at start shows
            // as STOPPED once its exit has reached containerd; slow under
            // load). An exec that itself died of the quirk is tried again.
            let mut probe = 0;
            while self.task_status(id).as_deref() == Some("RUNNING") {
                probe += 1;
                let eid = format!("alive-{attempt}-{probe}");
                let out = self.ctr(&["task", "exec", "--exec-id", &eid, id, "true"]);
                if out.status.success() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            println!("attempt {attempt}: {id}'s main process ended at start (the host's SIGSEGV quirk); running it again");
            self.ok(&["task", "delete", id]);
            self.ok(&["containers", "rm", id]);
        }
        panic!("{id}'s main process ended at start five times");
    }

    /// Kills and deletes the pod's tasks and containers (those there are):
    /// their main processes' exit codes, as `ctr task delete` reports them.
    fn remove_pod(&self) -> Vec<i32> {
        let mut codes = Vec::new();
        for id in ["c2", "pod1"] {
            if let Some(status) = self.task_status(id) {
                if status != "STOPPED" {
                    self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
                    self.wait_status(id, "STOPPED");
                }
                // ctr exits with the task's exit status.
                codes.push(
                    self.ctr(&["task", "delete", id])
                        .status
                        .code()
                        .unwrap_or(-1),
                );
            }
            self.ctr(&["containers", "rm", id]);
        }
        codes
    }

    fn wait_status(&self, id: &str, want: &str) {
        let start = Instant::now();
        while self.task_status(id).as_deref() != Some(want) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{id} never became {want}: {:?}",
                self.task_status(id)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// `GET /` on a flint API socket: the instance state.
fn vm_state(api_sock: &Path) -> String {
    let mut conn = UnixStream::connect(api_sock).unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let json: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_default();
    json["state"].as_str().unwrap_or("?").to_owned()
}

/// Checks that VMM `pid` runs in `jail` (the shim's `flint.jail` record):
/// its `/` is the jail root, it runs as the jail's uid (not 0), in the
/// jail's cgroup with its memory limit, and seccomp-filtered.
fn assert_jailed(pid: u32, jail: &serde_json::Value) {
    use std::os::unix::fs::MetadataExt;
    let root = PathBuf::from(jail["root"].as_str().unwrap());
    let seen = std::fs::metadata(format!("/proc/{pid}/root")).unwrap();
    let real = std::fs::metadata(&root).unwrap();
    assert_eq!(
        (seen.dev(), seen.ino()),
        (real.dev(), real.ino()),
        "the pod's flint does not run in its jail"
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |key: &str| -> Vec<String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {status}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let uid = jail["uid"].as_u64().unwrap();
    assert_ne!(uid, 0);
    assert_eq!(field("Uid:"), vec![uid.to_string(); 4]);
    assert_eq!(field("Seccomp:"), ["2"], "seccomp-filtered");
    let cgroup = jail["cgroup"].as_str().unwrap();
    let limit = memory_cgroup_limit(pid, cgroup);
    let want = jail["cgroup_settings"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|s| s.as_str()?.strip_prefix("memory.max="))
        .unwrap()
        .to_owned();
    assert_eq!(limit, want, "memory limit");
}

/// A process killed by SIGSEGV, as ctr reports it: on this emulating host
/// a guest busybox now and then dies so (a TLS access faults; seen in the
/// guest's kernel log), shim or not.
const EMULATION_SEGV: i32 = 139;

/// A pod attempt abandoned because one of its main processes ended under
/// the checks: on this host a guest busybox can die of the SIGSEGV quirk
/// (see EMULATION_SEGV) any time after its start, not only at it.
struct MainEnded(String);

/// Output of `ctr task exec`, retried up to 6 times: a guest pipeline now
/// and then prints nothing, or busybox dies of SIGSEGV, on this host. A
/// task whose main process has ended is reported, not retried.
fn exec_text(
    c: &Containerd,
    id: &str,
    exec_id: &str,
    script: &str,
) -> Result<(String, i32), MainEnded> {
    let mut last = (String::new(), -1);
    for attempt in 0..6 {
        let eid = format!("{exec_id}-{attempt}");
        let out = c.ctr(&["task", "exec", "--exec-id", &eid, id, "sh", "-c", script]);
        last = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.code().unwrap_or(-1),
        );
        if !last.0.trim().is_empty() && last.1 != EMULATION_SEGV {
            break;
        }
        if c.task_status(id).as_deref() != Some("RUNNING") {
            return Err(MainEnded(format!(
                "{id}'s main process ended under exec {script:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(last)
}

/// What the pod checks leave for the teardown checks.
struct Pod {
    flint_pid: u32,
    sock_dir: String,
    jail: serde_json::Value,
}

/// Steps 2-5: the pod (a sandbox and a second container in one VM), execs,
/// one VM, jailing, pause/resume.
fn pod_checks(c: &Containerd) -> Result<Pod, MainEnded> {
    // 2. A pod: the sandbox container, detached. Its main process is a shell
    // loop rather than one long `sleep`: on this host a guest busybox
    // process now and then dies of SIGSEGV at start (see the exec retries),
    // and the pod's main process must outlive the checks below.
    let sandbox = [
        "--annotation",
        "io.kubernetes.cri.container-type=sandbox",
        "--annotation",
        "io.kubernetes.cri.sandbox-id=pod1",
    ];
    let mut args = vec!["run", "-d", "--runtime", RUNTIME];
    args.extend(sandbox);
    args.extend([IMAGE, "pod1", "sh", "-c", KEEP_RUNNING]);
    c.run_detached(&args, "pod1");

    // 3. exec: output and status.
    let t = Instant::now();
    let (out, code) = exec_text(c, "pod1", "e1", "echo exec-out; exit 5")?;
    println!(
        "figure: exec round trip: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(out.trim(), "exec-out");
    assert_eq!(code, 5);

    // 4. The pod's second container goes into the same VM (a stub drive).
    let member = [
        "--annotation",
        "io.kubernetes.cri.container-type=container",
        "--annotation",
        "io.kubernetes.cri.sandbox-id=pod1",
    ];
    let mut args = vec!["run", "-d", "--runtime", RUNTIME];
    args.extend(member);
    args.extend([IMAGE, "c2", "sh", "-c", KEEP_RUNNING]);
    c.run_detached(&args, "c2");
    let boot_id = "cat /proc/sys/kernel/random/boot_id";
    let (b1, _) = exec_text(c, "pod1", "b1", boot_id)?;
    let (b2, _) = exec_text(c, "c2", "b2", boot_id)?;
    assert!(!b1.trim().is_empty());
    assert_eq!(b1, b2, "the pod's containers run in different VMs");
    // Each container has its own root: a file one writes, the other lacks.
    exec_text(c, "c2", "w", "echo mine > /tmp/only-c2 && echo ok")?;
    let (seen, _) = exec_text(c, "pod1", "r", "ls /tmp/only-c2 2>&1; echo done")?;
    assert!(seen.contains("No such file"), "{seen}");
    let sock = c.dir.path().display().to_string();
    let shims = pids_with(&format!(
        "containerd-shim-flint-v2 -namespace {NS} -id pod1 -address {sock}"
    ));
    let flint_pid: u32 = std::fs::read_to_string(c.bundle("pod1").join("flint.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(shims.len(), 1, "one shim for the pod: {shims:?}");
    let flints = children_named(shims[0], "flint");
    assert_eq!(flints, [flint_pid], "one VM for the pod");
    // The pod's flint is jailed and seccomp-filtered, as in `flint container`.
    let jail: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.bundle("pod1").join("flint.jail")).unwrap())
            .unwrap();
    assert_jailed(flint_pid, &jail);
    // The second container's image was linked into the jail for its PATCH.
    let jail_root = PathBuf::from(jail["root"].as_str().unwrap());
    assert!(
        jail_root.join("c1.img").exists(),
        "c2's image is not in the jail"
    );
    println!(
        "figure: per pod RSS: shim {} KiB + flint {} KiB",
        rss_kib(shims[0]),
        rss_kib(flint_pid)
    );

    // 5. pause/resume really stop the VM's vCPUs.
    let sock_dir = std::fs::read_to_string(c.bundle("pod1").join("flint.sockdir")).unwrap();
    let api_sock = jail_root.join("api.sock");
    c.ok(&["task", "pause", "pod1"]);
    assert_eq!(vm_state(&api_sock), "Paused");
    assert_eq!(c.task_status("pod1").as_deref(), Some("PAUSED"));
    c.ok(&["task", "resume", "pod1"]);
    assert_eq!(vm_state(&api_sock), "Running");
    c.wait_status("pod1", "RUNNING");

    Ok(Pod {
        flint_pid,
        sock_dir,
        jail,
    })
}

#[test]
fn containerd_runs_execs_pauses_kills_and_deletes_containers_and_pods_in_flint_vms() {
    let bin_dir = match common::containerd::prerequisites() {
        Ok(dir) => dir,
        Err(why) => return common::cannot_run(&why),
    };
    let busybox = Path::new("/bin/busybox");
    let _boot = common::BOOT_LOCK.write().unwrap_or_else(|p| p.into_inner());

    let c = Containerd::start(&bin_dir);
    let config = serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]});
    let image = busybox_image(c.dir.path(), busybox, IMAGE, "latest", config);
    c.ok(&["images", "import", image.to_str().unwrap()]);

    // 1. `ctr run --rm`: output and the exact exit status (run again, five
    // times at most, only if busybox hit the emulation's SIGSEGV).
    let mut attempt = 0;
    let (first, status, err, to_output) = loop {
        let started = Instant::now();
        let id = format!("r{attempt}");
        let args = [
            "run",
            "--runtime",
            RUNTIME,
            "--rm",
            IMAGE,
            &id,
            "sh",
            "-c",
            "echo hi; exit 3",
        ];
        let mut run = c
            .ctr_cmd(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(run.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let to_output = started.elapsed();
        let status = run.wait().unwrap();
        let mut err = String::new();
        run.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        attempt += 1;
        if status.code() != Some(EMULATION_SEGV) || attempt == 5 {
            break (first, status, err, to_output);
        }
    };
    assert_eq!(first.trim(), "hi", "stderr: {err}\n{}", c.log_tail(30));
    assert_eq!(status.code(), Some(3), "stderr: {err}");
    println!(
        "figure: ctr run to first output: {:.1} s",
        to_output.as_secs_f64()
    );
    assert_eq!(
        c.ok(&["containers", "ls"]).lines().count(),
        1,
        "--rm left a container"
    );

    // 2-5. The pod, run again (three times at most, each said) when one
    // of its main processes died of the host's quirk under the checks.
    let mut attempt = 0;
    let Pod {
        flint_pid,
        sock_dir,
        jail,
    } = loop {
        attempt += 1;
        match pod_checks(&c) {
            Ok(pod) => break pod,
            Err(MainEnded(why)) => {
                let codes = c.remove_pod();
                assert!(
                    codes.contains(&EMULATION_SEGV) && attempt < 3,
                    "{why}; exit codes {codes:?}\n{}",
                    c.log_tail(30)
                );
                println!(
                    "pod attempt {attempt}: {why} (exit codes {codes:?}: the host's SIGSEGV quirk); running the pod again"
                );
            }
        }
    };

    // 6. kill → STOPPED; delete → nothing left.
    let sock = c.dir.path().display().to_string();
    c.ok(&["task", "kill", "c2"]);
    c.wait_status("c2", "STOPPED");
    c.ok(&["task", "kill", "pod1"]);
    c.wait_status("pod1", "STOPPED");
    for id in ["c2", "pod1"] {
        c.ok(&["task", "delete", id]);
        c.ok(&["containers", "rm", id]);
    }
    let start = Instant::now();
    while !pids_with(&format!(
        "containerd-shim-flint-v2 -namespace {NS} -id pod1"
    ))
    .is_empty()
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the pod's shim did not exit"
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
    assert_jail_gone(&jail);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts
            .lines()
            .any(|m| m.contains(&sock) && m.contains("/rootfs")),
        "a rootfs is still mounted"
    );
    assert!(c.ok(&["task", "ls"]).lines().count() <= 1);
}
