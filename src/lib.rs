//! slidesync: a sliding sync proxy for Matrix homeservers that only speak `/sync` v2.
//!
//! # Layout
//!
//! Data moves one way, and each folder is one stage of it:
//!
//! - [`upstream`]: the only code that talks to the homeserver (`/sync`, `/whoami`, `/versions`).
//! - [`ingest`]: one poller per (user, device); turns v2 responses into ordered deltas.
//! - [`store`]: the hot in-memory state (rooms as rkyv snapshots, users, tokens) and its
//!   write-behind persistence to Postgres.
//! - [`rooms`]: per-user sort indexes and room naming over the store.
//! - [`conn`]: one sliding sync connection: request, windows, ops, long-poll, and the
//!   rules that differ between the two dialects.
//! - [`extensions`]: the sliding sync extensions (to-device, e2ee, ...), one module each,
//!   stepped by [`conn`] beside the lists.
//! - [`api`]: the HTTP surface: authentication, the wire dialects (MSC3575, MSC4186) over
//!   [`conn`], and discovery that keeps clients on the proxy's URL.
//! - [`ops`]: listeners, TLS, logging, metrics, profiling, health.
//!
//! [`config`] composes the settings, [`app`] wires the stages together, [`nesting`]
//! keeps hostile JSON from overflowing the stack at both edges.

pub mod api;
pub mod app;
pub mod config;
pub mod conn;
pub mod error;
pub mod event;
pub mod extensions;
pub mod ingest;
pub mod nesting;
pub mod ops;
pub mod rooms;
pub mod store;
pub mod types;
pub mod upstream;
