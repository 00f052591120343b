//! The vhost-user frontend: flint's side of the conversation with the
//! backend daemon (virtiofsd) over its Unix socket, on rust-vmm's `vhost`
//! crate.
//!
//! The backend is another process that may die, hang or lie: every read on
//! the socket has a timeout (so a hung daemon costs a bounded wait, never a
//! stuck vCPU), the `vhost` crate checks each reply's header, size and
//! request code, and nothing it answers is trusted beyond that (its feature
//! bits are masked by what flint offers; a queue count it claims is only
//! compared).

use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::watchdog::Watchdog;
use super::FsError;
use crate::virtio::{GuestMemory, VIRTIO_F_VERSION_1};

/// `VHOST_USER_F_PROTOCOL_FEATURES`: the backend speaks protocol features
/// (and needs `SET_VRING_ENABLE` to start a ring).
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// `VIRTIO_RING_F_INDIRECT_DESC`.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// The ring features flint passes through from the backend to the driver
/// (the backend runs the rings; flint only relays the choice).
pub const PASSTHROUGH_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX;
/// The protocol features flint uses: several queues, and an ack for every
/// request (so a backend that refuses one is noticed at once). Not
/// `CONFIG`: the virtio-fs config space is served by flint.
pub const WANTED_PROTOCOL_FEATURES: VhostUserProtocolFeatures =
    VhostUserProtocolFeatures::MQ.union(VhostUserProtocolFeatures::REPLY_ACK);

/// How long any one reply from the backend may take.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// An open, negotiated connection to a vhost-user backend.
pub struct Backend {
    frontend: Frontend,
    /// What the backend offers (`GET_FEATURES`).
    features: u64,
    /// The protocol features both sides use.
    protocol: VhostUserProtocolFeatures,
    queues: usize,
    watchdog: Watchdog,
}

fn protocol(what: &'static str) -> impl Fn(vhost::Error) -> FsError {
    move |e| FsError::Protocol(what, e.to_string())
}

impl Backend {
    /// Connects to `socket` and runs the handshake (`SET_OWNER`,
    /// `GET_FEATURES`, protocol features, `GET_QUEUE_NUM`) for a device
    /// with `queues` queues. Every exchange then has `timeout` to complete
    /// (see [`Watchdog`]); `thread_init` runs on the watchdog's thread.
    pub fn connect(
        socket: &Path,
        queues: usize,
        timeout: Duration,
        thread_init: Option<fn()>,
    ) -> Result<Self, FsError> {
        let io = |e| FsError::Connect(socket.display().to_string(), e);
        let stream = connect_when_listening(socket, timeout).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let watchdog =
            Watchdog::start(stream.try_clone().map_err(io)?, timeout, thread_init).map_err(io)?;
        let armed = watchdog.arm();
        let mut frontend = Frontend::from_stream(stream, queues as u64);
        frontend.set_owner().map_err(protocol("SET_OWNER"))?;
        let features = frontend.get_features().map_err(protocol("GET_FEATURES"))?;
        if features & VIRTIO_F_VERSION_1 == 0 {
            return Err(FsError::Backend(format!(
                "the backend does not offer VIRTIO_F_VERSION_1 (features {features:#x})"
            )));
        }
        if features & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
            return Err(FsError::Backend(
                "the backend does not speak vhost-user protocol features".into(),
            ));
        }
        let offered = frontend
            .get_protocol_features()
            .map_err(protocol("GET_PROTOCOL_FEATURES"))?;
        let protocol_features = offered & WANTED_PROTOCOL_FEATURES;
        frontend
            .set_protocol_features(protocol_features)
            .map_err(protocol("SET_PROTOCOL_FEATURES"))?;
        if protocol_features.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if protocol_features.contains(VhostUserProtocolFeatures::MQ) {
            let served = frontend
                .get_queue_num()
                .map_err(protocol("GET_QUEUE_NUM"))?;
            if served < queues as u64 {
                return Err(FsError::Backend(format!(
                    "the backend serves {served} queues; the device has {queues}"
                )));
            }
        } else if queues > 2 {
            return Err(FsError::Backend(format!(
                "the backend has no multiqueue support; the device has {queues} queues"
            )));
        }
        drop(armed);
        Ok(Self {
            frontend,
            features,
            protocol: protocol_features,
            queues,
            watchdog,
        })
    }

    /// The virtio features the device may offer the driver.
    pub fn device_features(&self) -> u64 {
        self.features & PASSTHROUGH_FEATURES
    }

    /// Whether an exchange ran out of time (the socket is then shut down).
    pub fn timed_out(&self) -> bool {
        self.watchdog.fired()
    }

    /// The protocol features in use.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// Starts the backend on the driver's queues: `SET_FEATURES`,
    /// `SET_MEM_TABLE` with guest memory's shared file regions, then per
    /// queue `SET_VRING_NUM/BASE/ADDR/KICK/CALL` and `SET_VRING_ENABLE`.
    pub fn activate(
        &mut self,
        mem: &GuestMemory,
        queues: &[Queue],
        acked_features: u64,
        kicks: &[EventFd],
        calls: &[EventFd],
    ) -> Result<(), FsError> {
        if queues.len() != self.queues || kicks.len() < queues.len() || calls.len() < queues.len() {
            return Err(FsError::Backend(format!(
                "{} queues set up; the device has {}",
                queues.len(),
                self.queues
            )));
        }
        let _armed = self.watchdog.arm();
        let f = &self.frontend;
        f.set_features(acked_features | VHOST_USER_F_PROTOCOL_FEATURES)
            .map_err(protocol("SET_FEATURES"))?;
        f.set_mem_table(&memory_table(mem)?)
            .map_err(protocol("SET_MEM_TABLE"))?;
        for (i, queue) in queues.iter().enumerate() {
            let host = |gpa: u64| {
                mem.get_host_address(GuestAddress(gpa))
                    .map(|p| p as u64)
                    .map_err(|e| FsError::Backend(format!("queue {i}: {gpa:#x}: {e}")))
            };
            let config = VringConfigData {
                queue_max_size: queue.max_size(),
                queue_size: queue.size(),
                flags: 0,
                desc_table_addr: host(queue.desc_table())?,
                used_ring_addr: host(queue.used_ring())?,
                avail_ring_addr: host(queue.avail_ring())?,
                log_addr: None,
            };
            f.set_vring_num(i, queue.size())
                .map_err(protocol("SET_VRING_NUM"))?;
            f.set_vring_base(i, queue.next_avail())
                .map_err(protocol("SET_VRING_BASE"))?;
            f.set_vring_addr(i, &config)
                .map_err(protocol("SET_VRING_ADDR"))?;
            f.set_vring_kick(i, &kicks[i])
                .map_err(protocol("SET_VRING_KICK"))?;
            f.set_vring_call(i, &calls[i])
                .map_err(protocol("SET_VRING_CALL"))?;
        }
        for i in 0..queues.len() {
            self.frontend
                .set_vring_enable(i, true)
                .map_err(protocol("SET_VRING_ENABLE"))?;
        }
        Ok(())
    }

    /// Stops the backend's rings (the driver reset the device):
    /// `SET_VRING_ENABLE 0` and `GET_VRING_BASE` per queue, after which the
    /// backend no longer touches them. Returns each ring's stop position.
    pub fn stop(&mut self) -> Result<Vec<u32>, FsError> {
        let _armed = self.watchdog.arm();
        let mut bases = Vec::with_capacity(self.queues);
        for i in 0..self.queues {
            self.frontend
                .set_vring_enable(i, false)
                .map_err(protocol("SET_VRING_ENABLE"))?;
            let base = self
                .frontend
                .get_vring_base(i)
                .map_err(protocol("GET_VRING_BASE"))?;
            bases.push(base);
        }
        Ok(bases)
    }
}

impl AsRawFd for Backend {
    fn as_raw_fd(&self) -> RawFd {
        self.frontend.as_raw_fd()
    }
}

/// Guest memory as `SET_MEM_TABLE` regions (each with the shared file it
/// is mapped from); refused for anonymous memory, which the backend
/// cannot map.
pub fn memory_table(mem: &GuestMemory) -> Result<Vec<VhostUserMemoryRegionInfo>, FsError> {
    mem.iter()
        .map(|region| {
            VhostUserMemoryRegionInfo::from_guest_region(region).map_err(|_| {
                FsError::Backend(
                    "guest memory is not shared (virtio-fs needs memfd-backed guest memory)".into(),
                )
            })
        })
        .collect()
}

/// Connects to the backend's socket. A daemon just started has its socket
/// file from `bind` on but may not `listen` yet, which refuses connections:
/// that is retried (every 10 ms, `timeout` at most); any other error is not.
fn connect_when_listening(socket: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    let started = std::time::Instant::now();
    loop {
        match UnixStream::connect(socket) {
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && started.elapsed() < timeout =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}
