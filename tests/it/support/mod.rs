//! Shared test fixtures.

pub mod db;
pub mod http;
pub mod synapse;
