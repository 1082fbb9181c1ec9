//! The profiling listener (`SYNCV3_PPROF`), apart from the public one:
//!
//! - `/debug/pprof/profile?seconds=N`: a CPU profile in pprof's protobuf format, which
//!   `go tool pprof` and `pprof` read;
//! - `/debug/pprof/flamegraph?seconds=N`: the same profile as an SVG flame graph;
//! - `/debug/pprof/memory`: the process's memory as the kernel sees it.
//!
//! The CPU profiler samples every thread through a process-wide signal handler, so only
//! one profile can run at a time: a second request while one runs gets 409.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use pprof::protos::Message;

use super::admin::reply;
use super::listen::{self, Listener};

/// Seconds a profile takes when the request does not say.
const DEFAULT_SECONDS: u64 = 30;
/// The longest profile: the profiler's sample buffer grows with the time profiled.
pub const MAX_SECONDS: u64 = 300;
/// Samples per second; not 100, so sampling does not run in step with timers that fire
/// at round intervals.
const FREQUENCY: i32 = 99;

/// The flame graph of a profile without samples: the process used no CPU meanwhile.
const NO_SAMPLES: &str = r#"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="600" height="40" xmlns="http://www.w3.org/2000/svg"><text x="10" y="25">No samples: the process used no CPU during the profile.</text></svg>
"#;

/// The listener's state.
#[derive(Default)]
pub struct Profiling {
    /// Whether a profile is being taken: only one at a time (see the module doc).
    busy: AtomicBool,
}

/// What a profile is returned as.
#[derive(Clone, Copy)]
enum Format {
    Protobuf,
    FlameGraph,
}

/// Clears the busy flag when the profile ends, also if the request is dropped mid-way.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Profiling {
    async fn respond(&self, req: Request<impl Sized>) -> Response<Full<Bytes>> {
        let format = match req.uri().path() {
            "/debug/pprof/profile" => Format::Protobuf,
            "/debug/pprof/flamegraph" => Format::FlameGraph,
            "/debug/pprof/memory" => return reply(StatusCode::OK, "text/plain", memory()),
            "/debug/pprof/" | "/debug/pprof" => {
                return reply(
                    StatusCode::OK,
                    "text/plain",
                    "profile?seconds=N   CPU profile (pprof protobuf)\n\
                     flamegraph?seconds=N   CPU profile as an SVG flame graph\n\
                     memory   resident and virtual memory\n",
                )
            }
            _ => {
                return reply(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "not found; see /debug/pprof/\n",
                )
            }
        };
        let seconds = match seconds(req.uri().query()) {
            Ok(seconds) => seconds,
            Err(problem) => return reply(StatusCode::BAD_REQUEST, "text/plain", problem),
        };
        if self.busy.swap(true, Ordering::AcqRel) {
            return reply(
                StatusCode::CONFLICT,
                "text/plain",
                "a profile is already being taken; try again when it is done\n",
            );
        }
        let _running = Running(&self.busy);
        match profile(Duration::from_secs(seconds), format).await {
            Ok((kind, body)) => reply(StatusCode::OK, kind, body),
            Err(e) => {
                tracing::error!(error = %e, "profiling failed");
                reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("profiling failed: {e}\n"),
                )
            }
        }
    }
}

/// `seconds` from the query: 1 to [`MAX_SECONDS`], [`DEFAULT_SECONDS`] when absent.
fn seconds(query: Option<&str>) -> Result<u64, String> {
    let raw = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "seconds")
        .map(|(_, v)| v.into_owned());
    let Some(raw) = raw else {
        return Ok(DEFAULT_SECONDS);
    };
    match raw.parse::<u64>() {
        Ok(n @ 1..=MAX_SECONDS) => Ok(n),
        _ => Err(format!(
            "seconds is {raw:?}: give a whole number from 1 to {MAX_SECONDS}\n"
        )),
    }
}

async fn profile(
    duration: Duration,
    format: Format,
) -> Result<(&'static str, Vec<u8>), pprof::Error> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY)
        // Unwinding through these from a signal handler can deadlock.
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()?;
    tokio::time::sleep(duration).await;
    // Symbolizing takes a while and blocks: keep it off the runtime's workers.
    tokio::task::spawn_blocking(move || {
        let report = guard.report().build()?;
        drop(guard);
        match format {
            Format::Protobuf => Ok(("application/octet-stream", report.pprof()?.encode_to_vec())),
            // A flame graph of nothing is an error to the renderer; say so in the image.
            Format::FlameGraph if report.data.is_empty() => {
                Ok(("image/svg+xml", NO_SAMPLES.as_bytes().to_vec()))
            }
            Format::FlameGraph => {
                let mut svg = Vec::new();
                report.flamegraph(&mut svg)?;
                Ok(("image/svg+xml", svg))
            }
        }
    })
    .await
    .unwrap_or_else(|e| Err(pprof::Error::IoError(std::io::Error::other(e))))
}

/// The kernel's view of the process's memory (`/proc/self/status`), with the allocator.
/// mimalloc keeps freed memory for reuse, so resident memory is what was needed at the
/// peak of recent use, not what is live now.
fn memory() -> String {
    let mut out = String::from("allocator: mimalloc\n");
    match std::fs::read_to_string("/proc/self/status") {
        Ok(status) => {
            for line in status.lines() {
                let keep = [
                    "VmPeak", "VmSize", "VmHWM", "VmRSS", "RssAnon", "RssFile", "VmData", "Threads",
                ];
                if keep.iter().any(|k| line.starts_with(k)) {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        Err(e) => out.push_str(&format!("/proc/self/status cannot be read: {e}\n")),
    }
    out
}

/// Serves profiles on `listener` until `shutdown` completes.
pub async fn serve(listener: Listener, shutdown: impl Future<Output = ()> + Send) {
    let profiling = Arc::new(Profiling::default());
    let handler = move |req: Request<hyper::body::Incoming>| {
        let profiling = Arc::clone(&profiling);
        async move { profiling.respond(req).await }
    };
    listen::serve(listener, None, handler, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_profile_while_one_runs_gets_409() {
        let profiling = Profiling::default();
        // As the first request does when it starts its profile.
        profiling.busy.store(true, Ordering::Release);
        for path in ["/debug/pprof/profile?seconds=1", "/debug/pprof/flamegraph"] {
            let req = Request::get(path).body(()).unwrap();
            let resp = profiling.respond(req).await;
            assert_eq!(resp.status(), StatusCode::CONFLICT, "{path}");
        }
        // The running profile is not disturbed by the refusal.
        assert!(profiling.busy.load(Ordering::Acquire));
    }

    #[test]
    fn seconds_default_and_bounds() {
        assert_eq!(seconds(None), Ok(DEFAULT_SECONDS));
        assert_eq!(seconds(Some("seconds=5")), Ok(5));
        assert_eq!(seconds(Some("seconds=300")), Ok(300));
        for bad in ["seconds=0", "seconds=301", "seconds=x", "seconds="] {
            assert!(
                seconds(Some(bad)).unwrap_err().contains("from 1 to 300"),
                "{bad}"
            );
        }
    }
}
