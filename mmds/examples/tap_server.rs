//! Serves MMDS on a tap device so a real Linux TCP stack (busybox wget, curl) can be
//! pointed at it: `tap_server TAPNAME [V1|V2]`. See `scripts/tap-check.sh`.
//!
//! A manual check outside `cargo test`: it needs root and a network namespace.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mmds::{Mmds, MmdsNetStack, MmdsVersion, DEFAULT_IPV4_ADDR, DEFAULT_MAC_ADDR};

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn open_tap(name: &str) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    let n = name.len().min(15);
    req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: TUNSETIFF reads and writes an ifreq; `req` is a live, correctly sized
    // #[repr(C)] ifreq (16-byte name, then the flags union padded to 24 bytes).
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF as _, &mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).map(String::as_str).unwrap_or("mmds0");
    let mut m = Mmds::default();
    if args.get(2).map(String::as_str) == Some("V2") {
        m.set_version(MmdsVersion::V2);
    }
    let big = "y".repeat(40_000);
    m.put(serde_json::json!({"latest": {"meta-data": {
        "ami-id": "ami-12345678", "hostname": "flint-vm",
        "network": {"interfaces": {"macs": {"52:54:00:12:34:56": {"device-number": "0"}}}},
        "big": big}}}))
        .map_err(std::io::Error::other)?;
    let mut stack = MmdsNetStack::new(DEFAULT_MAC_ADDR, DEFAULT_IPV4_ADDR, Arc::new(Mutex::new(m)));
    let mut tap = open_tap(name)?;
    eprintln!("tap_server: serving MMDS on {name}");
    let mut frame = [0u8; 65536];
    let mut out = [0u8; 1514];
    loop {
        let mut pfd = libc::pollfd {
            fd: tap.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd we own, for at most 50 ms.
        let rc = unsafe { libc::poll(&mut pfd, 1, 50) };
        if rc > 0 {
            let n = tap.read(&mut frame)?;
            stack.handle_frame(&frame[..n]);
        }
        stack.tick(Instant::now());
        while let Some(n) = stack.next_frame(&mut out) {
            tap.write_all(&out[..n])?;
        }
    }
}
