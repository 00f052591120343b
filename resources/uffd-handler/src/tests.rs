use super::*;

const PAGE: u64 = 4096;

fn region_json(base: u64, size: u64, offset: u64) -> String {
    format!(
        r#"{{"base_host_virt_addr":{base},"size":{size},"offset":{offset},"page_size":4096,"page_size_kib":4096}}"#
    )
}

#[test]
fn firecracker_and_flint_messages_parse() {
    let msg = format!(
        "[{},{}]",
        region_json(1 << 30, 2 * PAGE, 0),
        region_json(1 << 32, PAGE, 2 * PAGE)
    );
    let regions = parse_regions(msg.as_bytes(), 3 * PAGE + 32).unwrap();
    assert_eq!(regions.len(), 2);
    assert_eq!(
        regions[1],
        Region {
            base_host_virt_addr: 1 << 32,
            size: PAGE,
            offset: 2 * PAGE,
            page_size: PAGE
        }
    );
    // Older Firecracker: page_size_kib only (bytes, despite the name);
    // unknown fields are ignored.
    let old =
        r#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size_kib":4096,"new":1}]"#;
    assert_eq!(
        parse_regions(old.as_bytes(), PAGE).unwrap()[0].page_size,
        PAGE
    );
}

#[test]
fn hostile_messages_are_refused() {
    let max = u64::MAX;
    let cases: Vec<(String, &str)> = vec![
        ("".into(), "not a region array"),
        ("\u{0}\u{ff}".into(), "not a region array"),
        ("{}".into(), "not a region array"),
        ("[".into(), "not a region array"),
        ("[]".into(), "0 regions"),
        (
            format!(
                "[{}]",
                vec![region_json(0, PAGE, 0); MAX_REGIONS + 1].join(",")
            ),
            "65 regions",
        ),
        (
            r#"[{"base_host_virt_addr":0,"size":4096,"offset":0}]"#.into(),
            "without page_size",
        ),
        (
            r#"[{"base_host_virt_addr":-1,"size":4096,"offset":0,"page_size":4096}]"#.into(),
            "not a region array",
        ),
        (
            r#"[{"base_host_virt_addr":0,"size":4096,"offset":0,"page_size":3000}]"#.into(),
            "page size 3000",
        ),
        (
            r#"[{"base_host_virt_addr":0,"size":4096,"offset":0,"page_size":0}]"#.into(),
            "page size 0",
        ),
        (
            r#"[{"base_host_virt_addr":0,"size":4096,"offset":0,"page_size":1024}]"#.into(),
            "page size 1024",
        ),
        (
            format!("[{}]", region_json(0, 0, 0)),
            "empty or not page-aligned",
        ),
        (
            format!("[{}]", region_json(1, PAGE, 0)),
            "empty or not page-aligned",
        ),
        (
            format!("[{}]", region_json(0, 100, 0)),
            "empty or not page-aligned",
        ),
        (
            format!("[{}]", region_json(max - PAGE + 1, 2 * PAGE, 0)),
            "runs past 2^64",
        ),
        (
            format!("[{}]", region_json(0, PAGE, max - 10)),
            "runs past 2^64",
        ),
        (
            format!("[{}]", region_json(0, 5 * PAGE, 0)),
            "of a 16416-byte memory file",
        ),
        (
            format!("[{}]", region_json(0, PAGE, 4 * PAGE)),
            "of a 16416-byte memory file",
        ),
        (
            format!(
                "[{},{}]",
                region_json(0, 2 * PAGE, 0),
                region_json(PAGE, PAGE, 0)
            ),
            "overlaps",
        ),
        (format!("[{}]", " ".repeat(MAX_MESSAGE)), "more than"),
    ];
    for (msg, why) in cases {
        let err = parse_regions(msg.as_bytes(), 4 * PAGE + 32)
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{msg:.80}: {err} (wanted {why:?})");
    }
}

#[test]
fn a_message_without_a_descriptor_is_refused() {
    let (mut a, b) = UnixStream::pair().unwrap();
    std::io::Write::write_all(&mut &b, format!("[{}]", region_json(0, PAGE, 0)).as_bytes())
        .unwrap();
    assert!(matches!(receive(&mut a, PAGE), Err(HandlerError::NoFd)));
}
