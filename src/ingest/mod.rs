//! Pollers: one task per (user, device) long-polling the homeserver's `/sync`, and the
//! translation of each v2 response into changes of the store.

pub mod metrics;
pub mod pollers;
pub mod v2;
