//! The state file's framing and section table, against damaged and hostile
//! files.

use super::*;

fn sections() -> Vec<Section> {
    vec![
        Section::encode("vm", 1, true, &(1u32, "x")).unwrap(),
        Section::encode("extra", 3, false, &vec![7u64; 3]).unwrap(),
    ]
}

/// Frames a hand-made body with a valid header and checksum.
fn frame(version: u32, body: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    let crc = CRC64.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A body with one section whose fields are given raw.
fn body(name: &[u8], payload_len: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = 1u32.to_le_bytes().to_vec();
    b.push(name.len() as u8);
    b.extend_from_slice(name);
    b.extend_from_slice(&1u16.to_le_bytes());
    b.push(FLAG_REQUIRED);
    b.extend_from_slice(&payload_len.to_le_bytes());
    b.extend_from_slice(payload);
    b
}

#[test]
fn sections_round_trip_through_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    write_atomic(&path, &encode(&sections()).unwrap()).unwrap();
    assert!(!temp_path(&path).exists());
    let back = load(&path).unwrap();
    assert_eq!(back, sections());
    assert_eq!(back[0].decode::<(u32, String)>(1, &path).unwrap().1, "x");
    assert!(!back[1].required);
    let err = back[0].decode::<(u32, String)>(2, &path).unwrap_err();
    assert!(
        matches!(
            err,
            FormatError::SectionVersion {
                found: 1,
                expected: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn damaged_files_are_refused_with_the_reason() {
    let p = Path::new("s");
    let good = encode(&sections()).unwrap();

    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    assert!(matches!(
        decode(&bad_magic, p),
        Err(FormatError::BadMagic(_))
    ));

    let mut future = good.clone();
    future[8..12].copy_from_slice(&99u32.to_le_bytes());
    let err = decode(&future, p).unwrap_err();
    assert!(
        matches!(err, FormatError::UnsupportedVersion { found: 99, .. }),
        "{err}"
    );

    // An intact file of the first format is named as such.
    let err = decode(&frame(1, b"old payload"), p).unwrap_err();
    assert!(
        matches!(err, FormatError::UnsupportedVersion { found: 1, .. }),
        "{err}"
    );

    for cut in [4, 15, good.len() - 1] {
        let err = decode(&good[..cut], p).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::Truncated { .. } | FormatError::BadMagic(_)
            ),
            "cut at {cut}: {err}"
        );
    }

    let mut flipped = good.clone();
    flipped[HEADER_LEN + 3] ^= 0x40;
    assert!(matches!(decode(&flipped, p), Err(FormatError::Checksum(_))));

    let mut huge = good.clone();
    huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        decode(&huge, p),
        Err(FormatError::Truncated { .. })
    ));

    let mut trailing = good.clone();
    trailing.push(0);
    assert!(matches!(
        decode(&trailing, p),
        Err(FormatError::Checksum(_))
    ));
}

#[test]
fn hostile_section_tables_are_refused_without_allocating() {
    let p = Path::new("s");
    let sections_error = |bytes: &[u8]| match decode(bytes, p) {
        Err(FormatError::Sections { message, .. }) => message,
        other => panic!("not refused as a bad table: {other:?}"),
    };
    // A payload length far beyond the file.
    let why = sections_error(&frame(FORMAT_VERSION, &body(b"vm", u64::MAX, b"x")));
    assert!(why.contains("runs past the end"), "{why}");
    // A section count far beyond the limit.
    let why = sections_error(&frame(FORMAT_VERSION, &u32::MAX.to_le_bytes()));
    assert!(why.contains("sections"), "{why}");
    // Two sections of the same name.
    let mut two = body(b"vm", 1, b"x");
    two[..4].copy_from_slice(&2u32.to_le_bytes());
    two.extend_from_slice(&body(b"vm", 1, b"y")[4..]);
    let why = sections_error(&frame(FORMAT_VERSION, &two));
    assert!(why.contains("two sections named \"vm\""), "{why}");
    // A name that is not UTF-8, and bytes after the last section.
    assert!(sections_error(&frame(FORMAT_VERSION, &body(&[0xff], 0, b""))).contains("UTF-8"));
    let mut extra = body(b"vm", 1, b"x");
    extra.push(0);
    assert!(sections_error(&frame(FORMAT_VERSION, &extra)).contains("after the last section"));
}

#[test]
fn decoding_rejects_trailing_bytes_in_a_payload() {
    let mut bytes = to_bytes(&5u32).unwrap();
    assert_eq!(from_bytes::<u32>(&bytes).unwrap(), 5);
    bytes.push(0);
    assert!(from_bytes::<u32>(&bytes).is_err());
}

#[test]
fn devices_fifos_and_oversized_files_are_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    // /dev/zero would stream forever; a symlink to it is no better.
    assert!(matches!(
        read_file(Path::new("/dev/zero")),
        Err(FormatError::NotRegular(_))
    ));
    let link = dir.path().join("link");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    assert!(matches!(read_file(&link), Err(FormatError::NotRegular(_))));
    // A FIFO with no writer would block a plain open() forever.
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    assert!(matches!(read_file(&fifo), Err(FormatError::NotRegular(_))));
    assert!(matches!(load(dir.path()), Err(FormatError::NotRegular(_))));
    // Larger than the cap (sparse: no disk used).
    let big = dir.path().join("big");
    File::create(&big)
        .unwrap()
        .set_len(MAX_STATE_FILE + 1)
        .unwrap();
    assert!(matches!(read_file(&big), Err(FormatError::TooLarge { .. })));
}
