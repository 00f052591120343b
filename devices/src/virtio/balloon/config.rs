//! Features, the config space (virtio 1.x, 5.5.4) and which queue index
//! serves which purpose for a given feature set.

use crate::virtio::VIRTIO_F_VERSION_1;

/// The guest must tell the host before using deflated pages (not offered).
pub const VIRTIO_BALLOON_F_MUST_TELL_HOST: u32 = 0;
/// There is a statistics queue.
pub const VIRTIO_BALLOON_F_STATS_VQ: u32 = 1;
/// The guest deflates the balloon when it runs out of memory.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;
/// There is a free-page-hint queue and `free_page_hint_cmd_id`.
pub const VIRTIO_BALLOON_F_FREE_PAGE_HINT: u32 = 3;
/// `poison_val` is valid (not offered).
pub const VIRTIO_BALLOON_F_PAGE_POISON: u32 = 4;
/// There is a free-page-reporting queue.
pub const VIRTIO_BALLOON_F_REPORTING: u32 = 5;

/// Balloon PFNs count pages of this many bytes, whatever the guest's page size.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PFN_SHIFT: u32 = 12;
/// Balloon pages per MiB.
pub const PAGES_PER_MIB: u32 = (1 << 20) / PAGE_SIZE as u32;

/// `free_page_hint_cmd_id`: the host asks the guest to stop hinting.
pub const VIRTIO_BALLOON_CMD_ID_STOP: u32 = 0;
/// `free_page_hint_cmd_id`: the host is done with the hinted pages; the
/// guest may use them again.
pub const VIRTIO_BALLOON_CMD_ID_DONE: u32 = 1;

/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Length of the config space.
pub const CONFIG_LEN: usize = 16;

const fn bit(b: u32) -> u64 {
    1 << b
}

/// Whether `features` has feature bit `b`.
pub(super) fn has(features: u64, b: u32) -> bool {
    features & bit(b) != 0
}

/// The features a device with these options offers.
pub(super) fn avail_features(
    deflate_on_oom: bool,
    stats: bool,
    hinting: bool,
    reporting: bool,
) -> u64 {
    let mut f = VIRTIO_F_VERSION_1;
    for (on, b) in [
        (deflate_on_oom, VIRTIO_BALLOON_F_DEFLATE_ON_OOM),
        (stats, VIRTIO_BALLOON_F_STATS_VQ),
        (hinting, VIRTIO_BALLOON_F_FREE_PAGE_HINT),
        (reporting, VIRTIO_BALLOON_F_REPORTING),
    ] {
        if on {
            f |= bit(b);
        }
    }
    f
}

/// What a queue is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// PFNs the guest gives up.
    Inflate,
    /// PFNs the guest takes back.
    Deflate,
    /// The guest's memory statistics buffer.
    Stats,
    /// Free-page hints (and the guest's command ids).
    FreePageHint,
    /// Free-page reports (guest-physical ranges).
    Reporting,
}

/// Queue indices for a feature set: inflate, deflate, then stats, free
/// page hint, reporting, each present only with its feature and numbered
/// without gaps (how Linux's `virtio_balloon` asks for its queues: a queue
/// whose feature is off takes no index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLayout {
    /// Index of the statistics queue.
    pub stats: Option<usize>,
    /// Index of the free-page-hint queue.
    pub hint: Option<usize>,
    /// Index of the free-page-reporting queue.
    pub reporting: Option<usize>,
    /// How many queues there are.
    pub count: usize,
}

impl QueueLayout {
    /// The layout for `features` (offered or negotiated).
    pub fn new(features: u64) -> Self {
        let mut count = 2;
        let mut next = |on: bool| {
            on.then(|| {
                count += 1;
                count - 1
            })
        };
        let stats = next(has(features, VIRTIO_BALLOON_F_STATS_VQ));
        let hint = next(has(features, VIRTIO_BALLOON_F_FREE_PAGE_HINT));
        let reporting = next(has(features, VIRTIO_BALLOON_F_REPORTING));
        Self {
            stats,
            hint,
            reporting,
            count,
        }
    }

    /// What queue `index` is for.
    pub fn kind(&self, index: usize) -> Option<QueueKind> {
        match index {
            0 => Some(QueueKind::Inflate),
            1 => Some(QueueKind::Deflate),
            i if Some(i) == self.stats => Some(QueueKind::Stats),
            i if Some(i) == self.hint => Some(QueueKind::FreePageHint),
            i if Some(i) == self.reporting => Some(QueueKind::Reporting),
            _ => None,
        }
    }
}

/// `struct virtio_balloon_config`, little-endian.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ConfigSpace {
    /// Pages the host wants in the balloon.
    pub num_pages: u32,
    /// Pages the guest has in the balloon (written by the guest).
    pub actual: u32,
    /// The host's current free-page-hinting command.
    pub free_page_hint_cmd_id: u32,
    /// Value freed pages are filled with (PAGE_POISON; always 0 here).
    pub poison_val: u32,
}

impl ConfigSpace {
    /// The bytes the guest reads.
    pub fn bytes(&self) -> [u8; CONFIG_LEN] {
        let mut b = [0u8; CONFIG_LEN];
        for (i, v) in [
            self.num_pages,
            self.actual,
            self.free_page_hint_cmd_id,
            self.poison_val,
        ]
        .into_iter()
        .enumerate()
        {
            b[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Applies a guest write of `data` at `offset`. Only `actual` is
    /// writable; returns `false` if the write touched anything else (those
    /// bytes are ignored).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> bool {
        let mut b = self.bytes();
        let Some(end) = offset.checked_add(data.len() as u64) else {
            return false;
        };
        let mut clean = end <= CONFIG_LEN as u64;
        for (i, &byte) in data.iter().enumerate() {
            let at = offset as usize + i; // offset < end <= CONFIG_LEN or skipped
            if (4..8).contains(&at) && at < CONFIG_LEN {
                b[at] = byte;
            } else {
                clean = false;
            }
        }
        if offset < CONFIG_LEN as u64 {
            self.actual = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        }
        clean
    }
}
