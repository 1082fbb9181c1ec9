//! Shared test fixtures.

pub mod binary;
pub mod chaos;
pub mod db;
pub mod fake;
pub mod http;
pub mod proxy;
pub mod synapse;
pub mod v2;
