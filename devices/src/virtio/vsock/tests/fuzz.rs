//! Randomised hostile input (a cheap in-tree stand-in for a fuzz target):
//! mutated headers and chains never panic the parser or stop the device.

use super::*;
use crate::virtio::vsock::packet::parse_packet;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A plausible header with a few random fields replaced.
fn mutated_header(rng: &mut Rng) -> Header {
    let ops = [0u16, 1, 2, 3, 4, 5, 6, 7, 8, 0xffff];
    let mut h = pkt(Op::Rw, 1 + rng.below(3) as u32, 5 + rng.below(2) as u32, 0);
    h.op = ops[rng.below(ops.len() as u64) as usize];
    h.len = match rng.below(4) {
        0 => rng.next() as u32,
        _ => rng.below(64) as u32,
    };
    h.flags = rng.below(8) as u32;
    h.buf_alloc = rng.next() as u32;
    h.fwd_cnt = rng.next() as u32;
    if rng.below(8) == 0 {
        h.src_cid = rng.below(5);
    }
    if rng.below(8) == 0 {
        h.dst_cid = rng.below(5);
    }
    if rng.below(8) == 0 {
        h.type_ = rng.below(4) as u16;
    }
    h
}

#[test]
fn random_bytes_never_panic_the_parser() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for _ in 0..20_000 {
        let mut bytes = mutated_header(&mut rng).to_bytes().to_vec();
        bytes.extend((0..rng.below(80)).map(|_| rng.next() as u8));
        for _ in 0..rng.below(3) {
            let i = rng.below(bytes.len() as u64) as usize;
            bytes[i] = rng.next() as u8;
        }
        bytes.truncate(rng.below(bytes.len() as u64 + 1) as usize);
        if let Ok((hdr, _, payload)) = parse_packet(&bytes, CID) {
            assert_eq!(payload.len(), hdr.len as usize);
        }
    }
}

#[test]
fn random_chains_never_break_the_device() {
    let mut t = T::new();
    let _service = std::os::unix::net::UnixListener::bind(format!("{}_5", t.uds().display()));
    let mut rng = Rng(0xfeed_beef_cafe_f00d);
    for _ in 0..300 {
        let hdr = mutated_header(&mut rng);
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend((0..rng.below(100)).map(|_| rng.next() as u8));
        let base = t.g.alloc(bytes.len() as u64);
        t.g.mem.write_slice(&bytes, GuestAddress(base)).unwrap();
        // Cut the packet into 1–4 descriptors, some of them hostile.
        let mut descs = Vec::new();
        let mut at = 0u64;
        let parts = 1 + rng.below(4);
        for i in 0..parts {
            let left = bytes.len() as u64 - at;
            let len = if i + 1 == parts {
                left
            } else {
                rng.below(left + 1)
            };
            let (addr, len) = match rng.below(16) {
                0 => (MEM_SIZE - 4, len as u32),
                1 => (base + at, rng.next() as u32),
                _ => (base + at, len as u32),
            };
            descs.push((addr, len, rng.below(16) == 0));
            at += u64::from(len).min(left);
        }
        t.g.chain(1, &descs);
        t.dev.handle_tx_queue();
        if t.g.rx_outstanding() < 4 {
            t.g.post_rx(1, RX_BUF);
        }
        t.dev.handle_rx_queue();
        let _ = t.g.take_rx();
        assert!(!t.dev.needs_reset());
    }
    assert!(t.dev.vsock_counters().errors > 0);
    // Still fully working.
    let (mut host, local) = t.host_connect(99);
    t.send(&pkt(Op::Rw, 99, local, 2), b"ok");
    let mut b = [0u8; 2];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ok");
}
