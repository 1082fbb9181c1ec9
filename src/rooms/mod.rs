//! Views over the store that answer "which rooms, in what order, called what": per-user
//! sort indexes (maintained by the store's write path), list filters and room naming.
//! No I/O.

pub mod bump;
pub mod filter;
pub mod name;
pub mod sort;
