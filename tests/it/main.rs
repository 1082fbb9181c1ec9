//! The one integration test binary: linked once, modules per area.

mod cli;
mod e2e;
mod pg_store;
mod room_list;
mod serve;
mod support;
mod synapse_smoke;
mod upstream;
