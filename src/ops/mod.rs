//! Operations: the public listener (TCP or unix socket, optionally TLS) and logging.

pub mod listen;
pub mod logging;
pub mod tls;
