//! The snapshot state file: `magic | version | length | payload | crc64`.
//!
//! The payload is the bincode-encoded state. Every field before the checksum
//! is covered by it, and a file is only ever replaced atomically (written to a
//! temporary file, synced, renamed), so a crash mid-snapshot leaves the
//! previous snapshot intact and a damaged file is refused, never half-loaded.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Identifies a flint state file.
pub const MAGIC: [u8; 8] = *b"FLINTSNP";
/// The state layout version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// magic + version + payload length.
const HEADER_LEN: usize = 8 + 4 + 8;
/// The largest payload accepted (a hostile length must not make us allocate).
const MAX_PAYLOAD: u64 = 256 << 20;
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
    /// The payload could not be encoded or decoded.
    #[error("{path}: state encoding: {message}")]
    Encoding {
        /// The file.
        path: PathBuf,
        /// What bincode said.
        message: String,
    },
}

/// Encodes a state value (postcard; see the module docs).
pub fn to_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(value)
}

/// Decodes a state value; trailing bytes are an error.
pub fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    let (value, rest) = postcard::take_from_bytes(bytes)?;
    if !rest.is_empty() {
        return Err(postcard::Error::DeserializeUnexpectedEnd);
    }
    Ok(value)
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> FormatError + '_ {
    move |source| FormatError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Serializes `state` into the framed byte form.
pub fn encode<T: Serialize>(state: &T, path: &Path) -> Result<Vec<u8>, FormatError> {
    let payload = bincode::serialize(state).map_err(|e| FormatError::Encoding {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + 8);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    let crc = CRC64.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Checks the framing of `bytes` (read from `path`) and decodes the state.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], path: &Path) -> Result<T, FormatError> {
    let len = bytes.len() as u64;
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(FormatError::BadMagic(path.to_owned()));
    }
    if bytes.len() < HEADER_LEN {
        return Err(FormatError::Truncated {
            path: path.to_owned(),
            len,
            expected: HEADER_LEN as u64 + 8,
        });
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion {
            path: path.to_owned(),
            found: version,
        });
    }
    let mut payload_len = [0u8; 8];
    payload_len.copy_from_slice(&bytes[12..20]);
    let payload_len = u64::from_le_bytes(payload_len);
    let expected = (HEADER_LEN as u64)
        .saturating_add(payload_len)
        .saturating_add(8);
    if payload_len > MAX_PAYLOAD || len < expected {
        return Err(FormatError::Truncated {
            path: path.to_owned(),
            len,
            expected,
        });
    }
    let body_end = HEADER_LEN + payload_len as usize;
    let mut crc = [0u8; 8];
    crc.copy_from_slice(&bytes[body_end..body_end + 8]);
    if CRC64.checksum(&bytes[..body_end]) != u64::from_le_bytes(crc) || len != expected {
        return Err(FormatError::Checksum(path.to_owned()));
    }
    bincode::deserialize(&bytes[HEADER_LEN..body_end]).map_err(|e| FormatError::Encoding {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Writes `bytes` to `path` atomically: a temporary file next to it, synced,
/// then renamed over it (and the directory synced).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FormatError> {
    let tmp = temp_path(path);
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
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

/// Writes a state file atomically.
pub fn save<T: Serialize>(path: &Path, state: &T) -> Result<(), FormatError> {
    write_atomic(path, &encode(state, path)?)
}

/// Reads and verifies a state file.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, FormatError> {
    let mut file = File::open(path).map_err(io(path))?;
    let len = file.metadata().map_err(io(path))?.len();
    if len > MAX_PAYLOAD + HEADER_LEN as u64 + 8 {
        return Err(FormatError::Checksum(path.to_owned()));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.read_to_end(&mut bytes).map_err(io(path))?;
    decode(&bytes, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        name: String,
        values: Vec<u64>,
    }

    fn sample() -> Sample {
        Sample {
            name: "vm".into(),
            values: vec![1, 2, u64::MAX],
        }
    }

    #[test]
    fn round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        save(&path, &sample()).unwrap();
        assert_eq!(load::<Sample>(&path).unwrap(), sample());
        assert!(!temp_path(&path).exists());
    }

    #[test]
    fn damaged_files_are_refused_with_the_reason() {
        let p = Path::new("s");
        let good = encode(&sample(), p).unwrap();

        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert!(matches!(
            decode::<Sample>(&bad_magic, p),
            Err(FormatError::BadMagic(_))
        ));

        let mut future = good.clone();
        future[8..12].copy_from_slice(&99u32.to_le_bytes());
        let err = decode::<Sample>(&future, p).unwrap_err();
        assert!(
            matches!(err, FormatError::UnsupportedVersion { found: 99, .. }),
            "{err}"
        );

        for cut in [4, 15, good.len() - 1] {
            let err = decode::<Sample>(&good[..cut], p).unwrap_err();
            assert!(
                matches!(
                    err,
                    FormatError::Truncated { .. } | FormatError::BadMagic(_)
                ),
                "cut at {cut}: {err}"
            );
        }

        let mut flipped = good.clone();
        let mid = HEADER_LEN + 3;
        flipped[mid] ^= 0x40;
        assert!(matches!(
            decode::<Sample>(&flipped, p),
            Err(FormatError::Checksum(_))
        ));

        let mut huge = good.clone();
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode::<Sample>(&huge, p),
            Err(FormatError::Truncated { .. })
        ));

        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            decode::<Sample>(&trailing, p),
            Err(FormatError::Checksum(_))
        ));
    }

    #[test]
    fn a_valid_frame_with_the_wrong_payload_type_is_an_encoding_error() {
        let p = Path::new("s");
        let bytes = encode(&7u8, p).unwrap();
        assert!(matches!(
            decode::<Sample>(&bytes, p),
            Err(FormatError::Encoding { .. })
        ));
    }
}
