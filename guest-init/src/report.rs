//! The end of a guest run: stop what is left, flush, report the exit status
//! to flint (status block and I/O port 0xf4) and reboot.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use guest_init::{exit_code, status_record, BLOCK_SIZE, SETTINGS_DEVICE};

use crate::{say, STDERR_TTY, STDOUT_TTY};

/// The port flint's exit-status device listens on.
const EXIT_STATUS_PORT: u16 = 0xf4;

/// Ends the run: stops leftover processes, flushes disks and serial ports,
/// reports `code` to flint and reboots. Never returns.
pub(crate) fn finish(code: u8) -> ! {
    // SAFETY: plain syscalls; as PID 1, kill(-1) signals every other process.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
        let mut status = 0;
        while libc::waitpid(-1, &mut status, 0) > 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
        libc::sync();
    }
    // Let the UARTs send what the command wrote before the VM goes away.
    for path in [STDOUT_TTY, STDERR_TTY] {
        if let Ok(tty) = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(path)
        {
            // SAFETY: tcdrain on an fd we hold.
            unsafe { libc::tcdrain(tty.as_raw_fd()) };
        }
    }
    let recorded = record_status(code);
    // The kernel's own "reboot: Restarting system" is an emergency message
    // that any console log level lets through; 0 silences even those.
    let _ = std::fs::write("/proc/sys/kernel/printk", "0");
    if let Err(port) = report_status(code) {
        // Expected on kernels without DEVPORT and X86_IOPL_IOPERM; the status
        // block then carries the status.
        if let Err(block) = recorded {
            say(&format!(
                "could not report exit status {code} to flint: status block: {block}; I/O port {EXIT_STATUS_PORT:#x}: {port}"
            ));
        }
    }
    loop {
        // SAFETY: reboot(2) with a valid command; it only returns on error.
        unsafe { libc::reboot(libc::RB_AUTOBOOT) };
        say(&format!("reboot: {}", io::Error::last_os_error()));
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// Writes `code` into the status block at the end of the settings drive and
/// flushes it to the host.
fn record_status(code: u8) -> io::Result<()> {
    let dev = OpenOptions::new().write(true).open(SETTINGS_DEVICE)?;
    // SAFETY: lseek on an fd we hold.
    let size = unsafe { libc::lseek(dev.as_raw_fd(), 0, libc::SEEK_END) };
    let offset = u64::try_from(size)
        .ok()
        .and_then(|s| s.checked_sub(BLOCK_SIZE as u64))
        .filter(|&o| o > 0)
        .ok_or_else(|| io::Error::other(format!("{SETTINGS_DEVICE} has no status block")))?;
    dev.write_all_at(&status_record(code), offset)?;
    dev.sync_all()
}

/// Writes `code` to flint's exit-status port, through `/dev/port` where the
/// kernel has it, else with `ioperm` and an `out` instruction. On success
/// flint ends the VM during the write.
fn report_status(code: u8) -> io::Result<()> {
    if let Ok(port) = OpenOptions::new().write(true).open("/dev/port") {
        return port.write_all_at(&[code], EXIT_STATUS_PORT.into());
    }
    // The `out` runs in a child process, so that if the CPU refuses the port
    // access (a fault) only the child dies, not PID 1.
    // SAFETY: the init is single-threaded, so the child may run any code;
    // it only makes syscalls and exits.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // SAFETY: ioperm grants this process access to the one port;
            // the `out` then writes one byte to it, touching no memory.
            unsafe {
                if libc::ioperm(EXIT_STATUS_PORT.into(), 1, 1) != 0 {
                    libc::_exit(1);
                }
                std::arch::asm!(
                    "out dx, al",
                    in("dx") EXIT_STATUS_PORT,
                    in("al") code,
                    options(nomem, nostack, preserves_flags)
                );
                libc::_exit(0);
            }
        }
        pid => {
            let mut status = 0;
            // SAFETY: waitpid writes only `status`.
            while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    return Err(e);
                }
            }
            match exit_code(status) {
                0 => Ok(()),
                1 => Err(io::Error::other("ioperm failed (no X86_IOPL_IOPERM?)")),
                n => Err(io::Error::other(format!(
                    "the port write faulted (status {n})"
                ))),
            }
        }
    }
}
