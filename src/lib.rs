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
//! - [`conn`]: one sliding sync connection: sticky request, windows, ops, long-poll.
//! - [`extensions`]: the sliding sync extensions (to-device, e2ee, ...), one module each,
//!   stepped by [`conn`] beside the lists.
//! - [`api`]: the HTTP surface: authentication and the wire dialects over [`conn`].
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
