//! `container::jail`, the helper `flint container` and the shim start
//! their VMs through, with the real jailer and flint but no guest boot: the
//! VMM is jailed (root, uid, cgroup limit, seccomp), takes a config naming
//! the files linked into its jail, and leaves nothing behind.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use container::jail::{self, JailSpec};

#[test]
fn a_jailed_vmm_takes_its_config_and_leaves_nothing_behind() {
    if !common::is_root() {
        return common::cannot_run("the jailer needs root");
    }
    // flint-jailer is another package's binary: build it (a no-op when fresh).
    let built = std::process::Command::new(env!("CARGO"))
        .args(["build", "-p", "jailer", "--bin", "flint-jailer"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(built.success(), "building flint-jailer");
    let dir = tempfile::tempdir().unwrap();
    let flint = PathBuf::from(env!("CARGO_BIN_EXE_flint"));
    let disk = dir.path().join("rootfs.ext4");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let uids = dir.path().join("uids");
    let id = format!("unit-{}", std::process::id());
    let uid = jail::allocate_uid(&uids, jail::UID_BASE + 999_000, 1000, &id).unwrap();
    let spec = JailSpec {
        id,
        flint: flint.clone(),
        jailer: jail::find_jailer(&flint),
        uid,
        gid: uid,
        chroot_base: dir.path().join("jail"),
        memory_mib: 128,
        vcpus: 1,
    };
    let console = std::fs::File::create(dir.path().join("console.log")).unwrap();
    let mut vmm = jail::spawn(Some((&spec, &uids)), &flint, Path::new("/unused"), console)
        .unwrap_or_else(|e| {
            panic!(
                "{e}: {}",
                std::fs::read_to_string(dir.path().join("console.log")).unwrap_or_default()
            )
        });
    let info = vmm.jail.clone().expect("jailed");
    let pid = vmm.pid();

    let config = serde_json::json!({
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "boot-source": {"kernel_image_path": common::guest_file("vmlinux"), "boot_args": "console=ttyS0"},
        "drives": [{"drive_id": "rootfs", "path_on_host": disk, "is_root_device": true, "is_read_only": false}],
        "vsock": {"guest_cid": 3, "uds_path": dir.path().join("v.sock")},
    });
    let seen = vmm.prepare(&config).unwrap();
    assert_eq!(seen["drives"][0]["path_on_host"], "/rootfs.ext4");
    // Configured, not started: no guest boots in this test.
    for (path, key) in [
        ("/machine-config", "machine-config"),
        ("/boot-source", "boot-source"),
        ("/vsock", "vsock"),
    ] {
        vmm.api("PUT", path, &seen[key].to_string()).unwrap();
    }
    vmm.api("PUT", "/drives/rootfs", &seen["drives"][0].to_string())
        .unwrap();
    let linked = std::fs::metadata(info.root.join("rootfs.ext4")).unwrap();
    assert_eq!(
        linked.ino(),
        std::fs::metadata(&disk).unwrap().ino(),
        "hard-linked"
    );
    assert_eq!(linked.uid(), uid, "the VMM's disk is the jail uid's");

    let root = std::fs::metadata(format!("/proc/{pid}/root")).unwrap();
    let jail_root = std::fs::metadata(&info.root).unwrap();
    assert_eq!((root.dev(), root.ino()), (jail_root.dev(), jail_root.ino()));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        line("Uid:").split_whitespace().nth(1).unwrap(),
        uid.to_string()
    );
    // Before the VM exists, the API thread serving us is already filtered
    // (the others are once the VM runs: the boot tests check them).
    let filtered: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter(|st| {
            st.lines()
                .any(|l| l.starts_with("Seccomp:") && l.ends_with('2'))
        })
        .filter_map(|st| st.lines().next().map(str::to_owned))
        .collect();
    assert!(
        !filtered.is_empty(),
        "no thread of the jailed flint is filtered"
    );
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cgroups.contains(&format!("/{}\n", info.cgroup)),
        "{cgroups}"
    );
    let v1 = Path::new("/sys/fs/cgroup/memory")
        .join(&info.cgroup)
        .join("memory.limit_in_bytes");
    let v2 = Path::new("/sys/fs/cgroup")
        .join(&info.cgroup)
        .join("memory.max");
    let limit = std::fs::read_to_string(v1)
        .or_else(|_| std::fs::read_to_string(v2))
        .unwrap();
    assert_eq!(
        limit.trim(),
        ((128 + jail::VMM_HEADROOM_MIB) << 20).to_string()
    );

    vmm.kill();
    assert!(!info.root.parent().unwrap().exists(), "the jail is left");
    assert!(!Path::new("/sys/fs/cgroup/memory")
        .join(&info.cgroup)
        .exists());
    assert!(
        !uids.join(uid.to_string()).exists(),
        "the uid is still taken"
    );
    assert!(disk.exists(), "the disk itself stays");
}
