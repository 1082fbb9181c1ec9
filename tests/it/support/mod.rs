//! Shared fixtures for the integration suites.
pub mod db;
