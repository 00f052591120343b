//! The local terminal for `-t` sessions: raw mode (restored on drop), its
//! size, and window-size changes (SIGWINCH) turned into a flag.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use agent_protocol::WindowSize;

/// Set by the SIGWINCH handler, cleared by whoever sends the new size.
static RESIZED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigwinch(_: libc::c_int) {
    RESIZED.store(true, Ordering::Relaxed);
}

/// Whether `fd` is a terminal.
pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// The size of the terminal on stdout (or stdin), else 24x80.
pub fn size() -> WindowSize {
    for fd in [1, 0] {
        // SAFETY: winsize is plain data the ioctl fills.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes only `ws`.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
            return WindowSize {
                rows: ws.ws_row,
                cols: ws.ws_col,
            };
        }
    }
    WindowSize { rows: 24, cols: 80 }
}

/// Starts watching for window-size changes.
pub fn watch_resize() {
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(
            libc::SIGWINCH,
            on_sigwinch as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
}

/// Whether the window size changed since the last call.
pub fn resized() -> bool {
    RESIZED.swap(false, Ordering::Relaxed)
}

/// Stdin in raw mode while this lives (nothing when stdin is no terminal).
pub struct RawMode {
    saved: Option<libc::termios>,
}

impl RawMode {
    /// Puts stdin in raw mode.
    pub fn enter() -> RawMode {
        if !is_tty(0) {
            return RawMode { saved: None };
        }
        // SAFETY: termios is plain data filled by tcgetattr before use; fd 0
        // is open.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return RawMode { saved: None };
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawMode { saved: Some(saved) }
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = self.saved {
            // SAFETY: restores the settings tcgetattr returned.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}
