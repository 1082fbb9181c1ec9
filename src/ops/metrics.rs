//! Prometheus metrics: the pieces every component's metrics are made of, the tokio
//! runtime's and the main tasks' metrics, and the text a scrape gets.
//!
//! Each component owns its metric families and registers them under its own prefix
//! (`ingest::metrics`, `api::metrics`, `store::metrics`); `app` composes one
//! [`Registry`] from them. The Go proxy's metrics keep its names, types, labels and
//! buckets, so its Grafana dashboards keep working; ours are prefixed `slidesync_`.
//!
//! The scrape is Prometheus' text format 0.0.4, not OpenMetrics: in OpenMetrics every
//! counter's sample ends in `_total`, and the Go proxy's counters (such as
//! `sliding_sync_api_slow_requests`) do not. [`GoCounter`] writes those without the suffix;
//! our own counters use the ordinary [`Counter`] and end in `_total`.

use std::fmt;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use tokio_metrics::{RuntimeIntervals, RuntimeMonitor, TaskMonitor};

pub use prometheus_client::collector::Collector;

/// The Go proxy's duration buckets (Prometheus' default: 5 ms to 10 s).
pub const GO_DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What a scrape of `/metrics` answers with.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A counter exposed under its own name, as the Go proxy's client exposed counters.
#[derive(Clone, Debug, Default)]
pub struct GoCounter(Counter);

impl GoCounter {
    pub fn inc(&self) {
        self.0.inc();
    }

    pub fn inc_by(&self, n: u64) {
        self.0.inc_by(n);
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl TypedMetric for GoCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for GoCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        // The gauge encoding writes the bare name and value; the TYPE line says counter.
        encoder.encode_gauge(&self.0.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// Holds a gauge up for as long as it lives, so a future dropped mid-await (a client
/// hanging up, a poller aborted at shutdown) still takes itself off.
pub struct Held<'a>(&'a Gauge);

impl<'a> Held<'a> {
    pub fn new(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `true`/`false` as the Go proxy's labels spell them.
pub fn flag(value: bool) -> &'static str {
    if value {
        "1"
    } else {
        "0"
    }
}

/// One scrape: the registry as Prometheus text.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in a collector,
    // and a partial scrape is still more useful than none.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::error!(error = %e, "encoding the metrics failed");
    }
    // `# EOF` ends OpenMetrics; in 0.0.4 it is a stray comment, so drop it.
    if let Some(body) = text.strip_suffix("# EOF\n") {
        text.truncate(body.len());
    }
    text
}

/// Writes one value of a scrape-time metric.
pub fn encode_value(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    value: f64,
) -> Result<(), fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    match kind {
        MetricType::Counter => {
            metric.encode_counter::<prometheus_client::encoding::NoLabelSet, _, f64>(&value, None)
        }
        _ => metric.encode_gauge(&value),
    }
}

/// The tokio runtime's metrics, read at each scrape.
///
/// Without `--cfg tokio_unstable` tokio reports only workers, live tasks, parks, busy
/// time and the global queue; poll counts, steals, schedules, local queues and the poll
/// time histogram need the unstable build and are not exported.
pub struct RuntimeCollector {
    /// Each scrape takes the interval since the previous one and adds it to the totals;
    /// a mutex because scrapes may overlap and the intervals iterator is stateful.
    state: Mutex<RuntimeTotals>,
}

struct RuntimeTotals {
    intervals: RuntimeIntervals,
    parks: u64,
    busy: Duration,
}

impl fmt::Debug for RuntimeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RuntimeCollector")
    }
}

impl RuntimeCollector {
    /// For the runtime this is called on.
    pub fn current() -> Self {
        let monitor = RuntimeMonitor::new(&tokio::runtime::Handle::current());
        Self {
            state: Mutex::new(RuntimeTotals {
                intervals: monitor.intervals(),
                parks: 0,
                busy: Duration::ZERO,
            }),
        }
    }
}

impl Collector for RuntimeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let (now, parks, busy) = {
            let mut state = self.state.lock();
            let Some(now) = state.intervals.next() else {
                return Ok(());
            };
            state.parks += now.total_park_count;
            state.busy += now.total_busy_duration;
            (now, state.parks, state.busy)
        };
        let gauge = MetricType::Gauge;
        let counter = MetricType::Counter;
        encode_value(
            &mut encoder,
            "slidesync_tokio_workers",
            "Worker threads of the runtime.",
            gauge,
            now.workers_count as f64,
        )?;
        encode_value(
            &mut encoder,
            "slidesync_tokio_live_tasks",
            "Tasks alive in the runtime.",
            gauge,
            now.live_tasks_count as f64,
        )?;
        encode_value(
            &mut encoder,
            "slidesync_tokio_global_queue_depth",
            "Tasks waiting in the runtime's global queue.",
            gauge,
            now.global_queue_depth as f64,
        )?;
        encode_value(
            &mut encoder,
            "slidesync_tokio_parks",
            "Times the workers parked (went idle).",
            counter,
            parks as f64,
        )?;
        encode_value(
            &mut encoder,
            "slidesync_tokio_busy_seconds",
            "Time the workers spent busy, summed over workers.",
            counter,
            busy.as_secs_f64(),
        )
    }
}

/// The main tasks, each instrumented with a [`TaskMonitor`]: what they cost the runtime.
#[derive(Default)]
pub struct TaskCollector {
    tasks: Vec<(&'static str, TaskMonitor)>,
}

impl fmt::Debug for TaskCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.tasks.iter().map(|(name, _)| name))
            .finish()
    }
}

impl TaskCollector {
    /// Reports `monitor` under `task="name"`.
    pub fn add(&mut self, name: &'static str, monitor: TaskMonitor) {
        self.tasks.push((name, monitor));
    }
}

impl Collector for TaskCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let all: Vec<_> = self
            .tasks
            .iter()
            .map(|(name, monitor)| (*name, monitor.cumulative()))
            .collect();
        type Read = fn(&tokio_metrics::TaskMetrics) -> f64;
        let series: [(&str, &str, Read); 6] = [
            (
                "slidesync_task_instrumented",
                "Tasks of this kind started.",
                |m| m.instrumented_count as f64,
            ),
            (
                "slidesync_task_dropped",
                "Tasks of this kind that ended.",
                |m| m.dropped_count as f64,
            ),
            (
                "slidesync_task_polls",
                "Polls of tasks of this kind.",
                |m| m.total_poll_count as f64,
            ),
            (
                "slidesync_task_poll_seconds",
                "Time spent polling tasks of this kind.",
                |m| m.total_poll_duration.as_secs_f64(),
            ),
            (
                "slidesync_task_scheduled_seconds",
                "Time tasks of this kind waited to run after being woken.",
                |m| m.total_scheduled_duration.as_secs_f64(),
            ),
            (
                "slidesync_task_slow_polls",
                "Polls of tasks of this kind that took over 50 microseconds.",
                |m| m.total_slow_poll_count as f64,
            ),
        ];
        for (name, help, read) in series {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (task, metrics) in &all {
                let labels = [("task", *task)];
                family
                    .encode_family(&labels)?
                    .encode_counter::<prometheus_client::encoding::NoLabelSet, _, f64>(
                        &read(metrics),
                        None,
                    )?;
            }
        }
        Ok(())
    }
}

/// Per-bucket `(upper bound, count)` pairs of `values` (the encoder makes them
/// cumulative), for a histogram computed at scrape time.
pub fn bucket_counts(values: &[f64], bounds: &[f64]) -> Vec<(f64, u64)> {
    let mut buckets: Vec<(f64, u64)> = bounds.iter().map(|&b| (b, 0)).collect();
    buckets.push((f64::INFINITY, 0));
    for &v in values {
        if let Some(bucket) = buckets.iter_mut().find(|(bound, _)| v <= *bound) {
            bucket.1 += 1;
        }
    }
    buckets
}
