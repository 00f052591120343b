//! Entry points for cargo-fuzz targets: each takes raw bytes and must never panic.
//!
//! ```ignore
//! fuzz_target!(|data: &[u8]| mmds::fuzz::frames(data));
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{MmdsVersion, DEFAULT_IPV4_ADDR, DEFAULT_MAC_ADDR};
use crate::http::{parse_request, Parsed};
use crate::stack::MmdsNetStack;
use crate::store::Mmds;
use crate::wire::{self, ETH_HLEN, IPV4_HLEN};

/// Feeds a sequence of guest frames to a stack. `data` is a list of records
/// `[len_hi, len_lo, ctl, frame...]`; bit 0 of `ctl` recomputes the IPv4 and TCP
/// checksums (so the fuzzer reaches the TCP state machine), bit 1 advances the clock
/// by 1 s and runs the timers. After each frame every pending output frame is drained.
pub fn frames(data: &[u8]) {
    let mut mmds = Mmds::default();
    let _ = mmds.put(serde_json::json!({"latest": {"meta-data": {"a": "b"}}}));
    let mut stack = MmdsNetStack::new(
        DEFAULT_MAC_ADDR,
        DEFAULT_IPV4_ADDR,
        Arc::new(Mutex::new(mmds)),
    );
    let mut now = Instant::now();
    let mut out = [0u8; 1514];
    let mut rest = data;
    while let [hi, lo, ctl, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let mut frame = tail[..len].to_vec();
        rest = &tail[len..];
        if ctl & 1 != 0 {
            fix_checksums(&mut frame);
        }
        if ctl & 2 != 0 {
            now += Duration::from_secs(1);
            stack.tick(now);
        }
        stack.handle_frame_at(&frame, now);
        let mut drained = 0;
        while stack.next_frame_at(&mut out, now).is_some() {
            drained += 1;
            assert!(drained < 10_000, "next_frame never ran dry");
        }
    }
}

/// Rewrites the IPv4 header and TCP checksums of an Ethernet/IPv4/TCP frame in place,
/// when its lengths allow (otherwise leaves it alone).
pub fn fix_checksums(frame: &mut [u8]) {
    let Some(ip) = frame.get_mut(ETH_HLEN..) else {
        return;
    };
    if ip.len() < IPV4_HLEN {
        return;
    }
    ip[10..12].fill(0);
    let c = wire::checksum(&ip[..IPV4_HLEN], 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if total < IPV4_HLEN + 18 || total > ip.len() {
        return;
    }
    let tcp_len = total - IPV4_HLEN;
    let mut pseudo = Vec::with_capacity(12 + tcp_len);
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(tcp_len as u16).to_be_bytes());
    ip[IPV4_HLEN + 16..IPV4_HLEN + 18].fill(0);
    pseudo.extend_from_slice(&ip[IPV4_HLEN..total]);
    let c = wire::checksum(&pseudo, 0);
    ip[IPV4_HLEN + 16..IPV4_HLEN + 18].copy_from_slice(&c.to_be_bytes());
}

/// Parses one HTTP request and answers it against a V2 store (and a V1 one).
pub fn http_request(data: &[u8]) {
    let mut mmds = Mmds::default();
    let _ = mmds.put(serde_json::json!({"latest": {"meta-data": {"a": "b", "n": 1}}}));
    let now = Instant::now();
    if let Parsed::Complete(req, used) = parse_request(data) {
        assert!(used <= data.len());
        let _ =
            crate::handler::respond(&mut mmds, &req, now).serialize(req.version, req.keep_alive);
        mmds.set_version(MmdsVersion::V2);
        let _ = crate::handler::respond(&mut mmds, &req, now);
    }
}

/// `data` is `target NUL patch`, both JSON: merges them directly and through a
/// small-limit store, whose size limit must hold afterwards.
pub fn json_patch(data: &[u8]) {
    let mut parts = data.splitn(2, |&b| b == 0);
    let (Some(t), Some(p)) = (parts.next(), parts.next()) else {
        return;
    };
    let (Ok(target), Ok(patch)) = (
        serde_json::from_slice::<serde_json::Value>(t),
        serde_json::from_slice::<serde_json::Value>(p),
    ) else {
        return;
    };
    let mut direct = target.clone();
    crate::store::merge_patch(&mut direct, &patch);
    let mut m = Mmds::new(1024);
    if m.put(target).is_ok() && m.patch(&patch).is_ok() {
        assert_eq!(m.get(), &direct);
    }
    let len = serde_json::to_vec(m.get()).map(|v| v.len()).unwrap_or(0);
    assert!(len <= 1024 || m.get().is_null());
}
