//! Long-lived containers (`flint container run -d`, `ps`, `exec`, `logs`,
//! `stop`, `kill`, `wait`, `rm`, `inspect`): one flint process per
//! container keeps its VM running after the CLI exits, with the main
//! process started through the guest agent. See `state` for the runtime
//! directory, `daemon` for the container's flint process, `ports` and
//! `volumes` for `-p` and `-v`, and `store` for the local image store.

pub mod create;
pub mod daemon;
pub mod logfile;
pub mod ports;
pub mod state;
pub mod store;
pub mod volumes;
