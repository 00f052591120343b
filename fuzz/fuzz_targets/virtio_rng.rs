//! virtio-rng request chains, behind the virtio-mmio register file, as a hostile guest
//! driver sends them (see `flint_fuzz::virtio`).
#![no_main]

use flint_fuzz::virtio::{run, Kind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| run(Kind::Rng, data));
