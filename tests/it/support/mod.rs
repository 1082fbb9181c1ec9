//! Shared test support: clients, servers and fixtures used by the test modules.

pub mod http;
pub mod synapse;
