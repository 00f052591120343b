//! Reading an image tarball: an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/<alg>/<hex>`) or a `docker save` archive (`manifest.json`), plain
//! or gzip-compressed. The tarball is indexed once (names to byte ranges) and
//! blobs are then read in place, without unpacking the outer archive.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use sha2::{Digest as _, Sha256, Sha512};

use crate::ContainerError;

/// Largest JSON document (index, manifest, config) read into memory.
const MAX_JSON: u64 = 64 << 20;

/// The two tarball layouts understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OCI image layout: `oci-layout` + `index.json` + `blobs/`.
    OciLayout,
    /// `docker save`: `manifest.json` naming a config and layer files.
    DockerSave,
}

impl Format {
    /// A stable name (part of the cache key).
    pub fn name(self) -> &'static str {
        match self {
            Format::OciLayout => "oci-layout",
            Format::DockerSave => "docker-save",
        }
    }
}

/// The image's run defaults (from its config's `config` section).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Defaults {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// One layer: where its bytes are and what they must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    /// Name of the layer file inside the tarball.
    pub name: String,
    /// Digest of the stored (possibly compressed) blob, when known.
    pub digest: Option<String>,
    /// Digest of the uncompressed tar stream (the config's `diff_ids`).
    pub diff_id: Option<String>,
}

/// An image found in a tarball.
#[derive(Debug, Clone)]
pub struct Image {
    pub format: Format,
    /// Identifies the image's content: the manifest digest (OCI layout), or
    /// the config digest (`docker save`, which stores no manifest blob; the
    /// config names every layer by its `diff_id`).
    pub digest: String,
    pub defaults: Defaults,
    /// Lowest layer first.
    pub layers: Vec<LayerRef>,
}

/// A tar archive opened for random access to its members.
pub struct Tarball {
    file: File,
    /// Kept alive while `file` may be its decompressed copy.
    _decompressed: Option<tempfile::NamedTempFile>,
    members: HashMap<String, (u64, u64)>,
    /// Symlink and hard-link members: name to the member they stand for
    /// (`docker save` stores a layer shared by two images once, the other
    /// as a symlink to it).
    links: HashMap<String, String>,
    path: PathBuf,
}

fn image_err(path: &Path, message: impl std::fmt::Display) -> ContainerError {
    ContainerError::Image(format!("{}: {message}", path.display()))
}

/// A member name as written by `docker save` / OCI tools, without `./`.
fn member_key(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::CurDir | Component::RootDir => {}
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

/// The member a link member `name` points at: a symlink's target is
/// relative to the link's directory (absolute: to the archive's root), a
/// hard link's to the archive's root; `..` may not leave the archive.
fn link_key(name: &str, target: &Path, symlink: bool) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    if symlink && !target.has_root() {
        parts.extend(name.split('/'));
        parts.pop();
    }
    for c in target.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir | Component::RootDir => {}
            Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/")).filter(|k| !k.is_empty())
}

/// Links followed at most when resolving a member.
const MAX_LINK_HOPS: usize = 16;

impl Tarball {
    /// Indexes the tarball at `path`. A gzip-compressed tarball is first
    /// inflated into a temporary file in `scratch`.
    pub fn open(path: &Path, scratch: &Path) -> Result<Tarball, ContainerError> {
        Tarball::open_limited(path, scratch, crate::unpack::DEFAULT_MAX_UNPACKED)
    }

    /// [`Tarball::open`], refusing a gzip-compressed tarball that inflates
    /// to more than `limit` bytes, and anything but a regular file (a FIFO
    /// or device would block or never end).
    pub fn open_limited(
        path: &Path,
        scratch: &Path,
        limit: u64,
    ) -> Result<Tarball, ContainerError> {
        let io_err = |what: &str| {
            let what = format!("{what} {}", path.display());
            move |source| ContainerError::Io { what, source }
        };
        // O_NONBLOCK: opening a FIFO with no writer must not hang.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(io_err("opening"))?;
        if !file.metadata().map_err(io_err("reading"))?.is_file() {
            return Err(image_err(path, "not a regular file"));
        }
        let mut magic = [0u8; 2];
        let n = file.read(&mut magic).map_err(io_err("reading"))?;
        let mut decompressed = None;
        if n == 2 && magic == [0x1f, 0x8b] {
            file.seek(SeekFrom::Start(0)).map_err(io_err("reading"))?;
            let mut tmp = tempfile::Builder::new()
                .prefix("image-")
                .suffix(".tar")
                .tempfile_in(scratch)
                .map_err(io_err("making a scratch file for"))?;
            let gz = flate2::read::MultiGzDecoder::new(BufReader::new(&file));
            let mut buf = vec![0u8; 64 << 10];
            let mut total = 0u64;
            let mut gz = gz.take(limit.saturating_add(1));
            loop {
                crate::interrupt::check()?;
                let n = match gz.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_err("inflating")(e)),
                };
                total += n as u64;
                if total > limit {
                    return Err(image_err(
                        path,
                        format!(
                            "inflates to more than the limit of {limit} bytes; raise it with \
                             --max-unpacked-size or FLINT_MAX_UNPACKED_SIZE if the image is trusted"
                        ),
                    ));
                }
                std::io::Write::write_all(tmp.as_file_mut(), &buf[..n])
                    .map_err(io_err("inflating"))?;
            }
            file = tmp.reopen().map_err(io_err("reopening"))?;
            decompressed = Some(tmp);
        }
        file.seek(SeekFrom::Start(0)).map_err(io_err("reading"))?;
        let mut members = HashMap::new();
        let mut links = HashMap::new();
        {
            let mut archive = tar::Archive::new(&file);
            let entries = archive
                .entries_with_seek()
                .map_err(|e| image_err(path, format!("not a tar archive: {e}")))?;
            for entry in entries {
                crate::interrupt::check()?;
                let entry = entry.map_err(|e| image_err(path, format!("bad tar archive: {e}")))?;
                let kind = entry.header().entry_type();
                let name = entry
                    .path()
                    .ok()
                    .and_then(|p| member_key(&p))
                    .filter(|k| !k.is_empty());
                let Some(name) = name else {
                    continue;
                };
                if kind.is_symlink() || kind.is_hard_link() {
                    let target = entry
                        .link_name()
                        .ok()
                        .flatten()
                        .and_then(|t| link_key(&name, &t, kind.is_symlink()));
                    if let Some(target) = target {
                        members.remove(&name);
                        links.insert(name, target);
                    }
                } else if matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous) {
                    links.remove(&name);
                    members.insert(name, (entry.raw_file_position(), entry.size()));
                }
            }
        }
        Ok(Tarball {
            file,
            _decompressed: decompressed,
            members,
            links,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The regular member `name` stands for, following link members.
    fn resolve<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        let mut name = name;
        for _ in 0..=MAX_LINK_HOPS {
            if self.members.contains_key(name) {
                return Some(name);
            }
            name = self.links.get(name)?;
        }
        None
    }

    pub fn has(&self, name: &str) -> bool {
        self.resolve(name).is_some()
    }

    /// A member's size and a reader over its bytes (a link member reads as
    /// the member it points at).
    pub fn member(&self, name: &str) -> Result<(u64, MemberReader<'_>), ContainerError> {
        let &(offset, size) = self
            .resolve(name)
            .and_then(|n| self.members.get(n))
            .ok_or_else(|| image_err(&self.path, format!("has no {}", name.escape_debug())))?;
        Ok((
            size,
            MemberReader {
                file: &self.file,
                offset,
                left: size,
            },
        ))
    }

    /// A small member's whole content.
    pub fn read(&self, name: &str) -> Result<Vec<u8>, ContainerError> {
        let (size, mut reader) = self.member(name)?;
        if size > MAX_JSON {
            return Err(image_err(
                &self.path,
                format!("{name} is too large ({size} bytes)"),
            ));
        }
        let mut buf = Vec::with_capacity(size as usize);
        reader
            .read_to_end(&mut buf)
            .map_err(|source| ContainerError::Io {
                what: format!("reading {name} in {}", self.path.display()),
                source,
            })?;
        Ok(buf)
    }
}

/// Reads one member of a [`Tarball`] (positioned reads; no shared cursor).
pub struct MemberReader<'a> {
    file: &'a File,
    offset: u64,
    left: u64,
}

impl Read for MemberReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.offset)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.offset += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Which layout the tarball has. An archive with both (as `docker save`
/// writes since Docker 25) is read as an OCI layout.
pub fn detect_format(tar: &Tarball) -> Result<Format, ContainerError> {
    if tar.has("oci-layout") && tar.has("index.json") {
        Ok(Format::OciLayout)
    } else if tar.has("manifest.json") {
        Ok(Format::DockerSave)
    } else {
        Err(image_err(
            tar.path(),
            "neither an OCI image layout (oci-layout + index.json) nor a `docker save` archive (manifest.json)",
        ))
    }
}

/// A digest computed incrementally in `algorithm:hex` form.
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    /// A hasher for `digest` if it is a well-formed digest flint can
    /// verify: `sha256:` + 64 or `sha512:` + 128 lowercase hex digits.
    pub fn for_digest(digest: &str) -> Option<Hasher> {
        let (alg, hex) = digest.split_once(':')?;
        let hex_ok = |n: usize| {
            hex.len() == n
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        match alg {
            "sha256" if hex_ok(64) => Some(Hasher::Sha256(Sha256::new())),
            "sha512" if hex_ok(128) => Some(Hasher::Sha512(Sha512::new())),
            _ => None,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => format!("sha256:{}", hex(&h.finalize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex(&h.finalize())),
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

/// Refuses a digest flint cannot verify (an algorithm other than sha256 or
/// sha512, or a malformed one): every digest is verified or the image is
/// refused.
pub fn check_digest(what: &str, digest: &str) -> Result<(), String> {
    if Hasher::for_digest(digest).is_some() {
        return Ok(());
    }
    Err(format!(
        "{what}: cannot verify digest \"{}\" (flint verifies sha256 and sha512 digests only)",
        digest.escape_debug()
    ))
}

/// Checks `data` against `digest`.
fn verify(tar: &Tarball, what: &str, data: &[u8], digest: &str) -> Result<(), ContainerError> {
    check_digest(what, digest).map_err(|m| image_err(tar.path(), m))?;
    let mut h = Hasher::for_digest(digest)
        .ok_or_else(|| image_err(tar.path(), format!("{what}: unsupported digest {digest}")))?;
    h.update(data);
    let got = h.finish();
    if got != digest {
        return Err(image_err(
            tar.path(),
            format!("{what}: content does not match its digest {digest} (got {got})"),
        ));
    }
    Ok(())
}

/// `blobs/<alg>/<hex>` for an OCI digest, refusing anything that is not a
/// plain `alg:hex` (no path tricks through the digest).
pub fn blob_name(digest: &str) -> Option<String> {
    let (alg, hex) = digest.split_once(':')?;
    let ok = |s: &str, extra: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(c))
    };
    (ok(alg, "+._-") && ok(hex, "")).then(|| format!("blobs/{alg}/{hex}"))
}

/// Reads the image in `tar`. Every layer's blob digest (when the format
/// has one) and diff_id must be one flint can verify.
pub fn read_image(tar: &Tarball) -> Result<Image, ContainerError> {
    let image = match detect_format(tar)? {
        Format::OciLayout => read_oci(tar)?,
        Format::DockerSave => read_docker(tar)?,
    };
    for (i, layer) in image.layers.iter().enumerate() {
        let what = |kind: &str| format!("layer {} ({kind})", i + 1);
        if let Some(d) = &layer.digest {
            check_digest(&what("blob digest"), d).map_err(|m| image_err(tar.path(), m))?;
        }
        match &layer.diff_id {
            Some(d) => check_digest(&what("diff_id"), d).map_err(|m| image_err(tar.path(), m))?,
            None => {
                return Err(image_err(
                    tar.path(),
                    format!("{}: no diff_id", what("config")),
                ))
            }
        }
    }
    Ok(image)
}

fn parse_json<T: serde::de::DeserializeOwned>(
    tar: &Tarball,
    what: &str,
    data: &[u8],
) -> Result<T, ContainerError> {
    serde_json::from_slice(data).map_err(|e| image_err(tar.path(), format!("{what}: {e}")))
}

pub(crate) fn defaults_of(config: &ImageConfiguration) -> Defaults {
    let Some(c) = config.config() else {
        return Defaults::default();
    };
    Defaults {
        env: c.env().clone().unwrap_or_default(),
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
        user: c.user().clone().filter(|u| !u.is_empty()),
    }
}

fn is_index_type(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/vnd.oci.image.index.v1+json"
            | "application/vnd.docker.distribution.manifest.list.v2+json"
    )
}

/// Picks the linux/amd64 manifest out of an index (following nested
/// indexes), returning its digest and bytes.
fn pick_manifest(
    tar: &Tarball,
    index: &ImageIndex,
    depth: u32,
) -> Result<(String, Vec<u8>), ContainerError> {
    if depth > 4 {
        return Err(image_err(tar.path(), "image indexes nested too deeply"));
    }
    let usable = |d: &&oci_spec::image::Descriptor| match d.platform() {
        None => true,
        Some(p) => {
            p.os().to_string() == "linux"
                && matches!(p.architecture().to_string().as_str(), "amd64" | "x86_64")
        }
    };
    let candidates: Vec<_> = index.manifests().iter().filter(usable).collect();
    // Prefer an explicit linux/amd64 entry over one without a platform.
    let chosen = candidates
        .iter()
        .find(|d| d.platform().is_some())
        .or(candidates.first())
        .ok_or_else(|| {
            image_err(
                tar.path(),
                "the image index has no manifest for linux/amd64",
            )
        })?;
    let digest = chosen.digest().to_string();
    let name = blob_name(&digest)
        .ok_or_else(|| image_err(tar.path(), format!("bad manifest digest {digest:?}")))?;
    let data = tar.read(&name)?;
    verify(tar, "manifest", &data, &digest)?;
    if is_index_type(chosen.media_type().as_ref()) {
        let nested: ImageIndex = parse_json(tar, &name, &data)?;
        return pick_manifest(tar, &nested, depth + 1);
    }
    Ok((digest, data))
}

fn read_oci(tar: &Tarball) -> Result<Image, ContainerError> {
    let index: ImageIndex = parse_json(tar, "index.json", &tar.read("index.json")?)?;
    let (digest, manifest_data) = pick_manifest(tar, &index, 0)?;
    let manifest: ImageManifest = parse_json(tar, "manifest", &manifest_data)?;
    let config_digest = manifest.config().digest().to_string();
    let config_name = blob_name(&config_digest)
        .ok_or_else(|| image_err(tar.path(), format!("bad config digest {config_digest:?}")))?;
    let config_data = tar.read(&config_name)?;
    verify(tar, "image config", &config_data, &config_digest)?;
    let config: ImageConfiguration = parse_json(tar, "image config", &config_data)?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(image_err(
            tar.path(),
            format!(
                "the manifest has {} layers but the config lists {} diff_ids",
                manifest.layers().len(),
                diff_ids.len()
            ),
        ));
    }
    let layers = manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(layer, diff_id)| {
            let digest = layer.digest().to_string();
            let name = blob_name(&digest)
                .ok_or_else(|| image_err(tar.path(), format!("bad layer digest {digest:?}")))?;
            Ok(LayerRef {
                name,
                digest: Some(digest),
                diff_id: Some(diff_id.clone()),
            })
        })
        .collect::<Result<_, ContainerError>>()?;
    Ok(Image {
        format: Format::OciLayout,
        digest,
        defaults: defaults_of(&config),
        layers,
    })
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    layers: Vec<String>,
}

fn read_docker(tar: &Tarball) -> Result<Image, ContainerError> {
    let entries: Vec<DockerManifestEntry> =
        parse_json(tar, "manifest.json", &tar.read("manifest.json")?)?;
    let entry = entries
        .first()
        .ok_or_else(|| image_err(tar.path(), "manifest.json lists no image"))?;
    if entries.len() > 1 {
        log::warn!(
            "{} holds {} images; using the first",
            tar.path().display(),
            entries.len()
        );
    }
    let key = |name: &str| {
        member_key(Path::new(name))
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                image_err(
                    tar.path(),
                    format!("bad file name {name:?} in manifest.json"),
                )
            })
    };
    let config_data = tar.read(&key(&entry.config)?)?;
    let digest = sha256_digest(&config_data);
    let config: ImageConfiguration = parse_json(tar, "image config", &config_data)?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != entry.layers.len() {
        return Err(image_err(
            tar.path(),
            format!(
                "manifest.json lists {} layers but the config lists {} diff_ids",
                entry.layers.len(),
                diff_ids.len()
            ),
        ));
    }
    let layers = entry
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(name, diff_id)| {
            let name = key(name)?;
            // Docker 25+ stores layers as OCI blobs named by their digest.
            let digest = name
                .strip_prefix("blobs/")
                .and_then(|rest| rest.split_once('/'))
                .map(|(alg, hex)| format!("{alg}:{hex}"));
            Ok(LayerRef {
                name,
                digest,
                diff_id: Some(diff_id.clone()),
            })
        })
        .collect::<Result<_, ContainerError>>()?;
    Ok(Image {
        format: Format::DockerSave,
        digest,
        defaults: defaults_of(&config),
        layers,
    })
}

/// Wraps a reader, hashing everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Option<Hasher>,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R, hasher: Option<Hasher>) -> Self {
        Self { inner, hasher }
    }

    /// Reads the rest of the stream (so the digest covers all of it).
    pub fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(drop)
    }

    /// The digest of what was read (if hashing) and the inner reader.
    pub fn into_parts(self) -> (Option<String>, R) {
        (self.hasher.map(Hasher::finish), self.inner)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// A layer's compression, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

pub fn sniff_compression<R: BufRead>(reader: &mut R) -> io::Result<Compression> {
    let head = reader.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    })
}
