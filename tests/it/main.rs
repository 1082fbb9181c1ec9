//! The one integration test binary: linked once, modules per area.

mod cli;
mod pg_store;
mod serve;
mod support;
mod synapse_smoke;
