//! Entry points for fuzzing each decoder with arbitrary bytes (a cargo-fuzz
//! crate calls these). Each returns whether the input was accepted; none may
//! panic, hang or write outside a temporary directory, whatever the input.

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

use crate::image::{self, Tarball};
use crate::{rootfs, unpack, ContainerError};

/// The unpack limit used when fuzzing (small, so inputs stay cheap).
const FUZZ_LIMIT: u64 = 64 << 20;

/// Decodes an OCI image index (`index.json`).
pub fn fuzz_parse_index(data: &[u8]) -> bool {
    serde_json::from_slice::<ImageIndex>(data).is_ok()
}

/// Decodes an OCI image manifest.
pub fn fuzz_parse_manifest(data: &[u8]) -> bool {
    serde_json::from_slice::<ImageManifest>(data).is_ok_and(|m| {
        m.layers()
            .iter()
            .all(|l| image::blob_name(l.digest().as_ref()).is_some())
    })
}

/// Decodes an image config and its run defaults.
pub fn fuzz_parse_config(data: &[u8]) -> bool {
    serde_json::from_slice::<ImageConfiguration>(data).is_ok_and(|c| {
        let defaults = image::defaults_of(&c);
        let over = crate::settings::Overrides {
            hostname: crate::HOSTNAME,
            command: &[],
            ..Default::default()
        };
        crate::settings::merge(&defaults, &over, |_| None).is_ok()
    })
}

/// Decodes a `docker save` `manifest.json`.
pub fn fuzz_parse_docker_manifest(data: &[u8]) -> bool {
    serde_json::from_slice::<Vec<image::DockerManifestEntry>>(data).is_ok()
}

/// Unpacks `data` as a layer (an uncompressed tar stream) into a temporary
/// directory, then measures it and writes the image fix-up script.
pub fn fuzz_unpack_layer(data: &[u8]) -> bool {
    let Ok(dir) = tempfile::tempdir() else {
        return false;
    };
    let mut tree = unpack::Tree::with_limit(dir.path(), FUZZ_LIMIT);
    let ok = tree.apply_layer(data).is_ok();
    ok && tree.finish().is_ok()
        && unpack::tree_usage(dir.path()).is_ok()
        && rootfs::fixups(dir.path(), &tree.meta).is_ok()
}

/// Reads `data` as an image tarball (OCI layout or `docker save`, maybe
/// gzip-compressed) and unpacks its layers into a temporary directory.
pub fn fuzz_open_image(data: &[u8]) -> bool {
    let run = || -> Result<(), ContainerError> {
        let dir = tempfile::tempdir().map_err(|e| ContainerError::Internal(e.to_string()))?;
        let path = dir.path().join("image.tar");
        std::fs::write(&path, data).map_err(|e| ContainerError::Internal(e.to_string()))?;
        let tar = Tarball::open_limited(&path, dir.path(), FUZZ_LIMIT)?;
        let image = image::read_image(&tar)?;
        let root = dir.path().join("root");
        std::fs::create_dir(&root).map_err(|e| ContainerError::Internal(e.to_string()))?;
        let mut tree = unpack::Tree::with_limit(&root, FUZZ_LIMIT);
        for layer in &image.layers {
            crate::apply_layer(&tar, layer, &mut tree)?;
        }
        Ok(())
    };
    run().is_ok()
}
