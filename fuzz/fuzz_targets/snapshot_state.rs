//! The snapshot state file decoder: header, section table, every section's
//! payload and the whole-state validation. Odd first byte: the rest is taken
//! as the body and framed with a correct header and CRC, so the fuzzer gets
//! past the checksum into the section and payload decoders.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vmm::snapshot::{decode_state, format};

const CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_ECMA_182);

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let path = Path::new("fuzz.vmstate");
    if mode % 2 == 0 {
        let _ = decode_state(rest, path);
        return;
    }
    let mut file = format::MAGIC.to_vec();
    file.extend_from_slice(&format::FORMAT_VERSION.to_le_bytes());
    file.extend_from_slice(&(rest.len() as u64).to_le_bytes());
    file.extend_from_slice(rest);
    let crc = CRC64.checksum(&file);
    file.extend_from_slice(&crc.to_le_bytes());
    let _ = decode_state(&file, path);
});
