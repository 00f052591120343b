//! flint's PID 1 for `flint container run` guests.
//!
//! Mounts /proc, /sys, /dev and /tmp, reads the run's settings from
//! `/dev/vdb`, runs the command with stdout on `/dev/ttyS0` (flint's stdout)
//! and stderr on `/dev/ttyS1` (flint's stderr), reaps every child, and
//! reports the command's exit status to flint before rebooting: in the status
//! block at the end of the settings drive, and through I/O port 0xf4 where the
//! kernel lets user space reach it (`/dev/port` or `ioperm`). Failures of its
//! own are printed as `flint-init: ...` on `/dev/ttyS1` and reported as 126
//! (or 127 for a command that is not found), like a shell.
//!
//! In agent mode (settings `"mode": "agent"` or the kernel command-line word
//! `flint.agent=1`) it sets the guest up the same way, then runs the guest
//! agent as a child and supervises it (see `supervisor`). The same binary
//! is the agent when `FLINT_AGENT_LISTEN` is set (no PID 1 duties then: this
//! is also how the tests run it on the host).

mod report;
mod supervisor;

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use guest_init::agent::{self, Listen};

use guest_init::{
    agent_from_cmdline, exit_code, parse_settings, resolve_user, Credentials, Mode, Settings,
    SETTINGS_DEVICE,
};
use report::finish;

/// The guest's stdout: COM1.
pub(crate) const STDOUT_TTY: &str = "/dev/ttyS0";
/// The guest's stderr: COM2.
pub(crate) const STDERR_TTY: &str = "/dev/ttyS1";
/// Reported when the init itself fails (a shell's "cannot execute").
const STATUS_INIT_FAILED: u8 = 126;
/// Reported when the command does not exist (a shell's "not found").
const STATUS_NOT_FOUND: u8 = 127;

fn main() {
    if let Some(listen) = std::env::var_os(agent::LISTEN_ENV) {
        let served = listen
            .to_str()
            .ok_or_else(|| format!("{} is not UTF-8", agent::LISTEN_ENV))
            .and_then(Listen::parse)
            .and_then(|listen| agent::serve(&listen));
        if let Err(e) = served {
            eprintln!("flint-agent: {e}");
        }
        std::process::exit(1);
    }
    if let Some(listen) = std::env::var_os(supervisor::SUPERVISE_ENV) {
        // SAFETY: prctl with plain integers: orphans are reparented to us,
        // as they would be to PID 1.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
        ON_HOST.store(true, std::sync::atomic::Ordering::Relaxed);
        let code = supervisor::supervise(&listen.to_string_lossy());
        std::process::exit(code.into());
    }
    std::panic::set_hook(Box::new(|info| {
        say(&format!("init panicked: {info}"));
        finish(STATUS_INIT_FAILED);
    }));
    let code = match run() {
        Ok(code) => code,
        Err((code, message)) => {
            say(&message);
            code
        }
    };
    finish(code);
}

/// Set when running on the host for tests: the serial ports are then not
/// ours, and messages go to stderr.
pub(crate) static ON_HOST: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Prints `flint-init: <message>` on the guest's stderr (ttyS1), or on the
/// console when ttyS1 cannot be opened.
pub(crate) fn say(message: &str) {
    let line = format!("flint-init: {message}\n");
    if ON_HOST.load(std::sync::atomic::Ordering::Relaxed) {
        let _ = io::stderr().write_all(line.as_bytes());
        return;
    }
    let written = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(STDERR_TTY)
        .and_then(|mut tty| tty.write_all(line.as_bytes()));
    if written.is_err() {
        let _ = io::stderr().write_all(line.as_bytes());
    }
}

type Failure = (u8, String);

fn fail(message: impl Into<String>) -> Failure {
    (STATUS_INIT_FAILED, message.into())
}

fn run() -> Result<u8, Failure> {
    mount_filesystems()?;
    let cmdline_port = std::fs::read_to_string("/proc/cmdline")
        .ok()
        .and_then(|c| agent_from_cmdline(&c));
    let settings = match (read_settings(), cmdline_port) {
        (Ok(settings), _) => settings,
        (Err((_, e)), Some(port)) => {
            say(&format!(
                "no run settings ({e}); serving the agent with defaults"
            ));
            Settings {
                mode: Mode::Agent,
                agent_port: port,
                args: Vec::new(),
                env: Vec::new(),
                cwd: "/".into(),
                hostname: "flint".into(),
                user: None,
                net: Vec::new(),
                volumes: Vec::new(),
            }
        }
        (Err(e), None) => return Err(e),
    };
    mount_volumes(&settings)?;
    apply_settings(&settings)?;
    let agent_port = match settings.mode {
        Mode::Agent => Some(settings.agent_port),
        Mode::Run => cmdline_port,
    };
    if let Some(port) = agent_port {
        return Ok(supervisor::supervise(&format!("vsock:{port}")));
    }
    let stdout = open_tty(STDOUT_TTY)?;
    let stderr = open_tty(STDERR_TTY)?;
    let child = spawn(&settings, stdout, stderr)?;
    Ok(wait_for(child))
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in a constant")
}

fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let _ = std::fs::DirBuilder::new().mode(0o755).create(target);
    let (source, target, fstype, data) = (cstr(source), cstr(target), cstr(fstype), cstr(data));
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn mount_filesystems() -> Result<(), Failure> {
    let secure = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // The kernel mounts devtmpfs on /dev itself (DEVTMPFS_MOUNT) when the
    // root has a /dev; EBUSY then just means it is there already.
    match mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755") {
        Err(e) if e.raw_os_error() != Some(libc::EBUSY) => {
            return Err(fail(format!("mounting /dev: {e}")))
        }
        _ => {}
    }
    let optional = [
        ("proc", "/proc", "proc", secure, ""),
        ("sysfs", "/sys", "sysfs", secure, ""),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=1777",
        ),
        ("tmpfs", "/dev/shm", "tmpfs", secure, "mode=1777"),
        // For the agent's tty sessions (/dev/ptmx finds its /dev/pts).
        (
            "devpts",
            "/dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "ptmxmode=0666,mode=0620",
        ),
    ];
    for (source, target, fstype, flags, data) in optional {
        match mount(source, target, fstype, flags, data) {
            Err(e) if e.raw_os_error() != Some(libc::EBUSY) => {
                say(&format!("warning: mounting {target}: {e}"))
            }
            _ => {}
        }
    }
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    Ok(())
}

/// Mounts the virtio-fs shares the settings list (`run -v`).
fn mount_volumes(settings: &Settings) -> Result<(), Failure> {
    for v in &settings.volumes {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&v.path)
            .map_err(|e| fail(format!("volume mount point {}: {e}", v.path)))?;
        let flags = match v.read_only {
            true => libc::MS_RDONLY,
            false => 0,
        };
        mount(&v.tag, &v.path, "virtiofs", flags, "")
            .map_err(|e| fail(format!("mounting volume {} on {}: {e}", v.tag, v.path)))?;
    }
    Ok(())
}

/// Opens a serial port for the command and puts it in raw mode, so output
/// reaches flint byte for byte (no LF -> CRLF).
fn open_tty(path: &str) -> Result<File, Failure> {
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
        .map_err(|e| fail(format!("opening {path}: {e}")))?;
    // SAFETY: termios is plain data, filled by tcgetattr before use; the fd
    // is open for the duration of the calls.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(tty.as_raw_fd(), &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            if libc::tcsetattr(tty.as_raw_fd(), libc::TCSANOW, &t) != 0 {
                say(&format!(
                    "warning: raw mode on {path}: {}",
                    io::Error::last_os_error()
                ));
            }
        }
    }
    Ok(tty)
}

fn read_settings() -> Result<Settings, Failure> {
    let mut raw = Vec::new();
    File::open(SETTINGS_DEVICE)
        .and_then(|f| f.take(16 << 20).read_to_end(&mut raw))
        .map_err(|e| {
            fail(format!(
                "reading the run settings from {SETTINGS_DEVICE}: {e}"
            ))
        })?;
    parse_settings(&raw).map_err(|e| fail(format!("bad run settings in {SETTINGS_DEVICE}: {e}")))
}

fn apply_settings(settings: &Settings) -> Result<(), Failure> {
    let name = settings.hostname.as_bytes();
    // SAFETY: the pointer and length describe `name`.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        say(&format!(
            "warning: setting the hostname: {}",
            io::Error::last_os_error()
        ));
    }
    for iface in std::iter::once("lo").chain(settings.net.iter().map(String::as_str)) {
        if let Err(e) = interface_up(iface) {
            say(&format!("warning: bringing {iface} up: {e}"));
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&settings.cwd)
        .and_then(|()| std::env::set_current_dir(&settings.cwd))
        .map_err(|e| fail(format!("working directory {}: {e}", settings.cwd)))
}

/// Sets IFF_UP on a network interface.
fn interface_up(name: &str) -> io::Result<()> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "name too long"));
    }
    // SAFETY: a plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket we own; it is closed below.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; the name is NUL-terminated (zeroed and
    // shorter than IFNAMSIZ); the ioctls read and write only the struct.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) != 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn spawn(settings: &Settings, stdout: File, stderr: File) -> Result<libc::pid_t, Failure> {
    let read = |path| std::fs::read_to_string(path).unwrap_or_default();
    let creds = resolve_user(
        settings.user.as_deref(),
        &read("/etc/passwd"),
        &read("/etc/group"),
    )
    .map_err(|e| {
        fail(format!(
            "user {}: {e}",
            settings.user.as_deref().unwrap_or("root")
        ))
    })?;
    let program = &settings.args[0];
    let mut command = Command::new(program);
    command
        .args(&settings.args[1..])
        .env_clear()
        .envs(
            settings
                .env
                .iter()
                .map(|kv| kv.split_once('=').unwrap_or((kv, ""))),
        )
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    if !settings.env.iter().any(|kv| kv.starts_with("HOME=")) {
        command.env("HOME", &creds.home);
    }
    if creds.uid != 0 || creds.gid != 0 || creds.groups != [0] {
        let Credentials {
            uid, gid, groups, ..
        } = creds;
        // SAFETY: the closure runs in the child between fork and exec and
        // makes only async-signal-safe system calls on memory allocated
        // before the fork.
        unsafe {
            command.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    match command.spawn() {
        Ok(child) => Ok(child.id() as libc::pid_t),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err((STATUS_NOT_FOUND, format!("{program}: command not found")))
        }
        Err(e) => Err(fail(format!("{program}: cannot execute: {e}"))),
    }
}

/// Reaps children until `main` exits; returns its status as a shell would.
pub(crate) fn wait_for(main: libc::pid_t) -> u8 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only `status`.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == main {
            return exit_code(status);
        }
        if pid < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // No children left at all: should not happen while `main` runs.
            say("lost track of the command");
            return STATUS_INIT_FAILED;
        }
    }
}
