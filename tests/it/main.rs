//! The one integration test binary: linked once, modules per area.

mod cli;
mod e2e;
mod e2e_devices;
mod errors;
mod extensions;
mod faults;
mod import_go;
mod ops;
mod pollers;
mod room_list;
mod security;
mod serve;
mod store;
mod support;
mod synapse_smoke;
mod upstream;
