//! The guest agent on the host: the `guest-init` binary run as a normal
//! process with `FLINT_AGENT_LISTEN=unix:...`, driven by `AgentClient`.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

/// The agent binary: this crate's, or `FLINT_AGENT_TEST_BIN` (e.g. the
/// static release build `container` embeds).
fn agent_bin() -> PathBuf {
    std::env::var_os("FLINT_AGENT_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_guest-init").into())
}

use agent_protocol::*;

/// A running agent on its own socket; killed on drop.
struct Agent {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Agent {
    fn start(name: &str) -> Agent {
        let dir = std::env::temp_dir().join(format!("flint-agent-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("agent.sock");
        let child = Command::new(agent_bin())
            .env("FLINT_AGENT_LISTEN", format!("unix:{}", socket.display()))
            .spawn()
            .unwrap();
        let agent = Agent { child, dir, socket };
        // Readiness, not timing: wait until the socket accepts.
        for _ in 0..1000 {
            if UnixStream::connect(&agent.socket).is_ok() {
                return agent;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the agent never listened on {}", agent.socket.display());
    }

    fn connect(&self) -> UnixStream {
        UnixStream::connect(&self.socket).unwrap()
    }

    fn client(&self) -> AgentClient<UnixStream> {
        AgentClient::handshake(self.connect()).unwrap()
    }

    fn run(&self, argv: &[&str]) -> ExecOutput {
        self.client()
            .exec(spec(argv))
            .unwrap()
            .wait_output()
            .unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spec(argv: &[&str]) -> ExecSpec {
    ExecSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..ExecSpec::default()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn exec_reports_output_and_exit_status() {
    let agent = Agent::start("exec");
    let out = agent.run(&["echo", "hi"]);
    assert_eq!(
        (text(&out.stdout), out.status),
        ("hi\n".into(), ExitStatus::Code(0))
    );
    let out = agent.run(&["sh", "-c", "echo err >&2; exit 3"]);
    assert_eq!(text(&out.stderr), "err\n");
    assert!(out.stdout.is_empty());
    assert_eq!(out.status, ExitStatus::Code(3));
    // A clean signal mask (the agent blocks SIGCHLD for itself), the
    // environment as given plus PATH and HOME, the cwd as given.
    let mut s = spec(&[
        "sh",
        "-c",
        "grep SigBlk /proc/self/status; echo $A $HOME; pwd",
    ]);
    s.env = vec!["A=1".into()];
    s.cwd = Some("/tmp".into());
    let out = agent.client().exec(s).unwrap().wait_output().unwrap();
    assert_eq!(
        text(&out.stdout),
        "SigBlk:\t0000000000000000\n1 /root\n/tmp\n"
    );
    // Users as names or ids, resolved from /etc/passwd and /etc/group.
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let nobody = passwd
        .lines()
        .find_map(|l| l.strip_prefix("nobody:x:"))
        .map(|rest| rest.split(':').take(2).collect::<Vec<_>>().join(" "))
        .expect("a nobody user on the host");
    for (user, want) in [("nobody", nobody.as_str()), ("4242:4343", "4242 4343")] {
        let mut s = spec(&["sh", "-c", "echo $(id -u) $(id -g)"]);
        s.user = Some(user.into());
        let out = agent.client().exec(s).unwrap().wait_output().unwrap();
        assert_eq!(
            text(&out.stdout),
            format!("{want}\n"),
            "{user}: {}",
            text(&out.stderr)
        );
    }
    let err = agent
        .client()
        .exec(spec(&["no-such-command-here"]))
        .err()
        .unwrap();
    assert!(err.to_string().contains("not found"), "{err}");
}

#[test]
fn rlimits_reach_the_process_even_as_another_user() {
    let agent = Agent::start("rlimits");
    let limit = |kind: &str, soft, hard| Rlimit {
        kind: kind.into(),
        soft,
        hard,
    };
    // Set before the switch to an unprivileged user, which could not
    // raise the hard limit itself.
    let mut s = spec(&["sh", "-c", "ulimit -Sn; ulimit -Hn; ulimit -Sc"]);
    s.user = Some("4242:4242".into());
    s.rlimits = vec![
        limit("RLIMIT_NOFILE", 77, 4321),
        limit("RLIMIT_CORE", u64::MAX, u64::MAX),
    ];
    let out = agent.client().exec(s).unwrap().wait_output().unwrap();
    assert_eq!(
        (text(&out.stdout), out.status),
        ("77\n4321\nunlimited\n".into(), ExitStatus::Code(0)),
        "{}",
        text(&out.stderr)
    );
    // An unknown limit is refused, not silently dropped.
    let mut s = spec(&["true"]);
    s.rlimits = vec![limit("RLIMIT_WHATEVER", 1, 1)];
    let err = agent.client().exec(s).err().unwrap();
    assert!(err.to_string().contains("RLIMIT_WHATEVER"), "{err}");
}

#[test]
fn stdin_reaches_the_process() {
    let agent = Agent::start("stdin");
    let mut session = agent.client().exec(spec(&["cat"])).unwrap();
    let big = vec![b'x'; 200 << 10]; // several chunks
    let mut conn = session.input();
    conn.stdin(b"hello\n").unwrap();
    conn.close_stdin().unwrap();
    let out = session.wait_output().unwrap();
    assert_eq!(
        (text(&out.stdout), out.status),
        ("hello\n".into(), ExitStatus::Code(0))
    );
    // Input from a second handle while this thread reads the output.
    let session = agent.client().exec(spec(&["wc", "-c"])).unwrap();
    let stream = session.into_stream();
    let mut input = ExecInput::new(stream.try_clone().unwrap());
    let writer = std::thread::spawn(move || {
        input.stdin(&big).unwrap();
        input.close_stdin().unwrap();
    });
    let mut reader = stream;
    let mut stdout = Vec::new();
    loop {
        match read_frame(&mut reader).unwrap().unwrap() {
            Frame::Stdout(b) => stdout.extend(b),
            Frame::Exited(status) => {
                assert_eq!(status, ExitStatus::Code(0));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    writer.join().unwrap();
    assert_eq!(text(&stdout).trim(), (200 << 10).to_string());
}

#[test]
fn signals_end_processes() {
    let agent = Agent::start("signal");
    let mut session = agent.client().exec(spec(&["sleep", "1000"])).unwrap();
    session.input().signal(15).unwrap();
    assert_eq!(
        session.wait_output().unwrap().status,
        ExitStatus::Signal(15)
    );
    // Signal and Wait requests on their own connections; ListProcesses
    // sees the process meanwhile.
    let session = agent.client().exec(spec(&["sleep", "1000"])).unwrap();
    let pid = session.pid() as i32;
    let listed = agent.client().list_processes().unwrap();
    let me = listed.iter().find(|p| p.pid == pid).expect("listed");
    assert_eq!(me.argv, ["sleep", "1000"]);
    assert!(me.state != 'Z' && me.rss_bytes > 0, "{me:?}");
    agent.client().signal(pid, 9).unwrap();
    assert_eq!(agent.client().wait(pid).unwrap(), ExitStatus::Signal(9));
    assert_eq!(session.wait_output().unwrap().status, ExitStatus::Signal(9));
    let err = agent.client().wait(1).unwrap_err();
    assert!(
        err.to_string().contains("not started by the agent"),
        "{err}"
    );
}

#[test]
fn tty_sessions_see_a_terminal_and_its_size() {
    let agent = Agent::start("tty");
    let mut s = spec(&[
        "sh",
        "-c",
        "test -t 0 && test -t 1 && echo is-a-tty; stty size; read x; stty size",
    ]);
    s.tty = Some(WindowSize { rows: 24, cols: 80 });
    let mut session = agent.client().exec(s).unwrap();
    let mut seen = Vec::new();
    while !text(&seen).contains("24 80") {
        match session.next_event().unwrap() {
            ExecEvent::Stdout(b) => seen.extend(b),
            other => panic!("{other:?} after {:?}", text(&seen)),
        }
    }
    let mut input = session.input();
    input.resize(50, 132).unwrap();
    input.stdin(b"go\n").unwrap();
    let out = session.wait_output().unwrap();
    let all = text(&seen) + &text(&out.stdout);
    assert!(all.contains("is-a-tty"), "{all:?}");
    assert!(all.contains("50 132"), "{all:?}");
    assert_eq!(out.status, ExitStatus::Code(0));
}

#[test]
fn sessions_run_concurrently() {
    let agent = Agent::start("many");
    // A session that stays open the whole time.
    let mut held = agent.client().exec(spec(&["cat"])).unwrap();
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let socket = agent.socket.clone();
            std::thread::spawn(move || {
                let client = AgentClient::handshake(UnixStream::connect(socket).unwrap()).unwrap();
                let cmd = format!("echo start {i}; sleep 0.3; echo end {i}");
                let out = client
                    .exec(spec(&["sh", "-c", &cmd]))
                    .unwrap()
                    .wait_output()
                    .unwrap();
                assert_eq!(text(&out.stdout), format!("start {i}\nend {i}\n"));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    held.input().stdin(b"still here\n").unwrap();
    assert_eq!(
        held.next_event().unwrap(),
        ExecEvent::Stdout(b"still here\n".to_vec())
    );
    held.input().close_stdin().unwrap();
    assert_eq!(held.wait_output().unwrap().status, ExitStatus::Code(0));
}

#[test]
fn stats_and_ping() {
    let agent = Agent::start("stats");
    let stats = agent.client().stats().unwrap();
    assert!(stats.mem_total_bytes > 0, "{stats:?}");
    assert!(
        stats.mem_available_bytes <= stats.mem_total_bytes,
        "{stats:?}"
    );
    assert!(
        stats.cpu.user + stats.cpu.system + stats.cpu.idle > 0,
        "{stats:?}"
    );
    assert!(stats.processes > 0);
    let (version, software) = agent.client().ping().unwrap();
    assert_eq!(version, PROTOCOL_VERSION);
    assert!(software.starts_with("flint-agent"), "{software}");
}

#[test]
fn files_round_trip_in_chunks() {
    let agent = Agent::start("files");
    let path = agent.dir.join("data.bin");
    let path = path.to_str().unwrap();
    let data: Vec<u8> = (0..(3 * MAX_PAYLOAD + 12345))
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let written = agent.client().write_file(path, 0o640, &data[..]).unwrap();
    assert_eq!(written, data.len() as u64);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & !0o022, 0o640 & !0o022);
    let mut back = Vec::new();
    assert_eq!(
        agent.client().read_file(path, &mut back).unwrap(),
        data.len() as u64
    );
    assert!(back == data, "read back differs");
    let err = agent
        .client()
        .read_file("/no/such/file", Vec::new())
        .unwrap_err();
    assert!(matches!(err, ClientError::Agent(_)), "{err}");
    let err = agent
        .client()
        .write_file("/no/such/dir/f", 0o600, &b"x"[..])
        .unwrap_err();
    assert!(matches!(err, ClientError::Agent(_)), "{err}");
    let err = agent.client().read_file("/", Vec::new()).unwrap_err();
    assert!(err.to_string().contains("directory"), "{err}");
}

#[test]
fn bad_peers_are_refused_and_the_agent_lives_on() {
    let agent = Agent::start("hostile");
    // Another protocol version.
    let mut conn = agent.connect();
    let hello = Hello {
        version: PROTOCOL_VERSION + 1,
        software: "future flint".into(),
    };
    write_frame(&mut conn, &Frame::Hello(hello)).unwrap();
    match read_frame(&mut conn).unwrap() {
        Some(Frame::Response(Response::Error { message })) => {
            assert!(message.contains("not supported"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        read_frame(&mut conn).unwrap().is_none(),
        "closed after refusing"
    );
    // Hostile bytes: a 4 GiB length, an unknown kind, a truncated frame,
    // a request before the handshake.
    let hostile: [&[u8]; 4] = [
        &[0xff, 0xff, 0xff, 0xff, 0x01],
        &[0, 0, 0, 0, 0x99],
        &[0, 0, 0, 9, 0x01, b'{'],
        &Frame::Request(Request::Shutdown).encode().unwrap(),
    ];
    for bytes in hostile {
        let mut conn = agent.connect();
        conn.write_all(bytes).unwrap();
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        match read_frame(&mut conn).unwrap() {
            Some(Frame::Response(Response::Error { .. })) => {}
            other => panic!("{other:?} for {bytes:?}"),
        }
    }
    // A client that hangs up mid-session.
    let session = agent.client().exec(spec(&["sleep", "1000"])).unwrap();
    let pid = session.pid() as i32;
    drop(session);
    agent.client().signal(pid, 9).unwrap();
    assert_eq!(agent.client().wait(pid).unwrap(), ExitStatus::Signal(9));
    assert_eq!(agent.client().ping().unwrap().0, PROTOCOL_VERSION);
}

#[test]
fn shutdown_ends_the_agent_with_status_0() {
    let mut agent = Agent::start("shutdown");
    agent.client().shutdown().unwrap();
    let status = agent.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}
