//! The one integration test binary: linked once, modules per area.

mod account_data;
mod cli;
mod e2e;
mod e2e_account;
mod e2e_devices;
mod errors;
mod extensions;
mod faults;
mod import_go;
mod msc4186;
mod ops;
mod pollers;
mod room_extensions;
mod room_fields;
mod room_list;
mod security;
mod serve;
mod store;
mod support;
mod synapse_smoke;
mod timeline;
mod upstream;
