//! Logs: `tracing` events as `key=value` lines on stderr.
//!
//! The level comes from `SYNCV3_LOG_LEVEL`; `RUST_LOG`, when set, wins, so a developer can
//! turn on one module (`RUST_LOG=slidesync::ingest=trace`) without touching deployment
//! settings.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. A second call (tests, embedding) keeps the first one.
pub fn init(level: tracing::Level) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(&directives)
            .unwrap_or_else(|e| {
                eprintln!(
                    "RUST_LOG is {directives:?}: {e}; using SYNCV3_LOG_LEVEL={level} instead"
                );
                EnvFilter::new(level.as_str())
            }),
        _ => EnvFilter::new(level.as_str()),
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .try_init();
}
