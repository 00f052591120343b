//! Fuzzes `mmds::fuzz::frames` (guest-controlled bytes; must never panic).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mmds::fuzz::frames(data));
