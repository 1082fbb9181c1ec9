//! The one integration test binary: linked once, modules per area.

mod cli;
mod e2e;
mod errors;
mod faults;
mod msc4186;
mod ops;
mod pollers;
mod room_list;
mod security;
mod serve;
mod store;
mod support;
mod synapse_smoke;
mod upstream;
