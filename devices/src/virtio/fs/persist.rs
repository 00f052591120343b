//! Snapshots of a virtio-fs device are refused: the file system's state
//! (open files, FUSE inodes, the daemon's ring positions) lives in the
//! daemon, which flint cannot save.

use serde::{Deserialize, Serialize};

use super::{Fs, FsArgs, FsError};
use crate::persist::Persist;

/// Never produced; the type a snapshot section of this device would have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsSnapshotState {
    /// The mount tag.
    pub tag: String,
}

impl Persist<'_> for Fs {
    type State = FsSnapshotState;
    type ConstructorArgs = FsArgs;
    type Error = FsError;

    fn save(&self) -> Result<FsSnapshotState, FsError> {
        Err(FsError::Snapshot(self.tag.clone()))
    }

    fn restore(args: FsArgs, _state: &FsSnapshotState) -> Result<Self, FsError> {
        Err(FsError::Snapshot(args.tag))
    }
}
