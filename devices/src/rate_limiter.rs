//! Token-bucket rate limiting of device I/O (bytes and operations).
