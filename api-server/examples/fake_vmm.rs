//! Serves flint's API with a fake VMM behind it (no VM is run), so clients,
//! `scripts/api-fuzz` and the spec can be tried without KVM:
//!
//! ```text
//! cargo run -p api-server --example fake_vmm -- run --api-sock /tmp/flint.sock
//! ```
//!
//! Takes the same `run --api-sock PATH` arguments as `flint` (others are
//! ignored) so it can stand in for it. Runs until killed.

#[path = "../tests/common/fake_vmm.rs"]
mod fake_vmm;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let socket = args
        .iter()
        .position(|a| a == "--api-sock")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let Some(socket) = socket else {
        eprintln!("usage: fake_vmm run --api-sock PATH");
        return ExitCode::from(2);
    };
    let (tx, rx) = mpsc::channel();
    let wake = match EventFd::new(0).and_then(|fd| Ok((fd.try_clone()?, fd))) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("fake_vmm: eventfd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match api_server::spawn_api_server(&socket, tx, wake.0) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("fake_vmm: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("fake_vmm: serving the API on {}", socket.display());
    let seen = Mutex::new(Vec::new());
    fake_vmm::serve(rx, &wake.1, Duration::ZERO, &seen);
    server.shutdown();
    ExitCode::SUCCESS
}
