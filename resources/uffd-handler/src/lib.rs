//! An example page-fault handler for snapshot restore with
//! `mem_backend: {"backend_type": "Uffd", "backend_path": SOCKET}`, speaking
//! the protocol flint and Firecracker share, so it serves either:
//!
//! 1. the handler listens on a Unix stream socket (`SOCKET`);
//! 2. the VMM, loading a snapshot, maps guest memory anonymous and private,
//!    registers it with a userfaultfd (MISSING faults, `UFFD_FEATURE_EVENT_REMOVE`),
//!    connects, and sends one message: a JSON array of
//!    `{"base_host_virt_addr", "size", "offset", "page_size", "page_size_kib"}`
//!    (one entry per guest memory region: where it is in the VMM, where its
//!    bytes start in the memory file; both page sizes are in bytes, the
//!    second is Firecracker's deprecated spelling) with the userfaultfd as
//!    `SCM_RIGHTS` data;
//! 3. the handler serves every fault with `UFFDIO_COPY` of whole pages from
//!    the memory file, and pages the VMM gave back (`UFFD_EVENT_REMOVE`,
//!    after balloon inflation) with `UFFDIO_ZEROPAGE`.
//!
//! Everything the peer sends is checked ([`parse_regions`]): this crate is
//! meant to be copied and adapted, and must not trust its input either.
//! It does not depend on flint's VMM.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;

use serde::Deserialize;
use userfaultfd::{Event, Uffd};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// The most regions a message may describe (flint sends one to three).
pub const MAX_REGIONS: usize = 64;
/// The longest region message accepted.
pub const MAX_MESSAGE: usize = 64 << 10;
/// The largest page size accepted (1 GiB hugetlbfs pages).
const MAX_PAGE_SIZE: u64 = 1 << 30;

/// Why the handler stopped.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The region message is malformed or impossible.
    #[error("region message: {0}")]
    Protocol(String),
    /// The peer sent no userfaultfd with its message.
    #[error("the peer sent no userfaultfd with its region message")]
    NoFd,
    /// A system call failed.
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    /// A userfaultfd operation failed.
    #[error("userfaultfd {0}: {1}")]
    Uffd(&'static str, userfaultfd::Error),
}

/// One guest memory region as the VMM describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Where the region is mapped in the VMM.
    pub base_host_virt_addr: u64,
    /// Its length in bytes.
    pub size: u64,
    /// Where its bytes start in the memory file.
    pub offset: u64,
    /// Its page size in bytes (faults are served a whole page at a time).
    pub page_size: u64,
}

impl Region {
    fn contains(&self, addr: u64) -> bool {
        addr >= self.base_host_virt_addr && addr - self.base_host_virt_addr < self.size
    }
}

/// The wire form: unknown fields are ignored (a newer VMM may add some);
/// `page_size` is preferred, `page_size_kib` (which, despite its name,
/// holds bytes) is what older Firecracker versions send.
#[derive(Deserialize)]
struct WireRegion {
    base_host_virt_addr: u64,
    size: u64,
    offset: u64,
    #[serde(default)]
    page_size: Option<u64>,
    #[serde(default)]
    page_size_kib: Option<u64>,
}

/// Parses and checks a region message against a memory file of
/// `backing_len` bytes: 1 to [`MAX_REGIONS`] regions, page sizes powers of
/// two from 4 KiB to 1 GiB, addresses and sizes page-aligned and non-empty,
/// nothing running past 2^64, no two regions overlapping in the VMM, every
/// region's bytes inside the file (which may be longer: flint's memory
/// files end with a 32-byte trailer).
pub fn parse_regions(message: &[u8], backing_len: u64) -> Result<Vec<Region>, HandlerError> {
    let bad = |why: String| HandlerError::Protocol(why);
    if message.len() > MAX_MESSAGE {
        return Err(bad(format!(
            "{} bytes, more than {MAX_MESSAGE}",
            message.len()
        )));
    }
    let wire: Vec<WireRegion> =
        serde_json::from_slice(message).map_err(|e| bad(format!("not a region array: {e}")))?;
    if wire.is_empty() || wire.len() > MAX_REGIONS {
        return Err(bad(format!("{} regions (1 to {MAX_REGIONS})", wire.len())));
    }
    let mut regions: Vec<Region> = Vec::with_capacity(wire.len());
    for w in wire {
        let page_size = w
            .page_size
            .or(w.page_size_kib)
            .ok_or_else(|| bad("a region without page_size".into()))?;
        if !page_size.is_power_of_two() || !(4096..=MAX_PAGE_SIZE).contains(&page_size) {
            return Err(bad(format!("page size {page_size}")));
        }
        let r = Region {
            base_host_virt_addr: w.base_host_virt_addr,
            size: w.size,
            offset: w.offset,
            page_size,
        };
        let aligned = |v: u64| v.is_multiple_of(page_size);
        if r.size == 0 || !aligned(r.base_host_virt_addr) || !aligned(r.size) {
            return Err(bad(format!("region {r:?} is empty or not page-aligned")));
        }
        let end = r.base_host_virt_addr.checked_add(r.size);
        let file_end = r.offset.checked_add(r.size);
        let (Some(end), Some(file_end)) = (end, file_end) else {
            return Err(bad(format!("region {r:?} runs past 2^64")));
        };
        if file_end > backing_len {
            return Err(bad(format!(
                "region {r:?} ends at byte {file_end} of a {backing_len}-byte memory file"
            )));
        }
        if let Some(o) = regions.iter().find(|o| {
            r.base_host_virt_addr < o.base_host_virt_addr + o.size && o.base_host_virt_addr < end
        }) {
            return Err(bad(format!("region {r:?} overlaps {o:?}")));
        }
        regions.push(r);
    }
    Ok(regions)
}

/// Receives the region message and the userfaultfd from a connected VMM.
/// The message is one `sendmsg` but a stream may split it: reads go on
/// until the bytes parse as JSON (or the peer stops, or it grows too long).
pub fn receive(
    stream: &mut UnixStream,
    backing_len: u64,
) -> Result<(Vec<Region>, Uffd), HandlerError> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let (n, file) = stream
        .recv_with_fd(&mut buf)
        .map_err(|e| HandlerError::Io("receiving the region message", e.into()))?;
    let file = file.ok_or(HandlerError::NoFd)?;
    // Events are read until none is left: the fd must not block (flint and
    // Firecracker create it non-blocking; a VMM that did not is fixed here).
    // SAFETY: F_SETFL on an fd we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
        return Err(HandlerError::Io(
            "fcntl on the userfaultfd",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the fd came with SCM_RIGHTS and is ours alone now; if it is
    // not a userfaultfd, the ioctls on it fail (no memory is touched).
    let uffd = unsafe { Uffd::from_raw_fd(file.into_raw_fd()) };
    let mut message = buf[..n].to_vec();
    loop {
        match parse_regions(&message, backing_len) {
            Ok(regions) => return Ok((regions, uffd)),
            Err(e) if message.len() >= MAX_MESSAGE => return Err(e),
            Err(e) => {
                let mut more = [0u8; 4096];
                let got = stream
                    .read(&mut more)
                    .map_err(|e| HandlerError::Io("reading the region message", e))?;
                if got == 0 {
                    return Err(e);
                }
                message.extend_from_slice(&more[..got]);
            }
        }
    }
}

/// The memory file, mapped read-only.
pub struct Backing {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Backing {
    /// Maps `file` (its whole length) read-only and private.
    pub fn map(file: &std::fs::File) -> Result<Self, HandlerError> {
        let len = file
            .metadata()
            .map_err(|e| HandlerError::Io("stat of the memory file", e))?
            .len();
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| HandlerError::Protocol("the memory file is empty".into()))?;
        // SAFETY: a fresh private read-only mapping of a file we hold open;
        // the kernel picks the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(HandlerError::Io(
                "mapping the memory file",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Self { ptr, len })
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Whether it is empty (never: [`Backing::map`] refuses empty files).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `map` made.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// What serving one fault came to.
enum Served {
    Done,
    /// A `remove` event is pending: read events, then try again.
    Again,
}

/// Serves one VMM's faults until it goes away (its socket closes).
pub struct Handler<'a> {
    uffd: Uffd,
    regions: Vec<Region>,
    backing: &'a Backing,
    /// Host ranges the VMM gave back (`UFFD_EVENT_REMOVE`): served zeroed.
    removed: Vec<(u64, u64)>,
    /// Pages copied from the file (a figure for the log).
    pub copied: u64,
    /// Pages served zeroed.
    pub zeroed: u64,
}

impl<'a> Handler<'a> {
    /// A handler for `regions` of `uffd`, backed by `backing` (already
    /// checked against it by [`parse_regions`]).
    pub fn new(uffd: Uffd, regions: Vec<Region>, backing: &'a Backing) -> Self {
        Self {
            uffd,
            regions,
            backing,
            removed: Vec::new(),
            copied: 0,
            zeroed: 0,
        }
    }

    /// Serves faults until `peer` (the VMM's connection) hangs up.
    pub fn run(&mut self, peer: &UnixStream) -> Result<(), HandlerError> {
        let mut deferred: Vec<Event> = Vec::new();
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.uffd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: peer.as_raw_fd(),
                    events: libc::POLLIN | libc::POLLRDHUP,
                    revents: 0,
                },
            ];
            let timeout = if deferred.is_empty() { -1 } else { 1 };
            // SAFETY: polls two fds we own, with a correctly sized array.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(HandlerError::Io("poll", e));
            }
            let mut events = std::mem::take(&mut deferred);
            while let Some(event) = self.read_event()? {
                events.push(event);
            }
            // Removals first: a fault read in the same batch may be for a
            // page the VMM just gave back.
            events.sort_by_key(|e| !matches!(e, Event::Remove { .. }));
            for event in events {
                match event {
                    Event::Remove { start, end } => self.remember_removed(start as u64, end as u64),
                    Event::Pagefault { addr, .. } => {
                        if let Served::Again = self.serve(addr as u64)? {
                            deferred.push(event);
                        }
                    }
                    _ => {}
                }
            }
            let mut hangup =
                fds[1].revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0;
            if fds[1].revents & libc::POLLIN != 0 {
                // The VMM has nothing more to say: drop what it sends (so
                // the socket does not stay readable), and notice its end.
                let mut sink = [0u8; 4096];
                hangup |= matches!((&*peer).read(&mut sink), Ok(0));
            }
            if hangup && deferred.is_empty() {
                return Ok(());
            }
        }
    }

    fn read_event(&self) -> Result<Option<Event>, HandlerError> {
        match self.uffd.read_event() {
            Ok(e) => Ok(e),
            Err(userfaultfd::Error::SystemError(e)) if e as i32 == libc::EAGAIN => Ok(None),
            // The VMM's memory is gone; its socket's hangup ends the loop.
            Err(userfaultfd::Error::ReadEof) => Ok(None),
            Err(e) => Err(HandlerError::Uffd("read", e)),
        }
    }

    fn remember_removed(&mut self, start: u64, end: u64) {
        if start < end {
            self.removed.push((start, end));
        }
    }

    /// Fills the page holding `addr`: zeroed if the VMM gave it back, else
    /// from the file. A page already there (another fault won) is fine.
    fn serve(&mut self, addr: u64) -> Result<Served, HandlerError> {
        let Some(region) = self.regions.iter().find(|r| r.contains(addr)).copied() else {
            return Err(HandlerError::Protocol(format!(
                "a fault at {addr:#x}, outside every region"
            )));
        };
        let page = addr & !(region.page_size - 1);
        let len = region.page_size as usize;
        let dst = page as *mut libc::c_void;
        let removed = self
            .removed
            .iter()
            .any(|&(s, e)| page < e && s < page + region.page_size);
        let result = if removed {
            // SAFETY: dst is a page of a registered region; zeropage only
            // maps zeros there.
            unsafe { self.uffd.zeropage(dst, len, true) }.map(|_| self.zeroed += 1)
        } else {
            let src_offset = region.offset + (page - region.base_host_virt_addr);
            // parse_regions checked offset + size against the file length.
            // SAFETY: src lies inside the read-only file mapping; dst is a
            // page of a registered region of the VMM (the kernel checks).
            let src = unsafe { (self.backing.ptr as *const u8).add(src_offset as usize) };
            unsafe { self.uffd.copy(src.cast(), dst, len, true) }.map(|_| self.copied += 1)
        };
        let errno = match result {
            Ok(()) => return Ok(Served::Done),
            Err(userfaultfd::Error::PartiallyCopied(_)) => libc::EAGAIN,
            Err(userfaultfd::Error::CopyFailed(e) | userfaultfd::Error::ZeropageFailed(e)) => {
                e as i32
            }
            Err(e) => return Err(HandlerError::Uffd("copy", e)),
        };
        match errno {
            libc::EEXIST => {
                // Already populated: make sure the faulting thread wakes.
                let _ = self.uffd.wake(dst, len);
                Ok(Served::Done)
            }
            libc::EAGAIN => Ok(Served::Again),
            // The VMM unmapped the range (it is exiting): nothing to serve.
            libc::ENOENT | libc::ESRCH => Ok(Served::Done),
            e => Err(HandlerError::Io(
                "UFFDIO_COPY",
                std::io::Error::from_raw_os_error(e),
            )),
        }
    }
}

#[cfg(test)]
mod tests;
