//! Pollers: one task per (user, device) long-polling the homeserver's `/sync`, and the
//! translation of each v2 response into changes of the store; and a room's history
//! from before the first poll, fetched when a client asks for it.

pub mod history;
pub mod metrics;
pub mod pollers;
pub mod v2;
