use std::os::unix::net::UnixListener;

use vm_memory::{Bytes, GuestAddress};

use super::*;

fn layout() -> MemoryLayout {
    MemoryLayout {
        regions: vec![(0, 16 * PAGE_SIZE as u64), (1 << 32, 4 * PAGE_SIZE as u64)],
    }
}

#[test]
fn a_socket_nobody_listens_on_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.sock");
    let err = memory_from_handler(&missing, &layout())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no page-fault handler listens on this socket"),
        "{err}"
    );
    assert!(err.contains("none.sock"), "{err}");
    // A socket file whose listener is gone: connection refused.
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let err = memory_from_handler(&stale, &layout())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no page-fault handler listens"), "{err}");
}

/// The example handler (another thread here; a process in real use) gets
/// Firecracker's message and serves every page from a memory file laid out
/// as `snapshot/create` writes it; pages the VMM gives back come back zeroed.
#[test]
fn the_example_handler_serves_guest_memory_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let layout = layout();
    let total = layout.total() as usize;
    let mut file_bytes: Vec<u8> = (0..total).map(|i| (i / PAGE_SIZE * 7 + i) as u8).collect();
    file_bytes.extend_from_slice(&[0xee; 32]); // a trailer-like tail
    let mem_path = dir.path().join("memory");
    std::fs::write(&mem_path, &file_bytes).unwrap();
    let sock = dir.path().join("uffd.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let handler = std::thread::spawn(move || {
        let file = std::fs::File::open(&mem_path).unwrap();
        let backing = uffd_handler::Backing::map(&file).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let (regions, uffd) = uffd_handler::receive(&mut peer, backing.len()).unwrap();
        let mut h = uffd_handler::Handler::new(uffd, regions.clone(), &backing);
        h.run(&peer).unwrap();
        (regions, h.copied, h.zeroed)
    });
    let (mem, backend) = memory_from_handler(&sock, &layout).unwrap();
    let mut got = vec![0u8; 16 * PAGE_SIZE];
    mem.read_slice(&mut got, GuestAddress(0)).unwrap();
    assert_eq!(got, file_bytes[..16 * PAGE_SIZE]);
    let mut high = vec![0u8; 4 * PAGE_SIZE];
    mem.read_slice(&mut high, GuestAddress(1 << 32)).unwrap();
    assert_eq!(high, file_bytes[16 * PAGE_SIZE..total]);
    // Written pages stay written; a page given back (as the balloon does)
    // comes back zeroed, not from the file.
    mem.write_obj(0xfeed_u64, GuestAddress(8)).unwrap();
    assert_eq!(mem.read_obj::<u64>(GuestAddress(8)).unwrap(), 0xfeed);
    let host = mem
        .get_host_address(GuestAddress(PAGE_SIZE as u64))
        .unwrap();
    // SAFETY: one page of our own guest mapping.
    assert_eq!(
        unsafe { libc::madvise(host.cast(), PAGE_SIZE, libc::MADV_DONTNEED) },
        0
    );
    assert_eq!(
        mem.read_obj::<u64>(GuestAddress(PAGE_SIZE as u64 + 8))
            .unwrap(),
        0
    );
    drop(backend);
    let (regions, copied, zeroed) = handler.join().unwrap();
    assert_eq!(regions.len(), 2);
    assert_eq!(
        regions[0].base_host_virt_addr,
        mappings(&mem)[0].base_host_virt_addr
    );
    assert_eq!(
        (regions[1].offset, regions[1].page_size),
        (16 * PAGE_SIZE as u64, 4096)
    );
    assert_eq!((copied, zeroed), (20, 1));
}

#[test]
fn the_message_has_firecrackers_fields() {
    let mem = layout().create_memory().unwrap();
    let json = serde_json::to_value(mappings(&mem)).unwrap();
    let first = &json[0];
    for field in [
        "base_host_virt_addr",
        "size",
        "offset",
        "page_size",
        "page_size_kib",
    ] {
        assert!(first[field].is_u64(), "{field} in {json}");
    }
    assert_eq!(json[1]["offset"], 16 * 4096);
    assert_eq!(json[1]["page_size_kib"], 4096);
}
