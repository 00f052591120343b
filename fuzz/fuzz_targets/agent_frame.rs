//! Hostile bytes into the frame decoder and the stream reader: errors are
//! fine, panics and huge allocations are not; what decodes must re-encode
//! to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok((frame, used)) = agent_protocol::decode_frame(rest) {
        if let Ok(bytes) = frame.encode() {
            let again = agent_protocol::decode_frame(&bytes).map(|(f, n)| (f, n == bytes.len()));
            assert_eq!(again.ok(), Some((frame, true)));
        }
        rest = &rest[used..];
    }
    let mut cursor = std::io::Cursor::new(data);
    while let Ok(Some(_)) = agent_protocol::read_frame(&mut cursor) {}
});
