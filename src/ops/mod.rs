//! Operations: the public listener (TCP or unix socket, optionally TLS), logging, and
//! the operator's listeners: metrics and health (`admin`), profiles (`pprof`); readiness
//! for systemd (`notify`); traces to an OpenTelemetry collector (`otlp`); `slidesync
//! import-go` (`import_go`).

pub mod admin;
pub mod import_go;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod otlp;
pub mod pprof;
pub mod tls;
