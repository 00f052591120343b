//! One pod's VM: a `flint` process the shim starts (as root: under the
//! jailer, through `container::jail`, with the pod's memory and vCPUs as
//! its cgroup limits and its own uid) and configures through its API
//! socket (also used for pause, resume, drive swaps), and its vsock socket
//! (the guest agent). Jailed, every file it uses is hard-linked into the
//! jail's root first and named by its path there.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agent_protocol::{connect_hybrid_vsock, AgentClient, DEFAULT_PORT};
use container::jail::{self, JailSpec, Vmm};

use crate::image;
use crate::ShimError;

/// The guest's kernel command line: flint's init as PID 1, in agent mode.
pub const BOOT_ARGS: &str =
    "console=ttyS0 quiet loglevel=1 reboot=k panic=-1 init=/.flint/init flint.agent=1";
/// Where the shim keeps each VM's sockets (short paths: `sun_path` holds
/// 108 bytes, bundle paths can be longer).
pub const RUN_DIR: &str = "/run/flint-shim";
/// How long the guest may take to answer the agent's first ping.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// What a VM is started with.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub flint: PathBuf,
    pub kernel: PathBuf,
    pub mem_mib: u64,
    pub vcpus: u64,
    /// Where the boot image, placeholders, console log and pid file go.
    pub state_dir: PathBuf,
    /// The first container's root image (drive slot 0).
    pub first_image: PathBuf,
    /// Spare drive slots for the pod's further containers.
    pub stubs: usize,
    /// Jail the VM (when root): the uids to take one from
    /// (`base`, `count`); `None` runs it unjailed.
    pub jail: Option<(u32, u32)>,
}

/// A running VM.
pub struct Vm {
    vmm: Mutex<Vmm>,
    sock_dir: PathBuf,
    api_sock: PathBuf,
    vsock: PathBuf,
    state_dir: PathBuf,
    /// Drive slots: `Some(container id)` when in use.
    slots: Mutex<Vec<Option<String>>>,
}

/// The guest device of drive slot `slot`: `vda` is the boot image, `vdb` a
/// placeholder where guest-init looks for run settings (there are none: it
/// then serves the agent), container slots start at `vdc`.
pub fn slot_device(slot: usize) -> String {
    format!("/dev/vd{}", (b'c' + slot as u8) as char)
}

fn slot_drive_id(slot: usize) -> String {
    format!("c{slot}")
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ShimError {
    let what = what.into();
    move |source| ShimError::Io { what, source }
}

impl Vm {
    /// Builds the boot image and placeholders, starts flint (jailed when
    /// `spec.jail` says so and we are root), puts the files into its jail
    /// and boots the VM; does not wait for the guest (see
    /// [`Vm::wait_ready`]).
    pub fn start(spec: &VmSpec, owner: &str) -> Result<Vm, ShimError> {
        let sock_dir = Path::new(RUN_DIR).join(format!("{}-{}", std::process::id(), short(owner)));
        let _ = std::fs::remove_dir_all(&sock_dir);
        std::fs::create_dir_all(&sock_dir).map_err(io(format!("mkdir {}", sock_dir.display())))?;
        let boot = spec.state_dir.join("flint-boot.ext4");
        image::build_boot_image(&boot, &spec.state_dir)?;
        let settings = spec.state_dir.join("flint-settings.stub");
        image::write_stub(&settings)?;
        let mut drives = vec![
            serde_json::json!({"drive_id": "boot", "path_on_host": boot, "is_root_device": true, "is_read_only": false}),
            serde_json::json!({"drive_id": "settings", "path_on_host": settings, "is_root_device": false, "is_read_only": true}),
            serde_json::json!({"drive_id": slot_drive_id(0), "path_on_host": spec.first_image, "is_root_device": false, "is_read_only": false}),
        ];
        for slot in 1..=spec.stubs {
            let stub = stub_path(&spec.state_dir, slot);
            image::write_stub(&stub)?;
            drives.push(serde_json::json!({"drive_id": slot_drive_id(slot), "path_on_host": stub, "is_root_device": false, "is_read_only": false}));
        }
        let config = serde_json::json!({
            "boot-source": {"kernel_image_path": spec.kernel, "boot_args": BOOT_ARGS},
            "machine-config": {"vcpu_count": spec.vcpus, "mem_size_mib": spec.mem_mib},
            "drives": drives,
            "vsock": {"guest_cid": 3, "uds_path": sock_dir.join("vsock.sock")},
        });
        let log = std::fs::File::create(spec.state_dir.join("flint-console.log"))
            .map_err(io("creating the console log"))?;
        let vm_err = |e: container::ContainerError| ShimError::Vm(e.to_string());
        let jail_spec = match spec.jail {
            Some((base, count)) if jail::unjailed_reason(false).is_none() => {
                let id = format!("pod-{}", short(owner));
                let uid = jail::allocate_uid(Path::new(jail::UID_DIR), base, count, &id)
                    .map_err(vm_err)?;
                Some(JailSpec {
                    id,
                    flint: spec.flint.clone(),
                    jailer: jail::find_jailer(&spec.flint),
                    uid,
                    gid: uid,
                    // On the file system of the bundles (/run), so their
                    // images are hard-linked.
                    chroot_base: Path::new(RUN_DIR).join("jail"),
                    memory_mib: spec.mem_mib,
                    vcpus: spec.vcpus,
                })
            }
            _ => None,
        };
        let uid_dir = Path::new(jail::UID_DIR);
        let vmm = jail::spawn(
            jail_spec.as_ref().map(|s| (s, uid_dir)),
            &spec.flint,
            &sock_dir.join("api.sock"),
            log,
        )
        .map_err(|e| {
            if let Some(s) = &jail_spec {
                let _ = std::fs::remove_file(uid_dir.join(s.uid.to_string()));
            }
            vm_err(e)
        })?;
        let _ = std::fs::write(spec.state_dir.join("flint.pid"), vmm.pid().to_string());
        let _ = std::fs::write(
            spec.state_dir.join("flint.sockdir"),
            sock_dir.as_os_str().as_encoded_bytes(),
        );
        if let Some(j) = &vmm.jail {
            if let Ok(text) = serde_json::to_string(j) {
                let _ = std::fs::write(spec.state_dir.join("flint.jail"), text);
            }
        }
        let api_sock = vmm.api_sock.clone();
        let vsock = match &vmm.jail {
            Some(j) => j.root.join("vsock.sock"),
            None => sock_dir.join("vsock.sock"),
        };
        let mut slots = vec![None; spec.stubs + 1];
        slots[0] = Some(owner.to_owned());
        let vm = Vm {
            vmm: Mutex::new(vmm),
            sock_dir,
            api_sock,
            vsock,
            state_dir: spec.state_dir.clone(),
            slots: Mutex::new(slots),
        };
        let booted = {
            let vmm = vm.vmm.lock().unwrap_or_else(|p| p.into_inner());
            vmm.prepare(&config).and_then(|c| vmm.start(&c))
        };
        if let Err(e) = booted {
            vm.stop();
            return Err(vm_err(e));
        }
        Ok(vm)
    }

    /// The flint process's pid.
    pub fn pid(&self) -> u32 {
        self.vmm.lock().unwrap_or_else(|p| p.into_inner()).pid()
    }

    /// The VM's jail, when jailed.
    pub fn jail(&self) -> Option<jail::JailInfo> {
        self.vmm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .jail
            .clone()
    }

    /// The path flint must be given for host file `host` (linked into the
    /// jail as `name` when jailed).
    fn vmm_path(&self, host: &Path, name: &str, writable: bool) -> Result<PathBuf, ShimError> {
        self.vmm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add_file(host, name, writable)
            .map_err(|e| ShimError::Vm(e.to_string()))
    }

    /// A fresh agent connection (one per operation).
    pub fn agent(&self) -> Result<AgentClient<UnixStream>, ShimError> {
        let stream = connect_hybrid_vsock(&self.vsock, DEFAULT_PORT)?;
        Ok(AgentClient::handshake(stream)?)
    }

    /// If flint has exited: its status and the end of its console log (the
    /// guest kernel's last words, flint's own error), for the error a
    /// request that needed the VM reports.
    pub fn exit_report(&self) -> Option<String> {
        let status = self
            .vmm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .child
            .try_wait()
            .ok()??;
        let log =
            std::fs::read_to_string(self.state_dir.join("flint-console.log")).unwrap_or_default();
        let tail: String = log
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Some(format!("flint exited ({status}): {tail}"))
    }

    /// Waits until the guest agent answers (or flint died, or
    /// [`BOOT_TIMEOUT`]).
    pub fn wait_ready(&self) -> Result<(), ShimError> {
        let start = Instant::now();
        loop {
            if let Ok(agent) = self.agent() {
                if agent.ping().is_ok() {
                    return Ok(());
                }
            }
            if let Some(report) = self.exit_report() {
                return Err(ShimError::Vm(format!(
                    "{report}, before the guest agent answered"
                )));
            }
            if start.elapsed() > BOOT_TIMEOUT {
                return Err(ShimError::Vm(
                    "the guest agent did not answer in time".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// One request on flint's API; the status code and body.
    pub fn api(&self, method: &str, path: &str, body: &str) -> Result<(u16, String), ShimError> {
        let mut conn =
            UnixStream::connect(&self.api_sock).map_err(io("connecting to flint's API"))?;
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(io("API socket"))?;
        write!(
            conn,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .map_err(io("writing to flint's API"))?;
        let mut reply = Vec::new();
        conn.take(1 << 20)
            .read_to_end(&mut reply)
            .map_err(io("reading flint's API answer"))?;
        let reply = String::from_utf8_lossy(&reply);
        let code = reply
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| ShimError::Vm(format!("bad API answer {:?}", reply.lines().next())))?;
        let body = reply
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((code, body))
    }

    fn api_ok(&self, method: &str, path: &str, body: &str) -> Result<(), ShimError> {
        match self.api(method, path, body)? {
            (200..=299, _) => Ok(()),
            (code, body) => Err(ShimError::Vm(format!("{method} {path}: {code} {body}"))),
        }
    }

    /// Pauses (`true`) or resumes the whole VM (`PATCH /vm`).
    pub fn set_paused(&self, paused: bool) -> Result<(), ShimError> {
        let state = if paused { "Paused" } else { "Resumed" };
        self.api_ok("PATCH", "/vm", &format!(r#"{{"state":"{state}"}}"#))
    }

    /// Puts `image` on a free stub drive for container `id`; the guest
    /// device to mount.
    pub fn attach(&self, id: &str, image: &Path) -> Result<String, ShimError> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let slot = slots.iter().position(Option::is_none).ok_or_else(|| {
                ShimError::Vm(format!(
                    "no free drive slot for container {id} (this pod's VM has {})",
                    slots.len()
                ))
            })?;
            slots[slot] = Some(id.to_owned());
            slot
        };
        // Jailed, the image is linked into the jail first and named there.
        let path = match self.vmm_path(image, &slot_image_name(slot), true) {
            Ok(p) => p,
            Err(e) => {
                self.release_slot(slot);
                return Err(e);
            }
        };
        let body =
            serde_json::json!({"drive_id": slot_drive_id(slot), "path_on_host": path}).to_string();
        if let Err(e) = self.api_ok("PATCH", &format!("/drives/{}", slot_drive_id(slot)), &body) {
            self.release_slot(slot);
            return Err(e);
        }
        Ok(slot_device(slot))
    }

    /// Container `id`'s drive slot goes back to its placeholder.
    pub fn detach(&self, id: &str) {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .position(|s| s.as_deref() == Some(id));
        if let Some(slot) = slot.filter(|s| *s > 0) {
            let stub = stub_path(&self.state_dir, slot);
            let name = stub
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let put_back = self.vmm_path(&stub, &name, true).and_then(|path| {
                let body =
                    serde_json::json!({"drive_id": slot_drive_id(slot), "path_on_host": path})
                        .to_string();
                self.api_ok("PATCH", &format!("/drives/{}", slot_drive_id(slot)), &body)
            });
            if let Err(e) = put_back {
                log::warn!("putting drive slot {slot} back: {e}");
            }
            if let Some(j) = self.jail() {
                let _ = std::fs::remove_file(j.root.join(slot_image_name(slot)));
            }
            self.release_slot(slot);
        }
    }

    fn release_slot(&self, slot: usize) {
        if let Some(s) = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(slot)
        {
            *s = None;
        }
    }

    /// Ends flint (SIGTERM, then SIGKILL after a few seconds) and removes
    /// the VM's files.
    pub fn stop(&self) {
        let mut vmm = self.vmm.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(vmm.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = vmm.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Kills it if still there, reaps it, removes its jail.
        vmm.kill();
        let _ = std::fs::remove_dir_all(&self.sock_dir);
        for name in [
            "flint-boot.ext4",
            "flint-settings.stub",
            "flint-vm.json",
            "flint.pid",
            "flint.sockdir",
            "flint.jail",
        ] {
            let _ = std::fs::remove_file(self.state_dir.join(name));
        }
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner()).len();
        for slot in 1..slots {
            let _ = std::fs::remove_file(stub_path(&self.state_dir, slot));
        }
    }
}

/// The name in the jail of the image put on drive slot `slot`.
fn slot_image_name(slot: usize) -> String {
    format!("{}.img", slot_drive_id(slot))
}

fn stub_path(state_dir: &Path, slot: usize) -> PathBuf {
    state_dir.join(format!("flint-stub-{slot}"))
}

/// The first 12 characters of an id, for short socket paths.
fn short(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(12)
        .collect()
}

/// Cleanup after a dead shim (`delete` command, cwd = bundle): kills a
/// flint the bundle records and removes its sockets and files.
pub fn cleanup_bundle(bundle: &Path) {
    if let Some(pid) = std::fs::read_to_string(bundle.join("flint.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .filter(|p| *p > 1)
    {
        // Only if it still is a flint (the pid may have been reused).
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "flint" {
            // SAFETY: kill(2) with plain integers.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    if let Some(j) = std::fs::read(bundle.join("flint.jail"))
        .ok()
        .and_then(|t| serde_json::from_slice::<jail::JailInfo>(&t).ok())
        .filter(|j| j.root.starts_with(RUN_DIR))
    {
        // The VMM was just killed: `remove` waits for its cgroup to empty.
        if let Err(e) = jail::remove(&j) {
            log::warn!("removing the jail {}: {e}", j.root.display());
        }
    }
    if let Ok(dir) = std::fs::read_to_string(bundle.join("flint.sockdir")) {
        if dir.starts_with(RUN_DIR) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    if let Ok(entries) = std::fs::read_dir(bundle) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("flint") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

impl crate::process::GuestProbe for Vm {
    fn vm_running(&self) -> bool {
        self.exit_report().is_none()
    }

    fn pid_alive(&self, pid: u32) -> Result<bool, ShimError> {
        let all = self.agent()?.list_processes()?;
        Ok(all.iter().any(|p| p.pid as u32 == pid && p.state != 'Z'))
    }

    fn signal_pid(&self, pid: u32, signal: i32) -> Result<(), ShimError> {
        Ok(self.agent()?.signal(pid as i32, signal)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_map_to_devices_after_boot_and_settings() {
        assert_eq!(slot_device(0), "/dev/vdc");
        assert_eq!(slot_device(3), "/dev/vdf");
    }

    #[test]
    fn socket_dirs_stay_short() {
        assert_eq!(short(&"a".repeat(64)).len(), 12);
        assert_eq!(short("x/../y"), "xy");
    }
}
