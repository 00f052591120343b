//! The legacy PC devices a Linux guest without ACPI expects on port I/O.

pub mod exit_status;
pub mod i8042;
pub mod serial;

pub use exit_status::ExitStatusPort;
pub use i8042::I8042;
pub use serial::Serial;
