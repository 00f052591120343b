//! Image reading, layer unpacking, settings, cache keys and the ext4 build,
//! without booting anything.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use clap::Parser;
use common::{docker_save, gzip, layer, oci_layout, prepare_args, sha256, E};
use container::image::{self, Defaults, Format, Tarball};
use container::unpack::{self, Tree};
use container::{rootfs, settings, ContainerError, ContainerRunArgs};

fn unpack_layers(layers: &[Vec<u8>]) -> (tempfile::TempDir, Tree) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let mut tree = Tree::new(&root);
    for l in layers {
        tree.apply_layer(&l[..]).unwrap();
    }
    tree.finish().unwrap();
    (dir, tree)
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn whiteouts_remove_lower_entries() {
    let l1 = layer(&[
        E::Dir("etc", 0o755),
        E::File("etc/doomed.txt", b"x", 0o644),
        E::File("etc/kept.txt", b"k", 0o644),
        E::Dir("var/lib/gone", 0o755),
        E::File("var/lib/gone/deep", b"d", 0o644),
    ]);
    let l2 = layer(&[
        E::File("etc/.wh.doomed.txt", b"", 0o644),
        E::File("var/lib/.wh.gone", b"", 0o644),
        E::File("etc/.wh.never-existed", b"", 0o644),
        E::File("etc/added.txt", b"added", 0o644),
    ]);
    let (_dir, tree) = unpack_layers(&[l1, l2]);
    let r = tree.root();
    assert!(!exists(&r.join("etc/doomed.txt")));
    assert!(!exists(&r.join("var/lib/gone")));
    assert_eq!(names(&r.join("etc")), ["added.txt", "kept.txt"]);
    assert!(
        !exists(&r.join("etc/.wh.doomed.txt")),
        "whiteouts are not materialized"
    );
    assert!(!tree.meta.contains_key(Path::new("var/lib/gone/deep")));
    assert!(tree.meta.contains_key(Path::new("etc/added.txt")));
}

#[test]
fn a_whiteout_does_not_remove_the_same_layers_entry() {
    let l1 = layer(&[E::File("a", b"1", 0o644)]);
    // Replaced in the upper layer, then whited out by a (misordered) marker:
    // the whiteout applies to lower layers only.
    let l2 = layer(&[E::File("a", b"2", 0o644), E::File(".wh.a", b"", 0o644)]);
    let (_dir, tree) = unpack_layers(&[l1, l2]);
    assert_eq!(fs::read(tree.root().join("a")).unwrap(), b"2");
}

#[test]
fn opaque_directories_hide_lower_contents() {
    let l1 = layer(&[
        E::Dir("d", 0o755),
        E::File("d/lower", b"l", 0o644),
        E::Dir("d/sub", 0o755),
        E::File("d/sub/lower", b"l", 0o644),
        E::File("other", b"o", 0o644),
    ]);
    // The marker comes after one of this layer's entries on purpose.
    let l2 = layer(&[
        E::Dir("d", 0o700),
        E::File("d/sub/upper", b"u", 0o644),
        E::File("d/.wh..wh..opq", b"", 0o644),
        E::File("d/upper", b"u", 0o644),
    ]);
    let (_dir, tree) = unpack_layers(&[l1, l2]);
    let r = tree.root();
    assert_eq!(names(&r.join("d")), ["sub", "upper"]);
    assert_eq!(names(&r.join("d/sub")), ["upper"]);
    assert!(exists(&r.join("other")));
    assert_eq!(tree.meta[Path::new("d")].mode, unpack::S_IFDIR | 0o700);
}

#[test]
fn entries_replace_lower_entries_of_other_types() {
    let l1 = layer(&[
        E::Dir("x", 0o755),
        E::File("x/f", b"f", 0o644),
        E::File("y", b"file", 0o644),
        E::Symlink("z", "/nowhere"),
    ]);
    let l2 = layer(&[
        E::File("x", b"now a file", 0o644),
        E::Dir("y", 0o755),
        E::File("z/inside", b"z is a dir now", 0o644),
    ]);
    let (_dir, tree) = unpack_layers(&[l1, l2]);
    let r = tree.root();
    assert_eq!(fs::read(r.join("x")).unwrap(), b"now a file");
    assert!(r.join("y").is_dir());
    assert!(fs::symlink_metadata(r.join("z")).unwrap().is_dir());
    assert!(!tree.meta.contains_key(Path::new("x/f")));
}

#[test]
fn links_permissions_and_owners_are_kept() {
    let l1 = layer(&[
        E::Dir("bin", 0o755),
        E::File("bin/tool", b"#!/bin/sh\n", 0o4755),
        E::Hardlink("bin/tool2", "bin/tool"),
        E::Symlink("bin/sh", "tool"),
        E::Symlink("abs", "/etc/passwd"),
        E::File("secret", b"s", 0o000),
        E::Owned("home/user/file", b"mine", 0o640, 1000, 1001),
        E::Fifo("pipe"),
        E::CharDev("dev/null"),
    ]);
    let (_dir, tree) = unpack_layers(&[l1]);
    let r = tree.root();
    // The setuid bit is in the metadata only, never on the host.
    let tool = fs::metadata(r.join("bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o755);
    assert_eq!(
        tree.meta[Path::new("bin/tool")].mode,
        unpack::S_IFREG | 0o4755
    );
    assert_eq!(tool.ino(), fs::metadata(r.join("bin/tool2")).unwrap().ino());
    assert_eq!(fs::read_link(r.join("bin/sh")).unwrap(), Path::new("tool"));
    assert_eq!(
        fs::read_link(r.join("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    // Unreadable in the image, readable on disk for mkfs; the image's mode
    // is kept in the metadata.
    assert_eq!(tree.meta[Path::new("secret")].mode, unpack::S_IFREG);
    let owned = tree.meta[Path::new("home/user/file")];
    assert_eq!(
        (owned.uid, owned.gid, owned.mode & 0o7777),
        (1000, 1001, 0o640)
    );
    assert_eq!(owned.mtime, 1_700_000_000);
    assert_eq!(
        fs::symlink_metadata(r.join("home/user/file"))
            .unwrap()
            .mtime(),
        1_700_000_000
    );
    // FIFOs and device nodes are recorded, not created on the host.
    assert!(!exists(&r.join("pipe")));
    assert!(!exists(&r.join("dev/null")));
    assert_eq!(tree.meta[Path::new("pipe")].mode, unpack::S_IFIFO | 0o644);
    let null = tree.meta[Path::new("dev/null")];
    assert_eq!(null.mode, unpack::S_IFCHR | 0o666);
    assert_eq!(null.device, Some((1, 3)));
}

fn apply_err(layers: &[Vec<u8>]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut tree = Tree::new(dir.path());
    for l in layers {
        if let Err(e) = tree.apply_layer(&l[..]) {
            return e.to_string();
        }
    }
    panic!("the layers applied");
}

#[test]
fn paths_escaping_the_root_are_refused() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    fs::create_dir(&root).unwrap();
    for name in ["../escaped", "a/../../escaped", "./../escaped"] {
        let err = apply_err(&[layer(&[E::RawName(name, b"x")])]);
        assert!(err.contains("escapes the root"), "{name}: {err}");
    }
    let err = apply_err(&[layer(&[E::RawHardlink("link", "../../etc/passwd")])]);
    assert!(err.contains("escapes the root"), "{err}");
    assert!(!outer.path().join("escaped").exists());
    let err = apply_err(&[layer(&[E::RawHardlink("link", "missing")])]);
    assert!(err.contains("no such file"), "{err}");
}

#[test]
fn symlinks_are_never_followed_while_unpacking() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap().to_owned();
    fs::write(outside.path().join("victim"), b"safe").unwrap();
    let l1 = layer(&[
        E::Symlink("abs", &target),
        E::Symlink("rel", "../../../../../../.."),
        E::Symlink("victim-link", &format!("{target}/victim")),
    ]);
    let l2 = layer(&[
        E::File("abs/planted", b"x", 0o644),
        E::File("rel/planted", b"x", 0o644),
        E::File("victim-link", b"overwritten", 0o644),
        E::Hardlink("hl", "abs/victim"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let mut tree = Tree::new(dir.path());
    tree.apply_layer(&l1[..]).unwrap();
    let err = tree.apply_layer(&l2[..]).unwrap_err().to_string();
    // The writes through abs/ and rel/ went into real directories in the
    // tree; the hard link through a (now replaced) symlink found nothing.
    assert!(err.contains("hl"), "{err}");
    assert_eq!(names(outside.path()), ["victim"]);
    assert_eq!(fs::read(outside.path().join("victim")).unwrap(), b"safe");
    assert!(dir.path().join("abs/planted").is_file());
    assert!(dir.path().join("rel/planted").is_file());
    assert_eq!(
        fs::read(dir.path().join("victim-link")).unwrap(),
        b"overwritten"
    );
}

#[test]
fn normalize_drops_root_and_dot_and_refuses_dotdot() {
    assert_eq!(
        unpack::normalize(Path::new("/a/./b/")),
        Some(PathBuf::from("a/b"))
    );
    assert_eq!(unpack::normalize(Path::new("./")), Some(PathBuf::new()));
    assert_eq!(unpack::normalize(Path::new("a/../b")), None);
}

fn busybox_config() -> serde_json::Value {
    serde_json::json!({
        "Env": ["PATH=/bin", "A=image"],
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo default"],
        "WorkingDir": "/work",
    })
}

fn small_layers() -> Vec<Vec<u8>> {
    vec![
        layer(&[E::Dir("etc", 0o755), E::File("etc/doomed.txt", b"x", 0o644)]),
        layer(&[
            E::File("etc/.wh.doomed.txt", b"", 0o644),
            E::File("etc/added.txt", b"added\n", 0o644),
        ]),
    ]
}

fn open(data: &[u8]) -> (tempfile::TempDir, Tarball) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.tar");
    fs::write(&path, data).unwrap();
    let tar = Tarball::open(&path, dir.path()).unwrap();
    (dir, tar)
}

#[test]
fn docker_save_and_oci_layout_are_told_apart() {
    let layers = small_layers();
    let (_d1, docker) = open(&docker_save(&layers, busybox_config()));
    let (_d2, oci) = open(&oci_layout(&layers, busybox_config()).0);
    let (_d3, neither) = open(&layer(&[E::File("hello", b"", 0o644)]));
    assert_eq!(image::detect_format(&docker).unwrap(), Format::DockerSave);
    assert_eq!(image::detect_format(&oci).unwrap(), Format::OciLayout);
    let err = image::detect_format(&neither).unwrap_err().to_string();
    assert!(err.contains("neither an OCI image layout"), "{err}");
}

fn expected_defaults() -> Defaults {
    Defaults {
        env: vec!["PATH=/bin".into(), "A=image".into()],
        entrypoint: vec!["/bin/sh".into(), "-c".into()],
        cmd: vec!["echo default".into()],
        working_dir: Some("/work".into()),
        user: None,
    }
}

#[test]
fn docker_save_images_are_read() {
    let layers = small_layers();
    let data = docker_save(&layers, busybox_config());
    let (_dir, tar) = open(&data);
    let img = image::read_image(&tar).unwrap();
    assert_eq!(img.format, Format::DockerSave);
    assert_eq!(img.defaults, expected_defaults());
    assert_eq!(img.layers.len(), 2);
    assert_eq!(
        img.layers[1].diff_id.as_deref(),
        Some(sha256(&layers[1]).as_str())
    );
    assert!(img.digest.starts_with("sha256:"));
}

#[test]
fn oci_layouts_are_read_and_their_gzip_layers_unpacked() {
    let layers = small_layers();
    let (data, manifest_digest) = oci_layout(&layers, busybox_config());
    // Also as a gzip-compressed tarball (`docker save | gzip`).
    for data in [data.clone(), gzip(&data)] {
        let (dir, tar) = open(&data);
        let img = image::read_image(&tar).unwrap();
        assert_eq!(img.format, Format::OciLayout);
        assert_eq!(img.digest, manifest_digest);
        assert_eq!(img.defaults, expected_defaults());
        assert!(img.layers[0].name.starts_with("blobs/sha256/"));
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let mut tree = Tree::new(&root);
        for l in &img.layers {
            container::apply_layer(&tar, l, &mut tree).unwrap();
        }
        assert_eq!(names(&root.join("etc")), ["added.txt"]);
    }
}

#[test]
fn tampered_layers_and_manifests_are_refused() {
    let layers = small_layers();
    let (data, _) = oci_layout(&layers, busybox_config());
    // A layer whose config diff_id does not match.
    let mut bad_config = docker_save(&layers[..1], busybox_config());
    let (_d, tar) = open(&bad_config);
    let mut img = image::read_image(&tar).unwrap();
    img.layers[0].diff_id = Some(sha256(b"something else"));
    let dir = tempfile::tempdir().unwrap();
    let err = container::apply_layer(&tar, &img.layers[0], &mut Tree::new(dir.path()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("diff_id mismatch"), "{err}");
    // A manifest blob changed after its digest was taken.
    let (dir, tar) = open(&data);
    let index: serde_json::Value =
        serde_json::from_slice(&tar.read("index.json").unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    drop(tar);
    let mut b = tar::Builder::new(Vec::new());
    let mut archive = tar::Archive::new(&data[..]);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
        if name == format!("blobs/sha256/{}", &digest[7..]) {
            content = String::from_utf8(content)
                .unwrap()
                .replace("\"size\"", " \"size\"")
                .into_bytes();
        }
        let mut h = entry.header().clone();
        h.set_size(content.len() as u64);
        h.set_cksum();
        b.append(&h, &content[..]).unwrap();
    }
    bad_config = b.into_inner().unwrap();
    let path = dir.path().join("tampered.tar");
    fs::write(&path, &bad_config).unwrap();
    let err = image::read_image(&Tarball::open(&path, dir.path()).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match its digest"), "{err}");
}

#[test]
fn blob_names_refuse_path_tricks() {
    assert_eq!(
        image::blob_name("sha256:abc123").as_deref(),
        Some("blobs/sha256/abc123")
    );
    for bad in [
        "sha256:../../etc/passwd",
        "sha256:",
        "sha256/x:ab",
        "noalg",
        "sha256:AB",
    ] {
        assert_eq!(image::blob_name(bad), None, "{bad}");
    }
}

fn overrides<'a>(
    command: &'a [String],
    env: &'a [String],
    workdir: Option<&'a str>,
) -> settings::Overrides<'a> {
    settings::Overrides {
        command,
        env,
        workdir,
        user: None,
        net: vec![],
        hostname: "flint",
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn command_env_and_workdir_merge_like_docker() {
    let d = expected_defaults();
    let host = |k: &str| (k == "FROM_HOST").then(|| "h".to_owned());
    // Defaults only.
    let spec = settings::merge(&d, &overrides(&[], &[], None), host).unwrap();
    assert_eq!(spec.args, ["/bin/sh", "-c", "echo default"]);
    assert_eq!(spec.cwd, "/work");
    assert_eq!(spec.env, ["PATH=/bin", "HOSTNAME=flint", "A=image"]);
    // The command replaces Cmd, the Entrypoint stays; --env overrides and
    // adds; --env KEY takes the host's value (and is dropped if unset).
    let cmd = strings(&["echo mine"]);
    let env = strings(&["A=cli", "B=new=with=equals", "FROM_HOST", "NOT_ON_HOST"]);
    let spec = settings::merge(&d, &overrides(&cmd, &env, Some("/elsewhere")), host).unwrap();
    assert_eq!(spec.args, ["/bin/sh", "-c", "echo mine"]);
    assert_eq!(spec.cwd, "/elsewhere");
    assert_eq!(
        spec.env,
        [
            "PATH=/bin",
            "HOSTNAME=flint",
            "A=cli",
            "B=new=with=equals",
            "FROM_HOST=h"
        ]
    );
    // The image's User applies unless --user replaces it.
    let d_user = Defaults {
        user: Some("app".into()),
        ..expected_defaults()
    };
    let spec = settings::merge(&d_user, &overrides(&[], &[], None), host).unwrap();
    assert_eq!(spec.user.as_deref(), Some("app"));
    let mut o = overrides(&[], &[], None);
    o.user = Some("0:0");
    assert_eq!(
        settings::merge(&d_user, &o, host).unwrap().user.as_deref(),
        Some("0:0")
    );
    // No Entrypoint: the command is the whole argv; PATH defaults.
    let bare = Defaults::default();
    let cmd = strings(&["/bin/true", "x"]);
    let spec = settings::merge(&bare, &overrides(&cmd, &[], None), host).unwrap();
    assert_eq!(spec.args, ["/bin/true", "x"]);
    assert_eq!(spec.cwd, "/");
    assert_eq!(spec.env[0], format!("PATH={}", settings::DEFAULT_PATH));
}

#[test]
fn unrunnable_settings_are_refused() {
    let host = |_: &str| None;
    let bare = Defaults::default();
    let err = settings::merge(&bare, &overrides(&[], &[], None), host).unwrap_err();
    assert!(matches!(err, ContainerError::Usage(_)) && err.to_string().contains("no command"));
    let cmd = strings(&["x"]);
    let err = settings::merge(&bare, &overrides(&cmd, &[], Some("rel")), host).unwrap_err();
    assert!(err.to_string().contains("not an absolute path"), "{err}");
    let env = strings(&["=v"]);
    assert!(settings::merge(&bare, &overrides(&cmd, &env, None), host).is_err());
    let nul = strings(&["a\0b"]);
    assert!(settings::merge(&bare, &overrides(&nul, &[], None), host).is_err());
}

#[test]
fn the_settings_drive_is_padded_and_read_back_by_the_init() {
    let d = expected_defaults();
    let spec = settings::merge(&d, &overrides(&[], &[], None), |_| None).unwrap();
    let drive = settings::drive_image(&spec);
    assert_eq!(
        drive.len(),
        2 * 4096,
        "one settings block + the status block"
    );
    let parsed = guest_init::parse_settings(&drive).unwrap();
    assert_eq!(parsed.args, spec.args);
    assert_eq!(parsed.env, spec.env);
    assert_eq!(parsed.cwd, spec.cwd);
    assert_eq!(parsed.hostname, "flint");
    // Settings larger than a block spill into more whole blocks.
    let big = vec!["x".repeat(5000)];
    let spec = settings::merge(&d, &overrides(&big, &[], None), |_| None).unwrap();
    let drive = settings::drive_image(&spec);
    assert_eq!(drive.len(), 3 * 4096);
    assert_eq!(guest_init::parse_settings(&drive).unwrap().args[2], big[0]);
    // The status block is empty until the init writes it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("settings.img");
    fs::write(&path, &drive).unwrap();
    assert_eq!(settings::read_status(&path), None);
    let mut written = drive.clone();
    let at = written.len() - 4096;
    written[at..].copy_from_slice(&guest_init::status_record(42));
    fs::write(&path, &written).unwrap();
    assert_eq!(settings::read_status(&path), Some(42));
}

fn layer_ref(digest: Option<&str>, diff_id: &str) -> image::LayerRef {
    image::LayerRef {
        name: "l".into(),
        digest: digest.map(str::to_owned),
        diff_id: Some(diff_id.to_owned()),
    }
}

#[test]
fn cache_keys_depend_on_format_layers_and_init() {
    let (a, b) = (sha256(b"a"), sha256(b"b"));
    let layers = [layer_ref(None, &a), layer_ref(None, &b)];
    let key = |format, layers: &[image::LayerRef], init| {
        container::cache::cache_key(format, layers, init)
    };
    let k = key(Format::DockerSave, &layers, "sha256:bb");
    assert_eq!(k.len(), 64);
    assert!(k.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(k, key(Format::DockerSave, &layers, "sha256:bb"));
    assert_ne!(k, key(Format::OciLayout, &layers, "sha256:bb"));
    assert_ne!(k, key(Format::DockerSave, &layers, "sha256:bc"));
    assert_ne!(k, key(Format::DockerSave, &layers[..1], "sha256:bb"));
    let swapped = [layer_ref(None, &b), layer_ref(None, &a)];
    assert_ne!(k, key(Format::DockerSave, &swapped, "sha256:bb"));
    let with_blob = [layer_ref(Some(&a), &a), layer_ref(None, &b)];
    assert_ne!(k, key(Format::DockerSave, &with_blob, "sha256:bb"));
    assert_eq!(
        container::cache::cache_file(Path::new("/c"), &k),
        PathBuf::from(format!("/c/{k}.ext4"))
    );
}

#[test]
fn image_size_is_usage_plus_thirty_percent_plus_32_mib() {
    const MIB: u64 = 1 << 20;
    assert_eq!(rootfs::image_size(0), 32 * MIB);
    assert_eq!(rootfs::image_size(10 * MIB), 45 * MIB);
    assert_eq!(rootfs::image_size(10 * MIB + 1), 46 * MIB);
}

#[test]
fn kernels_are_found_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("vmlinux");
    fs::write(&k, b"").unwrap();
    let ks = k.to_str().unwrap().to_owned();
    let dirs = dir.path().to_str().unwrap().to_owned();
    let none = |_: &str| None;
    assert_eq!(container::find_kernel(Some(&k), none).unwrap(), k);
    let err = container::find_kernel(Some(Path::new("/no/such/vmlinux")), none).unwrap_err();
    assert!(err.to_string().contains("--kernel"), "{err}");
    let env = |name: &str| (name == "FLINT_KERNEL").then(|| ks.clone());
    assert_eq!(container::find_kernel(None, env).unwrap(), k);
    let env = |name: &str| (name == "FLINT_GUEST_DIR").then(|| dirs.clone());
    assert_eq!(container::find_kernel(None, env).unwrap(), k);
    let env = |name: &str| (name == "FLINT_GUEST_DIR").then(|| "/no/such".to_owned());
    assert!(container::find_kernel(None, env).is_err());
}

#[test]
fn private_copies_keep_content_and_holes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let f = fs::File::create(&src).unwrap();
    f.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"head", 0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"tail", (64 << 20) - 4).unwrap();
    drop(f);
    let dst = dir.path().join("dst");
    rootfs::private_copy(&src, &dst).unwrap();
    let data = fs::read(&dst).unwrap();
    assert_eq!(data.len(), 64 << 20);
    assert_eq!(&data[..4], b"head");
    assert_eq!(&data[data.len() - 4..], b"tail");
    assert!(data[4..data.len() - 4].iter().all(|&b| b == 0));
    assert!(
        fs::metadata(&dst).unwrap().blocks() * 512 < 8 << 20,
        "the copy is sparse"
    );
    assert!(
        rootfs::private_copy(&src, &dst).is_err(),
        "never overwrites"
    );
}

fn debugfs_stat(image: &Path, path: &str) -> String {
    let out = std::process::Command::new("debugfs")
        .args(["-R", &format!("stat {path}")])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_root_image_gets_the_init_mount_points_and_image_owners() {
    if rootfs_tools_missing() {
        return;
    }
    let layers = vec![layer(&[
        E::Dir("bin", 0o755),
        E::File("bin/x", b"x", 0o755),
        E::Owned("home/u/file", b"mine", 0o600, 1000, 1001),
        E::File("suid", b"s", 0o4711),
        E::Dir("sgid-dir", 0o2775),
        E::Fifo("pipe"),
        E::CharDev("dev/null"),
    ])];
    let (dir, tree) = unpack_layers(&layers);
    let init = dir.path().join("init");
    fs::write(&init, container::INIT_BINARY).unwrap();
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).unwrap();
    let image = dir.path().join("root.ext4");
    let usage = unpack::tree_usage(tree.root()).unwrap();
    rootfs::mkfs(
        tree.root(),
        &image,
        rootfs::image_size(usage.bytes),
        rootfs::inode_count(usage.inodes),
    )
    .unwrap();
    let mut script = rootfs::additions(tree.root(), &init).unwrap().into_bytes();
    script.extend(rootfs::fixups(tree.root(), &tree.meta).unwrap());
    rootfs::debugfs(&image, &script, dir.path()).unwrap();
    rootfs::check_file_in_image(
        &image,
        rootfs::INIT_PATH,
        container::INIT_BINARY.len() as u64,
    )
    .unwrap();
    let init_stat = debugfs_stat(&image, "/.flint/init");
    assert!(init_stat.contains("Mode:  0755"), "{init_stat}");
    let owned = debugfs_stat(&image, "/home/u/file");
    assert!(owned.contains("User:  1000   Group:  1001"), "{owned}");
    assert!(owned.contains("Mode:  0600"), "{owned}");
    assert!(debugfs_stat(&image, "/suid").contains("Mode:  04711"));
    assert!(debugfs_stat(&image, "/sgid-dir").contains("Mode:  02775"));
    let pipe = debugfs_stat(&image, "/pipe");
    assert!(
        pipe.contains("Type: FIFO") && pipe.contains("Mode:  0644"),
        "{pipe}"
    );
    let null = debugfs_stat(&image, "/dev/null");
    assert!(
        null.contains("Type: character special") && null.contains("Mode:  0666"),
        "{null}"
    );
    assert!(null.contains("Device major/minor number: 01:03"), "{null}");
    let tmp = debugfs_stat(&image, "/tmp");
    assert!(
        tmp.contains("Type: directory") && tmp.contains("Mode:  01777"),
        "{tmp}"
    );
    // A script error is reported, not ignored.
    let err = rootfs::debugfs(&image, "sif /no/such uid 1\n", dir.path()).unwrap_err();
    assert!(err.to_string().contains("File not found"), "{err}");
}

fn rootfs_tools_missing() -> bool {
    let missing = ["mkfs.ext4", "debugfs"].iter().any(|t| {
        !["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(t).is_file())
    });
    if missing {
        eprintln!("SKIP: e2fsprogs (mkfs.ext4, debugfs) is not installed");
    }
    missing
}

#[test]
fn the_init_is_a_static_executable() {
    let elf = container::INIT_BINARY;
    assert!(elf.starts_with(b"\x7fELF\x02\x01"));
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
    let phentsize = u16::from_le_bytes([elf[54], elf[55]]) as usize;
    let phnum = u16::from_le_bytes([elf[56], elf[57]]) as usize;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let p_type = u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
        assert_ne!(p_type, 3, "PT_INTERP: the init is dynamically linked");
    }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ContainerRunArgs,
}

#[test]
fn the_command_line_parses() {
    let cli = Cli::try_parse_from([
        "run", "--image", "img.tar", "-e", "A=1", "--env", "B", "--mem", "128", "-w", "/w", "--",
        "/bin/sh", "-c", "exit 3",
    ])
    .unwrap();
    let a = cli.args;
    assert_eq!(a.image.as_deref(), Some(Path::new("img.tar")));
    assert_eq!(a.env, ["A=1", "B"]);
    assert_eq!((a.mem, a.vcpus), (128, 1));
    assert_eq!(a.workdir.as_deref(), Some("/w"));
    assert_eq!(a.command, ["/bin/sh", "-c", "exit 3"]);
    // The command may also follow without `--`, its flags untouched.
    let a = Cli::try_parse_from(["run", "--rootfs", "/r", "ls", "-l"])
        .unwrap()
        .args;
    assert_eq!(a.command, ["ls", "-l"]);
    assert!(
        Cli::try_parse_from(["run"]).is_err(),
        "an image (--image, --rootfs or the first word) is required"
    );
    // `run IMAGE [CMD...]`: the CLI takes the first word as the image.
    let a = Cli::try_parse_from(["run", "busybox:latest", "ls"])
        .unwrap()
        .args;
    assert_eq!(a.command, ["busybox:latest", "ls"]);
    assert_eq!(
        Cli::try_parse_from(["run", "--memory", "64", "--cpus", "2", "--image", "i"])
            .unwrap()
            .args
            .mem,
        64
    );
    assert!(Cli::try_parse_from(["run", "--image", "a", "--rootfs", "b"]).is_err());
}

fn prepare(args: &ContainerRunArgs) -> (container::Prepared, String) {
    let mut progress = Vec::new();
    let p = container::prepare(args, &mut progress).unwrap();
    (p, String::from_utf8(progress).unwrap())
}

#[test]
fn root_images_are_built_once_then_copied_from_the_cache() {
    if rootfs_tools_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("img.tar");
    let config = serde_json::json!({"Cmd": ["/bin/app"], "User": "app", "Env": ["PATH=/bin"]});
    fs::write(&image, docker_save(&small_layers(), config)).unwrap();
    let args = ContainerRunArgs {
        image: Some(image),
        ..prepare_args(dir.path())
    };
    let (first, log1) = prepare(&args);
    assert!(!first.cache_hit);
    assert!(
        log1.starts_with("container: building root image sha256:"),
        "{log1}"
    );
    let (second, log2) = prepare(&args);
    assert!(second.cache_hit);
    assert!(
        log2.starts_with("container: using cached root image sha256:"),
        "{log2}"
    );
    assert_eq!(first.image_digest, second.image_digest);
    assert_eq!(second.spec.args, ["/bin/app"]);
    assert_eq!(second.spec.user.as_deref(), Some("app"));

    // The VM gets its private copy as the root drive and the settings drive.
    let drives = &second.config.drives;
    assert_eq!(drives.len(), 2);
    assert!(drives[0].is_root_device && !drives[0].is_read_only);
    assert!(drives[0].path_on_host.starts_with(second.run_dir.path()));
    assert_eq!(drives[1].path_on_host, second.settings_path);
    assert_eq!(
        second.config.boot_source.boot_args.as_deref(),
        Some(container::BOOT_ARGS)
    );
    let parsed = guest_init::parse_settings(&fs::read(&second.settings_path).unwrap()).unwrap();
    assert_eq!(parsed.args, ["/bin/app"]);

    // Writing to one run's copy changes neither the cache nor other runs.
    let cache = dir.path().join("cache");
    let cached: Vec<PathBuf> = fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ext4"))
        .collect();
    assert_eq!(cached.len(), 1);
    let before = fs::read(&cached[0]).unwrap();
    fs::write(&first.config.drives[0].path_on_host, b"scribbled").unwrap();
    assert_eq!(fs::read(&cached[0]).unwrap(), before);
    assert_eq!(
        fs::read(&second.config.drives[0].path_on_host).unwrap(),
        before
    );
    assert!(debugfs_stat(&cached[0], "/etc/added.txt").contains("Type: regular"));
    assert!(!debugfs_stat(&cached[0], "/etc/doomed.txt").contains("Type:"));

    // The cache is private to the user.
    assert_eq!(fs::metadata(&cache).unwrap().mode() & 0o777, 0o700);

    // Each run's scratch directory goes with it; the entry and its check
    // file stay.
    drop((first, second));
    let mut left: Vec<_> = fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [cached[0].clone(), container::cache::check_file(&cached[0])]
    );
}

#[test]
fn a_rootfs_directory_is_used_as_is() {
    if rootfs_tools_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("bin")).unwrap();
    fs::write(tree.join("bin/app"), b"#!/bin/sh\n").unwrap();
    let args = ContainerRunArgs {
        rootfs: Some(tree.clone()),
        command: vec!["/bin/app".into()],
        ..prepare_args(dir.path())
    };
    let (p, log) = prepare(&args);
    assert!(!p.cache_hit && p.image_digest.is_none());
    assert!(log.contains("building root image from"), "{log}");
    let root = &p.config.drives[0].path_on_host;
    assert!(debugfs_stat(root, "/.flint/init").contains("Type: regular"));
    assert!(debugfs_stat(root, "/bin/app").contains("Type: regular"));
    assert!(debugfs_stat(root, "/proc").contains("Type: directory"));
    // The directory itself is untouched.
    assert_eq!(names(&tree), ["bin"]);
    // Without a command there is nothing to run.
    let args = ContainerRunArgs {
        command: vec![],
        ..args
    };
    let err = container::prepare(&args, &mut Vec::new())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no command"), "{err}");
}
