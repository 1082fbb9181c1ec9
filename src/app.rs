//! Wiring: builds every stage from the configuration and runs them.

use crate::config::Config;

/// Why the proxy could not start. Each message names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Anything not yet classified.
    #[error("{0}")]
    Other(String),
}

/// Runs the proxy until SIGINT/SIGTERM.
pub async fn run(config: Config) -> Result<(), StartupError> {
    let _ = config;
    Err(StartupError::Other("not wired yet".into()))
}
