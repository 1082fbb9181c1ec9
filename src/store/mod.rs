//! The hot state and its persistence.
pub mod persist;
