//! `flint container run` (being written).
