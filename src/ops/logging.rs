//! Logs: `tracing` events on stderr, as `key=value` lines or (`SYNCV3_LOG_FORMAT=json`)
//! one JSON object per line, for log shippers.
//!
//! Each request ends with one access line (`api`) carrying the Go proxy's field names
//! (`u`, `dev`, `c`, `p`, `q`, `t`, `r`, `l`, `status`, `size`, `duration`), so log
//! queries written for it keep working.
//!
//! The level comes from `SYNCV3_LOG_LEVEL`; `RUST_LOG`, when set, wins, so a developer can
//! turn on one module (`RUST_LOG=slidesync::ingest=trace`) without touching deployment
//! settings.

use opentelemetry::trace::TracerProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The configured level for our code; sqlx's per-statement and notice logs (a line for
/// every `IF NOT EXISTS` at startup) only from `warn` up.
fn default_filter(level: tracing::Level) -> EnvFilter {
    EnvFilter::new(format!("{level},sqlx=warn"))
}

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    /// One JSON object per line: the event's fields, its level, target and time, and the
    /// fields of the span it happened in (`span`), such as a request's user and device.
    Json,
}

/// Installs the global subscriber: log lines on stderr and, with `traces`, the spans of
/// our own code (at info and above) to OpenTelemetry. A second call (tests, embedding)
/// keeps the first one.
pub fn init(level: tracing::Level, format: LogFormat, traces: Option<&SdkTracerProvider>) {
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
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        // Colour codes only for a person at a terminal, not in files or journald.
        LogFormat::Text => lines
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        // The innermost span carries the request's fields; the whole list would repeat
        // them.
        LogFormat::Json => lines
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    // Traces follow our spans whatever the log level: an operator who turns logs down
    // to warn still wants the request and poll spans.
    let traces = traces.map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("slidesync"))
            .with_filter(Targets::new().with_target("slidesync", tracing::Level::INFO))
    });
    let _ = tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(traces)
        .try_init();
}
