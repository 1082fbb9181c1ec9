//! Operations: the public listener (TCP or unix socket, optionally TLS), logging, and
//! the operator's listeners: metrics and health (`admin`), profiles (`pprof`).

pub mod admin;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod pprof;
pub mod tls;
