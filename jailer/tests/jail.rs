//! End-to-end tests of the jailer on the real host (root only): jail the
//! static busybox and inspect the jailed process from the outside.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::{status_field, wait_for, Jail, NOBODY};

fn assert_failed_with(jail: &Jail, status: std::process::ExitStatus, needle: &str) {
    let stderr = jail.stderr();
    assert!(
        !status.success(),
        "jailer unexpectedly succeeded; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(needle),
        "stderr lacks {needle:?}:\n{stderr}"
    );
}

#[test]
fn jailed_process_is_confined() {
    require_root!();
    let mut jail = Jail::new("confined");
    let pid = jail.spawn(
        &[
            "--resource-limit",
            "no-file=1024",
            "--resource-limit",
            "fsize=1048576",
        ],
        &["sleep", "30"],
    );
    jail.wait_jailed(pid);
    let root = jail.root();

    // Its root is the jail: only the binary and dev/ are visible.
    let mut entries: Vec<String> = fs::read_dir(format!("/proc/{pid}/root"))
        .expect("read jail root via /proc")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["busybox", "dev"]);
    assert!(!Path::new(&format!("/proc/{pid}/root/etc")).exists());
    assert_eq!(
        fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline"),
        b"busybox\0sleep\x0030\0"
    );

    // Unprivileged, no supplementary groups, empty environment, no extra fds.
    assert_eq!(status_field(pid, "Uid"), "65534 65534 65534 65534");
    assert_eq!(status_field(pid, "Gid"), "65534 65534 65534 65534");
    assert_eq!(status_field(pid, "Groups"), "");
    assert!(fs::read(format!("/proc/{pid}/environ"))
        .expect("environ")
        .is_empty());
    let mut fds: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .map(|e| e.expect("fd").file_name().to_string_lossy().into_owned())
        .collect();
    fds.sort();
    assert_eq!(fds, ["0", "1", "2"]);

    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    assert_eq!(
        line("Max open files").as_deref(),
        Some("Max open files 1024 1024 files")
    );
    assert_eq!(
        line("Max file size").as_deref(),
        Some("Max file size 1048576 1048576 bytes")
    );

    // Jail layout on the host.
    let meta = fs::metadata(&root).expect("jail root");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.permissions().mode() & 0o7777),
        (NOBODY, NOBODY, 0o755)
    );
    let bin = fs::metadata(root.join("busybox")).expect("copied binary");
    assert_eq!(bin.permissions().mode() & 0o7777, 0o755);
    assert_ne!(
        bin.ino(),
        fs::metadata(common::BUSYBOX).expect("busybox").ino(),
        "must be a copy"
    );
    for (node, major, minor) in [("dev/kvm", 10, 232), ("dev/net/tun", 10, 200)] {
        let m = fs::metadata(root.join(node)).expect(node);
        assert!(m.file_type().is_char_device(), "{node}");
        assert_eq!(
            (libc::major(m.rdev()), libc::minor(m.rdev())),
            (major, minor),
            "{node}"
        );
        assert_eq!(
            (m.uid(), m.gid(), m.permissions().mode() & 0o7777),
            (NOBODY, NOBODY, 0o660),
            "{node}"
        );
    }
    assert!(
        !root.join("dev/null").exists(),
        "dev/null only with --daemonize"
    );
    assert!(!root.join(".old-root").exists());
}

#[test]
fn same_id_is_refused() {
    require_root!();
    let jail = Jail::new("twice");
    let status = jail.run(&[], &["true"]);
    assert!(status.success(), "first run failed: {}", jail.stderr());
    let status = jail.run(&[], &["true"]);
    assert_failed_with(&jail, status, "already exists");
}

#[test]
fn bad_arguments_are_refused_before_touching_the_host() {
    require_root!();
    let cases: &[(&[&str], &str)] = &[
        (&["--cgroup", "../../../x.y=1"], "--cgroup"),
        (&["--cgroup", "cpu.max/../../x=1"], "--cgroup"),
        (&["--cgroup", "cpu.max=1\n2"], "single line"),
        (&["--parent-cgroup", "../escape"], "--parent-cgroup"),
        (&["--resource-limit", "stack=1"], "--resource-limit"),
        (&["--netns", "/nonexistent/netns"], "--netns"),
    ];
    for (extra, needle) in cases {
        let jail = Jail::new("badargs");
        let status = jail.run(extra, &["true"]);
        assert_failed_with(&jail, status, needle);
        assert!(
            fs::read_dir(jail.base.path())
                .expect("base")
                .next()
                .is_none(),
            "{extra:?} created files"
        );
    }

    let mut jail = Jail::new("badid");
    jail.id = "bad/../id".into();
    let status = jail.run(&[], &["true"]);
    assert_failed_with(&jail, status, "invalid --id");
    jail.id = "x".repeat(65);
    let status = jail.run(&[], &["true"]);
    assert_failed_with(&jail, status, "invalid --id");

    let mut jail = Jail::new("baduid");
    jail.uid = "3999999999".into();
    let status = jail.run(&[], &["true"]);
    assert_failed_with(&jail, status, "--uid 3999999999: no such user");
    assert!(!jail.root().exists());
}

#[test]
fn v1_cgroup_limits_apply() {
    require_root!();
    let (Some(cpu), Some(mem)) = (common::v1_mount("cpu"), common::v1_mount("memory")) else {
        eprintln!("skipped: no cgroup v1 cpu and memory hierarchies");
        return;
    };
    let mut jail = Jail::new("cgv1");
    let pid = jail.spawn(
        &[
            "--cgroup-version",
            "1",
            "--cgroup",
            "cpu.cfs_quota_us=50000",
            "--cgroup",
            "memory.limit_in_bytes=268435456",
        ],
        &["sleep", "30"],
    );
    jail.wait_jailed(pid);
    let want = format!("/{}/{}", jail.parent, jail.id);
    assert_eq!(
        common::proc_cgroup(pid, Some("cpu")).as_deref(),
        Some(want.as_str())
    );
    assert_eq!(
        common::proc_cgroup(pid, Some("memory")).as_deref(),
        Some(want.as_str())
    );
    let read = |p: &Path| {
        fs::read_to_string(p)
            .expect("cgroup file")
            .trim()
            .to_owned()
    };
    let cpu_dir = cpu.join(&jail.parent).join(&jail.id);
    let mem_dir = mem.join(&jail.parent).join(&jail.id);
    assert_eq!(read(&cpu_dir.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(read(&mem_dir.join("memory.limit_in_bytes")), "268435456");
    assert!(read(&cpu_dir.join("cgroup.procs"))
        .lines()
        .any(|l| l == pid.to_string()));
}

#[test]
fn v2_keys_are_translated_on_v1_hosts() {
    require_root!();
    let (Some(cpu), Some(mem)) = (common::v1_mount("cpu"), common::v1_mount("memory")) else {
        eprintln!("skipped: no cgroup v1 cpu and memory hierarchies");
        return;
    };
    let mut jail = Jail::new("cgxlate");
    let pid = jail.spawn(
        &[
            "--cgroup-version",
            "1",
            "--cgroup",
            "cpu.max=30000 200000",
            "--cgroup",
            "memory.max=134217728",
        ],
        &["sleep", "30"],
    );
    jail.wait_jailed(pid);
    let read = |p: &Path| {
        fs::read_to_string(p)
            .expect("cgroup file")
            .trim()
            .to_owned()
    };
    let cpu_dir = cpu.join(&jail.parent).join(&jail.id);
    assert_eq!(read(&cpu_dir.join("cpu.cfs_quota_us")), "30000");
    assert_eq!(read(&cpu_dir.join("cpu.cfs_period_us")), "200000");
    assert_eq!(
        read(
            &mem.join(&jail.parent)
                .join(&jail.id)
                .join("memory.limit_in_bytes")
        ),
        "134217728"
    );
    let stderr = jail.stderr();
    assert!(stderr.contains("translating cpu.max"), "{stderr}");
    assert!(
        stderr.contains("memory.limit_in_bytes=134217728"),
        "{stderr}"
    );
}

#[test]
fn unknown_cgroup_file_is_an_error_naming_it() {
    require_root!();
    if common::v1_mount("cpu").is_none() && !common::v2_controllers().iter().any(|c| c == "cpu") {
        eprintln!("skipped: no cpu controller in any cgroup hierarchy");
        return;
    }
    let jail = Jail::new("cgnofile");
    let status = jail.run(&["--cgroup", "cpu.no_such_file=1"], &["true"]);
    assert_failed_with(&jail, status, "cgroup cpu.no_such_file: no such file");
    assert!(
        !jail.root().exists(),
        "a failed jail must not block a retry"
    );
}

#[test]
fn v2_cgroup_limits_apply() {
    require_root!();
    let Some(root) = common::v2_mount() else {
        eprintln!("skipped: no cgroup2 mount");
        return;
    };
    let available = common::v2_controllers();
    let has = |c: &str| available.iter().any(|a| a == c);
    let (key, value) = if has("cpu") {
        ("cpu.max", "50000 100000")
    } else if has("pids") {
        ("pids.max", "64")
    } else if has("hugetlb") && Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists() {
        ("hugetlb.2MB.max", "4194304")
    } else {
        eprintln!("skipped: cgroup2 mount offers no cpu, pids or hugetlb controller");
        return;
    };
    let controller = key.split('.').next().expect("controller");
    let subtree = root.join("cgroup.subtree_control");
    let was_enabled = fs::read_to_string(&subtree)
        .unwrap_or_default()
        .split_whitespace()
        .any(|c| c == controller);
    {
        let mut jail = Jail::new("cgv2");
        let pid = jail.spawn(
            &[
                "--cgroup-version",
                "2",
                "--cgroup",
                &format!("{key}={value}"),
            ],
            &["sleep", "30"],
        );
        jail.wait_jailed(pid);
        let want = format!("/{}/{}", jail.parent, jail.id);
        assert_eq!(
            common::proc_cgroup(pid, None).as_deref(),
            Some(want.as_str())
        );
        let dir = root.join(&jail.parent).join(&jail.id);
        assert_eq!(
            fs::read_to_string(dir.join(key))
                .expect("limit file")
                .trim(),
            value
        );
        let parent_subtree =
            fs::read_to_string(root.join(&jail.parent).join("cgroup.subtree_control"));
        assert!(parent_subtree
            .expect("parent subtree_control")
            .split_whitespace()
            .any(|c| c == controller));
    }
    if !was_enabled {
        // Best effort: leave the host's root delegation as it was.
        let _ = fs::write(&subtree, format!("-{controller}"));
    }
}

#[test]
fn missing_v2_controller_is_an_error() {
    require_root!();
    if common::v2_mount().is_none() {
        eprintln!("skipped: no cgroup2 mount");
        return;
    }
    if common::v2_controllers().iter().any(|c| c == "cpu") {
        eprintln!("skipped: the cgroup2 mount has the cpu controller");
        return;
    }
    let jail = Jail::new("cgv2missing");
    let status = jail.run(
        &["--cgroup-version", "2", "--cgroup", "cpu.max=50000 100000"],
        &["true"],
    );
    assert_failed_with(&jail, status, "--cgroup cpu.max=50000 100000");
    assert_failed_with(&jail, status, "not available");
    assert!(!jail.root().exists(), "a failed jail is removed");
}

#[test]
fn unmounted_controller_is_an_error_on_every_version() {
    require_root!();
    // No host mounts a controller by this name, on v1 or v2.
    for version in ["auto", "1", "2"] {
        let jail = Jail::new("cgunmounted");
        let status = jail.run(
            &["--cgroup-version", version, "--cgroup", "nosuchctl.limit=1"],
            &["true"],
        );
        assert_failed_with(&jail, status, "--cgroup nosuchctl.limit=1");
        assert!(!jail.root().exists(), "{version}: a failed jail is removed");
    }
}

#[test]
fn uid_or_gid_0_needs_allow_root() {
    require_root!();
    let mut jail = Jail::new("rootuid");
    jail.uid = "0".into();
    let status = jail.run(&[], &["true"]);
    assert_failed_with(
        &jail,
        status,
        "--uid 0: refusing to run the jailed process as root",
    );
    assert_failed_with(&jail, status, "--allow-root");
    assert!(
        fs::read_dir(jail.base.path())
            .expect("base")
            .next()
            .is_none(),
        "refused before touching the host"
    );
    let status = jail.run(&["--allow-root"], &["true"]);
    assert!(status.success(), "{}", jail.stderr());
}

#[test]
fn planted_symlinks_do_not_redirect_the_jail() {
    require_root!();
    let target = tempfile::tempdir().expect("tempdir");
    // <base>/busybox -> elsewhere.
    let jail = Jail::new("symlink1");
    std::os::unix::fs::symlink(target.path(), jail.base.path().join("busybox")).expect("symlink");
    let status = jail.run(&[], &["true"]);
    assert_failed_with(&jail, status, "symbolic link");

    // <base>/busybox/<id> -> elsewhere.
    let jail = Jail::new("symlink2");
    let exec_dir = jail.base.path().join("busybox");
    fs::create_dir(&exec_dir).expect("mkdir");
    std::os::unix::fs::symlink(target.path(), exec_dir.join(&jail.id)).expect("symlink");
    let status = jail.run(&[], &["true"]);
    assert_failed_with(&jail, status, "symbolic link");

    // A directory on the path that someone else owns could be swapped later.
    let jail = Jail::new("symlink3");
    let exec_dir = jail.base.path().join("busybox");
    fs::create_dir(&exec_dir).expect("mkdir");
    std::os::unix::fs::chown(&exec_dir, Some(NOBODY), Some(NOBODY)).expect("chown");
    let status = jail.run(&[], &["true"]);
    assert_failed_with(&jail, status, "must be owned by root");

    assert!(
        fs::read_dir(target.path())
            .expect("target")
            .next()
            .is_none(),
        "the jail was built through a symlink"
    );
}

#[test]
fn dynamic_binary_gets_its_libraries() {
    require_root!();
    let mut jail = Jail::new("dynamic");
    jail.exec_file = "/bin/true".into();
    let status = jail.run(&[], &[]);
    assert!(status.success(), "{}", jail.stderr());
    let root = jail.root();
    let interp = ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("a dynamic loader");
    assert!(root.join(&interp[1..]).is_file(), "no loader in the jail");
}

#[test]
fn new_pid_namespace() {
    require_root!();
    let mut jail = Jail::new("pidns");
    let jailer_pid = jail.spawn(&["--new-pid-ns"], &["sleep", "30"]);
    let pid = jail.find_jailed();
    assert_ne!(pid, jailer_pid);
    let nspid = status_field(pid, "NSpid");
    assert_eq!(
        nspid,
        format!("{pid} 1"),
        "jailed process must be PID 1 of its namespace"
    );
    // The jailer waits and reports how the jailed process ended.
    assert!(
        jail.wait_exit(0).is_none(),
        "jailer exited early: {}",
        jail.stderr()
    );
    // SAFETY: signalling a pid we just verified is our jailed process.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let status = jail.wait_exit(10).expect("jailer exits after its child");
    assert_eq!(status.code(), Some(128 + libc::SIGKILL));

    let jail = Jail::new("pidns-exit");
    let status = jail.run(&["--new-pid-ns"], &["sh", "-c", "exit 7"]);
    assert_eq!(status.code(), Some(7), "{}", jail.stderr());
}

#[test]
fn daemonize_detaches() {
    require_root!();
    let jail = Jail::new("daemon");
    let status = jail.run(&["--daemonize"], &["sleep", "30"]);
    assert!(status.success(), "{}", jail.stderr());
    let pid = jail.find_jailed();
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_comm = stat.rsplit_once(") ").expect("stat format").1;
    let session: u32 = after_comm
        .split_whitespace()
        .nth(3)
        .and_then(|s| s.parse().ok())
        .expect("session field");
    assert_eq!(session, pid, "daemon must lead its own session");
    for fd in 0..=2 {
        let m = fs::metadata(format!("/proc/{pid}/fd/{fd}")).expect("stdio fd");
        assert_eq!(
            (libc::major(m.rdev()), libc::minor(m.rdev())),
            (1, 3),
            "fd {fd} is not /dev/null"
        );
    }
    let null = fs::metadata(jail.root().join("dev/null")).expect("jail dev/null");
    assert!(null.file_type().is_char_device());
}

#[test]
fn joins_network_namespace() {
    require_root!();
    let name = format!("flint-jail-test-{}", std::process::id());
    let ok = std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: cannot create a network namespace with `ip netns add`");
        return;
    }
    let ns_path = format!("/run/netns/{name}");
    {
        let mut jail = Jail::new("netns");
        let pid = jail.spawn(&["--netns", &ns_path], &["sleep", "30"]);
        jail.wait_jailed(pid);
        let ns = fs::metadata(format!("/proc/{pid}/ns/net")).expect("ns/net");
        let want = fs::metadata(&ns_path).expect("netns file");
        assert_eq!((ns.dev(), ns.ino()), (want.dev(), want.ino()));
    }
    let _ = std::process::Command::new("ip")
        .args(["netns", "delete", &name])
        .status();
    assert!(wait_for(1, || !Path::new(&ns_path).exists()));
}

/// A minimal dynamic ELF64 executable (never run) whose only DT_NEEDED
/// names a library that exists nowhere.
fn elf_needing_a_missing_library() -> Vec<u8> {
    let mut f = vec![0u8; 0x400];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4..7].copy_from_slice(&[2, 1, 1]);
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    #[cfg(target_arch = "x86_64")]
    f[18..20].copy_from_slice(&0x3eu16.to_le_bytes());
    #[cfg(target_arch = "aarch64")]
    f[18..20].copy_from_slice(&0xb7u16.to_le_bytes());
    f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    f[54..56].copy_from_slice(&56u16.to_le_bytes());
    f[56..58].copy_from_slice(&2u16.to_le_bytes());
    for (at, kind, off, size) in [(64, 1u32, 0u64, 0x400u64), (120, 2, 0x300, 48)] {
        f[at..at + 4].copy_from_slice(&kind.to_le_bytes());
        f[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
        f[at + 16..at + 24].copy_from_slice(&off.to_le_bytes());
        f[at + 32..at + 40].copy_from_slice(&size.to_le_bytes());
    }
    let strings = b"\0libflint-nonexistent.so.1\0";
    f[0x200..0x200 + strings.len()].copy_from_slice(strings);
    for (i, (tag, val)) in [(5u64, 0x200u64), (10, strings.len() as u64), (1, 1)]
        .into_iter()
        .enumerate()
    {
        let at = 0x300 + 16 * i;
        f[at..at + 8].copy_from_slice(&tag.to_le_bytes());
        f[at + 8..at + 16].copy_from_slice(&val.to_le_bytes());
    }
    f
}

#[test]
fn missing_shared_library_is_an_error_and_leaves_no_jail() {
    require_root!();
    let bin_dir = tempfile::tempdir().expect("tempdir");
    let exe = bin_dir.path().join("needs-missing-lib");
    fs::write(&exe, elf_needing_a_missing_library()).expect("write");
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut jail = Jail::new("missinglib");
    jail.exec_file = exe.to_string_lossy().into_owned();
    let status = jail.run(&[], &[]);
    assert_failed_with(&jail, status, "libflint-nonexistent.so.1");
    assert!(
        !jail.root().exists(),
        "a failed jail must not block a retry"
    );
}
