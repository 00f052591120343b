//! Ethernet, ARP, IPv4 and TCP wire formats: strict parsers for guest frames and
//! builders for MMDS's answers (public so tests and fuzzers can build guest frames too).

use std::net::Ipv4Addr;

/// Ethernet header length (no VLAN tag: tagged frames are not MMDS's).
pub const ETH_HLEN: usize = 14;
/// IPv4 header length without options (MMDS drops packets with options).
pub const IPV4_HLEN: usize = 20;
/// TCP header length without options.
pub const TCP_HLEN: usize = 20;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// Length of an Ethernet ARP frame for IPv4.
pub const ARP_FRAME_LEN: usize = ETH_HLEN + 28;
const PROTO_TCP: u8 = 6;

/// TCP flag bits.
pub mod flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field significant.
    pub const ACK: u8 = 0x10;
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// One's-complement sum of `data` (odd byte padded) added to `acc`, unfolded.
fn sum(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

/// The Internet checksum (RFC 1071) of `data` over a starting partial sum.
pub fn checksum(data: &[u8], acc: u32) -> u16 {
    // Fold until no carry; a frame is < 64 KiB so `acc` cannot overflow u32.
    let mut s = sum(data, acc);
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, tcp_len: usize) -> u32 {
    let s = sum(&src.octets(), 0);
    let s = sum(&dst.octets(), s);
    s + u32::from(PROTO_TCP) + tcp_len as u32
}

/// EtherType of a frame, if it has a full Ethernet header.
pub fn ethertype(frame: &[u8]) -> Option<u16> {
    (frame.len() >= ETH_HLEN).then(|| be16(frame, 12))
}

/// Source MAC of a frame with a full Ethernet header.
pub fn src_mac(frame: &[u8]) -> Option<[u8; 6]> {
    frame.get(6..12)?.try_into().ok()
}

/// An ARP request/reply for IPv4 over Ethernet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arp {
    /// 1 request, 2 reply.
    pub oper: u16,
    /// Sender hardware address.
    pub sha: [u8; 6],
    /// Sender protocol address.
    pub spa: Ipv4Addr,
    /// Target protocol address.
    pub tpa: Ipv4Addr,
}

/// Parses the ARP payload of an Ethernet frame (after the 14-byte header).
pub fn parse_arp(p: &[u8]) -> Option<Arp> {
    if p.len() < 28 || be16(p, 0) != 1 || be16(p, 2) != ETHERTYPE_IPV4 || p[4] != 6 || p[5] != 4 {
        return None;
    }
    Some(Arp {
        oper: be16(p, 6),
        sha: p[8..14].try_into().ok()?,
        spa: ip_at(p, 14),
        tpa: ip_at(p, 24),
    })
}

/// Writes an Ethernet ARP frame; returns its length, or `None` if `buf` is too small.
pub fn write_arp(
    buf: &mut [u8],
    from: ([u8; 6], Ipv4Addr),
    to: ([u8; 6], Ipv4Addr),
    oper: u16,
) -> Option<usize> {
    let f = buf.get_mut(..ARP_FRAME_LEN)?;
    let dst = if oper == 1 { [0xff; 6] } else { to.0 };
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&from.0);
    f[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, oper as u8]);
    f[22..28].copy_from_slice(&from.0);
    f[28..32].copy_from_slice(&from.1.octets());
    f[32..38].copy_from_slice(if oper == 1 { &[0; 6] } else { &to.0 });
    f[38..42].copy_from_slice(&to.1.octets());
    Some(ARP_FRAME_LEN)
}

/// Destination address of an IPv4 frame, if the header's fixed part is present.
pub fn ipv4_dst(frame: &[u8]) -> Option<Ipv4Addr> {
    (frame.len() >= ETH_HLEN + IPV4_HLEN).then(|| ip_at(frame, ETH_HLEN + 16))
}

/// A TCP segment in host terms (parsed from the guest, or to be written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    /// Source address.
    pub src_ip: Ipv4Addr,
    /// Destination address.
    pub dst_ip: Ipv4Addr,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Flag bits ([`flags`]).
    pub flags: u8,
    /// Receive window.
    pub window: u16,
    /// MSS option (parsed on SYNs; written when `Some`).
    pub mss: Option<u16>,
    /// Data.
    pub payload: &'a [u8],
}

/// Why a guest IPv4 packet is dropped.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its headers, or its length fields disagree with the frame.
    #[error("truncated or inconsistent lengths")]
    Length,
    /// Not version 4, has IP options, or is a fragment.
    #[error("unsupported IPv4 header")]
    Unsupported,
    /// Not TCP.
    #[error("not TCP")]
    NotTcp,
    /// IPv4 header or TCP checksum wrong.
    #[error("bad checksum")]
    Checksum,
}

/// Parses and verifies an IPv4 packet (Ethernet payload, trailing padding allowed)
/// carrying a TCP segment.
pub fn parse_ipv4_tcp(p: &[u8]) -> Result<Segment<'_>, WireError> {
    parse_ipv4_tcp_with(p, true)
}

/// [`parse_ipv4_tcp`], skipping the TCP checksum when `verify_tcp` is false: a guest
/// using virtio-net checksum offload (`VIRTIO_NET_HDR_F_NEEDS_CSUM`) leaves only the
/// pseudo-header sum there. The IPv4 header checksum is always verified (never offloaded).
pub fn parse_ipv4_tcp_with(p: &[u8], verify_tcp: bool) -> Result<Segment<'_>, WireError> {
    if p.len() < IPV4_HLEN {
        return Err(WireError::Length);
    }
    if p[0] != 0x45 {
        return Err(WireError::Unsupported); // version 4 with IHL 5 only: no options
    }
    let total = usize::from(be16(p, 2));
    if total < IPV4_HLEN + TCP_HLEN || total > p.len() {
        return Err(WireError::Length);
    }
    if be16(p, 6) & 0x3fff != 0 {
        return Err(WireError::Unsupported); // MF set or non-zero offset: a fragment
    }
    if p[9] != PROTO_TCP {
        return Err(WireError::NotTcp);
    }
    if checksum(&p[..IPV4_HLEN], 0) != 0 {
        return Err(WireError::Checksum);
    }
    let (src, dst) = (ip_at(p, 12), ip_at(p, 16));
    let t = &p[IPV4_HLEN..total];
    let off = usize::from(t[12] >> 4) * 4;
    if off < TCP_HLEN || off > t.len() {
        return Err(WireError::Length);
    }
    if verify_tcp && checksum(t, pseudo_sum(src, dst, t.len())) != 0 {
        return Err(WireError::Checksum);
    }
    Ok(Segment {
        src_ip: src,
        dst_ip: dst,
        src_port: be16(t, 0),
        dst_port: be16(t, 2),
        seq: be32(t, 4),
        ack: be32(t, 8),
        flags: t[13] & 0x3f,
        window: be16(t, 14),
        mss: parse_mss(&t[TCP_HLEN..off]),
        payload: &t[off..],
    })
}

fn parse_mss(mut opts: &[u8]) -> Option<u16> {
    while let [kind, rest @ ..] = opts {
        match kind {
            0 => return None,
            1 => opts = rest,
            _ => {
                let len = usize::from(*rest.first()?);
                if len < 2 || len > opts.len() {
                    return None;
                }
                if *kind == 2 && len == 4 {
                    return Some(be16(opts, 2));
                }
                opts = &opts[len..];
            }
        }
    }
    None
}

/// Writes `seg` as an Ethernet/IPv4/TCP frame with correct checksums; returns its
/// length, or `None` if `buf` is too small.
pub fn write_tcp(
    buf: &mut [u8],
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    ip_id: u16,
    seg: &Segment,
) -> Option<usize> {
    let opt_len = if seg.mss.is_some() { 4 } else { 0 };
    let tcp_len = TCP_HLEN + opt_len + seg.payload.len();
    let ip_len = IPV4_HLEN + tcp_len;
    let f = buf.get_mut(..ETH_HLEN + ip_len)?;
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip = &mut f[ETH_HLEN..];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&u16::try_from(ip_len).ok()?.to_be_bytes());
    ip[4..6].copy_from_slice(&ip_id.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    ip[8] = 64;
    ip[9] = PROTO_TCP;
    ip[10..12].fill(0);
    ip[12..16].copy_from_slice(&seg.src_ip.octets());
    ip[16..20].copy_from_slice(&seg.dst_ip.octets());
    let c = checksum(&ip[..IPV4_HLEN], 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let t = &mut ip[IPV4_HLEN..];
    t[0..2].copy_from_slice(&seg.src_port.to_be_bytes());
    t[2..4].copy_from_slice(&seg.dst_port.to_be_bytes());
    t[4..8].copy_from_slice(&seg.seq.to_be_bytes());
    t[8..12].copy_from_slice(&seg.ack.to_be_bytes());
    t[12] = (((TCP_HLEN + opt_len) / 4) as u8) << 4;
    t[13] = seg.flags;
    t[14..16].copy_from_slice(&seg.window.to_be_bytes());
    t[16..20].fill(0);
    if let Some(mss) = seg.mss {
        t[20..22].copy_from_slice(&[2, 4]);
        t[22..24].copy_from_slice(&mss.to_be_bytes());
    }
    t[TCP_HLEN + opt_len..].copy_from_slice(seg.payload);
    let c = checksum(t, pseudo_sum(seg.src_ip, seg.dst_ip, tcp_len));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    Some(ETH_HLEN + ip_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_roundtrip_and_checksums() {
        let seg = Segment {
            src_ip: Ipv4Addr::new(10, 0, 0, 2),
            dst_ip: Ipv4Addr::new(169, 254, 169, 254),
            src_port: 40000,
            dst_port: 80,
            seq: 7,
            ack: 9,
            flags: flags::SYN,
            window: 1000,
            mss: Some(1460),
            payload: b"odd",
        };
        let mut buf = [0u8; 128];
        let n = write_tcp(&mut buf, [1; 6], [2; 6], 1, &seg).unwrap();
        let got = parse_ipv4_tcp(&buf[ETH_HLEN..n + 10]).unwrap(); // padding is ignored
        assert_eq!(got, seg);
        for i in ETH_HLEN..n {
            let mut bad = buf;
            bad[i] ^= 0x01;
            assert!(
                parse_ipv4_tcp(&bad[ETH_HLEN..n]).is_err(),
                "flipped byte {i} accepted"
            );
        }
        assert!(write_tcp(&mut buf[..40], [1; 6], [2; 6], 1, &seg).is_none());
    }
}
