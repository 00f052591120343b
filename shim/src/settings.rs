//! The shim's node-wide settings: a JSON file (`$FLINT_SHIM_CONFIG`, else
//! `/etc/flint/shim.json`; optional) with environment overrides. containerd
//! starts shims with its own environment, so variables set for containerd
//! reach the shim too.
//!
//! ```json
//! {"kernel": "/var/lib/flint/vmlinux", "flint": "/usr/local/bin/flint",
//!  "default_memory_mib": 256, "default_vcpus": 1, "spare_drives": 4,
//!  "jail": true, "jail_uid_base": 10000000, "jail_uid_count": 1000000}
//! ```
//!
//! `jail` (default true; only root can jail, and `FLINT_NO_JAIL=1` turns it
//! off too): each pod's flint runs under the jailer with its own uid from
//! `jail_uid_base`.. (`jail_uid_count` of them), as `flint container` does.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::bundle::{DEFAULT_MEM_MIB, DEFAULT_VCPUS};
use crate::ShimError;

/// Where the settings file is looked for unless `$FLINT_SHIM_CONFIG` names one.
pub const DEFAULT_CONFIG: &str = "/etc/flint/shim.json";

/// The settings file's contents.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Guest kernel; default: `$FLINT_KERNEL`, `$FLINT_GUEST_DIR/vmlinux`
    /// (as `flint container`).
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// The flint binary; default: `$FLINT_BIN`, next to the shim, on PATH.
    #[serde(default)]
    pub flint: Option<PathBuf>,
    /// VM memory when the pod says nothing (MiB).
    #[serde(default)]
    pub default_memory_mib: Option<u64>,
    /// vCPUs when the pod says nothing.
    #[serde(default)]
    pub default_vcpus: Option<u64>,
    /// Spare drives per VM, i.e. how many more containers a pod may add.
    #[serde(default)]
    pub spare_drives: Option<usize>,
    /// Run each pod's flint jailed (default: true; as root only).
    #[serde(default)]
    pub jail: Option<bool>,
    /// First uid (= gid) given to pod jails (default 10000000).
    #[serde(default)]
    pub jail_uid_base: Option<u32>,
    /// How many uids pod jails may use (default 1000000).
    #[serde(default)]
    pub jail_uid_count: Option<u32>,
}

/// Settings after defaults and overrides.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub kernel: PathBuf,
    pub flint: PathBuf,
    pub default_memory_mib: u64,
    pub default_vcpus: u64,
    pub spare_drives: usize,
    /// The uids to jail pods with (`base`, `count`), or `None`: unjailed.
    pub jail: Option<(u32, u32)>,
}

impl Settings {
    /// Reads the settings file, if there is one.
    pub fn load(env: &impl Fn(&str) -> Option<String>) -> Result<Settings, ShimError> {
        let path = env("FLINT_SHIM_CONFIG").unwrap_or_else(|| DEFAULT_CONFIG.into());
        match std::fs::read(&path) {
            Ok(text) => {
                serde_json::from_slice(&text).map_err(|e| ShimError::Usage(format!("{path}: {e}")))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
            Err(e) => Err(ShimError::Io {
                what: format!("reading {path}"),
                source: e,
            }),
        }
    }

    /// Fills in defaults; finds the kernel and flint.
    pub fn resolve(&self, env: &impl Fn(&str) -> Option<String>) -> Result<Resolved, ShimError> {
        let kernel = container::find_kernel(self.kernel.as_deref(), env)
            .map_err(|e| ShimError::Usage(e.to_string()))?;
        let number = |key: &str| env(key).and_then(|v| v.parse::<u64>().ok());
        Ok(Resolved {
            kernel,
            flint: find_flint(self.flint.as_deref(), env)?,
            default_memory_mib: number("FLINT_SHIM_MEM_MIB")
                .or(self.default_memory_mib)
                .unwrap_or(DEFAULT_MEM_MIB),
            default_vcpus: number("FLINT_SHIM_VCPUS")
                .or(self.default_vcpus)
                .unwrap_or(DEFAULT_VCPUS),
            spare_drives: self.spare_drives.unwrap_or(4).min(20),
            jail: self.jail.unwrap_or(true).then(|| {
                (
                    self.jail_uid_base.unwrap_or(container::jail::UID_BASE),
                    self.jail_uid_count
                        .unwrap_or(container::jail::UID_COUNT)
                        .max(1),
                )
            }),
        })
    }
}

/// The flint binary: `explicit`, `$FLINT_BIN`, next to this executable,
/// else on PATH.
fn find_flint(
    explicit: Option<&Path>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<PathBuf, ShimError> {
    if let Some(p) = explicit
        .map(Path::to_owned)
        .or_else(|| env("FLINT_BIN").map(PathBuf::from))
    {
        return Ok(p);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("flint")))
        .filter(|p| p.is_file());
    let on_path = || {
        let path = env("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join("flint"))
            .find(|p| p.is_file())
    };
    beside.or_else(on_path).ok_or_else(|| {
        ShimError::Usage(
            "flint not found: install it next to the shim or on PATH, or set FLINT_BIN".into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"k").unwrap();
        let settings = Settings {
            kernel: Some(kernel.clone()),
            flint: Some("/opt/flint".into()),
            default_memory_mib: Some(128),
            ..Settings::default()
        };
        let env = |k: &str| (k == "FLINT_SHIM_VCPUS").then(|| "2".to_string());
        let r = settings.resolve(&env).unwrap();
        assert_eq!(r.kernel, kernel);
        assert_eq!(r.flint, PathBuf::from("/opt/flint"));
        assert_eq!((r.default_memory_mib, r.default_vcpus), (128, 2));
        assert_eq!(r.spare_drives, 4);
        assert_eq!(r.jail, Some((10_000_000, 1_000_000)), "jailed by default");
        let unjailed = Settings {
            jail: Some(false),
            ..settings.clone()
        };
        assert_eq!(unjailed.resolve(&env).unwrap().jail, None);
        let range = Settings {
            jail_uid_base: Some(20_000),
            jail_uid_count: Some(10),
            ..settings
        };
        assert_eq!(range.resolve(&env).unwrap().jail, Some((20_000, 10)));
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        assert!(serde_json::from_str::<Settings>(r#"{"kernal": "/x"}"#).is_err());
    }
}
