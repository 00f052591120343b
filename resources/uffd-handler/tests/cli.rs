//! The `uffd-handler` binary against a stand-in VMM speaking Firecracker's
//! protocol: anonymous memory registered with a userfaultfd, the region
//! message and the fd sent over the socket, every page read back.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use userfaultfd::{FeatureFlags, UffdBuilder};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const PAGE: usize = 4096;
const PAGES: usize = 32;

#[test]
fn serves_a_vmm_then_exits_when_it_goes() {
    let dir = tempfile::tempdir().unwrap();
    let memory = dir.path().join("memory");
    let bytes: Vec<u8> = (0..PAGES * PAGE)
        .map(|i| (i * 31 / PAGE + i) as u8)
        .collect();
    std::fs::write(&memory, &bytes).unwrap();
    let sock = dir.path().join("uffd.sock");
    let handler = Command::new(env!("CARGO_BIN_EXE_uffd-handler"))
        .arg(&sock)
        .arg(&memory)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let peer = loop {
        match UnixStream::connect(&sock) {
            Ok(s) => break s,
            Err(e) => assert!(Instant::now() < deadline, "handler never listened: {e}"),
        }
        std::thread::sleep(Duration::from_millis(10));
    };

    // SAFETY: a fresh anonymous private mapping, ours alone.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGES * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let uffd = UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .user_mode_only(true)
        .require_features(FeatureFlags::EVENT_REMOVE)
        .create()
        .unwrap();
    uffd.register(base, PAGES * PAGE).unwrap();
    let message = format!(
        r#"[{{"base_host_virt_addr":{},"size":{},"offset":0,"page_size":4096,"page_size_kib":4096}}]"#,
        base as u64,
        PAGES * PAGE
    );
    peer.send_with_fd(message.as_bytes(), uffd.as_raw_fd())
        .unwrap();

    // A handler that serves nothing would block the read below for ever
    // (this process holds the userfaultfd too): fail instead.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(120));
        eprintln!("the handler served nothing in 120 s");
        std::process::exit(1);
    });
    // SAFETY: reads the mapping made above; each first touch waits for the
    // handler's copy.
    let got = unsafe { std::slice::from_raw_parts(base as *const u8, PAGES * PAGE) }.to_vec();
    assert_eq!(got, bytes);

    drop(peer);
    let out = handler.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("{PAGES} pages copied, 0 zeroed")),
        "{text}"
    );
}
