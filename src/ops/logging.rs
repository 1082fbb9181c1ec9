//! Logs: `tracing` events as `key=value` lines on stderr.
//!
//! The level comes from `SYNCV3_LOG_LEVEL`; `RUST_LOG`, when set, wins, so a developer can
//! turn on one module (`RUST_LOG=slidesync::ingest=trace`) without touching deployment
//! settings.

use tracing_subscriber::EnvFilter;

/// The configured level for our code; sqlx's per-statement and notice logs (a line for
/// every `IF NOT EXISTS` at startup) only from `warn` up.
fn default_filter(level: tracing::Level) -> EnvFilter {
    EnvFilter::new(format!("{level},sqlx=warn"))
}

/// Installs the global subscriber. A second call (tests, embedding) keeps the first one.
pub fn init(level: tracing::Level) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(&directives)
            .unwrap_or_else(|e| {
                eprintln!(
                    "RUST_LOG is {directives:?}: {e}; using SYNCV3_LOG_LEVEL={level} instead"
                );
                default_filter(level)
            }),
        _ => default_filter(level),
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in files or journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .try_init();
}
