//! flint's jailer (being written).
