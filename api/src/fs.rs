//! Shared directories: the `fs` section, virtio-fs devices whose data path
//! is served by an external vhost-user daemon (`virtiofsd`) on a Unix
//! socket (flint's `PUT /fs/{tag}`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{ConfigError, VmConfig};

/// The longest mount tag virtio-fs carries (its config space's `tag[36]`).
pub const MAX_FS_TAG_LEN: usize = 36;
/// The most request queues one device may have (virtiofsd serves one; the
/// limit keeps a config from asking for hundreds of eventfds).
pub const MAX_FS_REQUEST_QUEUES: u16 = 8;
/// The largest queue accepted (virtio's split-ring limit).
pub const MAX_FS_QUEUE_SIZE: u16 = 32768;

/// One virtio-fs device: a directory the guest mounts with `mount -t
/// virtiofs TAG DIR`, served by the vhost-user daemon listening on `socket`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The mount tag the guest names the file system by (1..=36 bytes,
    /// unique); also the device's id.
    pub tag: String,
    /// The daemon's vhost-user socket (it must be listening at boot).
    pub socket: PathBuf,
    /// Request queues (besides the high-priority queue).
    #[serde(default = "default_request_queues")]
    pub num_request_queues: u16,
    /// Size of every queue (a power of two).
    #[serde(default = "default_queue_size")]
    pub queue_size: u16,
}

fn default_request_queues() -> u16 {
    1
}

fn default_queue_size() -> u16 {
    1024
}

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

impl FsConfig {
    /// Checks one entry alone: tag, socket path, queue counts and sizes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let field = format!("fs[{}]", self.tag);
        if self.tag.is_empty() || self.tag.len() > MAX_FS_TAG_LEN {
            return Err(invalid(
                "fs",
                format!("tag {:?} must be 1..={MAX_FS_TAG_LEN} bytes long", self.tag),
            ));
        }
        if self.tag.chars().any(|c| c.is_control() || c == '/') {
            return Err(invalid(
                &field,
                "tag must not contain control characters or '/'",
            ));
        }
        let len = self.socket.as_os_str().len();
        if len == 0 || len > crate::MAX_UNIX_PATH_LEN {
            return Err(invalid(
                &format!("{field}.socket"),
                format!(
                    "{:?}: a Unix socket path must be 1..={} bytes long",
                    self.socket,
                    crate::MAX_UNIX_PATH_LEN
                ),
            ));
        }
        if !(1..=MAX_FS_REQUEST_QUEUES).contains(&self.num_request_queues) {
            return Err(invalid(
                &format!("{field}.num_request_queues"),
                format!(
                    "{} must be 1..={MAX_FS_REQUEST_QUEUES}",
                    self.num_request_queues
                ),
            ));
        }
        if !self.queue_size.is_power_of_two() || self.queue_size > MAX_FS_QUEUE_SIZE {
            return Err(invalid(
                &format!("{field}.queue_size"),
                format!(
                    "{} must be a power of two ≤ {MAX_FS_QUEUE_SIZE}",
                    self.queue_size
                ),
            ));
        }
        Ok(())
    }
}

impl VmConfig {
    /// Checks the `fs` section: every entry, and tags unique.
    pub fn validate_fs(&self) -> Result<(), ConfigError> {
        let mut tags = std::collections::HashSet::new();
        for fs in &self.fs {
            fs.validate()?;
            if !tags.insert(fs.tag.as_str()) {
                return Err(invalid("fs", format!("tag {:?} used twice", fs.tag)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_fs(fs: serde_json::Value) -> Result<VmConfig, String> {
        let config: VmConfig = serde_json::from_value(serde_json::json!({
            "boot-source": {"kernel_image_path": "/k"},
            "fs": fs,
        }))
        .map_err(|e| e.to_string())?;
        config.validate_fs().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn the_documented_shape_parses_with_defaults() {
        let c = with_fs(serde_json::json!([
            {"tag": "vol0", "socket": "/run/v.sock", "num_request_queues": 1, "queue_size": 1024},
            {"tag": "x", "socket": "/run/w.sock"},
        ]))
        .unwrap();
        assert_eq!(c.fs[1].num_request_queues, 1);
        assert_eq!(c.fs[1].queue_size, 1024);
        // It round-trips (GET /vm/config, snapshots of the config).
        let back: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn bad_entries_are_refused_with_the_field() {
        let long = "t".repeat(37);
        for (fs, want) in [
            (serde_json::json!([{"tag": "", "socket": "/s"}]), "tag"),
            (serde_json::json!([{"tag": long, "socket": "/s"}]), "1..=36"),
            (
                serde_json::json!([{"tag": "a", "socket": "/s"}, {"tag": "a", "socket": "/t"}]),
                "used twice",
            ),
            (
                serde_json::json!([{"tag": "a", "socket": ""}]),
                "fs[a].socket",
            ),
            (
                serde_json::json!([{"tag": "a", "socket": "/s", "queue_size": 1000}]),
                "queue_size",
            ),
            (
                serde_json::json!([{"tag": "a", "socket": "/s", "num_request_queues": 0}]),
                "num_request_queues",
            ),
            (
                serde_json::json!([{"tag": "a", "socket": "/s", "cache": 1}]),
                "unknown field",
            ),
        ] {
            let err = with_fs(fs).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
        assert!(with_fs(serde_json::json!([{"tag": "a".repeat(36), "socket": "/s"}])).is_ok());
    }
}
