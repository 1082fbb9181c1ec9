//! The one integration test binary: every file here is a module, so linking happens once.

mod support;

mod cli;
mod serve;
