//! Builds flint's guest init (the `guest-init` crate) as a static x86_64
//! binary, so that `container` can embed it with `include_bytes!` and flint
//! stays a single self-contained file.
//!
//! A nested `cargo build` with its own target directory under `OUT_DIR`, run
//! offline (the outer cargo has already fetched and locked everything) and
//! with the outer build's cargo/rustc settings removed from the environment,
//! so nothing leaks in (`RUSTFLAGS`, clippy's wrapper, target dir, profile
//! overrides). The jobserver is kept, so the nested build shares the outer
//! build's job slots.
//!
//! `FLINT_GUEST_INIT_BIN=/path/to/static/init` skips the nested build and
//! embeds that file instead (for unusual build environments).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .expect("container/ is in the workspace");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let embedded = out_dir.join("flint-init");

    println!("cargo:rerun-if-env-changed=FLINT_GUEST_INIT_BIN");
    if let Some(prebuilt) = env::var_os("FLINT_GUEST_INIT_BIN") {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        check_static(&prebuilt);
        fs::copy(&prebuilt, &embedded).expect("copying FLINT_GUEST_INIT_BIN");
    } else {
        for input in [
            "guest-init/src",
            "guest-init/Cargo.toml",
            "agent-protocol/src",
            "agent-protocol/Cargo.toml",
            "Cargo.lock",
        ] {
            println!("cargo:rerun-if-changed={}", workspace.join(input).display());
        }
        let built = build_guest_init(workspace, &out_dir.join("guest-init"));
        check_static(&built);
        fs::copy(&built, &embedded).expect("copying the guest init");
    }
    println!("cargo:rustc-env=FLINT_GUEST_INIT={}", embedded.display());
}

fn build_guest_init(workspace: &Path, target_dir: &Path) -> PathBuf {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .args([
            "-p",
            "guest-init",
            "--bin",
            "guest-init",
            "--release",
            "--offline",
        ])
        .args(["--target", TARGET])
        .arg("--target-dir")
        .arg(target_dir)
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=symbols",
        )
        // cargo writes only messages, to stderr; keep our stdout clean for
        // cargo's `cargo:` directives.
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let keep = matches!(key, "CARGO_HOME" | "CARGO_MAKEFLAGS");
        let leaks = key.starts_with("CARGO_")
            || matches!(
                key,
                "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "CLIPPY_ARGS"
                    | "CLIPPY_CONF_DIR"
                    | "__CARGO_FIX_PLZ"
                    | "__CARGO_DEFAULT_LIB_METADATA"
            );
        if leaks && !keep {
            cmd.env_remove(key);
        }
    }
    let output = cmd.output().expect("running cargo for guest-init");
    if !output.status.success() {
        panic!(
            "building the static guest init failed ({}):\n{}\n\
             (the static glibc comes with libc6-dev; or set FLINT_GUEST_INIT_BIN to a prebuilt static init)",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    target_dir.join(TARGET).join("release").join("guest-init")
}

/// Panics unless `path` is an x86_64 ELF executable without an interpreter
/// (the guest has no dynamic loader or libc).
fn check_static(path: &Path) {
    let elf = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    assert!(
        elf.len() > 64 && elf.starts_with(b"\x7fELF\x02\x01") && u16_at(18) == 62,
        "{} is not an x86_64 ELF",
        path.display()
    );
    let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56));
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        const PT_INTERP: u32 = 3;
        let p_type = u32::from_le_bytes(elf[ph..ph + 4].try_into().unwrap());
        assert!(
            p_type != PT_INTERP,
            "{} is dynamically linked; the guest init must be static",
            path.display()
        );
    }
}
