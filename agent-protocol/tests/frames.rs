//! The decoder against well-formed and hostile bytes, and the client's
//! handshakes against scripted peers.

use std::io::{Cursor, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

use agent_protocol::frame::{kind, HEADER_LEN};
use agent_protocol::*;

fn all_frames() -> Vec<Frame> {
    vec![
        Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            software: "t".into(),
        }),
        Frame::Request(Request::Exec(ExecSpec {
            argv: vec!["sh".into(), "-c".into(), "echo \"hi\"".into()],
            env: vec!["A=1".into()],
            cwd: Some("/tmp".into()),
            user: Some("1000:1000".into()),
            tty: Some(WindowSize { rows: 24, cols: 80 }),
            root: Some("/c/x".into()),
            rlimits: vec![Rlimit {
                kind: "RLIMIT_NOFILE".into(),
                soft: 1024,
                hard: u64::MAX,
            }],
        })),
        Frame::Request(Request::Mount(MountSpec {
            source: "/dev/vdb".into(),
            target: "/c/x".into(),
            fstype: "ext4".into(),
            options: vec!["ro".into()],
        })),
        Frame::Request(Request::Unmount {
            target: "/c/x".into(),
        }),
        Frame::Request(Request::WriteFile {
            path: "/x".into(),
            mode: 0o644,
        }),
        Frame::Request(Request::Wait { pid: 7 }),
        Frame::Response(Response::Error {
            message: "no".into(),
        }),
        Frame::Response(Response::Stats(Stats::default())),
        Frame::Stdin(b"abc".to_vec()),
        Frame::CloseStdin,
        Frame::Signal(15),
        Frame::Resize {
            rows: 50,
            cols: 132,
        },
        Frame::Started(4242),
        Frame::Stdout(vec![0, 255, 10]),
        Frame::Stderr(Vec::new()),
        Frame::Exited(ExitStatus::Code(3)),
        Frame::Exited(ExitStatus::Signal(9)),
        Frame::Data(vec![7; MAX_PAYLOAD]),
        Frame::DataEnd,
    ]
}

#[test]
fn every_frame_round_trips() {
    let mut stream = Vec::new();
    for frame in all_frames() {
        let bytes = frame.encode().unwrap();
        let (decoded, used) = decode_frame(&bytes).unwrap();
        assert_eq!((decoded, used), (frame.clone(), bytes.len()));
        write_frame(&mut stream, &frame).unwrap();
    }
    let mut r = Cursor::new(stream);
    for frame in all_frames() {
        assert_eq!(read_frame(&mut r).unwrap(), Some(frame));
    }
    assert!(read_frame(&mut r).unwrap().is_none(), "clean end");
}

#[test]
fn oversized_frames_are_refused_before_allocating() {
    let header = [0xff, 0xff, 0xff, 0xff, kind::DATA];
    assert!(matches!(
        decode_frame(&header),
        Err(FrameError::TooLarge(0xffff_ffff))
    ));
    // read_frame must not try to read (or allocate) 4 GiB.
    let err = read_frame(&mut Cursor::new(header.to_vec())).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge(_)), "{err}");
    let just_over = ((MAX_PAYLOAD + 1) as u32).to_be_bytes();
    let err = decode_frame(&[&just_over[..], &[kind::DATA]].concat()).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge(n) if n == MAX_PAYLOAD + 1));
    assert!(matches!(
        Frame::Data(vec![0; MAX_PAYLOAD + 1]).encode(),
        Err(FrameError::TooLarge(_))
    ));
}

#[test]
fn hostile_bytes_are_errors_not_panics() {
    // Unknown kinds.
    for k in [0x00, 0x04, 0x14, 0x24, 0x32, 0xff] {
        let err = decode_frame(&[0, 0, 0, 0, k]).unwrap_err();
        assert!(matches!(err, FrameError::UnknownKind(x) if x == k), "{err}");
    }
    // Wrong shapes.
    for (k, payload) in [
        (kind::SIGNAL, &b"abc"[..]),
        (kind::RESIZE, b"12345"),
        (kind::STARTED, b""),
        (kind::EXITED, b"\x02\0\0\0\0"),
        (kind::EXITED, b"\0\0"),
        (kind::CLOSE_STDIN, b"x"),
        (kind::DATA_END, b"x"),
        (kind::HELLO, b"{\"version\":"),
        (kind::REQUEST, b"{\"type\":\"format_disk\"}"),
        (kind::RESPONSE, b"\xff\xfe"),
        (kind::REQUEST, b"[]"),
    ] {
        let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
        bytes.push(k);
        bytes.extend_from_slice(payload);
        let err = decode_frame(&bytes).unwrap_err();
        assert!(matches!(err, FrameError::BadPayload { .. }), "{err}");
    }
    // Truncation: decode_frame asks for more; read_frame reports it.
    let full = Frame::Stdout(b"hello".to_vec()).encode().unwrap();
    for cut in 0..full.len() {
        let want = if cut < HEADER_LEN {
            HEADER_LEN
        } else {
            full.len()
        };
        assert!(matches!(decode_frame(&full[..cut]), Err(FrameError::Incomplete(n)) if n == want));
        let got = read_frame(&mut Cursor::new(full[..cut].to_vec()));
        match cut {
            0 => assert!(got.unwrap().is_none()),
            _ => assert!(matches!(got, Err(FrameError::Truncated))),
        }
    }
    // A cheap deterministic fuzz: every prefix of pseudo-random bytes.
    let mut x: u32 = 0x1234_5678;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect();
    for start in 0..noise.len() {
        let _ = decode_frame(&noise[start..]);
        let mut small = noise[start..].to_vec();
        if small.len() >= 4 {
            small[..3].fill(0); // lengths under 256 reach the payload decoders
        }
        let _ = decode_frame(&small);
    }
}

/// A peer that reads the client's first frame and answers `reply`.
fn scripted_agent(reply: Frame) -> UnixStream {
    let (client, mut agent) = UnixStream::pair().unwrap();
    std::thread::spawn(move || {
        let first = read_frame(&mut agent).unwrap();
        assert!(matches!(first, Some(Frame::Hello(_))));
        write_frame(&mut agent, &reply).unwrap();
    });
    client
}

#[test]
fn version_mismatch_is_refused() {
    let newer = Frame::Hello(Hello {
        version: PROTOCOL_VERSION + 1,
        software: "future agent".into(),
    });
    let err = AgentClient::handshake(scripted_agent(newer)).err().unwrap();
    assert!(
        matches!(err, ClientError::VersionMismatch { peer, ours } if peer == PROTOCOL_VERSION + 1 && ours == PROTOCOL_VERSION),
        "{err}"
    );
    let refusal = Frame::Response(Response::Error {
        message: "protocol version 1 not supported".into(),
    });
    let err = AgentClient::handshake(scripted_agent(refusal))
        .err()
        .unwrap();
    assert!(err.to_string().contains("not supported"), "{err}");
    assert!(check_version(PROTOCOL_VERSION).is_ok());
    assert!(check_version(0).is_err());
}

#[test]
fn hybrid_vsock_connect_handshake() {
    let dir = std::env::temp_dir().join(format!("agent-proto-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("v.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        for reply in [&b"OK 1073741824\nafter"[..], b"ERR\n", b""] {
            let (mut s, _) = listener.accept().unwrap();
            let mut line = [0u8; 13];
            s.read_exact(&mut line).unwrap();
            assert_eq!(&line, b"CONNECT 1024\n");
            s.write_all(reply).unwrap();
        }
    });
    let mut s = connect_hybrid_vsock(&path, DEFAULT_PORT).unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "after", "nothing past the OK line is consumed");
    let err = connect_hybrid_vsock(&path, 1024).unwrap_err();
    assert!(err.to_string().contains("unexpected reply"), "{err}");
    let err = connect_hybrid_vsock(&path, 1024).unwrap_err();
    assert!(err.to_string().contains("closed"), "{err}");
    server.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
