//! Release builds of `flint` put the functions that run from process start
//! to an idle, answering API, followed by those a booting and running guest
//! makes it run (listed in `resources/text-order/`, taken from a callgrind
//! run; `bench/startup_order.py` regenerates it) next to each other in the
//! text segment. Symbol hashes differ between the static-pie build
//! (`scripts/build-release`, `+crt-static`) and the dynamically linked one,
//! so each has its own list: `static.txt` and `dynamic.txt`. The kernel maps a binary's text in
//! 64 KiB "fault-around" windows, so with those functions spread over the
//! whole 3.4 MB segment nearly all of it became resident at start; packed, a
//! fraction does. The linker is the LLVM lld that ships with the Rust
//! toolchain (`rust-lld`, through its `gcc-ld` wrapper), for its
//! `--symbol-ordering-file`; names missing from the list (changed symbol
//! hashes) only cost the packing, never the build. Without that wrapper the
//! build is the same, laid out in the default order.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let env = |name| std::env::var(name).unwrap_or_default();
    let static_crt = env("CARGO_CFG_TARGET_FEATURE")
        .split(',')
        .any(|f| f == "crt-static");
    let order = if static_crt {
        "resources/text-order/static.txt"
    } else {
        "resources/text-order/dynamic.txt"
    };
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={order}");
    if env("PROFILE") != "release" || env("CARGO_CFG_TARGET_OS") != "linux" {
        return;
    }
    let sysroot = Command::new(env("RUSTC"))
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    let gcc_ld = sysroot.map(|root| {
        root.join("lib/rustlib")
            .join(env("HOST"))
            .join("bin/gcc-ld")
    });
    let Some(gcc_ld) = gcc_ld.filter(|dir| dir.join("ld.lld").exists()) else {
        println!("cargo:warning=rust-lld not found: flint's startup functions are not packed together (idle RSS is higher)");
        return;
    };
    let dir = env("CARGO_MANIFEST_DIR");
    for arg in [
        format!("-B{}", gcc_ld.display()),
        "-fuse-ld=lld".to_owned(),
        format!("-Wl,--symbol-ordering-file={dir}/{order}"),
        "-Wl,--no-warn-symbol-ordering".to_owned(),
    ] {
        println!("cargo:rustc-link-arg-bin=flint={arg}");
    }
}
