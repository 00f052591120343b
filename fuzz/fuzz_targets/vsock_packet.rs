//! vsock packets from the guest (header + payload) and the host side's
//! `CONNECT <port>` line.
#![no_main]

use devices::virtio::vsock::parse_connect_line;
use devices::virtio::vsock::packet::parse_packet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_packet(data, 3);
    let _ = parse_connect_line(data);
});
