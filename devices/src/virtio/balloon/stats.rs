//! The guest's memory statistics (virtio 1.x, 5.5.6.3): a buffer of
//! packed `(le16 tag, le64 value)` entries, and the shape the API reports
//! them in (Firecracker's `GET /balloon/statistics`).

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::virtio::GuestMemory;

/// Bytes of one `struct virtio_balloon_stat` (packed).
pub const STAT_LEN: usize = 10;
/// Most bytes of a statistics buffer looked at (the spec defines 16 tags;
/// room for plenty more). The rest of a longer buffer is ignored.
pub const MAX_STATS_BYTES: usize = 64 * STAT_LEN;

/// The balloon's figures and the guest's latest statistics. Sizes are in
/// bytes, counts in events, as the guest reports them; a tag the guest did
/// not report is absent (and left out of the JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalloonStats {
    /// Pages the host asked the balloon to hold (`num_pages`).
    pub target_pages: u32,
    /// Pages the guest says the balloon holds (`actual`).
    pub actual_pages: u32,
    /// `target_pages` in MiB.
    pub target_mib: u32,
    /// `actual_pages` in MiB.
    pub actual_mib: u32,
    /// Memory swapped in (bytes), tag 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    /// Memory swapped out (bytes), tag 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    /// Major page faults, tag 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    /// Minor page faults, tag 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    /// Unused memory (bytes), tag 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    /// Total memory (bytes), tag 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    /// Memory available for new work without swapping (bytes), tag 6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    /// Disk caches (bytes), tag 7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    /// Successful hugetlb page allocations, tag 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    /// Failed hugetlb page allocations, tag 9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
    /// OOM kills, tag 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<u64>,
    /// Allocation stalls, tag 11.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc_stall: Option<u64>,
    /// Pages scanned by kswapd, tag 12.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_scan: Option<u64>,
    /// Pages scanned by direct reclaim, tag 13.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_scan: Option<u64>,
    /// Pages reclaimed by kswapd, tag 14.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_reclaim: Option<u64>,
    /// Pages reclaimed by direct reclaim, tag 15.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_reclaim: Option<u64>,
}

impl BalloonStats {
    /// Records one entry; `false` for a tag this device does not know
    /// (ignored: newer guests may report more).
    pub fn set(&mut self, tag: u16, value: u64) -> bool {
        let slot = match tag {
            0 => &mut self.swap_in,
            1 => &mut self.swap_out,
            2 => &mut self.major_faults,
            3 => &mut self.minor_faults,
            4 => &mut self.free_memory,
            5 => &mut self.total_memory,
            6 => &mut self.available_memory,
            7 => &mut self.disk_caches,
            8 => &mut self.hugetlb_allocations,
            9 => &mut self.hugetlb_failures,
            10 => &mut self.oom_kill,
            11 => &mut self.alloc_stall,
            12 => &mut self.async_scan,
            13 => &mut self.direct_scan,
            14 => &mut self.async_reclaim,
            15 => &mut self.direct_reclaim,
            _ => return false,
        };
        *slot = Some(value);
        true
    }
}

/// What parsing a statistics buffer found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedStats {
    /// The guest's figures (only the tags it sent).
    pub stats: BalloonStats,
    /// Entries with a tag this device does not know.
    pub unknown_tags: usize,
    /// Bytes ignored: a trailing partial entry, anything past
    /// [`MAX_STATS_BYTES`], or buffers that are not device-readable or not
    /// inside guest memory.
    pub ignored_bytes: u64,
}

/// Parses the statistics in `bufs` (each `(guest address, length,
/// device-writable)`), read in chain order as one byte stream. Nothing in
/// the buffer is trusted: lengths are capped, bad buffers skipped.
pub fn parse(mem: &GuestMemory, bufs: impl IntoIterator<Item = (u64, u32, bool)>) -> ParsedStats {
    let mut raw = [0u8; MAX_STATS_BYTES];
    let mut have = 0usize;
    let mut out = ParsedStats::default();
    for (addr, len, writable) in bufs {
        let room = MAX_STATS_BYTES - have;
        let take = (len as usize).min(room);
        out.ignored_bytes += u64::from(len) - take as u64;
        if writable || take == 0 {
            out.ignored_bytes += take as u64;
            continue;
        }
        // The whole buffer must be guest memory, even the part not read.
        let dst = &mut raw[have..have + take];
        if !mem.check_range(GuestAddress(addr), len as usize)
            || mem.read_slice(dst, GuestAddress(addr)).is_err()
        {
            out.ignored_bytes += take as u64;
            continue;
        }
        have += take;
    }
    let entries = raw[..have].chunks_exact(STAT_LEN);
    out.ignored_bytes += entries.remainder().len() as u64;
    for e in entries {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let mut v = [0u8; 8];
        v.copy_from_slice(&e[2..]);
        if !out.stats.set(tag, u64::from_le_bytes(v)) {
            out.unknown_tags += 1;
        }
    }
    out
}
