//! `flint container` as a Docker-like lifecycle, end to end on the real
//! guest kernel: a busybox `httpd` container run detached with a published
//! port, `exec` (with and without a TTY), `logs`, `ps`, `stop`, `rm`; and a
//! container whose flint is killed with SIGKILL shows as exited with the
//! reason. Two boots in all, one at a time. Figures (run -d to the port
//! answering, exec round trip, RSS of an idle container's flint) are
//! printed.

mod common;

#[path = "../container/tests/common/mod.rs"]
mod images;

mod container_env;

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::jails::assert_jail_gone;
use container_env::*;

#[test]
fn a_detached_httpd_container_goes_through_docker_s_lifecycle() {
    if let Some(reason) = prerequisites() {
        return common::cannot_run(&reason);
    }
    let _one = BOOTS.lock().unwrap_or_else(|p| p.into_inner());
    watchdog(Duration::from_secs(1800));
    let env = Env::new();
    env.load_image();
    env.fails(&["exec", "nosuch", "true"], "no such container: nosuch");
    env.fails(
        &["run", "-d", "missing:latest"],
        "image missing:latest not found",
    );
    env.retry_on_host_segv("web", || web_lifecycle(&env));
}

/// The web container's run: `run -d -p`, execs, logs, ps, inspect, stop,
/// wait, rm.
fn web_lifecycle(env: &Env) {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    env.fails(
        &[
            "run",
            "-d",
            "-p",
            &format!("127.0.0.1:{taken_port}:80"),
            "web:1",
        ],
        "already in use",
    );
    drop(taken);

    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    let web = env.run_detached(
        "web",
        &["run", "-d", "--name", "web", "-p", &publish, "web:1"],
        |_| get(port, "/index.html"),
    );
    let (id, page, run_returned, answered) = (web.id, web.result, web.returned, web.answered);
    assert_eq!(id.len(), 64, "{id}");
    assert!(page.contains("200 OK") && page.ends_with(PAGE), "{page}");
    println!("FIGURE run -d returned after {run_returned:?}; the port answered after {answered:?}");
    // Many connections at once.
    let many: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(move || get(port, "/index.html")))
        .collect();
    for t in many {
        assert!(t.join().unwrap().is_some_and(|r| r.ends_with(PAGE)));
    }
    env.fails(&["run", "-d", "--name", "web", "web:1"], "already in use");

    let ps = env.ok(&["ps"]);
    assert!(
        ps.contains("web") && ps.contains("Up") && ps.contains(&format!("{port}->80/tcp")),
        "{ps}"
    );

    // exec: output, stderr and the exit status.
    let out = env.exec_output(&[
        "exec",
        "web",
        "sh",
        "-c",
        "cat /www/index.html; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), PAGE);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let t = Instant::now();
    env.exec_ok(&["exec", "web", "true"]);
    println!(
        "FIGURE exec round trip (flint CLI process included): {:?}",
        t.elapsed()
    );
    // exec -t: a terminal.
    let tty = String::from_utf8_lossy(&env.exec_output(&["exec", "-t", "web", "tty"]).stdout)
        .into_owned();
    assert!(tty.trim().starts_with("/dev/pts/"), "{tty:?}");
    // exec -i: stdin reaches the command.
    let mut piped = String::new();
    for _ in 0..6 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flint"))
            .args(["container", "exec", "-i", "web", "cat"])
            .env("FLINT_RUNTIME_DIR", env.runtime())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"piped in\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        piped = String::from_utf8_lossy(&out.stdout).into_owned();
        if !piped.is_empty() {
            break;
        }
    }
    assert_eq!(piped, "piped in\n");

    // logs: the main process's stdout and stderr, apart.
    let out = env.flint(&["logs", "web"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stdout.contains("web starting"), "{stdout}");
    assert!(stderr.contains("to-stderr"), "{stderr}");

    let state = env.inspect("web");
    assert_eq!(state["status"], "running");
    let flint_pid = state["flint"]["pid"].as_i64().unwrap();
    let monitor_pid = state["monitor"]["pid"].as_i64().unwrap();
    let jail = assert_jailed(&state);
    println!(
        "FIGURE RSS of the idle container's flint: {} KiB (monitor {} KiB)",
        rss_kib(flint_pid),
        rss_kib(monitor_pid)
    );

    // stop: SIGTERM ends httpd well within the grace time.
    let t = Instant::now();
    env.ok(&["stop", "-t", "20", "web"]);
    let stop_took = t.elapsed();
    println!("FIGURE stop took {stop_took:?}");
    assert!(
        stop_took < Duration::from_secs(20 + 60),
        "stop waited past the grace time"
    );
    let state = env.inspect("web");
    assert_eq!(state["status"], "exited");
    assert_eq!(
        state["exit_code"],
        128 + 15,
        "httpd died of SIGTERM: {state}"
    );
    assert!(!pid_alive(flint_pid), "the flint process is gone");
    assert!(!env.ok(&["ps"]).contains("web"));
    assert!(env.ok(&["ps", "-a"]).contains("Exited (143)"));
    let waited = env.flint(&["wait", "web"]);
    assert_eq!(String::from_utf8_lossy(&waited.stdout).trim(), "143");

    // rm: nothing is left.
    let disk = PathBuf::from(state["disk_dir"].as_str().unwrap());
    let dir = PathBuf::from(state["state_dir"].as_str().unwrap());
    assert!(disk.exists() && dir.exists());
    env.ok(&["rm", "web"]);
    assert!(!disk.exists() && !dir.exists(), "rm left state behind");
    assert_jail_gone(&jail);
    assert!(!env.runtime().join("names/web").exists());
    assert!(!pid_alive(monitor_pid));
    env.fails(&["inspect", "web"], "no such container");
    // The name is free again (no boot: a taken port refuses at once).
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let p = taken.local_addr().unwrap().port();
    env.fails(
        &[
            "run",
            "-d",
            "--name",
            "web",
            "-p",
            &format!("127.0.0.1:{p}:80"),
            "web:1",
        ],
        "already in use",
    );
}

#[test]
fn a_killed_flint_shows_the_container_exited_with_the_reason() {
    if let Some(reason) = prerequisites() {
        return common::cannot_run(&reason);
    }
    let _one = BOOTS.lock().unwrap_or_else(|p| p.into_inner());
    watchdog(Duration::from_secs(1800));
    let env = Env::new();
    env.load_image();
    // A descriptor the caller leaves inheritable (as `flock CMD` does with
    // its lock) must not live on in the container's processes.
    let held = std::fs::File::create(env.dir.path().join("held")).unwrap();
    // SAFETY: F_SETFD on a descriptor this test owns.
    unsafe { libc::fcntl(held.as_raw_fd(), libc::F_SETFD, 0) };
    // Up: an exec in it runs (a main process that died at start shows as
    // exited once its end is recorded; slow under load).
    env.run_detached(
        "victim",
        &["run", "-d", "--name", "victim", "web:1", "sleep", "100000"],
        |_| {
            let probe = env.flint(&["exec", "victim", "true"]);
            probe.status.success().then(String::new)
        },
    );
    let state = env.inspect("victim");
    assert_eq!(state["status"], "running");
    let flint_pid = state["flint"]["pid"].as_i64().unwrap();
    let monitor_pid = state["monitor"]["pid"].as_i64().unwrap();
    let held_path = env.dir.path().join("held");
    let supervisor_pid = state["supervisor"]["pid"].as_i64().unwrap_or(monitor_pid);
    for pid in [monitor_pid, supervisor_pid, flint_pid] {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
        for fd in fds.flatten() {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            assert_ne!(
                target, held_path,
                "process {pid} inherited the caller's descriptor"
            );
        }
    }
    drop(held);
    let jail = assert_jailed(&state);
    // SAFETY: kill(2) on the container's (jailed) flint process.
    assert_eq!(unsafe { libc::kill(flint_pid as i32, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let ps = loop {
        let ps = env.ok(&["ps", "-a"]);
        if ps.contains("killed by signal 9") || Instant::now() > deadline {
            break ps;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        ps.contains(&format!(
            "flint process {flint_pid} died: killed by signal 9"
        )),
        "{ps}"
    );
    assert!(
        !env.ok(&["ps"]).contains("victim"),
        "never shown as running"
    );
    let state = env.inspect("victim");
    assert_eq!(state["status"], "exited");
    env.fails(&["exec", "victim", "true"], "is not running");
    let dir = PathBuf::from(state["state_dir"].as_str().unwrap());
    env.ok(&["rm", "victim"]);
    assert!(!dir.exists());
    assert_jail_gone(&jail);
}

/// `-v HOST:GUEST:ro`: the page comes from a host directory, and a change
/// on the host is served changed.
#[test]
fn a_shared_directory_is_served_live() {
    if let Some(reason) = prerequisites() {
        return common::cannot_run(&reason);
    }
    let _one = BOOTS.lock().unwrap_or_else(|p| p.into_inner());
    watchdog(Duration::from_secs(1800));
    let env = Env::new();
    env.load_image();
    let www = env.dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    let port = free_port();
    let volume = format!("{}:/www:ro", www.display());
    let publish = format!("127.0.0.1:{port}:80");
    env.retry_on_host_segv("web", || {
        std::fs::write(www.join("index.html"), "first\n").unwrap();
        let page = env
            .run_detached(
                "web",
                &[
                    "run", "-d", "--name", "web", "-p", &publish, "-v", &volume, "web:1",
                ],
                |_| get(port, "/index.html"),
            )
            .result;
        assert!(page.ends_with("first\n"), "{page}");
        // Memory of an idle container with a volume: its VMM plus the
        // virtiofsd processes its supervisor started.
        let state = env.inspect("web");
        let supervisor = state["supervisor"]["pid"].as_i64().unwrap();
        let daemons = descendants(supervisor, "virtiofsd");
        assert!(!daemons.is_empty(), "no virtiofsd under the supervisor");
        let daemons_kib: u64 = daemons.iter().map(|&p| rss_kib(p)).sum();
        println!(
            "FIGURE RSS of an idle container with one volume: flint {} KiB + virtiofsd {} KiB ({} processes)",
            rss_kib(state["flint"]["pid"].as_i64().unwrap()),
            daemons_kib,
            daemons.len()
        );
        std::fs::write(www.join("index.html"), "second\n").unwrap();
        let page = get(port, "/index.html").unwrap();
        assert!(page.ends_with("second\n"), "{page}");
        let out = env.exec_retrying(&["exec", "web", "sh", "-c", "echo x > /www/new"], |_| true);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !matches!(out.status.code(), Some(0) | Some(HOST_SEGV)),
            ":ro is enforced: {err}"
        );
        assert!(err.contains("Read-only file system"), "{err}");
        assert!(!www.join("new").exists());
    });
    env.ok(&["rm", "-f", "web"]);
}

/// Process `pid`'s descendants named `comm` (their own children included).
fn descendants(pid: i64, comm: &str) -> Vec<i64> {
    let mut found = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let children =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        for child in children
            .split_whitespace()
            .filter_map(|c| c.parse::<i64>().ok())
        {
            let name = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            if name.trim() == comm {
                found.push(child);
            }
            todo.push(child);
        }
    }
    found
}
