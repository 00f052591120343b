//! Hostile images and a hostile cache: each test here is a defect found by
//! review (see the crate README's "Limits and checks"), without booting.

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{
    docker_save, docker_save_raw, gzip, layer, oci_layout, oci_layout_raw, prepare_args, sha256,
    sparse_layer, E,
};
use container::image::{self, Defaults, Tarball};
use container::unpack::{self, Tree};
use container::{settings, ContainerError, ContainerRunArgs};

fn tools_missing() -> bool {
    let missing = ["mkfs.ext4", "debugfs"].iter().any(|t| {
        !["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(t).is_file())
    });
    if missing {
        assert!(
            std::env::var("CI").is_err(),
            "e2fsprogs (mkfs.ext4, debugfs) is required in CI"
        );
        eprintln!("SKIP: e2fsprogs (mkfs.ext4, debugfs) is not installed");
    }
    missing
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

/// Applies `layers` in a fresh tree (limit `limit`); the first error.
fn apply_err(root: &Path, layers: &[Vec<u8>], limit: u64) -> String {
    let mut tree = Tree::with_limit(root, limit);
    for l in layers {
        if let Err(e) = tree.apply_layer(&l[..]) {
            return e.to_string();
        }
    }
    panic!("the layers applied");
}

fn debugfs_stat(image: &Path, path: &[u8]) -> String {
    let mut arg = b"stat \"".to_vec();
    arg.extend_from_slice(path);
    arg.push(b'"');
    let out = std::process::Command::new("debugfs")
        .arg("-R")
        .arg(std::ffi::OsStr::from_bytes(&arg))
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn image_args(dir: &Path, name: &str, data: &[u8]) -> ContainerRunArgs {
    let path = dir.join(name);
    fs::write(&path, data).unwrap();
    ContainerRunArgs {
        image: Some(path),
        command: vec!["/bin/true".into()],
        ..prepare_args(dir)
    }
}

fn prepare(args: &ContainerRunArgs) -> Result<container::Prepared, ContainerError> {
    container::prepare(args, &mut Vec::new())
}

/// Every entry under `root`, recursively (not following symlinks).
fn walk(root: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.push((p, m));
        }
    }
    out
}

#[test]
fn the_host_tree_never_gets_setuid_setgid_sticky_or_special_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut block = tar::Header::new_gnu();
    block.set_entry_type(tar::EntryType::Block);
    block.set_mode(0o660);
    block.set_uid(0);
    block.set_gid(6);
    block.set_mtime(0);
    block.set_device_major(8).unwrap();
    block.set_device_minor(0).unwrap();
    block.set_size(0);
    block.set_path("dev/sda").unwrap();
    block.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&block, &[][..]).unwrap();
    let block_layer = b.into_inner().unwrap();
    let l1 = layer(&[
        E::File("bin/su", b"root shell", 0o4755),
        E::File("bin/both", b"x", 0o6755),
        E::Dir("shared", 0o2775),
        E::Dir("tmp", 0o1777),
        E::Fifo("run/pipe"),
        E::Hardlink("run/pipe2", "run/pipe"),
        E::CharDev("dev/mem"),
    ]);
    let mut tree = Tree::new(dir.path());
    tree.apply_layer(&l1[..]).unwrap();
    tree.apply_layer(&block_layer[..]).unwrap();
    tree.finish().unwrap();
    for (path, m) in walk(dir.path()) {
        let t = m.file_type();
        assert!(
            t.is_dir() || t.is_file() || t.is_symlink(),
            "{}: {t:?} on the host",
            path.display()
        );
        assert_eq!(m.mode() & 0o7000, 0, "{}: {:o}", path.display(), m.mode());
    }
    assert!(!exists(&dir.path().join("dev/mem")) && !exists(&dir.path().join("run/pipe")));
    // The image keeps all of it.
    let meta = |p: &str| tree.meta[Path::new(p)];
    assert_eq!(meta("bin/su").mode, unpack::S_IFREG | 0o4755);
    assert_eq!(meta("bin/both").mode, unpack::S_IFREG | 0o6755);
    assert_eq!(meta("shared").mode, unpack::S_IFDIR | 0o2775);
    assert_eq!(meta("tmp").mode, unpack::S_IFDIR | 0o1777);
    assert_eq!(meta("run/pipe2").mode, unpack::S_IFIFO | 0o644);
    assert_eq!(meta("dev/mem").device, Some((1, 3)));
    assert_eq!(meta("dev/sda").mode, unpack::S_IFBLK | 0o660);
    assert_eq!(meta("dev/sda").device, Some((8, 0)));
    // A whiteout or opaque directory removes recorded special files too.
    let l3 = layer(&[
        E::File("run/.wh.pipe", b"", 0o644),
        E::File("dev/.wh..wh..opq", b"", 0o644),
    ]);
    tree.apply_layer(&l3[..]).unwrap();
    assert!(!tree.meta.contains_key(Path::new("run/pipe")));
    assert!(tree.meta.contains_key(Path::new("run/pipe2")));
    assert!(!tree.meta.contains_key(Path::new("dev/mem")));
    assert!(!tree.meta.contains_key(Path::new("dev/sda")));
}

#[test]
fn whiteouts_of_nothing_dot_or_dotdot_are_refused() {
    for name in [
        ".wh..",
        ".wh...",
        ".wh.",
        "sub/.wh..",
        "sub/.wh...",
        "sub/.wh.",
    ] {
        let outer = tempfile::tempdir().unwrap();
        fs::write(outer.path().join("sentinel"), b"s").unwrap();
        let root = outer.path().join("root");
        fs::create_dir(&root).unwrap();
        let l1 = layer(&[
            E::File("keep", b"k", 0o644),
            E::File("sub/keep", b"k", 0o644),
        ]);
        let err = apply_err(&root, &[l1, layer(&[E::RawName(name, b"")])], u64::MAX);
        assert!(
            err.contains("a whiteout must name an entry"),
            "{name}: {err}"
        );
        assert!(outer.path().join("sentinel").exists(), "{name}");
        assert!(root.join("keep").exists(), "{name}");
        assert!(root.join("sub/keep").exists(), "{name}");
    }
}

#[test]
fn digests_flint_cannot_verify_are_refused() {
    let l = layer(&[E::File("f", b"data", 0o644)]);
    let gz = gzip(&l);
    let sha384 = format!("sha384:{}", "ab".repeat(48));
    let md5 = format!("md5:{}", "cd".repeat(16));
    let config = |diff_id: &str| {
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }))
        .unwrap()
    };
    let hex = &sha256(&l)[7..];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "docker-save, sha384 diff_id",
            docker_save_raw(
                &config(&sha384),
                &["a/layer.tar"],
                &[("a/layer.tar", &l)],
                &[],
            ),
        ),
        (
            "docker-save, md5 diff_id",
            docker_save_raw(&config(&md5), &["a/layer.tar"], &[("a/layer.tar", &l)], &[]),
        ),
        (
            "docker-save, md5 blob",
            docker_save_raw(
                &config(&sha256(&l)),
                &[&format!("blobs/md5/{hex}")],
                &[(&format!("blobs/md5/{hex}"), &l)],
                &[],
            ),
        ),
        (
            "oci, sha384 layer digest",
            oci_layout_raw(&[(sha384.clone(), gz.clone())], &[sha256(&l)]),
        ),
        (
            "oci, truncated sha256 diff_id",
            oci_layout_raw(&[(sha256(&gz), gz.clone())], &["sha256:abc".into()]),
        ),
    ];
    for (what, data) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.tar");
        fs::write(&path, data).unwrap();
        let err = image::read_image(&Tarball::open(&path, dir.path()).unwrap())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("cannot verify digest"), "{what}: {err:?}");
    }
    // sha512 is verified: right passes, wrong is refused.
    let sha512 = |d: &[u8]| {
        use sha2::Digest;
        format!("sha512:{}", common::hex(&sha2::Sha512::digest(d)))
    };
    for (digest, ok) in [(sha512(&gz), true), (sha512(b"other"), false)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.tar");
        fs::write(
            &path,
            oci_layout_raw(&[(digest, gz.clone())], &[sha256(&l)]),
        )
        .unwrap();
        let tar = Tarball::open(&path, dir.path()).unwrap();
        let img = image::read_image(&tar).unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let r = container::apply_layer(&tar, &img.layers[0], &mut Tree::new(&root));
        assert_eq!(r.is_ok(), ok, "{r:?}");
    }
}

/// A JSON document that is both a valid OCI manifest (of `oci_layers`,
/// config `oci_config`) and a valid image config (of `docker_layers`).
fn polyglot(oci_config: &[u8], oci_blobs: &[Vec<u8>], docker_layers: &[Vec<u8>]) -> Vec<u8> {
    let descs: Vec<_> = oci_blobs
        .iter()
        .map(|b| {
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                               "digest": sha256(b), "size": b.len()})
        })
        .collect();
    let diff_ids: Vec<_> = docker_layers.iter().map(|l| sha256(l)).collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(oci_config), "size": oci_config.len()},
        "layers": descs,
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

#[test]
fn a_manifest_that_is_also_a_config_does_not_share_a_cache_entry() {
    if tools_missing() {
        return;
    }
    let oci_layer = layer(&[E::File("from-oci", b"o", 0o644)]);
    let docker_layer = layer(&[E::File("from-docker", b"d", 0o644)]);
    let gz = gzip(&oci_layer);
    let oci_config = common::config_json(std::slice::from_ref(&oci_layer), serde_json::json!({}));
    let both = polyglot(
        &oci_config,
        std::slice::from_ref(&gz),
        std::slice::from_ref(&docker_layer),
    );
    // The OCI image: `both` is its manifest.
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        (format!("blobs/sha256/{}", &sha256(&gz)[7..]), gz.clone()),
        (
            format!("blobs/sha256/{}", &sha256(&oci_config)[7..]),
            oci_config.clone(),
        ),
        (
            format!("blobs/sha256/{}", &sha256(&both)[7..]),
            both.clone(),
        ),
    ];
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(&both), "size": both.len()}]});
    files.push(("index.json".into(), serde_json::to_vec(&index).unwrap()));
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), &d[..])).collect();
    let oci = common::tar_of(&refs, &[]);
    // The docker-save image: `both` is its config.
    let docker = docker_save_raw(
        &both,
        &["l/layer.tar"],
        &[("l/layer.tar", &docker_layer)],
        &[],
    );

    let dir = tempfile::tempdir().unwrap();
    let first = prepare(&image_args(dir.path(), "oci.tar", &oci)).unwrap();
    let second = prepare(&image_args(dir.path(), "docker.tar", &docker)).unwrap();
    // Same "image digest" (that of `both`)...
    assert_eq!(first.image_digest, second.image_digest);
    assert_eq!(first.image_digest.as_deref(), Some(sha256(&both).as_str()));
    // ...but different layers: a separate cache entry.
    assert!(
        !second.cache_hit,
        "the docker image reused the OCI image's root"
    );
    let root = &second.config.drives[0].path_on_host;
    assert!(debugfs_stat(root, b"/from-docker").contains("Type: regular"));
    assert!(!debugfs_stat(root, b"/from-oci").contains("Type:"));
}

#[test]
fn broken_cache_entries_are_rebuilt() {
    if tools_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = docker_save(
        &[layer(&[E::File("etc/hello", b"hi", 0o644)])],
        serde_json::json!({}),
    );
    let args = image_args(dir.path(), "img.tar", &data);
    let p = prepare(&args).unwrap();
    assert!(!p.cache_hit);
    drop(p);
    let cache = dir.path().join("cache");
    let entry = fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "ext4"))
        .unwrap();
    let good = fs::read(&entry).unwrap();
    assert!(prepare(&args).unwrap().cache_hit);

    let victim = dir.path().join("victim");
    fs::write(&victim, &good[..good.len() / 2]).unwrap();
    type Breaker = Box<dyn Fn(&Path)>;
    let victim2 = victim.clone();
    let good2 = good.clone();
    let breakers: Vec<(&str, Breaker)> = vec![
        (
            "truncated",
            Box::new(|e: &Path| {
                let f = fs::OpenOptions::new().write(true).open(e).unwrap();
                f.set_len(4096).unwrap();
            }),
        ),
        (
            "garbage of the right size",
            Box::new(move |e: &Path| {
                let mut g = good2.clone();
                g[1024..2048].fill(0xa5);
                fs::write(e, g).unwrap();
            }),
        ),
        (
            "a symlink to a host file",
            Box::new(move |e: &Path| {
                fs::remove_file(e).unwrap();
                std::os::unix::fs::symlink(&victim2, e).unwrap();
            }),
        ),
        (
            "a directory",
            Box::new(|e: &Path| {
                fs::remove_file(e).unwrap();
                fs::create_dir(e).unwrap();
                fs::write(e.join("inside"), b"x").unwrap();
            }),
        ),
        (
            "a FIFO",
            Box::new(|e: &Path| {
                fs::remove_file(e).unwrap();
                let c = std::ffi::CString::new(e.as_os_str().as_bytes()).unwrap();
                // SAFETY: a valid path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            }),
        ),
        (
            "without its check file",
            Box::new(|e: &Path| fs::remove_file(container::cache::check_file(e)).unwrap()),
        ),
    ];
    let victim_before = fs::read(&victim).unwrap();
    for (what, breaker) in breakers {
        breaker(&entry);
        let p = prepare(&args).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(!p.cache_hit, "{what}: used as found");
        let m = fs::symlink_metadata(&entry).unwrap();
        assert!(m.file_type().is_file(), "{what}: not rebuilt as a file");
        assert_eq!(
            fs::read(&p.config.drives[0].path_on_host).unwrap().len(),
            good.len()
        );
        drop(p);
        assert!(
            prepare(&args).unwrap().cache_hit,
            "{what}: not usable after the rebuild"
        );
    }
    assert_eq!(
        fs::read(&victim).unwrap(),
        victim_before,
        "the symlink's target changed"
    );
    assert!(!fs::symlink_metadata(&victim).unwrap().file_type().is_fifo());
}

#[test]
fn sparse_declarations_and_gzip_bombs_hit_the_size_limit() {
    // A 1 KiB entry declaring 1 TiB: refused before anything is written.
    let outer = tempfile::tempdir().unwrap();
    let err = apply_err(
        outer.path(),
        &[sparse_layer("big", 1 << 40)],
        unpack::DEFAULT_MAX_UNPACKED,
    );
    assert!(
        err.contains("more than the limit of 8589934592 bytes"),
        "{err}"
    );
    assert!(!exists(&outer.path().join("big")));
    // A small sparse file under the limit still unpacks, holes as zeros.
    let ok = tempfile::tempdir().unwrap();
    let mut tree = Tree::with_limit(ok.path(), 1 << 20);
    tree.apply_layer(&sparse_layer("small", 64 << 10)[..])
        .unwrap();
    let data = fs::read(ok.path().join("small")).unwrap();
    assert_eq!(data.len(), 64 << 10);
    assert!(data[..data.len() - 512].iter().all(|&b| b == 0));
    // 64 MiB of zeros gzip to ~64 KiB; with a 16 MiB limit nothing of it is
    // written. Many small files count too.
    let zeros = vec![0u8; 64 << 20];
    let bomb = layer(&[E::File("zeros", &zeros, 0o644)]);
    let small = tempfile::tempdir().unwrap();
    let err = apply_err(small.path(), std::slice::from_ref(&bomb), 16 << 20);
    assert!(
        err.contains("more than the limit of 16777216 bytes"),
        "{err}"
    );
    assert!(!exists(&small.path().join("zeros")));
    let names: Vec<String> = (0..100).map(|i| format!("f{i}")).collect();
    let many: Vec<E<'_>> = names.iter().map(|n| E::File(n, b"", 0o644)).collect();
    let files = tempfile::tempdir().unwrap();
    let err = apply_err(files.path(), &[layer(&many)], 50 * unpack::ENTRY_OVERHEAD);
    assert!(err.contains("more than the limit"), "{err}");

    // Through `prepare`: the layer (flag) and a gzip-compressed tarball
    // (environment) both count.
    let dir = tempfile::tempdir().unwrap();
    let image = docker_save(std::slice::from_ref(&bomb), serde_json::json!({}));
    let mut args = image_args(dir.path(), "bomb.tar", &image);
    args.max_unpacked_size = Some(16 << 20);
    let err = prepare(&args).err().unwrap().to_string();
    assert!(err.contains("more than the limit of 16777216"), "{err}");
    let path = dir.path().join("bomb.tar.gz");
    fs::write(&path, gzip(&image)).unwrap();
    let err = Tarball::open_limited(&path, dir.path(), 16 << 20)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("inflates to more than the limit of 16777216"),
        "{err}"
    );
    // Nothing is left in the cache directory but the cache's own files.
    let left: Vec<_> = fs::read_dir(dir.path().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn sizes_parse_and_the_limit_comes_from_flag_then_environment() {
    assert_eq!(container::parse_size("4096"), Ok(4096));
    assert_eq!(container::parse_size("8G"), Ok(8 << 30));
    assert_eq!(container::parse_size("500M"), Ok(500 << 20));
    assert_eq!(container::parse_size("2KiB"), Ok(2048));
    assert_eq!(container::parse_size("1t"), Ok(1 << 40));
    for bad in ["", "G", "1X", "-1", "99999999999T"] {
        assert!(container::parse_size(bad).is_err(), "{bad}");
    }
    let env =
        |v: &'static str| move |k: &str| (k == "FLINT_MAX_UNPACKED_SIZE").then(|| v.to_owned());
    assert_eq!(container::unpacked_limit(None, |_| None).unwrap(), 8 << 30);
    assert_eq!(container::unpacked_limit(None, env("1M")).unwrap(), 1 << 20);
    assert_eq!(container::unpacked_limit(Some(5), env("1M")).unwrap(), 5);
    assert!(container::unpacked_limit(None, env("lots")).is_err());
}

#[test]
fn two_hundred_thousand_env_entries_merge_in_linear_time() {
    let mut env: Vec<String> = (0..200_000).map(|i| format!("K{i}=v{i}")).collect();
    env.push("K7=last".into());
    env.push("PATH=/bin".into());
    let defaults = Defaults {
        env,
        cmd: vec!["/bin/true".into()],
        ..Defaults::default()
    };
    let over = settings::Overrides {
        hostname: "flint",
        env: &["K9=cli".to_owned()],
        ..Default::default()
    };
    let started = Instant::now();
    let spec = settings::merge(&defaults, &over, |_| None).unwrap();
    let merged = started.elapsed();
    assert_eq!(spec.env.len(), 200_002);
    assert_eq!(spec.env[0], "PATH=/bin");
    assert_eq!(spec.env[2 + 7], "K7=last");
    assert_eq!(spec.env[2 + 9], "K9=cli");
    let drive = settings::drive_image(&spec);
    let started = Instant::now();
    let parsed = guest_init::parse_settings(&drive).unwrap();
    eprintln!(
        "200k Env entries: merge {merged:?}, the init's parse {:?}",
        started.elapsed()
    );
    assert_eq!(parsed.env.len(), 200_002);
}

#[test]
fn images_of_many_small_files_get_enough_inodes() {
    if tools_missing() {
        return;
    }
    // 20 000 empty files: the default inode ratio gives a ~40 MiB image
    // about 10 000 inodes.
    let names: Vec<String> = (0..20_000).map(|i| format!("d{}/f{i}", i % 20)).collect();
    let entries: Vec<E<'_>> = names.iter().map(|n| E::File(n, b"", 0o644)).collect();
    let dir = tempfile::tempdir().unwrap();
    let image = docker_save(&[layer(&entries)], serde_json::json!({}));
    let p = prepare(&image_args(dir.path(), "many.tar", &image)).unwrap();
    let root = &p.config.drives[0].path_on_host;
    assert!(debugfs_stat(root, b"/d19/f19999").contains("Type: regular"));
    assert!(debugfs_stat(root, b"/.flint/init").contains("Type: regular"));
}

#[test]
fn odd_names_are_escaped_in_messages_and_kept_exactly_in_the_image() {
    // A newline cannot be expressed to debugfs: refused, with the name
    // escaped so it cannot forge a log line.
    let outer = tempfile::tempdir().unwrap();
    let err = apply_err(
        outer.path(),
        &[layer(&[E::RawName("evil\ncontainer: ok", b"")])],
        u64::MAX,
    );
    assert!(!err.contains('\n'), "{err:?}");
    assert!(err.contains("evil\\ncontainer: ok"), "{err}");
    assert_eq!(
        unpack::shown(Path::new(std::ffi::OsStr::from_bytes(b"a\xff\tb"))),
        "a\\xff\\tb"
    );

    if tools_missing() {
        return;
    }
    // Non-UTF-8 names, quotes and spaces get their owners and modes.
    let odd: &[&[u8]] = &[b"caf\xe9", b"say \"hi\"", b"two  spaces", b"back\\slash"];
    let mut b = tar::Builder::new(Vec::new());
    for name in odd {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o4750);
        h.set_uid(1234);
        h.set_gid(4321);
        h.set_size(1);
        h.set_mtime(0);
        let field = &mut h.as_old_mut().name;
        field[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
    }
    let mut fifo = tar::Header::new_gnu();
    fifo.set_entry_type(tar::EntryType::Fifo);
    fifo.set_mode(0o640);
    fifo.set_uid(0);
    fifo.set_gid(0);
    fifo.set_mtime(0);
    fifo.set_size(0);
    fifo.as_old_mut().name[..8].copy_from_slice(b"p\xffipe \"q");
    fifo.set_cksum();
    b.append(&fifo, &[][..]).unwrap();
    let l = b.into_inner().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = docker_save(&[l], serde_json::json!({}));
    let p = prepare(&image_args(dir.path(), "odd.tar", &image)).unwrap();
    let root = &p.config.drives[0].path_on_host;
    for name in odd {
        // debugfs's own argument quoting: `"` doubled.
        let quoted: Vec<u8> = name
            .iter()
            .flat_map(|&c| if c == b'"' { vec![c, c] } else { vec![c] })
            .collect();
        let mut path = b"/".to_vec();
        path.extend(quoted);
        let stat = debugfs_stat(root, &path);
        let shown = String::from_utf8_lossy(name);
        assert!(
            stat.contains("User:  1234   Group:  4321"),
            "{shown}: {stat}"
        );
        assert!(stat.contains("Mode:  04750"), "{shown}: {stat}");
    }
    let stat = debugfs_stat(root, b"/p\xffipe \"\"q");
    assert!(
        stat.contains("Type: FIFO") && stat.contains("Mode:  0640"),
        "{stat}"
    );
}

#[test]
fn fifos_and_devices_are_refused_as_images_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("image.fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // With a writer holding a whole image in the pipe...
    let data = docker_save(
        &[layer(&[E::File("a", b"a", 0o644)])],
        serde_json::json!({}),
    );
    assert!(data.len() < 60 << 10);
    let mut writer = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    std::io::Write::write_all(&mut writer, &data).unwrap();
    let err = Tarball::open(&fifo, dir.path()).err().unwrap().to_string();
    assert!(err.contains("not a regular file"), "{err}");
    drop(writer);
    // ...and without one (opening for reading would block).
    for path in [
        fifo.as_path(),
        Path::new("/dev/null"),
        Path::new("/dev/zero"),
    ] {
        let err = Tarball::open(path, dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("not a regular file"),
            "{}: {err}",
            path.display()
        );
    }
}

#[test]
fn a_docker_save_layer_stored_as_a_symlink_member_is_followed() {
    let l = layer(&[E::File("shared", b"same", 0o644)]);
    let config = common::config_json(&[l.clone(), l.clone()], serde_json::json!({"Cmd": ["/x"]}));
    let data = docker_save_raw(
        &config,
        &["one/layer.tar", "two/layer.tar"],
        &[("one/layer.tar", &l)],
        &[("two/layer.tar", "../one/layer.tar")],
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i.tar");
    fs::write(&path, data).unwrap();
    let tar = Tarball::open(&path, dir.path()).unwrap();
    let img = image::read_image(&tar).unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let mut tree = Tree::new(&root);
    for layer in &img.layers {
        container::apply_layer(&tar, layer, &mut tree).unwrap();
    }
    assert_eq!(fs::read(root.join("shared")).unwrap(), b"same");
    // A link leaving the archive, or a loop, is not a member.
    let data = docker_save_raw(
        &config,
        &["one/layer.tar", "two/layer.tar"],
        &[("one/layer.tar", &l)],
        &[("two/layer.tar", "../../one/layer.tar")],
    );
    fs::write(&path, data).unwrap();
    let tar = Tarball::open(&path, dir.path()).unwrap();
    let img = image::read_image(&tar).unwrap();
    let err = container::apply_layer(&tar, &img.layers[1], &mut Tree::new(&root))
        .unwrap_err()
        .to_string();
    assert!(err.contains("has no two/layer.tar"), "{err}");
    let data = docker_save_raw(
        &config,
        &["one/layer.tar", "two/layer.tar"],
        &[],
        &[
            ("one/layer.tar", "../two/layer.tar"),
            ("two/layer.tar", "../one/layer.tar"),
        ],
    );
    fs::write(&path, data).unwrap();
    let tar = Tarball::open(&path, dir.path()).unwrap();
    assert!(!tar.has("one/layer.tar"));
}

#[test]
fn stale_scratch_directories_of_dead_runs_are_swept() {
    if tools_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = cache.join(format!(".run-{dead}-abc"));
    fs::create_dir_all(stale.join("tree/deep")).unwrap();
    fs::write(stale.join("tree/deep/big"), b"x").unwrap();
    // Alive (this process), or locked by a live process: kept.
    let mine = cache.join(format!(".run-{}-def", std::process::id()));
    fs::create_dir(&mine).unwrap();
    let locked = cache.join(format!(".run-{dead}-locked"));
    fs::create_dir(&locked).unwrap();
    let _lock = container::cache::lock_scratch(&locked).unwrap();
    // Not a scratch directory: kept.
    let other = cache.join(".run-notapid");
    fs::create_dir(&other).unwrap();

    let tree = dir.path().join("rootfs");
    fs::create_dir_all(tree.join("bin")).unwrap();
    let args = ContainerRunArgs {
        rootfs: Some(tree),
        command: vec!["/bin/true".into()],
        ..prepare_args(dir.path())
    };
    let p = prepare(&args).unwrap();
    assert!(!exists(&stale));
    assert!(exists(&mine) && exists(&locked) && exists(&other));
    // The run's own scratch directory carries its pid.
    let own = p
        .run_dir
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        own.starts_with(&format!(".run-{}-", std::process::id())),
        "{own}"
    );
}

/// The child side of `a_stop_signal_during_a_build_removes_its_scratch`:
/// builds with a `mkfs.ext4` that never ends, and expects to be stopped.
#[test]
fn stop_signal_child() {
    let Ok(dir) = std::env::var("FLINT_TEST_STOP_CHILD_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let data = docker_save(
        &[layer(&[E::File("a", b"a", 0o644)])],
        serde_json::json!({}),
    );
    let err = prepare(&image_args(&dir, "img.tar", &data)).err().unwrap();
    assert!(
        matches!(err, ContainerError::Interrupted(libc::SIGTERM)),
        "{err}"
    );
}

#[test]
fn a_stop_signal_during_a_build_removes_its_scratch() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let ready = dir.path().join("mkfs-started");
    let fake = bin.join("mkfs.ext4");
    fs::write(
        &fake,
        format!("#!/bin/sh\ntouch '{}'\nexec sleep 600\n", ready.display()),
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut fs::metadata(&fake).unwrap().permissions(),
        0o755,
    );
    fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "stop_signal_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FLINT_TEST_STOP_CHILD_DIR", dir.path())
        .env("PATH", path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while !ready.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the child ended before mkfs started: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let cache = dir.path().join("cache");
    let scratch = |cache: &Path| -> Vec<String> {
        fs::read_dir(cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".run-"))
            .collect()
    };
    assert_eq!(
        scratch(&cache).len(),
        1,
        "the build's scratch directory exists"
    );
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "the child did not stop cleanly: {status}");
    assert_eq!(scratch(&cache), Vec::<String>::new(), "scratch left behind");
}

/// A small deterministic generator for mutating inputs.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut data = seed.to_vec();
        if data.is_empty() {
            return data;
        }
        for _ in 0..1 + self.next() % 8 {
            let at = (self.next() % data.len() as u64) as usize;
            match self.next() % 4 {
                0 => data[at] = self.next() as u8,
                1 => data[at] ^= 1 << (self.next() % 8),
                2 => data.truncate(at),
                _ => data[at] = b"0123456789\0\xff/.\"{}[]:"[(self.next() % 20) as usize],
            }
            if data.is_empty() {
                break;
            }
        }
        data
    }
}

#[test]
fn decoders_survive_mutated_input() {
    let layers = vec![
        layer(&[
            E::Dir("etc", 0o755),
            E::File("etc/f", b"data", 0o4755),
            E::Symlink("etc/s", "/etc/f"),
            E::Hardlink("etc/h", "etc/f"),
            E::Fifo("etc/p"),
            E::CharDev("dev/null"),
            E::File("etc/.wh.f", b"", 0o644),
            E::File("etc/.wh..wh..opq", b"", 0o644),
        ]),
        sparse_layer("sparse", 4096),
    ];
    let docker = docker_save(&layers, serde_json::json!({"Env": ["A=1"], "Cmd": ["/x"]}));
    let (oci, _) = oci_layout(&layers, serde_json::json!({"Cmd": ["/x"]}));
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for l in &layers {
        assert!(container::fuzz_unpack_layer(l));
        for _ in 0..300 {
            container::fuzz_unpack_layer(&rng.mutate(l));
        }
    }
    assert!(container::fuzz_open_image(&docker));
    assert!(container::fuzz_open_image(&oci));
    assert!(container::fuzz_open_image(&gzip(&oci)));
    for _ in 0..200 {
        container::fuzz_open_image(&rng.mutate(&docker));
        container::fuzz_open_image(&rng.mutate(&oci));
    }
    let index = br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":1,"platform":{"architecture":"amd64","os":"linux"}}]}"#;
    let manifest = br#"{"schemaVersion":2,"config":{"mediaType":"a","digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":1},"layers":[{"mediaType":"b","digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","size":2}]}"#;
    let config = br#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1","B"],"Cmd":["/x"],"User":"u"},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let docker_manifest = br#"[{"Config":"c.json","Layers":["a/layer.tar"]}]"#;
    assert!(container::fuzz_parse_index(index));
    assert!(container::fuzz_parse_manifest(manifest));
    assert!(container::fuzz_parse_config(config));
    assert!(container::fuzz_parse_docker_manifest(docker_manifest));
    let deep = "[".repeat(100_000);
    for _ in 0..2000 {
        container::fuzz_parse_index(&rng.mutate(index));
        container::fuzz_parse_manifest(&rng.mutate(manifest));
        container::fuzz_parse_config(&rng.mutate(config));
        container::fuzz_parse_docker_manifest(&rng.mutate(docker_manifest));
    }
    for f in [
        container::fuzz_parse_index,
        container::fuzz_parse_manifest,
        container::fuzz_parse_config,
        container::fuzz_parse_docker_manifest,
        container::fuzz_unpack_layer,
        container::fuzz_open_image,
    ] {
        assert!(!f(deep.as_bytes()));
        let _ = f(b""); // an empty layer is a valid (empty) tar stream
    }
}
