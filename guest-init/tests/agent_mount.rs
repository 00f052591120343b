//! The agent's container support on the host: `Mount`/`Unmount` and
//! `ExecSpec.root` (a process chrooted into a container's tree), as the
//! containerd shim uses them. Needs root (mount, chroot).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use agent_protocol::*;

struct Agent {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Agent {
    fn start() -> Agent {
        let dir = std::env::temp_dir().join(format!("flint-agent-mount-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("agent.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_guest-init"))
            .env("FLINT_AGENT_LISTEN", format!("unix:{}", socket.display()))
            .spawn()
            .unwrap();
        let agent = Agent { child, dir, socket };
        for _ in 0..1000 {
            if UnixStream::connect(&agent.socket).is_ok() {
                return agent;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the agent never listened");
    }

    fn client(&self) -> AgentClient<UnixStream> {
        AgentClient::handshake(UnixStream::connect(&self.socket).unwrap()).unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.join("root"))
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn processes_run_chrooted_into_a_mounted_root() {
    let busybox = Path::new("/bin/busybox");
    if !is_root() || !busybox.is_file() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "cannot run under CI: needs root and busybox-static"
        );
        println!("skipped: needs root and busybox-static");
        return;
    }
    let agent = Agent::start();
    let root = agent.dir.join("root");
    agent
        .client()
        .mount(MountSpec {
            source: "tmpfs".into(),
            target: root.display().to_string(),
            fstype: "tmpfs".into(),
            options: vec!["nosuid".into(), "size=16m".into()],
        })
        .unwrap();
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nu:x:1234:99::/home/u:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\ng:x:99:\n").unwrap();
    std::fs::write(root.join("marker"), "inside\n").unwrap();
    let out = agent
        .client()
        .exec(ExecSpec {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "busybox cat /marker; pwd; busybox id -u; exit 5".into(),
            ],
            cwd: Some("/etc".into()),
            user: Some("u".into()),
            root: Some(root.display().to_string()),
            ..ExecSpec::default()
        })
        .unwrap()
        .wait_output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "inside\n/etc\n1234\n",
        "{out:?}"
    );
    assert_eq!(out.status, ExitStatus::Code(5));
    agent.client().unmount(&root.display().to_string()).unwrap();
    assert!(!root.join("marker").exists());
    let bad = agent.client().mount(MountSpec {
        source: "none".into(),
        target: "relative".into(),
        fstype: "tmpfs".into(),
        options: vec![],
    });
    assert!(bad.is_err());
}
