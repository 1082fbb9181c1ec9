//! Shared test fixtures.

pub mod http;
pub mod synapse;
