//! Sliding sync connections: the protocol-neutral engine under both wire dialects.

pub mod connection;
pub mod request;
pub mod required_state;
pub mod window;
