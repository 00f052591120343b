//! A jailed flint boots the real guest: its root is the jail, it runs as the
//! given uid, and it sits in a cgroup with the limits set.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{cannot_run, guest_file, is_root, Flint, BOOT_LOCK, BOOT_TIMEOUT};

const NOBODY: u32 = 65534;

fn call(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    api_server::client::request(sock, method, path, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Removes the cgroups the jailer made for `id`, in every hierarchy.
fn remove_cgroups(id: &str) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() > 2 && (fields[2] == "cgroup" || fields[2] == "cgroup2") {
            let _ = std::fs::remove_dir(PathBuf::from(fields[1]).join("flint").join(id));
        }
    }
}

fn cgroup_of(pid: u32, controller: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_string())
    })
}

#[test]
fn jailed_flint_boots_the_guest_confined() {
    if !is_root() {
        return cannot_run("the jailer needs root");
    }
    let _one_vcpu = BOOT_LOCK.read().unwrap_or_else(|p| p.into_inner());
    let base = tempfile::tempdir().unwrap();
    let id = format!("jail-test-{}", std::process::id());
    let flint = env!("CARGO_BIN_EXE_flint");
    let mut cmd = Command::new(flint);
    cmd.args(["jail", "--id", &id, "--exec-file", flint])
        .args(["--uid", &NOBODY.to_string(), "--gid", &NOBODY.to_string()])
        .arg("--chroot-base")
        .arg(base.path())
        .args([
            "--cgroup",
            "memory.max=536870912",
            "--cgroup",
            "cpu.max=50000 100000",
        ])
        .args(["--", "run", "--api-sock", "/api.sock", "--no-console-input"]);
    let mut vm = Flint::spawn(cmd, tempfile::tempdir().unwrap());

    let root = jailer::jail_root(base.path(), Path::new(flint), &id);
    let sock = root.join("api.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "no API socket in the jail:\n{}",
            vm.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Files the jailed flint needs are placed inside its root, as with
    // Firecracker's jailer.
    for name in ["vmlinux", "initramfs.cpio"] {
        std::fs::copy(guest_file(name), root.join(name)).unwrap();
    }
    let boot = r#"{"kernel_image_path": "/vmlinux", "initrd_path": "/initramfs.cpio", "boot_args": "console=ttyS0 reboot=k panic=-1 guest_cmd=\"echo jailed-$((6*7))\""}"#;
    assert_eq!(call(&sock, "PUT", "/boot-source", Some(boot)).0, 204);
    let (status, body) = call(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(status, 204, "{body}");

    let pid = vm.pid();
    // Its root is the jail (same directory, seen through /proc): the host
    // filesystem is out of sight.
    use std::os::unix::fs::MetadataExt;
    let seen = std::fs::metadata(format!("/proc/{pid}/root")).unwrap();
    let jail = std::fs::metadata(&root).unwrap();
    assert_eq!(
        (seen.dev(), seen.ino()),
        (jail.dev(), jail.ino()),
        "its root is not the jail"
    );
    assert!(Path::new(&format!("/proc/{pid}/root/vmlinux")).exists());
    assert!(
        !Path::new(&format!("/proc/{pid}/root/etc/passwd")).exists(),
        "the host's /etc is visible"
    );
    // It runs as the given uid and gid.
    let status_text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ids = |key: &str| -> Vec<u32> {
        let line = status_text.lines().find(|l| l.starts_with(key)).unwrap();
        line.split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect()
    };
    assert_eq!(ids("Uid:"), vec![NOBODY; 4]);
    assert_eq!(ids("Gid:"), vec![NOBODY; 4]);
    // It sits in the cgroup with the limits set (v1 here, v2 where mounted).
    let memory_cg = cgroup_of(pid, "memory").or_else(|| cgroup_of(pid, ""));
    let memory_cg = memory_cg.expect("no memory cgroup");
    assert!(
        memory_cg.ends_with(&format!("/flint/{id}")),
        "memory cgroup {memory_cg}"
    );
    let v1 = Path::new("/sys/fs/cgroup/memory").join(memory_cg.trim_start_matches('/'));
    let limit = if v1.join("memory.limit_in_bytes").exists() {
        std::fs::read_to_string(v1.join("memory.limit_in_bytes")).unwrap()
    } else {
        std::fs::read_to_string(
            Path::new("/sys/fs/cgroup")
                .join(memory_cg.trim_start_matches('/'))
                .join("memory.max"),
        )
        .unwrap()
    };
    assert_eq!(limit.trim(), "536870912");

    let line = vm.wait_for("jailed-", BOOT_TIMEOUT).unwrap();
    assert_eq!(line.trim(), "jailed-42");
    assert_eq!(
        call(&sock, "PUT", "/actions", Some(r#"{"action_type": "Stop"}"#)).0,
        204
    );
    assert_eq!(
        vm.wait_exit(Duration::from_secs(30)).unwrap().code(),
        Some(0)
    );
    remove_cgroups(&id);
}
