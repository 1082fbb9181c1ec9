//! The one integration test binary: every suite is a module, so linking happens once.

mod support;

mod pg_store;
