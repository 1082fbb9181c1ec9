//! The hot state and its persistence.
pub mod persist;
pub mod pg;
pub mod tokens;
