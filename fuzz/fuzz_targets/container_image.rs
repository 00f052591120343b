//! Image metadata from an untrusted image: OCI index, manifest and config,
//! and docker-save's manifest.json (the first byte picks the decoder).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, json)) = data.split_first() else {
        return;
    };
    let _ = match which % 4 {
        0 => container::fuzz_parse_index(json),
        1 => container::fuzz_parse_manifest(json),
        2 => container::fuzz_parse_config(json),
        _ => container::fuzz_parse_docker_manifest(json),
    };
});
