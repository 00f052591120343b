//! Fuzzes `mmds::fuzz::http_request` (guest-controlled bytes; must never panic).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mmds::fuzz::http_request(data));
