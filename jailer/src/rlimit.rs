//! Resource limits applied to the jailed process.

use crate::JailError;

/// Firecracker's default open-file limit, kept so a jailed flint behaves the same.
pub(crate) const DEFAULT_NO_FILE: u64 = 2048;

/// The resources `--resource-limit` can set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resource {
    /// `no-file`: RLIMIT_NOFILE.
    NoFile,
    /// `fsize`: RLIMIT_FSIZE.
    Fsize,
}

/// One limit; soft and hard are both set to `value` so the jailed process
/// cannot raise it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResourceLimit {
    pub resource: Resource,
    pub value: u64,
}

/// Applies the limits; must run before privileges are dropped, since raising
/// a hard limit needs CAP_SYS_RESOURCE.
pub(crate) fn apply(limits: &[ResourceLimit]) -> Result<(), JailError> {
    for limit in limits {
        let rlim = libc::rlimit {
            rlim_cur: limit.value,
            rlim_max: limit.value,
        };
        let (name, rc) = match limit.resource {
            // SAFETY: `rlim` is a valid, initialised rlimit that outlives the call.
            Resource::NoFile => ("no-file", unsafe {
                libc::setrlimit(libc::RLIMIT_NOFILE, &rlim)
            }),
            // SAFETY: as above.
            Resource::Fsize => ("fsize", unsafe {
                libc::setrlimit(libc::RLIMIT_FSIZE, &rlim)
            }),
        };
        if rc != 0 {
            return Err(JailError::last_os(format!(
                "setrlimit({name}={})",
                limit.value
            )));
        }
    }
    Ok(())
}
