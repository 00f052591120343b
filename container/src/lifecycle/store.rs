//! The local image store (`flint container load`, `images`, `rmi`), so that
//! `run` takes `name:tag` as well as a tarball path. Loaded tarballs are
//! checked (read as an image) and kept as they are, named by their sha256,
//! in the store directory; `index.json` maps `name:tag` to a tarball and is
//! rewritten atomically under the store's `flock`.
//!
//! Store directory: `$FLINT_IMAGE_STORE`, else `/var/lib/flint/images` for
//! root, else `$XDG_DATA_HOME/flint/images` (`~/.local/share/flint/images`).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::image::{self, Tarball};
use crate::ContainerError;

/// One stored `name:tag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// `name:tag`.
    pub name: String,
    /// The tarball, relative to the store.
    pub file: String,
    /// The image's digest (manifest or config, as `run` reports it).
    pub digest: String,
    /// The tarball's size in bytes.
    pub size: u64,
    /// Unix seconds.
    pub loaded: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    images: Vec<Entry>,
}

/// The image store.
pub struct Store {
    pub root: PathBuf,
}

fn io_at(what: String) -> impl FnOnce(io::Error) -> ContainerError {
    move |source| ContainerError::Io { what, source }
}

/// `name` with `:latest` when it has no tag.
pub fn normalize(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || name.contains('@') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

/// The names a tarball gives its image: `RepoTags` of a `docker save`
/// manifest, or the `io.containerd.image.name` /
/// `org.opencontainers.image.ref.name` annotations of an OCI index.
fn names_in(tar: &Tarball) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(raw) = tar.read("manifest.json") {
        if let Ok(serde_json::Value::Array(items)) = serde_json::from_slice(&raw) {
            for item in items {
                for tag in item["RepoTags"].as_array().into_iter().flatten() {
                    names.extend(tag.as_str().map(str::to_owned));
                }
            }
        }
    }
    if let Ok(raw) = tar.read("index.json") {
        if let Ok(index) = serde_json::from_slice::<serde_json::Value>(&raw) {
            for m in index["manifests"].as_array().into_iter().flatten() {
                let a = &m["annotations"];
                let full = a["io.containerd.image.name"].as_str();
                let reference = a["org.opencontainers.image.ref.name"].as_str();
                match (full, reference) {
                    (Some(n), _) => names.push(n.to_owned()),
                    // A bare tag names nothing by itself.
                    (None, Some(r)) if r.contains(':') || r.contains('/') => {
                        names.push(r.to_owned())
                    }
                    _ => {}
                }
            }
        }
    }
    names.iter().map(|n| normalize(n)).collect()
}

impl Store {
    /// The default store directory.
    pub fn default_root() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("FLINT_IMAGE_STORE").filter(|d| !d.is_empty()) {
            return Some(d.into());
        }
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            return Some("/var/lib/flint/images".into());
        }
        let data = std::env::var_os("XDG_DATA_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))?;
        Some(data.join("flint/images"))
    }

    /// The store at its default place, created `0700` if needed.
    pub fn open() -> Result<Store, ContainerError> {
        let root = Store::default_root().ok_or_else(|| {
            ContainerError::Usage("no image store: set HOME or FLINT_IMAGE_STORE".into())
        })?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(io_at(format!("creating {}", root.display())))?;
        Ok(Store { root })
    }

    fn lock(&self) -> Result<File, ContainerError> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.root.join("lock"))
            .map_err(io_at("opening the store lock".into()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_at("locking the store".into())(io::Error::last_os_error()));
        }
        Ok(f)
    }

    fn index(&self) -> Index {
        std::fs::read(self.root.join("index.json"))
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .unwrap_or_default()
    }

    fn save(&self, index: &Index) -> Result<(), ContainerError> {
        let tmp = self.root.join(".index.json.tmp");
        let json = serde_json::to_vec_pretty(index)
            .map_err(|e| ContainerError::Internal(format!("encoding the store index: {e}")))?;
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, self.root.join("index.json")))
            .map_err(io_at("writing the store index".into()))
    }

    /// Every stored image.
    pub fn list(&self) -> Vec<Entry> {
        self.index().images
    }

    /// The tarball stored as `name` (`:latest` when no tag is given).
    pub fn find(&self, name: &str) -> Option<(Entry, PathBuf)> {
        let want = normalize(name);
        let entry = self.list().into_iter().find(|e| e.name == want)?;
        let path = self.root.join(&entry.file);
        Some((entry, path))
    }

    /// Loads a tarball read from `input`, stored under the names it
    /// carries, or `tag` if given; returns the names.
    pub fn load(
        &self,
        mut input: impl Read,
        tag: Option<&str>,
    ) -> Result<Vec<String>, ContainerError> {
        let tmp = tempfile::Builder::new()
            .prefix(".load-")
            .tempfile_in(&self.root)
            .map_err(io_at("making a temporary file in the store".into()))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        let mut out = tmp.as_file();
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_at("reading the tarball".into())(e)),
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(io_at("storing the tarball".into()))?;
            size += n as u64;
        }
        out.sync_all()
            .map_err(io_at("storing the tarball".into()))?;
        let scratch = tempfile::Builder::new()
            .prefix(".scratch-")
            .tempdir_in(&self.root)
            .map_err(io_at("making a scratch directory in the store".into()))?;
        let tar = Tarball::open(tmp.path(), scratch.path())?;
        let img = image::read_image(&tar)?;
        let mut names = match tag {
            Some(t) => vec![normalize(t)],
            None => names_in(&tar),
        };
        names.dedup();
        if names.is_empty() {
            return Err(ContainerError::Usage(
                "the tarball names no image (no RepoTags or ref.name): give one with --tag NAME:TAG"
                    .into(),
            ));
        }
        let file = format!("sha256-{}.tar", image::hex(&hasher.finalize()));
        let _lock = self.lock()?;
        tmp.persist(self.root.join(&file))
            .map_err(|e| io_at("storing the tarball".into())(e.error))?;
        let mut index = self.index();
        index.images.retain(|e| !names.contains(&e.name));
        for name in &names {
            index.images.push(Entry {
                name: name.clone(),
                file: file.clone(),
                digest: img.digest.clone(),
                size,
                loaded: super::state::now(),
            });
        }
        self.save(&index)?;
        self.sweep(&index);
        Ok(names)
    }

    /// Removes `name` (and its tarball when no other name uses it).
    pub fn remove(&self, name: &str) -> Result<(), ContainerError> {
        let want = normalize(name);
        let _lock = self.lock()?;
        let mut index = self.index();
        let before = index.images.len();
        index.images.retain(|e| e.name != want);
        if index.images.len() == before {
            return Err(ContainerError::Usage(format!("no such image: {want}")));
        }
        self.save(&index)?;
        self.sweep(&index);
        Ok(())
    }

    /// Removes tarballs no entry names.
    fn sweep(&self, index: &Index) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("sha256-") && !index.images.iter().any(|i| i.file == name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_get_a_tag() {
        assert_eq!(normalize("busybox"), "busybox:latest");
        assert_eq!(normalize("busybox:1.36"), "busybox:1.36");
        assert_eq!(normalize("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(normalize("a/b@sha256:00"), "a/b@sha256:00");
    }
}
