//! Untrusted tar streams: a layer unpacked into a scratch tree (whiteouts,
//! links, sizes, names), or a whole image tarball opened (first byte picks).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, tar)) = data.split_first() else {
        return;
    };
    let _ = if which % 2 == 0 {
        container::fuzz_unpack_layer(tar)
    } else {
        container::fuzz_open_image(tar)
    };
});
