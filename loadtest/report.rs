//! Numbers and how they are printed: latency samples, failures, the machine, the process.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// Latencies of one kind of request.
#[derive(Default)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Nearest-rank percentile (`q` in 0..=1) of the sorted samples.
    fn at(sorted: &[Duration], q: f64) -> Duration {
        let rank = (q * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    /// `n=…, p50 …, p90 …, p99 …, max …`.
    pub fn summary(&self) -> String {
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        let Some(max) = sorted.last() else {
            return "no samples".to_owned();
        };
        format!(
            "n={}, p50 {}, p90 {}, p99 {}, max {}",
            sorted.len(),
            Ms(Self::at(&sorted, 0.5)),
            Ms(Self::at(&sorted, 0.9)),
            Ms(Self::at(&sorted, 0.99)),
            Ms(*max)
        )
    }
}

/// A duration in milliseconds with three significant digits or so.
pub struct Ms(pub Duration);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_secs_f64() * 1000.0;
        if ms < 1.0 {
            write!(f, "{ms:.3} ms")
        } else if ms < 100.0 {
            write!(f, "{ms:.2} ms")
        } else {
            write!(f, "{ms:.0} ms")
        }
    }
}

/// Everything that went wrong in a phase. A phase with failures prints them instead of
/// its numbers, and the run stops.
#[derive(Default)]
pub struct Failures {
    count: AtomicUsize,
    /// The first few messages; the rest are only counted.
    first: Mutex<Vec<String>>,
}

const KEPT_FAILURES: usize = 10;

impl Failures {
    pub fn record(&self, what: impl fmt::Display) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock();
        if first.len() < KEPT_FAILURES {
            first.push(what.to_string());
        }
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Prints the failures; returns whether there were any.
    pub fn print(&self) -> bool {
        let n = self.count();
        if n == 0 {
            return false;
        }
        println!("  FAILED: {n} error(s); this phase's numbers are withheld. First ones:");
        for f in self.first.lock().iter() {
            println!("    - {f}");
        }
        true
    }
}

/// CPU time (user + system) this process has used so far.
pub fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole `rusage` into the pointer it is given.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } == 0;
    if !ok {
        return Duration::ZERO;
    }
    // SAFETY: initialised by the successful call above (and zeroed before it).
    let usage = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// "`cpu` of CPU in `wall` (`cores` cores busy)".
pub fn cpu_line(cpu: Duration, wall: Duration) -> String {
    format!(
        "{:.2} s CPU in {:.2} s ({:.2} cores busy; generator and proxy together, Postgres not included)",
        cpu.as_secs_f64(),
        wall.as_secs_f64(),
        cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9)
    )
}

/// A line of `/proc/self/status`, such as `VmRSS`.
pub fn proc_status(key: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(str::trim))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// CPU count as `nproc` says, the CPU model, and the load average right now.
pub fn machine() -> String {
    let nproc = std::process::Command::new("nproc")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            std::thread::available_parallelism().map_or("?".to_owned(), |n| n.to_string())
        });
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU model".to_owned());
    format!("nproc {nproc}, {model}; load average {}", load_average())
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned())
}

pub fn section(title: &str) {
    println!("\n== {title}");
}
