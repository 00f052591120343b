//! virtio-vsock driven the way a (possibly hostile) guest driver would:
//! rings and packets built by hand in guest memory created in the test, the
//! host side played by real Unix sockets in a temporary directory.

mod credit;
mod events;
mod fuzz;
mod guest_to_host;
mod host_to_guest;
mod hostile;
mod persist;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::connection::CONN_BUF_SIZE;
use super::packet::{Header, Op, HDR_LEN, HOST_CID, TYPE_STREAM};
use super::{Vsock, VsockConfig};
use crate::virtio::{Activation, GuestMemory, IrqTrigger, VirtioDevice, VIRTIO_F_VERSION_1};

/// Guest RAM size in the tests.
pub(super) const MEM_SIZE: u64 = 0x80_0000;
/// Where test buffers are allocated (above the rings).
const SCRATCH_START: u64 = 0x1_0000;
/// Entries per ring.
const QSIZE: u16 = 256;
/// The guest's CID.
pub(super) const CID: u64 = 3;
/// The size of the guest's RX buffers (Linux: 4 KiB of payload).
pub(super) const RX_BUF: u32 = 4096 + HDR_LEN as u32;

/// One split ring laid out by hand (descriptors, avail, used).
pub(super) struct Ring {
    base: u64,
    next_desc: u16,
    used_seen: u16,
}

impl Ring {
    fn desc(&self) -> u64 {
        self.base
    }
    fn avail(&self) -> u64 {
        self.base + 0x1000
    }
    fn used(&self) -> u64 {
        self.base + 0x2000
    }

    fn queue(&self, mem: &GuestMemory) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.try_set_desc_table_address(GuestAddress(self.desc()))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.avail()))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(self.used()))
            .unwrap();
        q.set_ready(true);
        assert!(q.is_valid(mem));
        q
    }
}

/// One descriptor: (address, length, device-writable).
pub(super) type D = (u64, u32, bool);

/// The guest side: memory, three rings, buffers.
pub(super) struct Guest {
    pub mem: GuestMemory,
    pub rings: [Ring; 3],
    bump: u64,
    /// RX chain head → its buffers, to read what the device wrote.
    rx_bufs: HashMap<u16, Vec<D>>,
}

impl Guest {
    pub fn new() -> Self {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        let ring = |base| Ring {
            base,
            next_desc: 0,
            used_seen: 0,
        };
        Self {
            mem,
            rings: [ring(0x0), ring(0x4000), ring(0x8000)],
            bump: SCRATCH_START,
            rx_bufs: HashMap::new(),
        }
    }

    /// Guest buffer space (never reused within a test).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let addr = self.bump;
        self.bump += len.next_multiple_of(16);
        assert!(self.bump <= MEM_SIZE, "test ran out of guest memory");
        addr
    }

    /// Writes `descs` linked in order into ring `q` and makes the chain
    /// available; returns its head.
    pub fn chain(&mut self, q: usize, descs: &[D]) -> u16 {
        let ring = &mut self.rings[q];
        let n = descs.len() as u16;
        if ring.next_desc + n > QSIZE {
            ring.next_desc = 0;
        }
        let head = ring.next_desc;
        for (i, &(addr, len, writable)) in descs.iter().enumerate() {
            let index = head + i as u16;
            let mut flags = if writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.store_desc(q, index, addr, len, flags, index + 1);
        }
        self.rings[q].next_desc += n;
        self.make_available(q, head);
        head
    }

    /// Writes one raw descriptor (any flags, any next).
    pub fn store_desc(&self, q: usize, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let desc = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        let at = self.rings[q].desc() + 16 * u64::from(index);
        self.mem.write_obj(desc, GuestAddress(at)).unwrap();
    }

    /// Puts `head` in ring `q`'s available ring and bumps its index.
    pub fn make_available(&self, q: usize, head: u16) {
        let avail = self.rings[q].avail();
        let idx: u16 = self.mem.read_obj(GuestAddress(avail + 2)).unwrap();
        let slot = avail + 4 + 2 * u64::from(idx % QSIZE);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), GuestAddress(avail + 2))
            .unwrap();
    }

    /// New entries in ring `q`'s used ring: (head, len).
    pub fn take_used(&mut self, q: usize) -> Vec<(u16, u32)> {
        let used = self.rings[q].used();
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        let mut out = Vec::new();
        while self.rings[q].used_seen != idx {
            let slot = used + 4 + 8 * u64::from(self.rings[q].used_seen % QSIZE);
            let id: u32 = self.mem.read_obj(GuestAddress(slot)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(slot + 4)).unwrap();
            out.push((id as u16, len));
            self.rings[q].used_seen = self.rings[q].used_seen.wrapping_add(1);
        }
        out
    }

    /// Queues a packet on TX in one descriptor.
    pub fn send(&mut self, hdr: &Header, payload: &[u8]) -> u16 {
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        let addr = self.alloc(bytes.len() as u64);
        self.mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
        self.chain(1, &[(addr, bytes.len() as u32, false)])
    }

    /// Posts `n` RX buffers of `size` bytes (one descriptor each).
    pub fn post_rx(&mut self, n: usize, size: u32) {
        for _ in 0..n {
            let addr = self.alloc(u64::from(size));
            let head = self.chain(0, &[(addr, size, true)]);
            self.rx_bufs.insert(head, vec![(addr, size, true)]);
        }
    }

    /// RX buffers posted and not yet returned.
    pub fn rx_outstanding(&self) -> usize {
        self.rx_bufs.len()
    }

    /// Posts one RX chain made of the given descriptors.
    pub fn post_rx_chain(&mut self, descs: &[D]) {
        let head = self.chain(0, descs);
        self.rx_bufs.insert(head, descs.to_vec());
    }

    /// The packets the device put in RX buffers since the last call.
    pub fn take_rx(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        for (head, len) in self.take_used(0) {
            let descs = self
                .rx_bufs
                .remove(&head)
                .expect("device returned an unknown head");
            let mut bytes = Vec::new();
            for (addr, dlen, _) in descs {
                let mut b = vec![0u8; dlen as usize];
                self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
                bytes.extend(b);
            }
            bytes.truncate(len as usize);
            if bytes.len() < HDR_LEN {
                continue;
            }
            let hdr = Header::from_bytes(bytes[..HDR_LEN].try_into().unwrap());
            assert_eq!(
                bytes.len(),
                HDR_LEN + hdr.len as usize,
                "used length vs header"
            );
            out.push((hdr, bytes[HDR_LEN..].to_vec()));
        }
        out
    }
}

/// A guest packet header from `peer` (guest port) to host `port`.
pub(super) fn pkt(op: Op, peer: u32, port: u32, len: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: peer,
        dst_port: port,
        len,
        type_: TYPE_STREAM,
        op: op as u16,
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
    }
}

/// A device, its guest and its temporary directory.
pub(super) struct T {
    pub g: Guest,
    pub dev: Vsock,
    pub irq: Arc<IrqTrigger>,
    pub dir: tempfile::TempDir,
}

impl T {
    /// An activated device listening in a fresh temporary directory.
    pub fn new() -> Self {
        Self::with_timeout(Duration::from_secs(30))
    }

    pub fn with_timeout(timeout: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = VsockConfig {
            guest_cid: CID,
            uds_path: dir.path().join("v.sock"),
        };
        let dev = Vsock::with_connect_timeout(config, timeout).unwrap();
        Self::activate(dev, dir)
    }

    pub fn activate(mut dev: Vsock, dir: tempfile::TempDir) -> Self {
        let g = Guest::new();
        let irq = Arc::new(IrqTrigger::new().unwrap());
        dev.activate(Activation {
            mem: g.mem.clone(),
            queues: g.rings.iter().map(|r| r.queue(&g.mem)).collect(),
            interrupt: irq.clone(),
            acked_features: VIRTIO_F_VERSION_1,
        })
        .unwrap();
        Self { g, dev, irq, dir }
    }

    pub fn uds(&self) -> PathBuf {
        self.dir.path().join("v.sock")
    }

    /// Sends a packet and lets the device act on it.
    pub fn send(&mut self, hdr: &Header, payload: &[u8]) {
        self.g.send(hdr, payload);
        self.dev.handle_tx_queue();
    }

    /// Lets the device look at its host sockets (a few turns).
    pub fn pump(&mut self) {
        for _ in 0..4 {
            self.dev.handle_host_events();
        }
    }

    /// Pumps until `cond` holds; gives up (and fails) after many tries.
    pub fn pump_until(&mut self, what: &str, mut cond: impl FnMut(&mut Self) -> bool) {
        for _ in 0..2000 {
            self.pump();
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("gave up waiting for {what}");
    }

    /// Pumps and collects RX packets until at least `n` have arrived.
    pub fn rx_at_least(&mut self, n: usize) -> Vec<(Header, Vec<u8>)> {
        let mut got = self.g.take_rx();
        self.pump_until("RX packets", |t| {
            got.extend(t.g.take_rx());
            got.len() >= n
        });
        got
    }

    /// A host program connects to `uds_path`, writes `CONNECT port`, the
    /// guest (listening on `port`) accepts. Returns the host socket and the
    /// local port flint assigned.
    pub fn host_connect(&mut self, port: u32) -> (UnixStream, u32) {
        let mut host = UnixStream::connect(self.uds()).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        host.write_all(format!("CONNECT {port}\n").as_bytes())
            .unwrap();
        self.g.post_rx(1, RX_BUF);
        let got = self.rx_at_least(1);
        let req = got[0].0;
        assert_eq!(req.op, Op::Request as u16);
        assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, CID));
        assert_eq!(req.dst_port, port);
        assert!(req.src_port >= 1 << 30);
        assert_eq!(req.buf_alloc, CONN_BUF_SIZE);
        let local = req.src_port;
        self.send(&pkt(Op::Response, port, local, 0), &[]);
        let line = read_line(&mut host);
        assert_eq!(line, format!("OK {local}\n"));
        (host, local)
    }
}

/// Reads one `\n`-terminated line, byte by byte.
pub(super) fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        assert_eq!(s.read(&mut b).unwrap(), 1, "EOF before newline");
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

/// Whether the host socket was closed by flint (EOF or reset).
pub(super) fn host_closed(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut b = [0u8; 16];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

/// Payload bytes with a recognisable pattern.
pub(super) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
