//! The HTTP surface's metrics: the Go proxy's `sliding_sync_api_*` families and the
//! parked long-polls.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::conn::Conns;
use crate::ops::metrics::{encode_value, flag, Collector, GoCounter, GO_DURATION_BUCKETS};

/// A request at least this slow is logged as a warning and counted, as the Go proxy did.
pub const SLOW_REQUEST: Duration = Duration::from_secs(50);

type Labels = [(&'static str, &'static str); 1];

/// Clones share the same counters (each family is an `Arc` inside).
#[derive(Clone)]
pub struct ApiMetrics {
    pub setup_duration: Family<Labels, Histogram, fn() -> Histogram>,
    pub process_duration: Family<Labels, Histogram, fn() -> Histogram>,
    pub slow_requests: GoCounter,
    pub payloads: Family<Labels, GoCounter>,
    /// Never counted: connections are not closed by room invalidations here (a room
    /// change is diffed into the window instead). Kept so dashboards find the series.
    pub destroyed_conns: GoCounter,
    pub expiry_conn_timed_out: GoCounter,
    /// Never counted: a connection has no update buffer to overflow (wake-ups carry no
    /// data). Kept so dashboards find the series.
    pub expiry_conn_buffer_full: GoCounter,
    pub pending_ensure_polling: Gauge,
    /// Sync requests inside the engine: parked long-polls, plus for a few milliseconds
    /// each request computing its response.
    pub parked: Gauge,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        let go = || Histogram::new(GO_DURATION_BUCKETS);
        Self {
            setup_duration: Family::new_with_constructor(go),
            process_duration: Family::new_with_constructor(go),
            slow_requests: GoCounter::default(),
            payloads: Family::default(),
            destroyed_conns: GoCounter::default(),
            expiry_conn_timed_out: GoCounter::default(),
            expiry_conn_buffer_full: GoCounter::default(),
            pending_ensure_polling: Gauge::default(),
            parked: Gauge::default(),
        }
    }
}

impl ApiMetrics {
    /// `initial` as the Go proxy labelled it: the request has no `pos`.
    pub fn initial(pos: Option<u64>) -> Labels {
        [("initial", flag(pos.is_none()))]
    }

    /// Registers the families under `sliding_sync_api_` (and `slidesync_api_`), with
    /// the live connections read from `conns` at each scrape.
    pub fn register(&self, conns: &Arc<Conns>, registry: &mut Registry) {
        let api = registry.sub_registry_with_prefix("sliding_sync_api");
        api.register(
            "setup_duration_secs",
            "Time from a request's arrival to the start of its response: auth, waiting for the first poll, connection setup",
            self.setup_duration.clone(),
        );
        api.register(
            "process_duration_secs",
            "Time to compute a response, for requests that do not long-poll (no pos, or timeout=0)",
            self.process_duration.clone(),
        );
        api.register(
            "slow_requests",
            "Requests that took 50 s or more",
            self.slow_requests.clone(),
        );
        api.register(
            "num_payloads",
            "Requests to start a device's poller, by the Go proxy's payload type",
            self.payloads.clone(),
        );
        api.register(
            "destroyed_conns",
            "Connections closed by room invalidations (never: rooms are diffed, not invalidated)",
            self.destroyed_conns.clone(),
        );
        api.register(
            "expiry_conn_timed_out",
            "Connections dropped after being idle",
            self.expiry_conn_timed_out.clone(),
        );
        api.register(
            "expiry_conn_buffer_full",
            "Connections closed because their buffer overflowed (never: there is no buffer)",
            self.expiry_conn_buffer_full.clone(),
        );
        api.register(
            "num_devices_pending_ensure_polling",
            "Requests waiting for their device's first poll",
            self.pending_ensure_polling.clone(),
        );
        registry.sub_registry_with_prefix("slidesync_api").register(
            "parked_long_polls",
            "Sync requests waiting in the engine: parked long-polls, and each request for the milliseconds its response takes",
            self.parked.clone(),
        );
        registry.register_collector(Box::new(ConnCollector(Arc::clone(conns))));
    }
}

struct ConnCollector(Arc<Conns>);

impl fmt::Debug for ConnCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConnCollector")
    }
}

impl Collector for ConnCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        encode_value(
            &mut encoder,
            "sliding_sync_api_num_active_conns",
            "Live connections",
            MetricType::Gauge,
            self.0.len() as f64,
        )
    }
}
