//! The VM config file: parsed and validated as `flint run --config` does
//! (host checks on paths fail harmlessly on fuzzer-made names).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(mut config) = api::VmConfig::from_json(text) {
        config.resolve_relative_paths(std::path::Path::new("/nonexistent"));
        let _ = config.validate();
    }
});
