//! Building small images in tests: layers as tar streams, written as a
//! `docker save` tarball or an OCI image layout.

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One layer entry.
pub enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    /// A file with an owner.
    Owned(&'a str, &'a [u8], u32, u64, u64),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Fifo(&'a str),
    CharDev(&'a str),
    /// A regular file whose name is written into the header as is (for
    /// names the tar crate's builder refuses, like `..`).
    RawName(&'a str, &'a [u8]),
    /// A hard link whose target is written as is.
    RawHardlink(&'a str, &'a str),
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

fn set_raw_name(h: &mut tar::Header, name: &str) {
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    field[..name.len()].copy_from_slice(name.as_bytes());
}

fn set_raw_link(h: &mut tar::Header, name: &str) {
    let field = &mut h.as_old_mut().linkname;
    field.fill(0);
    field[..name.len()].copy_from_slice(name.as_bytes());
}

/// An uncompressed layer tar.
pub fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    use tar::EntryType as T;
    for e in entries {
        match *e {
            E::Dir(path, mode) => {
                let mut h = header(T::Directory, mode, 0);
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
            E::File(path, data, mode) => {
                let mut h = header(T::Regular, mode, data.len() as u64);
                b.append_data(&mut h, path, data).unwrap();
            }
            E::Owned(path, data, mode, uid, gid) => {
                let mut h = header(T::Regular, mode, data.len() as u64);
                h.set_uid(uid);
                h.set_gid(gid);
                b.append_data(&mut h, path, data).unwrap();
            }
            E::Symlink(path, target) => {
                let mut h = header(T::Symlink, 0o777, 0);
                b.append_link(&mut h, path, target).unwrap();
            }
            E::Hardlink(path, target) => {
                let mut h = header(T::Link, 0o644, 0);
                b.append_link(&mut h, path, target).unwrap();
            }
            E::Fifo(path) => {
                let mut h = header(T::Fifo, 0o644, 0);
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
            E::CharDev(path) => {
                let mut h = header(T::Char, 0o666, 0);
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
            E::RawName(name, data) => {
                let mut h = header(T::Regular, 0o644, data.len() as u64);
                set_raw_name(&mut h, name);
                h.set_cksum();
                b.append(&h, data).unwrap();
            }
            E::RawHardlink(name, target) => {
                let mut h = header(T::Link, 0o644, 0);
                set_raw_name(&mut h, name);
                set_raw_link(&mut h, target);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// An image config with these diff_ids and run defaults.
pub fn config_json(layers: &[Vec<u8>], config: serde_json::Value) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

fn add_file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
    b.append_data(&mut h, name, data).unwrap();
}

/// A `docker save` tarball (legacy layout: `<id>/layer.tar`, `<id>.json`).
pub fn docker_save(layers: &[Vec<u8>], config: serde_json::Value) -> Vec<u8> {
    let config = config_json(layers, config);
    let config_name = format!("{}.json", &sha256(&config)[7..]);
    let mut b = tar::Builder::new(Vec::new());
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let name = format!("{:064x}/layer.tar", i + 1);
        add_file(&mut b, &name, l);
        names.push(name);
    }
    add_file(&mut b, &config_name, &config);
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": ["test:latest"],
        "Layers": names,
    }]);
    add_file(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    b.into_inner().unwrap()
}

/// An OCI image layout tarball with gzip-compressed layers, the manifest
/// behind `index.json`; returns the tarball and the manifest digest.
pub fn oci_layout(layers: &[Vec<u8>], config: serde_json::Value) -> (Vec<u8>, String) {
    let config = config_json(layers, config);
    let mut b = tar::Builder::new(Vec::new());
    add_file(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let mut descs = Vec::new();
    for l in layers {
        let gz = gzip(l);
        let d = sha256(&gz);
        add_file(&mut b, &format!("blobs/sha256/{}", &d[7..]), &gz);
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": d, "size": gz.len(),
        }));
    }
    let cd = sha256(&config);
    add_file(&mut b, &format!("blobs/sha256/{}", &cd[7..]), &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let md = sha256(&manifest);
    add_file(&mut b, &format!("blobs/sha256/{}", &md[7..]), &manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len(),
             "platform": {"architecture": "amd64", "os": "linux"}},
        ],
    });
    add_file(&mut b, "index.json", &serde_json::to_vec(&index).unwrap());
    (b.into_inner().unwrap(), md)
}

pub fn write(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap();
}

/// A tar of regular files and symlinks, in order.
pub fn tar_of(files: &[(&str, &[u8])], symlinks: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        add_file(&mut b, name, data);
    }
    for (name, target) in symlinks {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, name, target).unwrap();
    }
    b.into_inner().unwrap()
}

/// An OCI image layout whose layers are stored under the given digests
/// (not necessarily sha256, not necessarily right) with the given diff_ids.
pub fn oci_layout_raw(layers: &[(String, Vec<u8>)], diff_ids: &[String]) -> Vec<u8> {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let mut files: Vec<(String, Vec<u8>)> = vec![(
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    let mut descs = Vec::new();
    for (digest, blob) in layers {
        let (alg, hex) = digest.split_once(':').unwrap();
        files.push((format!("blobs/{alg}/{hex}"), blob.clone()));
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest, "size": blob.len(),
        }));
    }
    let cd = sha256(&config);
    files.push((format!("blobs/sha256/{}", &cd[7..]), config.clone()));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let md = sha256(&manifest);
    files.push((format!("blobs/sha256/{}", &md[7..]), manifest.clone()));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len()}],
    });
    files.push(("index.json".into(), serde_json::to_vec(&index).unwrap()));
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    tar_of(&refs, &[])
}

/// A `docker save` tarball with the given config bytes and layer members
/// (`layer_names` in manifest order; `layers` stored as files, `links` as
/// symlink members).
pub fn docker_save_raw(
    config: &[u8],
    layer_names: &[&str],
    layers: &[(&str, &[u8])],
    links: &[(&str, &str)],
) -> Vec<u8> {
    let config_name = format!("{}.json", &sha256(config)[7..]);
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name, "RepoTags": ["test:latest"], "Layers": layer_names,
    }]))
    .unwrap();
    let mut files: Vec<(&str, &[u8])> = layers.to_vec();
    files.push((&config_name, config));
    files.push(("manifest.json", &manifest));
    tar_of(&files, links)
}

/// A GNU sparse file entry declaring `real_size` bytes with one 512-byte
/// data block at its end.
pub fn sparse_layer(name: &str, real_size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(512);
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.set_real_size(real_size);
        gnu.sparse[0].set_offset(real_size - 512);
        gnu.sparse[0].set_length(512);
    }
    h.set_path(name).unwrap();
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &[7u8; 512][..]).unwrap();
    b.into_inner().unwrap()
}

/// Args for `prepare` with a stand-in kernel (nothing boots; the file only
/// has to look like an ELF kernel to pass the config checks).
pub fn prepare_args(dir: &std::path::Path) -> container::ContainerRunArgs {
    let kernel = dir.join("vmlinux");
    std::fs::write(&kernel, b"\x7fELF stand-in, never booted").unwrap();
    container::ContainerRunArgs {
        kernel: Some(kernel),
        cache_dir: Some(dir.join("cache")),
        mem: 128,
        vcpus: 1,
        ..container::ContainerRunArgs::default()
    }
}
