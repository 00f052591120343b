//! The real tap: name checks always, kernel behaviour when we may use it.

use std::path::Path;

use super::*;

#[test]
fn bad_tap_names_are_refused_before_the_kernel_sees_them() {
    for name in [
        "",
        "sixteen-chars-xx",
        "a/b",
        "a:b",
        "a b",
        "a\0b",
        ".",
        "..",
    ] {
        assert!(
            matches!(Tap::open(name), Err(TapError::BadName(_))),
            "{name:?}"
        );
    }
    let err = Net::new(NetConfig {
        tap_name: "a/b".into(),
        ..config(None)
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("eth0"), "{err}");
}

/// Outside CI, says why a real-tap test cannot run here; under CI
/// (`CI=true`) fails instead.
fn cannot_run(reason: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "cannot run under CI: {reason}"
    );
    println!("skipping real tap test: {reason}");
}

/// A persistent tap made with `ip`, removed on drop.
struct HostTap(&'static str);

impl HostTap {
    fn create(name: &'static str) -> Option<Self> {
        let ip = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        ip(&["tuntap", "del", "dev", name, "mode", "tap"]);
        ip(&["tuntap", "add", "dev", name, "mode", "tap"]).then_some(Self(name))
    }
}

impl Drop for HostTap {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["tuntap", "del", "dev", self.0, "mode", "tap"])
            .status();
    }
}

#[test]
fn a_missing_tap_is_an_error_not_a_new_interface() {
    let err = Tap::open("flintnosuch0").unwrap_err();
    assert!(matches!(err, TapError::Missing(_)), "{err:?}");
    assert!(err.to_string().contains("ip tuntap add"), "{err}");
    assert!(!Path::new("/sys/class/net/flintnosuch0").exists());
}

#[test]
fn second_open_of_a_tap_in_use_reports_busy() {
    if !Path::new("/dev/net/tun").exists() {
        return cannot_run("no /dev/net/tun");
    }
    let Some(_host_tap) = HostTap::create("flinttest0") else {
        return cannot_run("cannot create a tap here (not root?)");
    };
    let first = Tap::open("flinttest0").unwrap();
    assert_eq!(first.name(), "flinttest0");
    first
        .set_offload(libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6)
        .unwrap();
    let err = Tap::open("flinttest0").unwrap_err();
    assert!(matches!(err, TapError::Busy { .. }), "{err:?}");
    assert!(err.to_string().starts_with("flinttest0 is busy: "), "{err}");

    // Through the device too: the error names the card and the tap.
    let err = Net::new(NetConfig {
        tap_name: "flinttest0".into(),
        ..config(None)
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("flinttest0 is busy"), "{err}");

    // Nothing queued: a read does not block.
    let mut tap = first;
    let mut buf = [0u8; 64];
    let e = tap.read_frame(&mut buf).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    drop(tap);
    // Once released, it opens again.
    Tap::open("flinttest0").unwrap();
}
