//! Settings.

/// Placeholder until the settings table lands.
pub struct Config;
