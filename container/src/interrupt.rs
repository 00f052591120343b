//! Stopping a build cleanly on SIGINT, SIGTERM or SIGHUP.
//!
//! Building a root image can take minutes and gigabytes of scratch space.
//! While [`SignalGuard`] is alive, those signals only set a flag (the
//! handler does nothing else, so it is async-signal-safe); the unpack loop,
//! the copy loops and the waits for `mkfs.ext4`/`debugfs` call [`check`]
//! and return [`ContainerError::Interrupted`], so the scratch directory's
//! guard removes it on the way out. Dropping the guard restores the
//! previous dispositions (the VMM installs its own for the boot).

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

use crate::ContainerError;

/// The signal that arrived while a guard was installed (0: none).
static PENDING: AtomicI32 = AtomicI32::new(0);

/// The signals that stop a build.
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn on_signal(signal: libc::c_int) {
    PENDING.store(signal, Ordering::SeqCst);
}

/// The dispositions replaced by the first live guard, and how many guards
/// are alive (builds may overlap in one process, e.g. in tests).
static INSTALLED: Mutex<(usize, Vec<(libc::c_int, libc::sigaction)>)> = Mutex::new((0, Vec::new()));

/// Catches SIGINT/SIGTERM/SIGHUP into a flag until dropped.
pub struct SignalGuard(());

impl SignalGuard {
    /// Installs the flag-setting handler (clearing any earlier flag).
    pub fn install() -> SignalGuard {
        let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
        installed.0 += 1;
        if installed.0 == 1 {
            PENDING.store(0, Ordering::SeqCst);
            for signal in SIGNALS {
                // SAFETY: a zeroed sigaction is valid; the handler only
                // stores to an atomic, which is async-signal-safe; `old` is
                // written by the kernel.
                unsafe {
                    let mut action: libc::sigaction = std::mem::zeroed();
                    action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                    action.sa_flags = libc::SA_RESTART;
                    libc::sigemptyset(&mut action.sa_mask);
                    let mut old: libc::sigaction = std::mem::zeroed();
                    if libc::sigaction(signal, &action, &mut old) == 0 {
                        installed.1.push((signal, old));
                    }
                }
            }
        }
        SignalGuard(())
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
        installed.0 -= 1;
        if installed.0 == 0 {
            for (signal, old) in installed.1.drain(..) {
                // SAFETY: `old` is the disposition the kernel returned
                // earlier.
                unsafe {
                    libc::sigaction(signal, &old, std::ptr::null_mut());
                }
            }
        }
    }
}

/// The signal that asked the build to stop, if one did.
pub fn pending() -> Option<i32> {
    match PENDING.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// `Err(Interrupted)` once a stop signal has arrived.
pub fn check() -> Result<(), ContainerError> {
    match pending() {
        None => Ok(()),
        Some(signal) => Err(ContainerError::Interrupted(signal)),
    }
}

/// The name of a stop signal.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}
