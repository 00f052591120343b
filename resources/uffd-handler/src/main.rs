//! `uffd-handler SOCKET MEMORY_FILE`: serves one VMM's guest memory from a
//! snapshot's memory file, for `PUT /snapshot/load` with
//! `mem_backend: {"backend_type": "Uffd", "backend_path": SOCKET}` (flint or
//! Firecracker). Listens on SOCKET, accepts one VMM, serves its faults until
//! it exits, then prints what it served and exits too.

use std::os::unix::net::UnixListener;
use std::process::ExitCode;

use uffd_handler::{receive, Backing, Handler, HandlerError};

fn run(socket: &str, memory: &str) -> Result<(), HandlerError> {
    let file =
        std::fs::File::open(memory).map_err(|e| HandlerError::Io("opening the memory file", e))?;
    let backing = Backing::map(&file)?;
    let listener =
        UnixListener::bind(socket).map_err(|e| HandlerError::Io("binding the socket", e))?;
    println!("uffd-handler: listening on {socket}, serving {memory}");
    let (mut peer, _) = listener
        .accept()
        .map_err(|e| HandlerError::Io("accepting the VMM", e))?;
    let (regions, uffd) = receive(&mut peer, backing.len())?;
    println!("uffd-handler: {} regions: {regions:?}", regions.len());
    let mut handler = Handler::new(uffd, regions, &backing);
    let result = handler.run(&peer);
    println!(
        "uffd-handler: the VMM went away; {} pages copied, {} zeroed",
        handler.copied, handler.zeroed
    );
    result
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, memory] = &args[..] else {
        eprintln!("usage: uffd-handler SOCKET MEMORY_FILE");
        return ExitCode::from(2);
    };
    match run(socket, memory) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uffd-handler: {e}");
            ExitCode::FAILURE
        }
    }
}
