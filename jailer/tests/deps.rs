//! The jailer runs as root before any sandbox exists, so it must stay a
//! small binary: it may not link the VMM, the HTTP API stack or the
//! container code (`cargo tree -p jailer` must show none of them).

/// Crates `flint-jailer` must never depend on, directly or through a
/// workspace crate (the workspace crates pull in all the others).
const FORBIDDEN: &[&str] = &[
    "vmm",
    "api",
    "container",
    "devices",
    "arch",
    "hyper",
    "tokio",
    "flint",
];

#[test]
fn jailer_links_no_vmm_api_or_container_code() {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .expect("read jailer/Cargo.toml");
    let mut section = String::new();
    let mut deps = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.trim_matches(['[', ']']).to_owned();
            continue;
        }
        let normal = section == "dependencies"
            || (section.starts_with("target.") && section.ends_with(".dependencies"));
        if normal {
            if let Some((name, _)) = line.split_once('=') {
                deps.push(name.trim().trim_end_matches(".workspace").to_owned());
            }
        }
        // `[dependencies.foo]` tables.
        if let Some(name) = section.strip_prefix("dependencies.") {
            deps.push(name.to_owned());
        }
    }
    assert!(deps.iter().any(|d| d == "libc"), "parsed {deps:?}");
    for bad in FORBIDDEN {
        assert!(
            !deps.iter().any(|d| d == bad),
            "jailer depends on {bad}: keep flint-jailer free of the VMM, API and container code"
        );
    }
}
