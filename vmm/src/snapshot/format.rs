//! The snapshot state file: a header, named sections, and a checksum.
//!
//! ```text
//! magic "FLINTSNP" | format version u32 | body length u64 | body | crc64 u64
//! body    = section count u32, then each section:
//! section = name length u8 | name (UTF-8) | version u16 | flags u8 | length u64 | payload
//! ```
//!
//! All integers are little-endian; the CRC-64 (ECMA-182) covers every byte
//! before it. Each section carries its own version, so one part of the state
//! (a device, the vCPUs) can change its layout without touching the others,
//! and a `required` flag (bit 0 of `flags`): a reader skips a section it
//! does not know unless it is required, in which case it refuses the file
//! and names the section. A file is only ever replaced atomically (written
//! to a temporary file, synced, renamed), so a crash mid-snapshot leaves the
//! previous snapshot intact and a damaged file is refused, never half-loaded.
//!
//! Section payloads are encoded with [postcard](https://docs.rs/postcard):
//! maintained (bincode 1 is not), compact, serde-based, and its wire format
//! is specified and stable across its 1.x releases, which a file format
//! needs. It is not self-describing, so types that skip absent fields (the
//! API's config types) are stored as JSON text instead.
//!
//! Reading never trusts a length: the file must be a regular file no larger
//! than [`MAX_STATE_FILE`] (checked with `fstat` on a descriptor opened with
//! `O_NONBLOCK`, so a FIFO or device never blocks or streams forever), and
//! every length inside is checked against the bytes actually present before
//! anything is allocated for it.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Identifies a flint state file.
pub const MAGIC: [u8; 8] = *b"FLINTSNP";
/// The state layout version this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;
/// The first, single-payload format: same framing, no longer read.
const LEGACY_VERSION: u32 = 1;
/// magic + version + body length.
const HEADER_LEN: usize = 8 + 4 + 8;
/// The largest state file accepted (a real one is well under 1 MiB).
pub const MAX_STATE_FILE: u64 = 64 << 20;
/// The most sections a file may have.
const MAX_SECTIONS: u32 = 4096;
/// Bit 0 of a section's flags: a reader that does not know it must refuse.
const FLAG_REQUIRED: u8 = 1;
const CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_ECMA_182);

/// Why a state file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not a regular file (a device, FIFO, directory...).
    #[error("{0}: not a regular file")]
    NotRegular(PathBuf),
    /// Larger than [`MAX_STATE_FILE`].
    #[error("{path}: {len} bytes, larger than the {MAX_STATE_FILE}-byte limit for a state file")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// Not a flint snapshot.
    #[error("{0}: not a flint snapshot (bad magic)")]
    BadMagic(PathBuf),
    /// Written by a flint with another state layout.
    #[error("{path}: snapshot format version {found}, this flint reads version {FORMAT_VERSION}")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in it.
        found: u32,
    },
    /// The file ends early.
    #[error("{path}: truncated ({len} bytes, expected {expected})")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// What the header promised.
        expected: u64,
    },
    /// The contents do not match the checksum.
    #[error("{0}: checksum mismatch (the file is corrupt)")]
    Checksum(PathBuf),
    /// The section table is malformed.
    #[error("{path}: malformed section table: {message}")]
    Sections {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A section this flint does not know is marked required.
    #[error("{path}: required section(s) this flint does not know: {}", .names.join(", "))]
    UnknownRequired {
        /// The file.
        path: PathBuf,
        /// The sections.
        names: Vec<String>,
    },
    /// A section is missing.
    #[error("{path}: no {name:?} section")]
    Missing {
        /// The file.
        path: PathBuf,
        /// The section.
        name: String,
    },
    /// A section has a version this flint does not read.
    #[error("{path}: section {name:?} has version {found}, this flint reads version {expected}")]
    SectionVersion {
        /// The file.
        path: PathBuf,
        /// The section.
        name: String,
        /// Its version.
        found: u16,
        /// The one this flint reads.
        expected: u16,
    },
    /// A section could not be encoded or decoded.
    #[error("{path}: section {name:?}: {message}")]
    Encoding {
        /// The file.
        path: PathBuf,
        /// The section.
        name: String,
        /// What the encoder said.
        message: String,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> FormatError + '_ {
    move |source| FormatError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Encodes a state value (postcard; see the module docs).
pub fn to_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(value)
}

/// Decodes a state value; trailing bytes are an error.
pub fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    let (value, rest) = postcard::take_from_bytes(bytes)?;
    if !rest.is_empty() {
        return Err(postcard::Error::DeserializeBadEncoding);
    }
    Ok(value)
}

/// One named, versioned part of the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Unique within a file (at most 255 bytes).
    pub name: String,
    /// The version of the payload's layout.
    pub version: u16,
    /// Whether a reader that does not know the section must refuse the file.
    pub required: bool,
    /// The encoded payload.
    pub payload: Vec<u8>,
}

impl Section {
    /// A section holding `value`, encoded.
    pub fn encode<T: Serialize + ?Sized>(
        name: &str,
        version: u16,
        required: bool,
        value: &T,
    ) -> Result<Self, FormatError> {
        let payload = to_bytes(value).map_err(|e| FormatError::Encoding {
            path: PathBuf::new(),
            name: name.to_string(),
            message: e.to_string(),
        })?;
        Ok(Self {
            name: name.to_string(),
            version,
            required,
            payload,
        })
    }

    /// The payload decoded, after checking the section's version.
    pub fn decode<T: DeserializeOwned>(&self, version: u16, path: &Path) -> Result<T, FormatError> {
        self.check_version(version, path)?;
        from_bytes(&self.payload).map_err(|e| FormatError::Encoding {
            path: path.to_owned(),
            name: self.name.clone(),
            message: e.to_string(),
        })
    }

    /// Refuses a version other than `expected`.
    pub fn check_version(&self, expected: u16, path: &Path) -> Result<(), FormatError> {
        if self.version != expected {
            return Err(FormatError::SectionVersion {
                path: path.to_owned(),
                name: self.name.clone(),
                found: self.version,
                expected,
            });
        }
        Ok(())
    }
}

/// Frames `sections` into the file's byte form.
pub fn encode(sections: &[Section]) -> Result<Vec<u8>, FormatError> {
    let bad = |message: String| FormatError::Sections {
        path: PathBuf::new(),
        message,
    };
    let count = u32::try_from(sections.len())
        .ok()
        .filter(|&n| n <= MAX_SECTIONS)
        .ok_or_else(|| bad(format!("{} sections", sections.len())))?;
    let mut body = Vec::new();
    body.extend_from_slice(&count.to_le_bytes());
    for s in sections {
        let name_len = u8::try_from(s.name.len())
            .map_err(|_| bad(format!("section name {:?} is too long", s.name)))?;
        body.push(name_len);
        body.extend_from_slice(s.name.as_bytes());
        body.extend_from_slice(&s.version.to_le_bytes());
        body.push(if s.required { FLAG_REQUIRED } else { 0 });
        body.extend_from_slice(&(s.payload.len() as u64).to_le_bytes());
        body.extend_from_slice(&s.payload);
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + 8);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    let crc = CRC64.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    if out.len() as u64 > MAX_STATE_FILE {
        return Err(bad(format!(
            "{} bytes, over the {MAX_STATE_FILE}-byte limit",
            out.len()
        )));
    }
    Ok(out)
}

/// A cursor over untrusted bytes: every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Option<&'a [u8]> {
        let n = usize::try_from(n).ok().filter(|&n| n <= self.bytes.len())?;
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N as u64)?.try_into().ok()
    }
}

/// Checks the framing of `bytes` (read from `path`) and splits the body
/// into its sections (names unique, lengths within the file).
pub fn decode(bytes: &[u8], path: &Path) -> Result<Vec<Section>, FormatError> {
    let len = bytes.len() as u64;
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(FormatError::BadMagic(path.to_owned()));
    }
    let truncated = |expected: u64| FormatError::Truncated {
        path: path.to_owned(),
        len,
        expected,
    };
    if bytes.len() < HEADER_LEN {
        return Err(truncated(HEADER_LEN as u64 + 8));
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != FORMAT_VERSION && version != LEGACY_VERSION {
        return Err(FormatError::UnsupportedVersion {
            path: path.to_owned(),
            found: version,
        });
    }
    let mut body_len = [0u8; 8];
    body_len.copy_from_slice(&bytes[12..20]);
    let body_len = u64::from_le_bytes(body_len);
    let expected = (HEADER_LEN as u64)
        .saturating_add(body_len)
        .saturating_add(8);
    if body_len > MAX_STATE_FILE || len < expected {
        return Err(truncated(expected));
    }
    let body_end = HEADER_LEN + body_len as usize;
    let mut crc = [0u8; 8];
    crc.copy_from_slice(&bytes[body_end..body_end + 8]);
    if CRC64.checksum(&bytes[..body_end]) != u64::from_le_bytes(crc) || len != expected {
        return Err(FormatError::Checksum(path.to_owned()));
    }
    if version == LEGACY_VERSION {
        // Intact, but written by an older flint in the single-payload format.
        return Err(FormatError::UnsupportedVersion {
            path: path.to_owned(),
            found: version,
        });
    }
    let bad = |message: String| FormatError::Sections {
        path: path.to_owned(),
        message,
    };
    let mut r = Reader {
        bytes: &bytes[HEADER_LEN..body_end],
    };
    let count = u32::from_le_bytes(r.array().ok_or_else(|| bad("no section count".into()))?);
    if count > MAX_SECTIONS {
        return Err(bad(format!("{count} sections")));
    }
    let mut sections = Vec::new();
    let mut names = HashSet::new();
    for i in 0..count {
        let short = || bad(format!("section {i} runs past the end"));
        let [name_len] = r.array().ok_or_else(short)?;
        let name = r.take(u64::from(name_len)).ok_or_else(short)?;
        let name = std::str::from_utf8(name)
            .map_err(|_| bad(format!("section {i}'s name is not UTF-8")))?
            .to_string();
        let version = u16::from_le_bytes(r.array().ok_or_else(short)?);
        let [flags] = r.array().ok_or_else(short)?;
        let payload_len = u64::from_le_bytes(r.array().ok_or_else(short)?);
        let payload = r.take(payload_len).ok_or_else(short)?.to_vec();
        if !names.insert(name.clone()) {
            return Err(bad(format!("two sections named {name:?}")));
        }
        sections.push(Section {
            name,
            version,
            required: flags & FLAG_REQUIRED != 0,
            payload,
        });
    }
    if !r.bytes.is_empty() {
        return Err(bad(format!(
            "{} bytes after the last section",
            r.bytes.len()
        )));
    }
    Ok(sections)
}

/// Opens `path` for reading without blocking (a FIFO opens at once) and
/// refuses anything but a regular file of at most `max` bytes, before
/// reading any of it. Symlinks are followed; what they point at is checked.
pub fn open_regular(path: &Path, max: u64) -> Result<(File, u64), FormatError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(io(path))?;
    let meta = file.metadata().map_err(io(path))?;
    if !meta.file_type().is_file() {
        return Err(FormatError::NotRegular(path.to_owned()));
    }
    if meta.len() > max {
        return Err(FormatError::TooLarge {
            path: path.to_owned(),
            len: meta.len(),
        });
    }
    Ok((file, meta.len()))
}

/// Reads a whole state file (regular, at most [`MAX_STATE_FILE`] bytes,
/// even if it grows while being read).
pub fn read_file(path: &Path) -> Result<Vec<u8>, FormatError> {
    let (file, len) = open_regular(path, MAX_STATE_FILE)?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_STATE_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io(path))?;
    if bytes.len() as u64 > MAX_STATE_FILE {
        return Err(FormatError::TooLarge {
            path: path.to_owned(),
            len: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

/// Reads and verifies a state file's sections.
pub fn load(path: &Path) -> Result<Vec<Section>, FormatError> {
    decode(&read_file(path)?, path)
}

/// Writes `bytes` to the temporary file for `path` ([`temp_path`]) and
/// syncs it; [`commit`] then renames it into place.
pub fn write_temp(path: &Path, bytes: &[u8]) -> Result<PathBuf, FormatError> {
    let tmp = temp_path(path);
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    Ok(tmp)
}

/// Writes `bytes` to `path` atomically: a temporary file next to it, synced,
/// then renamed over it (and the directory synced).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FormatError> {
    let tmp = write_temp(path, bytes)?;
    commit(&tmp, path)
}

/// The temporary name a file is written under before [`commit`].
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Renames a fully written and synced temporary file into place.
pub fn commit(tmp: &Path, path: &Path) -> Result<(), FormatError> {
    fs::rename(tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
