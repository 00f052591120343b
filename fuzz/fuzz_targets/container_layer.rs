//! Untrusted tar streams: a layer unpacked into a scratch tree (whiteouts,
//! links, sizes, names), or a whole image tarball opened (first byte picks).
//! The scratch trees go to tmpfs (see `flint_fuzz::scratch_base`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: flint_fuzz::use_tmpfs_for_tmpdir(),
    |data: &[u8]| {
        let Some((&which, tar)) = data.split_first() else {
            return;
        };
        let _ = if which % 2 == 0 {
            container::fuzz_unpack_layer(tar)
        } else {
            container::fuzz_open_image(tar)
        };
    }
);
