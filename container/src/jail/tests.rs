use super::*;
use serde_json::json;

fn host_config() -> serde_json::Value {
    json!({
        "boot-source": {"kernel_image_path": "/guest/vmlinux", "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 512},
        "drives": [
            {"drive_id": "rootfs", "path_on_host": "/cache/c/rootfs.ext4", "is_root_device": true, "is_read_only": false},
            {"drive_id": "settings", "path_on_host": "/cache/c/settings", "is_root_device": false, "is_read_only": true},
            {"drive_id": "c1", "path_on_host": "/other/rootfs.ext4", "is_root_device": false, "is_read_only": false},
            {"drive_id": "c2", "path_on_host": "/x/flint", "is_root_device": false, "is_read_only": true},
        ],
        "vsock": {"guest_cid": 3, "uds_path": "/run/flint/abc/vsock.sock"},
        "fs": [{"tag": "vol0", "socket": "/run/flint/abc/vol0.virtiofsd.sock", "num_request_queues": 1, "queue_size": 1024}],
    })
}

#[test]
fn the_config_names_paths_inside_the_jail() {
    let (jailed, files) = jail_config(&host_config()).unwrap();
    assert_eq!(jailed["boot-source"]["kernel_image_path"], "/vmlinux");
    assert_eq!(jailed["boot-source"]["boot_args"], "console=ttyS0");
    let paths: Vec<&str> = jailed["drives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path_on_host"].as_str().unwrap())
        .collect();
    // A clash of names, or a name the jailer uses, gets the drive id.
    assert_eq!(
        paths,
        ["/rootfs.ext4", "/settings", "/c1-rootfs.ext4", "/c2-flint"]
    );
    assert_eq!(jailed["vsock"]["uds_path"], "/vsock.sock");
    assert_eq!(jailed["fs"][0]["socket"], "/vol0.virtiofsd.sock");
    assert_eq!(jailed["machine-config"], host_config()["machine-config"]);
    let summary: Vec<(&str, &str, bool)> = files
        .iter()
        .map(|f| (f.host.to_str().unwrap(), f.name.as_str(), f.writable))
        .collect();
    assert_eq!(
        summary,
        [
            ("/guest/vmlinux", "vmlinux", false),
            ("/cache/c/rootfs.ext4", "rootfs.ext4", true),
            ("/cache/c/settings", "settings", false),
            ("/other/rootfs.ext4", "c1-rootfs.ext4", true),
            ("/x/flint", "c2-flint", false),
        ]
    );
}

#[test]
fn limits_leave_the_vmm_headroom_and_give_a_cpu_per_vcpu() {
    assert_eq!(
        cgroup_settings(256, 2),
        [
            format!("memory.max={}", (256 + VMM_HEADROOM_MIB) << 20),
            "cpu.max=200000 100000".to_string()
        ]
    );
    assert_eq!(cgroup_settings(128, 0)[1], "cpu.max=100000 100000");
}

#[test]
fn each_jail_gets_its_own_uid_until_it_gives_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let a = allocate_uid(dir.path(), 500, 3, "a").unwrap();
    let b = allocate_uid(dir.path(), 500, 3, "b").unwrap();
    let c = allocate_uid(dir.path(), 500, 3, "c").unwrap();
    assert_eq!((a, b, c), (500, 501, 502));
    assert!(allocate_uid(dir.path(), 500, 3, "d").is_err());
    std::fs::remove_file(dir.path().join("501")).unwrap();
    assert_eq!(allocate_uid(dir.path(), 500, 3, "e").unwrap(), 501);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("501")).unwrap(),
        "e"
    );
}

#[test]
fn files_are_hard_linked_and_writable_ones_given_to_the_jail() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let disk = dir.path().join("rootfs.ext4");
    std::fs::write(&disk, b"disk").unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"kernel").unwrap();
    let file = |host: &Path, name: &str, writable| JailFile {
        host: host.to_owned(),
        name: name.into(),
        writable,
    };
    // SAFETY: no arguments.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let (ju, jg) = if uid == 0 {
        (10_000_123, 10_000_123)
    } else {
        (uid, gid)
    };
    assert!(!place(&root, &file(&disk, "rootfs.ext4", true), ju, jg).unwrap());
    assert!(!place(&root, &file(&kernel, "vmlinux", false), ju, jg).unwrap());
    let linked = std::fs::metadata(root.join("rootfs.ext4")).unwrap();
    let original = std::fs::metadata(&disk).unwrap();
    assert_eq!(linked.ino(), original.ino(), "a link, not a copy");
    assert_eq!((linked.uid(), linked.gid()), (ju, jg));
    assert_eq!(std::fs::metadata(root.join("vmlinux")).unwrap().uid(), uid);
    // A file the jail uid could not read is refused, not exposed by chmod.
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"s").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    assert!(place(&root, &file(&secret, "secret", false), ju, jg).is_err());
}

#[test]
fn every_config_section_has_an_endpoint_and_unknown_ones_are_refused() {
    let config = host_config();
    let drives = endpoints("drives", &config["drives"]).unwrap();
    assert_eq!(drives[0].0, "/drives/rootfs");
    assert_eq!(drives.len(), 4);
    assert_eq!(endpoints("fs", &config["fs"]).unwrap()[0].0, "/fs/vol0");
    assert_eq!(endpoints("vsock", &config["vsock"]).unwrap()[0].0, "/vsock");
    assert_eq!(
        endpoints("mmds-config", &json!({})).unwrap()[0].0,
        "/mmds/config"
    );
    assert_eq!(
        endpoints("memory-hotplug", &json!({})).unwrap()[0].0,
        "/hotplug/memory"
    );
    assert!(endpoints("balloon", &serde_json::Value::Null)
        .unwrap()
        .is_empty());
    assert!(endpoints("nonsense", &json!({})).is_err());
}

#[test]
fn removing_a_jail_leaves_the_linked_files() {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("flint/c-1");
    let root = top.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let disk = dir.path().join("disk");
    std::fs::write(&disk, b"d").unwrap();
    std::fs::hard_link(&disk, root.join("disk")).unwrap();
    let uids = dir.path().join("uids");
    std::fs::create_dir(&uids).unwrap();
    std::fs::write(uids.join("42"), b"c-1").unwrap();
    std::fs::write(uids.join("43"), b"c-2").unwrap();
    let info = JailInfo {
        id: "c-1".into(),
        root,
        uid: 42,
        gid: 42,
        cgroup: "flint-unit-test-none/c-1".into(),
        cgroup_settings: vec![],
        uid_dir: uids.clone(),
    };
    remove(&info).unwrap();
    assert!(!top.exists());
    assert!(!uids.join("42").exists());
    // A uid given back and taken by another jail stays that jail's.
    let again = JailInfo { uid: 43, ..info };
    remove(&again).unwrap();
    assert!(uids.join("43").exists());
    assert_eq!(std::fs::read(&disk).unwrap(), b"d");
}
