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

#[test]
fn second_open_of_a_tap_in_use_reports_busy() {
    if !Path::new("/dev/net/tun").exists() {
        println!("skipping real tap test: no /dev/net/tun");
        return;
    }
    let first = match Tap::open("flinttest0") {
        Ok(tap) => tap,
        Err(e) => {
            println!("skipping real tap test: cannot create a tap here (not root?): {e}");
            return;
        }
    };
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
    // Once released (and gone, as it was not persistent), it opens again.
    Tap::open("flinttest0").unwrap();
}
