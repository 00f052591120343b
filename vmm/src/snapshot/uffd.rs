//! Restoring guest memory through a userfaultfd page-fault handler
//! (`mem_backend.backend_type = "Uffd"`), with Firecracker's protocol so its
//! handlers (and flint's example, `resources/uffd-handler`) serve flint too.
//!
//! Guest RAM is mapped anonymous and private (no file), registered with a
//! userfaultfd for MISSING faults (and `UFFD_FEATURE_EVENT_REMOVE`, so
//! ranges the balloon gives back are reported), and the handler listening on
//! `backend_path` gets one message: the JSON array of
//! [`GuestRegionUffdMapping`]s, with the userfaultfd as `SCM_RIGHTS` data.
//! From then on every first touch of a page, by a vCPU (inside `KVM_RUN`)
//! or by the VMM, blocks in the kernel until the handler fills the page.
//!
//! flint keeps its own copy of the userfaultfd and the connection for the
//! VM's lifetime ([`UffdBackend`]), as Firecracker does: if the handler
//! dies, faults on pages it has not filled yet are never answered, and the
//! thread that touched them (a vCPU, or the VMM thread doing device I/O)
//! waits forever: the guest hangs rather than silently reading zeroes.
//! (Closing our copy would make the kernel fill such pages with zeroes.)
//! The handler learns flint's pid from the connection (`SO_PEERCRED`) and
//! should kill it if it cannot go on.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::Serialize;
use userfaultfd::{FeatureFlags, Uffd, UffdBuilder};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::memory::{MemoryLayout, PAGE_SIZE};
use crate::memory::GuestMemory;

/// One guest memory region as the handler needs it: where it is in this
/// process and where its bytes are in the memory file. The field names and
/// meanings are Firecracker's (v1.x `GuestRegionUffdMapping`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestRegionUffdMapping {
    /// Host address of the region in the VMM.
    pub base_host_virt_addr: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Where the region's bytes start in the memory file.
    pub offset: u64,
    /// The region's page size in bytes.
    pub page_size: u64,
    /// The same, under the deprecated name Firecracker still sends (and
    /// older handlers parse); it holds bytes too, despite its name.
    pub page_size_kib: u64,
}

/// Why memory could not be handed to a page-fault handler.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// Guest RAM could not be mapped.
    #[error("mapping guest memory: {0}")]
    Memory(String),
    /// The kernel would not give a userfaultfd.
    #[error(
        "creating a userfaultfd: {0} (does this kernel have userfaultfd, and may flint use it?)"
    )]
    Create(userfaultfd::Error),
    /// A region could not be registered.
    #[error("registering guest memory with the userfaultfd: {0}")]
    Register(userfaultfd::Error),
    /// Nobody accepts connections on the handler's socket.
    #[error("mem_backend {path}: no page-fault handler listens on this socket ({source})")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// What connect(2) said.
        source: std::io::Error,
    },
    /// The region message and fd could not be sent.
    #[error("mem_backend {path}: sending the regions and userfaultfd to the handler: {source}")]
    Send {
        /// The socket.
        path: PathBuf,
        /// What sendmsg(2) said.
        source: std::io::Error,
    },
}

/// What keeps a restored VM's memory served: flint's copy of the
/// userfaultfd and the handler's connection. Kept as long as the VM runs.
#[derive(Debug)]
pub struct UffdBackend {
    /// flint's copy of the userfaultfd (see the module docs for why).
    _uffd: Uffd,
    /// The handler's connection; closed when the VM goes.
    _peer: UnixStream,
    /// The handler's socket path (for logs).
    pub path: PathBuf,
}

/// The regions of `mem` as the handler sees them: host address, size, and
/// offset in the memory file (regions back to back, as `snapshot/create`
/// writes them).
pub fn mappings(mem: &GuestMemory) -> Vec<GuestRegionUffdMapping> {
    let mut offset = 0u64;
    mem.iter()
        .map(|r| {
            let m = GuestRegionUffdMapping {
                base_host_virt_addr: r.as_ptr() as u64,
                size: r.len(),
                offset,
                page_size: PAGE_SIZE as u64,
                page_size_kib: PAGE_SIZE as u64,
            };
            offset += r.len();
            m
        })
        .collect()
}

/// Maps fresh anonymous RAM for `layout`, registers it with a userfaultfd
/// and hands both to the handler listening on `socket`. Guest memory must
/// not be touched before this returns (a page written before registration
/// would hide the snapshot's page); afterwards, touching it waits for the
/// handler.
pub fn memory_from_handler(
    socket: &Path,
    layout: &MemoryLayout,
) -> Result<(GuestMemory, UffdBackend), UffdError> {
    let mem = layout
        .create_memory()
        .map_err(|e| UffdError::Memory(e.to_string()))?;
    let uffd = UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        // KVM fills guest pages from kernel mode (get_user_pages).
        .user_mode_only(false)
        .require_features(FeatureFlags::EVENT_REMOVE)
        .create()
        .map_err(UffdError::Create)?;
    for region in mem.iter() {
        uffd.register(region.as_ptr().cast(), region.len() as usize)
            .map_err(UffdError::Register)?;
    }
    let peer = connect(socket)?;
    // Serialising a Vec of plain integers cannot fail.
    let message = serde_json::to_vec(&mappings(&mem)).unwrap_or_default();
    send(&peer, &message, &uffd).map_err(|source| UffdError::Send {
        path: socket.to_owned(),
        source,
    })?;
    log::info!(
        "guest memory ({} regions) handed to the page-fault handler at {}",
        mem.num_regions(),
        socket.display()
    );
    Ok((
        mem,
        UffdBackend {
            _uffd: uffd,
            _peer: peer,
            path: socket.to_owned(),
        },
    ))
}

fn connect(socket: &Path) -> Result<UnixStream, UffdError> {
    let peer = UnixStream::connect(socket).map_err(|source| UffdError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    // A handler that accepts but never reads must not hang the load.
    let _ = peer.set_write_timeout(Some(std::time::Duration::from_secs(10)));
    Ok(peer)
}

/// Sends `message` with `uffd` attached; the whole message goes (a short
/// write sends the rest without the fd).
fn send(peer: &UnixStream, message: &[u8], uffd: &Uffd) -> std::io::Result<()> {
    let sent = peer
        .send_with_fd(message, uffd.as_raw_fd())
        .map_err(std::io::Error::from)?;
    if sent == 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::WriteZero));
    }
    std::io::Write::write_all(&mut &*peer, &message[sent..])
}

#[cfg(test)]
mod tests;
