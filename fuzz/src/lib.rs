//! Shared harnesses for flint's fuzz targets.
//!
//! [`virtio`] drives a real device model behind the real virtio-mmio
//! transport the way a hostile guest driver can: the fuzzer writes guest
//! memory (descriptor tables, rings, buffers), the register file, queue
//! notifications and, for network cards, frames arriving from the host.
//! Queue work runs through the device's own event-loop handler on a real
//! `EventManager`, as in the VMM.

pub mod virtio;

use std::path::PathBuf;

/// Where a target's scratch files go: `/dev/shm` (tmpfs) when it is a
/// writable directory, else the system's temporary directory.
///
/// Why: on this project's hosts `/tmp` is ext4, and creating then removing
/// a directory per input there (inode allocation, journal, block discard on
/// removal) cost more than the code under test; the code under test runs
/// the same on tmpfs.
pub fn scratch_base() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    let writable = tempfile::tempdir_in(&shm).is_ok();
    if writable {
        shm
    } else {
        std::env::temp_dir()
    }
}

/// Points `TMPDIR` at [`scratch_base`], for code under test that makes its
/// own temporary directories (`tempfile::tempdir()`). Call it from the
/// target's `init` block, before the first input (and before threads of
/// ours exist: setting the environment races with readers).
pub fn use_tmpfs_for_tmpdir() {
    std::env::set_var("TMPDIR", scratch_base());
}
