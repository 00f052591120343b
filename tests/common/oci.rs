//! OCI images built on the spot for tests that import them into a real
//! containerd (no registry is reachable here).

use std::path::{Path, PathBuf};
use std::process::Command;

fn sha256(path: &Path) -> String {
    let out = super::run(Command::new("sha256sum").arg(path));
    out.split_whitespace().next().unwrap().to_owned()
}

/// An OCI image layout tarball of a static busybox (`sh` and a few
/// applets) named `name` with tag `tag`, whose image config is `config`
/// (`{"Env": ..., "Entrypoint"/"Cmd": ...}`), built with tar(1) under `work`:
/// what `ctr images import` takes.
pub fn busybox_image(
    work: &Path,
    busybox: &Path,
    name: &str,
    tag: &str,
    config: serde_json::Value,
) -> PathBuf {
    let work = work.join(name.replace(['/', ':'], "_"));
    let layer = work.join("layer");
    let blobs = work.join("img/blobs/sha256");
    for d in ["bin", "etc", "tmp", "root", "proc", "sys", "dev"] {
        std::fs::create_dir_all(layer.join(d)).unwrap();
    }
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::copy(busybox, layer.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "cat", "sleep", "ls", "ps", "true"] {
        std::os::unix::fs::symlink("busybox", layer.join("bin").join(applet)).unwrap();
    }
    std::fs::write(layer.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(layer.join("etc/group"), "root:x:0:\n").unwrap();
    let blob = |path: &Path| -> (String, u64) {
        let digest = sha256(path);
        std::fs::copy(path, blobs.join(&digest)).unwrap();
        (digest, std::fs::metadata(path).unwrap().len())
    };
    let layer_tar = work.join("layer.tar");
    super::run(
        Command::new("tar")
            .arg("-C")
            .arg(&layer)
            .args(["--owner=0", "--group=0", "-cf"])
            .arg(&layer_tar)
            .arg("."),
    );
    let (l, l_size) = blob(&layer_tar);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{l}")]},
    });
    let write = |file: &str, v: &serde_json::Value| -> (String, u64) {
        let p = work.join(file);
        std::fs::write(&p, v.to_string()).unwrap();
        blob(&p)
    };
    let (c, c_size) = write("config.json", &config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{c}"), "size": c_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{l}"), "size": l_size}],
    });
    let (m, m_size) = write("manifest.json", &manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{m}"), "size": m_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(work.join("img/index.json"), index.to_string()).unwrap();
    std::fs::write(
        work.join("img/oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let tarball = work.join("image.tar");
    super::run(
        Command::new("tar")
            .arg("-C")
            .arg(work.join("img"))
            .arg("-cf")
            .arg(&tarball)
            .arg("."),
    );
    tarball
}
