//! What the `flint container` end-to-end tests share: a private runtime
//! directory and image store per test ([`Env`]), the busybox `httpd` image,
//! detached runs that retry the host's SIGSEGV quirk, and the checks that
//! a container's VMM is jailed and that its jail is gone.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::common;
use crate::images::{docker_save, layer, E};

/// One guest at a time.
pub static BOOTS: Mutex<()> = Mutex::new(());

/// How `exec` reports a guest process killed by SIGSEGV. On this emulating
/// host a busybox process now and then dies of it on its first thread-local
/// access (measured: 3 of 25 `exec true`; the guest README's "known flake":
/// the host loses the user FS base), so checks retry a command that ended
/// so, and say so.
pub const HOST_SEGV: i32 = 139;

/// A detached container that serves (see [`Env::run_detached`]).
pub struct Detached {
    pub id: String,
    pub result: String,
    pub returned: Duration,
    pub answered: Duration,
}

/// The page the container serves.
pub const PAGE: &str = "hello from a flint container\n";

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn runtime(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn flint(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_flint"))
            .arg("container")
            .args(args)
            .env("FLINT_RUNTIME_DIR", self.runtime())
            .env("FLINT_IMAGE_STORE", self.dir.path().join("store"))
            .env("XDG_CACHE_HOME", self.dir.path().join("cache"))
            .env("FLINT_GUEST_DIR", common::guest_dir())
            .output()
            .unwrap();
        println!(
            "$ flint container {}\n{}{}-> {:?}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            out.status.code()
        );
        out
    }

    /// Runs a command that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.flint(args);
        if !out.status.success() {
            self.dump();
            panic!("flint container {args:?} failed");
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs an `exec` until it prints something and did not die of the
    /// host's SIGSEGV quirk (see [`HOST_SEGV`]); six tries, each retry
    /// said in the output.
    pub fn exec_output(&self, args: &[&str]) -> Output {
        self.exec_retrying(args, |out| !out.stdout.is_empty())
    }

    /// Runs an `exec` that must succeed, retrying only a [`HOST_SEGV`] end.
    pub fn exec_ok(&self, args: &[&str]) {
        let out = self.exec_retrying(args, |_| true);
        if !out.status.success() {
            self.dump();
            panic!("flint container {args:?} failed");
        }
    }

    pub fn exec_retrying(&self, args: &[&str], done: impl Fn(&Output) -> bool) -> Output {
        let mut out = self.flint(args);
        for attempt in 2..=6 {
            let segv = out.status.code() == Some(HOST_SEGV);
            if done(&out) && !segv {
                break;
            }
            println!("attempt {attempt}: the guest process died of SIGSEGV or printed nothing (host quirk)");
            out = self.flint(args);
        }
        out
    }

    /// `run -d ARGS` of container `name`, until `up` (given the time since
    /// `run` returned) says it serves: its result, the id, and when `run`
    /// returned and `up` answered. A main process that dies of the host's
    /// SIGSEGV quirk (see [`HOST_SEGV`]) at start is run again (`rm -f`,
    /// `run`; five runs at most, each retry said); any other end fails at
    /// once, with the logs.
    pub fn run_detached(
        &self,
        name: &str,
        args: &[&str],
        up: impl Fn(Duration) -> Option<String>,
    ) -> Detached {
        for attempt in 1..=5 {
            let started = Instant::now();
            let id = self.ok(args).trim().to_owned();
            let returned = started.elapsed();
            let mut checked = Instant::now();
            loop {
                if let Some(result) = up(started.elapsed() - returned) {
                    let answered = started.elapsed();
                    return Detached {
                        id,
                        result,
                        returned,
                        answered,
                    };
                }
                if checked.elapsed() > Duration::from_secs(2) {
                    checked = Instant::now();
                    let state = self.inspect(name);
                    if state["status"] != "running" {
                        if state["exit_code"] == HOST_SEGV && attempt < 5 {
                            println!("attempt {attempt}: the main process died of SIGSEGV at start (host quirk); running it again");
                            self.ok(&["rm", "-f", name]);
                            break;
                        }
                        self.dump();
                        self.flint(&["logs", name]);
                        panic!("container {name} ended before it served: {state}");
                    }
                }
                if started.elapsed() > Duration::from_secs(600) {
                    self.dump();
                    self.flint(&["logs", name]);
                    panic!("container {name} did not serve within 10 minutes");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        unreachable!("the fifth run returns or panics")
    }

    /// Runs `scenario`, which uses container `name`, again (three runs at
    /// most, each said) when it failed because the container's main process
    /// died of the host's SIGSEGV quirk after its start, not only at it
    /// (its state then says exit [`HOST_SEGV`]): the container is removed
    /// and the whole scenario starts over. Any other failure stands.
    pub fn retry_on_host_segv(&self, name: &str, scenario: impl Fn()) {
        for attempt in 1..=3 {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&scenario));
            let Err(failure) = run else { return };
            let out = self.flint(&["inspect", name]);
            let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let state = &state[0];
            if attempt == 3 || state["status"] != "exited" || state["exit_code"] != HOST_SEGV {
                std::panic::resume_unwind(failure);
            }
            println!(
                "attempt {attempt}: container {name}'s main process died of SIGSEGV after \
                 its start (host quirk): {state}; running the scenario again"
            );
            self.ok(&["rm", "-f", name]);
        }
    }

    /// Runs a command that must fail with `message` on stderr.
    pub fn fails(&self, args: &[&str], message: &str) {
        let out = self.flint(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(message), "{args:?}: {err:?} lacks {message:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "one clear line: {err:?}");
    }

    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let text = self.ok(&["inspect", name]);
        let all: serde_json::Value = serde_json::from_str(&text).unwrap();
        all[0].clone()
    }

    /// Prints every container's logs, to explain a failure.
    pub fn dump(&self) {
        let Ok(entries) = std::fs::read_dir(self.runtime()) else {
            return;
        };
        for e in entries.flatten() {
            for f in ["console.log", "flint.log", "state.json"] {
                if let Ok(text) = std::fs::read_to_string(e.path().join(f)) {
                    println!("--- {}/{f}\n{text}", e.path().display());
                }
            }
        }
    }

    /// Builds the busybox httpd image and loads it as `web:1`.
    pub fn load_image(&self) {
        let busybox = std::fs::read("/bin/busybox").unwrap();
        let mut entries = vec![
            E::Dir("bin", 0o755),
            E::File("bin/busybox", &busybox, 0o755),
            E::Dir("www", 0o755),
            E::File("www/index.html", PAGE.as_bytes(), 0o644),
            E::Dir("etc", 0o755),
            E::File("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644),
            E::File("etc/group", b"root:x:0:\n", 0o644),
        ];
        let applets = [
            "sh", "httpd", "echo", "cat", "tty", "sleep", "true", "ls", "stty",
        ];
        let links: Vec<String> = applets.iter().map(|a| format!("bin/{a}")).collect();
        for l in &links {
            entries.push(E::Symlink(l, "busybox"));
        }
        let config = serde_json::json!({
            "Cmd": ["/bin/sh", "-c", "echo web starting; echo to-stderr >&2; exec httpd -f -v -p 80 -h /www"],
        });
        let tar = docker_save(&[layer(&entries)], config);
        let path = self.dir.path().join("web.tar");
        std::fs::write(&path, tar).unwrap();
        let out = self.ok(&["load", "-i", path.to_str().unwrap(), "--tag", "web:1"]);
        assert!(out.contains("Loaded image: web:1"), "{out}");
        std::fs::remove_file(&path).unwrap();
        assert!(self.ok(&["images"]).contains("web"));
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::env::var_os("FLINT_TEST_KEEP").is_some() {
            println!("kept {}", self.dir.path().display());
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().unwrap(),
            ));
            return;
        }
        // Leave nothing running (or jailed) behind a failed test: one `rm`
        // per name, as `rm` stops at the first it does not know.
        for name in ["web", "victim", "term"] {
            let _ = Command::new(env!("CARGO_BIN_EXE_flint"))
                .args(["container", "rm", "-f", name])
                .env("FLINT_RUNTIME_DIR", self.runtime())
                .output();
        }
    }
}

pub fn prerequisites() -> Option<String> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Some(format!("/dev/kvm: {e}"));
    }
    if !common::guest_file("vmlinux").is_file() {
        return Some("no guest kernel (FLINT_GUEST_DIR)".into());
    }
    if !common::is_root() {
        return Some("the container's VMM is jailed only as root".into());
    }
    if !Path::new("/bin/busybox").is_file() {
        return Some("no /bin/busybox (apt-get install busybox-static)".into());
    }
    build_jailer();
    None
}

/// Builds `flint-jailer` (another package's binary, found next to flint;
/// a no-op when fresh).
pub fn build_jailer() {
    let built = Command::new(env!("CARGO"))
        .args(["build", "-p", "jailer", "--bin", "flint-jailer"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(built.success(), "building flint-jailer");
}

pub fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("container lifecycle test: no result after {limit:?}; giving up");
        std::process::exit(101);
    });
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.0 GET; the whole response, or `None` if the connection
/// ended without one (the server is not up yet).
pub fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(120))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    (!response.is_empty()).then_some(response)
}

pub fn pid_alive(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
}

pub fn rss_kib(pid: i64) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Checks that the container's VMM (`state["flint"]["pid"]`) runs jailed:
/// its `/` is the jail root, its uid is the jail's (not 0), it is in the
/// jail's cgroup with the memory limit, and seccomp-filtered. Returns the
/// jail as `inspect` shows it.
pub fn assert_jailed(state: &serde_json::Value) -> serde_json::Value {
    use std::os::unix::fs::MetadataExt;
    let jail = state["jail"].clone();
    assert!(jail.is_object(), "not jailed: {state}");
    assert_eq!(state["jailed"], true);
    let pid = state["flint"]["pid"].as_i64().unwrap();
    let root = PathBuf::from(jail["root"].as_str().unwrap());
    let seen = std::fs::metadata(format!("/proc/{pid}/root")).unwrap();
    let real = std::fs::metadata(&root).unwrap();
    assert_eq!(
        (seen.dev(), seen.ino()),
        (real.dev(), real.ino()),
        "its / is not the jail"
    );
    let disk = Path::new(state["disk_dir"].as_str().unwrap()).join("root.ext4");
    let linked = std::fs::metadata(root.join("root.ext4")).expect("the disk is in the jail");
    assert_eq!(
        linked.ino(),
        std::fs::metadata(&disk).unwrap().ino(),
        "the disk is hard-linked, not copied"
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {status}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let uid = jail["uid"].as_u64().unwrap().to_string();
    assert_ne!(uid, "0");
    assert_eq!(field("Uid:"), vec![uid.clone(); 4], "runs as the jail uid");
    assert_eq!(field("Gid:")[0], jail["gid"].as_u64().unwrap().to_string());
    assert_eq!(field("Seccomp:"), ["2"], "seccomp-filtered");
    // In the jail's cgroup (v1 memory hierarchy here, v2 where mounted),
    // with the guest's memory plus the VMM's headroom as its limit.
    let cgroup = jail["cgroup"].as_str().unwrap();
    let limit = crate::common::jails::memory_cgroup_limit(pid as u32, cgroup);
    let mib = state["memory_mib"].as_u64().unwrap();
    assert_eq!(limit, ((mib + 256) << 20).to_string(), "memory limit");
    jail
}
