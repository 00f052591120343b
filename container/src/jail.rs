//! Running a VM's flint under the jailer, shared by `flint container` and
//! the containerd shim: one place that knows the jail's layout.
//!
//! The jailer (`flint-jailer`) makes `<chroot_base>/flint/<id>/root` (it
//! refuses a root that already exists, so nothing can be put there before
//! it runs), copies flint in, joins the cgroup `flint/<id>` with the
//! memory and CPU limits, pivots into the root, drops to the jail uid and
//! execs `flint run --api-sock /api.sock`. flint then waits on its API for
//! a config: meanwhile the host side puts each file the VM needs into the
//! root as a hard link (the chroot base is chosen on the disks' file
//! system; a file elsewhere is copied, which is refused for files over
//! [`MAX_COPY`], so a multi-GiB disk is never copied), chowns what the VMM
//! writes to the jail uid, and configures the VM through the API with paths
//! inside the jail (`/rootfs.ext4`, `/vsock.sock`, ...), then starts it.
//! flint's own seccomp filters are on as always.
//!
//! Ids: each jail gets its own unprivileged uid (= gid) from
//! [`UID_BASE`]..[`UID_BASE`]+[`UID_COUNT`], so two compromised VMMs cannot
//! signal or ptrace each other. A uid is taken by creating
//! `<UID_DIR>/<uid>` with `O_EXCL` (atomic, no lock needed) and given back
//! when the jail is removed.
//!
//! Not root, `--no-jail` or `FLINT_NO_JAIL=1`: flint runs unjailed as a
//! child process with host paths (non-root users cannot jail).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::ContainerError;

/// First uid (and gid) given to jails.
pub const UID_BASE: u32 = 10_000_000;
/// How many uids jails may use.
pub const UID_COUNT: u32 = 1_000_000;
/// Where taken uids are recorded (one file per uid).
pub const UID_DIR: &str = "/run/flint/jail-uids";
/// The cgroup (in each hierarchy) under which jails' cgroups are made.
pub const PARENT_CGROUP: &str = "flint";
/// Memory the VMM itself may use beyond the guest's RAM (its binary, page
/// tables, device buffers), in MiB.
pub const VMM_HEADROOM_MIB: u64 = 256;
/// Largest file copied into a jail when it cannot be hard-linked.
pub const MAX_COPY: u64 = 256 << 20;
/// How long the jailed flint may take to open its API socket.
const API_DEADLINE: Duration = Duration::from_secs(60);

fn io_at(what: String) -> impl FnOnce(std::io::Error) -> ContainerError {
    move |source| ContainerError::Io { what, source }
}

fn usage(message: impl Into<String>) -> ContainerError {
    ContainerError::Usage(message.into())
}

/// Why the VMM runs unjailed, or `None` when it is to be jailed.
pub fn unjailed_reason(no_jail_flag: bool) -> Option<String> {
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: only root can jail".into());
    }
    if no_jail_flag {
        return Some("--no-jail".into());
    }
    if std::env::var_os("FLINT_NO_JAIL").is_some_and(|v| v == "1") {
        return Some("FLINT_NO_JAIL=1".into());
    }
    None
}

/// The jailer: `$FLINT_JAILER`, else `flint-jailer` next to `flint` or next
/// to this executable, else `flint jail` (the same jailer inside flint).
/// The program and the arguments that come before the jailer's options.
pub fn find_jailer(flint: &Path) -> (PathBuf, Vec<String>) {
    if let Some(p) = std::env::var_os("FLINT_JAILER").filter(|p| !p.is_empty()) {
        return (p.into(), Vec::new());
    }
    let beside = |p: &Path| p.parent().map(|d| d.join("flint-jailer"));
    let exe = std::env::current_exe().ok();
    beside(flint)
        .into_iter()
        .chain(exe.as_deref().and_then(beside))
        .find(|p| p.is_file())
        .map(|p| (p, Vec::new()))
        .unwrap_or_else(|| (flint.to_owned(), vec!["jail".to_owned()]))
}

/// The cgroup settings for a VM of `memory_mib` and `vcpus` (v2 names; the
/// jailer translates them on a v1 host).
pub fn cgroup_settings(memory_mib: u64, vcpus: u64) -> Vec<String> {
    let bytes = (memory_mib + VMM_HEADROOM_MIB) << 20;
    vec![
        format!("memory.max={bytes}"),
        format!("cpu.max={} 100000", vcpus.max(1) * 100_000),
    ]
}

/// Takes the first free uid of `base..base+count` for `owner` (the jail
/// id: [`remove`] gives back only a claim that names its jail).
pub fn allocate_uid(dir: &Path, base: u32, count: u32, owner: &str) -> Result<u32, ContainerError> {
    std::fs::create_dir_all(dir).map_err(io_at(format!("creating {}", dir.display())))?;
    for uid in base..base.saturating_add(count) {
        let claim = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join(uid.to_string()));
        match claim {
            Ok(mut f) => {
                let _ = f.write_all(owner.as_bytes());
                return Ok(uid);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_at(format!("claiming uid {uid} in {}", dir.display()))(e)),
        }
    }
    Err(usage(format!(
        "no free jail uid in {base}..{}",
        base + count
    )))
}

/// What `flint-jailer` is started with.
#[derive(Debug, Clone)]
pub struct JailSpec {
    /// 1 to 64 characters of `[A-Za-z0-9-]`.
    pub id: String,
    pub flint: PathBuf,
    /// The jailer and the arguments before its options (see [`find_jailer`]).
    pub jailer: (PathBuf, Vec<String>),
    pub uid: u32,
    pub gid: u32,
    /// Chosen on the disks' file system, so they can be hard-linked.
    pub chroot_base: PathBuf,
    pub memory_mib: u64,
    pub vcpus: u64,
}

/// A jail as recorded for `inspect` and for its removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailInfo {
    pub id: String,
    /// The VMM's `/`.
    pub root: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// In each cgroup hierarchy, relative to its mount.
    pub cgroup: String,
    pub cgroup_settings: Vec<String>,
    /// Where the uid's claim file is (removed with the jail).
    pub uid_dir: PathBuf,
}

/// A file the VM uses, by its host path and its name inside the jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailFile {
    pub host: PathBuf,
    pub name: String,
    /// The VMM writes it (a read-write drive): chowned to the jail uid.
    pub writable: bool,
}

/// Names the jailer itself uses in the root.
const RESERVED: &[&str] = &[
    "flint",
    "dev",
    "lib",
    "lib64",
    "usr",
    "api.sock",
    "vsock.sock",
];

/// Rewrites VM config `config` (host paths) for a jail: kernel, initrd and
/// drives become `/<file name>` (prefixed with the drive id on a clash),
/// the vsock socket `/vsock.sock`, virtio-fs sockets `/<socket name>`.
/// Returns the new config and the files to put into the jail (virtio-fs
/// sockets are not among them: their daemons create them in the root).
pub fn jail_config(
    config: &serde_json::Value,
) -> Result<(serde_json::Value, Vec<JailFile>), ContainerError> {
    let mut out = config.clone();
    let mut files: Vec<JailFile> = Vec::new();
    let mut add = |host: &str, prefix: &str, writable: bool| -> Result<String, ContainerError> {
        let path = PathBuf::from(host);
        let base = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| usage(format!("{host}: not a file name")))?;
        let mut name = base.clone();
        if RESERVED.contains(&name.as_str()) || files.iter().any(|f| f.name == name) {
            name = format!("{prefix}-{base}");
        }
        if files.iter().any(|f| f.name == name) {
            return Err(usage(format!("two VM files named {name}")));
        }
        files.push(JailFile {
            host: path,
            name: name.clone(),
            writable,
        });
        Ok(format!("/{name}"))
    };
    for key in ["kernel_image_path", "initrd_path"] {
        if let Some(p) = config["boot-source"][key].as_str() {
            out["boot-source"][key] = add(p, "boot", false)?.into();
        }
    }
    if let Some(drives) = config["drives"].as_array() {
        for (i, d) in drives.iter().enumerate() {
            if let Some(p) = d["path_on_host"].as_str() {
                let ro = d["is_read_only"].as_bool().unwrap_or(false);
                let id = d["drive_id"].as_str().unwrap_or("drive");
                out["drives"][i]["path_on_host"] = add(p, id, !ro)?.into();
            }
        }
    }
    if config["vsock"].is_object() {
        out["vsock"]["uds_path"] = "/vsock.sock".into();
    }
    if let Some(fs) = config["fs"].as_array() {
        for (i, f) in fs.iter().enumerate() {
            let name = f["socket"]
                .as_str()
                .and_then(|s| Path::new(s).file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| usage("a virtio-fs device without a socket"))?;
            out["fs"][i]["socket"] = format!("/{name}").into();
        }
    }
    Ok((out, files))
}

/// Puts `file` into `root`: a hard link, else (another file system) a
/// copy of a file up to [`MAX_COPY`]; chowned to `uid:gid` when the VMM
/// writes it. Returns whether it was copied.
pub fn place(root: &Path, file: &JailFile, uid: u32, gid: u32) -> Result<bool, ContainerError> {
    let dst = root.join(&file.name);
    let copied = match std::fs::hard_link(&file.host, &dst) {
        Ok(()) => false,
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let size = std::fs::metadata(&file.host)
                .map_err(io_at(format!("reading {}", file.host.display())))?
                .len();
            if size > MAX_COPY {
                return Err(usage(format!(
                    "{} is on another file system than the jail and too big to copy ({size} bytes): \
                     keep disks and the jail's chroot base on one file system",
                    file.host.display()
                )));
            }
            std::fs::copy(&file.host, &dst).map_err(io_at(format!(
                "copying {} into the jail",
                file.host.display()
            )))?;
            true
        }
        Err(e) => {
            return Err(io_at(format!(
                "linking {} into the jail",
                file.host.display()
            ))(e))
        }
    };
    let meta = std::fs::metadata(&dst).map_err(io_at(format!("reading {}", dst.display())))?;
    if file.writable || (copied && meta.mode() & 0o004 == 0) {
        std::os::unix::fs::chown(&dst, Some(uid), Some(gid))
            .map_err(io_at(format!("chown of {}", dst.display())))?;
    } else if meta.mode() & 0o004 == 0 {
        return Err(usage(format!(
            "{} is not readable by the jail's uid (make it world-readable or run with --no-jail)",
            file.host.display()
        )));
    }
    Ok(copied)
}

/// A VM's flint process, jailed or not, with its API socket.
pub struct Vmm {
    pub child: Child,
    /// `None` when unjailed.
    pub jail: Option<JailInfo>,
    /// The API socket, as the host reaches it.
    pub api_sock: PathBuf,
}

/// Starts flint under the jailer (`jail` given) or unjailed with its API
/// socket at `api_sock`; waits for the API. `out` gets its stdout and
/// stderr (the guest's console).
pub fn spawn(
    jail: Option<(&JailSpec, &Path)>,
    flint: &Path,
    api_sock: &Path,
    out: std::fs::File,
) -> Result<Vmm, ContainerError> {
    let err = out
        .try_clone()
        .map_err(io_at("opening the console log".into()))?;
    let flint_args = ["run", "--api-sock"];
    let (mut cmd, info) = match jail {
        Some((spec, uid_dir)) => {
            let settings = cgroup_settings(spec.memory_mib, spec.vcpus);
            std::fs::create_dir_all(&spec.chroot_base)
                .map_err(io_at(format!("creating {}", spec.chroot_base.display())))?;
            let mut cmd = Command::new(&spec.jailer.0);
            cmd.args(&spec.jailer.1)
                .arg("--id")
                .arg(&spec.id)
                .arg("--exec-file")
                .arg(&spec.flint)
                .args([
                    "--uid",
                    &spec.uid.to_string(),
                    "--gid",
                    &spec.gid.to_string(),
                ])
                .arg("--chroot-base")
                .arg(&spec.chroot_base)
                .args(["--parent-cgroup", PARENT_CGROUP])
                // Allocated uids have no passwd entry.
                .arg("--unnamed-ids");
            for s in &settings {
                cmd.args(["--cgroup", s]);
            }
            cmd.arg("--").args(flint_args).arg("/api.sock");
            let info = JailInfo {
                id: spec.id.clone(),
                root: jailer::jail_root(&spec.chroot_base, &spec.flint, &spec.id),
                uid: spec.uid,
                gid: spec.gid,
                cgroup: format!("{PARENT_CGROUP}/{}", spec.id),
                cgroup_settings: settings,
                uid_dir: uid_dir.to_owned(),
            };
            (cmd, Some(info))
        }
        None => {
            let _ = std::fs::remove_file(api_sock);
            let mut cmd = Command::new(flint);
            cmd.args(flint_args).arg(api_sock);
            (cmd, None)
        }
    };
    cmd.arg("--no-console-input")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let child = cmd.spawn().map_err(io_at(format!(
        "starting {}",
        cmd.get_program().to_string_lossy()
    )))?;
    let api_sock = match &info {
        Some(j) => j.root.join("api.sock"),
        None => api_sock.to_owned(),
    };
    let mut vmm = Vmm {
        child,
        jail: info,
        api_sock,
    };
    let deadline = Instant::now() + API_DEADLINE;
    while UnixStream::connect(&vmm.api_sock).is_err() {
        if let Ok(Some(status)) = vmm.child.try_wait() {
            let _ = vmm.remove_jail();
            return Err(usage(format!(
                "flint ended before its API was up ({status})"
            )));
        }
        if Instant::now() > deadline {
            vmm.kill();
            return Err(usage("flint's API did not come up"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(vmm)
}

/// Maps a config section to its API endpoint(s) (`PUT`).
fn endpoints(
    key: &str,
    value: &serde_json::Value,
) -> Result<Vec<(String, String)>, ContainerError> {
    let each = |id_key: &str, prefix: &str| -> Result<Vec<(String, String)>, ContainerError> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .map(|item| {
                let id = item[id_key]
                    .as_str()
                    .ok_or_else(|| usage(format!("{key}: an entry without {id_key}")))?;
                Ok((format!("/{prefix}/{id}"), item.to_string()))
            })
            .collect()
    };
    Ok(match key {
        "drives" => each("drive_id", "drives")?,
        "network-interfaces" => each("iface_id", "network-interfaces")?,
        "fs" => each("tag", "fs")?,
        "pmem" => each("id", "pmem")?,
        "boot-source" | "machine-config" | "cpu-config" | "vsock" | "entropy" | "serial"
        | "balloon" | "logger" | "metrics" | "mmds-config" | "memory-hotplug" => {
            let path = match key {
                "mmds-config" => "/mmds/config".into(),
                "memory-hotplug" => "/hotplug/memory".into(),
                _ => format!("/{key}"),
            };
            // A section given as null is not there.
            if value.is_null() {
                return Ok(Vec::new());
            }
            vec![(path, value.to_string())]
        }
        other => {
            return Err(ContainerError::Internal(format!(
                "no API endpoint for config section {other}"
            )))
        }
    })
}

/// One request on flint's API socket `sock`: the status code and body.
pub fn api_request(
    sock: &Path,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), ContainerError> {
    let mut conn =
        UnixStream::connect(sock).map_err(io_at(format!("connecting to {}", sock.display())))?;
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io_at("API socket".into()))?;
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(io_at("writing to flint's API".into()))?;
    let mut reply = Vec::new();
    conn.take(1 << 20)
        .read_to_end(&mut reply)
        .map_err(io_at("reading flint's API answer".into()))?;
    let reply = String::from_utf8_lossy(&reply);
    let code = reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| usage(format!("bad API answer {:?}", reply.lines().next())))?;
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

impl Vmm {
    /// The pid of the VMM (the jailer execs flint in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A successful API request.
    pub fn api(&self, method: &str, path: &str, body: &str) -> Result<(), ContainerError> {
        match api_request(&self.api_sock, method, path, body)? {
            (200..=299, _) => Ok(()),
            (code, body) => Err(usage(format!(
                "flint refused {method} {path}: {code} {body}"
            ))),
        }
    }

    /// Where a host-side file named `name` in the VMM's root is (the root
    /// is the host's `/` when unjailed: `name` is then a host path).
    pub fn host_path(&self, name: &str) -> PathBuf {
        match &self.jail {
            Some(j) => j.root.join(name.trim_start_matches('/')),
            None => PathBuf::from(name),
        }
    }

    /// Puts the files of `config` (host paths) into the jail; returns the
    /// config as the VMM must see it (unchanged when unjailed).
    pub fn prepare(&self, config: &serde_json::Value) -> Result<serde_json::Value, ContainerError> {
        let Some(j) = &self.jail else {
            return Ok(config.clone());
        };
        let (jailed, files) = jail_config(config)?;
        for f in &files {
            place(&j.root, f, j.uid, j.gid)?;
        }
        Ok(jailed)
    }

    /// Links (or copies) one more host file into the jail as `name`, e.g. a
    /// drive swapped in later; the path to give the VMM.
    pub fn add_file(
        &self,
        host: &Path,
        name: &str,
        writable: bool,
    ) -> Result<PathBuf, ContainerError> {
        let Some(j) = &self.jail else {
            return Ok(host.to_owned());
        };
        let dst = j.root.join(name);
        let _ = std::fs::remove_file(&dst);
        let file = JailFile {
            host: host.to_owned(),
            name: name.to_owned(),
            writable,
        };
        place(&j.root, &file, j.uid, j.gid)?;
        Ok(Path::new("/").join(name))
    }

    /// Makes a socket a daemon created in the jail usable by the VMM.
    pub fn give_socket(&self, host: &Path) -> Result<(), ContainerError> {
        if let Some(j) = &self.jail {
            std::os::unix::fs::chown(host, Some(j.uid), Some(j.gid))
                .map_err(io_at(format!("chown of {}", host.display())))?;
        }
        Ok(())
    }

    /// Configures the VM from `config` (as the VMM sees it) and boots it.
    pub fn start(&self, config: &serde_json::Value) -> Result<(), ContainerError> {
        let sections = config
            .as_object()
            .ok_or_else(|| usage("the VM config is not an object"))?;
        // The machine first: later sections are checked against it.
        let mut keys: Vec<&String> = sections.keys().collect();
        keys.sort_by_key(|k| (k.as_str() != "machine-config", k.as_str() != "boot-source"));
        for key in keys {
            for (path, body) in endpoints(key, &sections[key])? {
                self.api("PUT", &path, &body)?;
            }
        }
        self.api("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#)
    }

    /// Ends the VMM (SIGKILL) and reaps it; removes the jail.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.remove_jail();
    }

    /// Removes the jail (once the VMM has ended).
    pub fn remove_jail(&self) -> Result<(), ContainerError> {
        match &self.jail {
            Some(j) => remove(j),
            None => Ok(()),
        }
    }
}

impl Drop for Vmm {
    /// A VMM nobody holds any more (its owner failed or ended) does not
    /// run on, jailed or not.
    fn drop(&mut self) {
        self.kill();
    }
}

/// The cgroup directories of `cgroup` in every mounted hierarchy.
fn cgroup_dirs(cgroup: &str) -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2"))
                .then(|| Path::new(f[1]).join(cgroup))
        })
        .filter(|d| d.is_dir())
        .collect()
}

/// The mount points at or below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(PathBuf::from))
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found
}

/// Removes jail `j` whole: any mount below it, its directory (the links
/// in it, not the files they point at), its cgroups and its uid claim.
pub fn remove(j: &JailInfo) -> Result<(), ContainerError> {
    let top = j.root.parent().unwrap_or(&j.root).to_owned();
    for m in mounts_under(&top) {
        let c = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()).unwrap_or_default();
        // SAFETY: a valid C string; detaching a mount we own.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    if top.exists() {
        std::fs::remove_dir_all(&top).map_err(io_at(format!("removing {}", top.display())))?;
    }
    for d in cgroup_dirs(&j.cgroup) {
        // A cgroup is removed once empty; the VMM may take a moment to go.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&d).is_err() && d.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Only our own claim: once given back, the uid may be another jail's.
    let claim = j.uid_dir.join(j.uid.to_string());
    if std::fs::read_to_string(&claim).is_ok_and(|owner| owner == j.id) {
        let _ = std::fs::remove_file(claim);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
