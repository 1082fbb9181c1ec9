//! The pollers' metrics: the Go proxy's `sliding_sync_poller_*` families, and each
//! poller's lag.

use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::pollers::Pollers;
use crate::ops::metrics::{bucket_counts, encode_value, Collector, GoCounter, GO_DURATION_BUCKETS};

type Labels = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// Cheap to clone: every family is an `Arc` inside, so the clones registered with the
/// registry and the ones the pollers update are the same counters.
#[derive(Clone)]
pub struct PollerMetrics {
    pub process_duration: Family<Labels2, Histogram, fn() -> Histogram>,
    pub timeline_size: Family<Labels, Histogram, fn() -> Histogram>,
    pub gappy_state_size: Histogram,
    pub total_num_polls: GoCounter,
    pub outstanding_requests: Gauge,
    pub payloads: Family<Labels, GoCounter>,
}

impl Default for PollerMetrics {
    fn default() -> Self {
        Self {
            process_duration: Family::new_with_constructor(|| Histogram::new(GO_DURATION_BUCKETS)),
            timeline_size: Family::new_with_constructor(|| {
                Histogram::new([0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0])
            }),
            gappy_state_size: Histogram::new([1.0, 10.0, 100.0, 1000.0, 10000.0]),
            total_num_polls: GoCounter::default(),
            outstanding_requests: Gauge::default(),
            payloads: Family::default(),
        }
    }
}

impl PollerMetrics {
    /// Counts one unit of v2 data of a kind the Go proxy published as `payload_type`.
    pub fn payload(&self, payload_type: &'static str) {
        self.payloads
            .get_or_create(&[("payload_type", payload_type)])
            .inc();
    }

    /// Registers the families under `sliding_sync_poller_`.
    pub fn register(&self, registry: &mut Registry) {
        let poller = registry.sub_registry_with_prefix("sliding_sync_poller");
        poller.register(
            "process_duration_secs",
            "Time to process one v2 /sync response",
            self.process_duration.clone(),
        );
        poller.register(
            "timeline_size",
            "Events per room timeline of a v2 response",
            self.timeline_size.clone(),
        );
        poller.register(
            "gappy_state_size",
            "State events of rooms in limited (gappy) v2 responses",
            self.gappy_state_size.clone(),
        );
        poller.register(
            "total_num_polls",
            "Poll loop iterations",
            self.total_num_polls.clone(),
        );
        poller.register(
            "num_outstanding_sync_v2_reqs",
            "v2 /sync requests in flight",
            self.outstanding_requests.clone(),
        );
        poller.register(
            "num_payloads",
            "Units of v2 data processed, by the Go proxy's payload type",
            self.payloads.clone(),
        );
    }
}

/// What the pollers are at, read at each scrape.
pub struct PollerCollector(pub Arc<Pollers>);

impl fmt::Debug for PollerCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PollerCollector")
    }
}

/// Lag buckets: a caught-up poller's long-poll returns within 30 s, so up to that is
/// normal; minutes mean a stuck or failing one.
const LAG_BUCKETS: [f64; 9] = [1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0];

impl Collector for PollerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let pollers = &self.0;
        encode_value(
            &mut encoder,
            "sliding_sync_poller_num_pollers",
            "Active v2 pollers",
            MetricType::Gauge,
            pollers.count() as f64,
        )?;
        encode_value(
            &mut encoder,
            "slidesync_poller_catching_up",
            "Pollers whose first poll has not completed",
            MetricType::Gauge,
            pollers.catching_up() as f64,
        )?;
        let lags = pollers.lags();
        encode_value(
            &mut encoder,
            "slidesync_poller_max_lag_seconds",
            "The longest time any poller has gone without an applied poll",
            MetricType::Gauge,
            lags.iter().copied().fold(0.0, f64::max),
        )?;
        encoder
            .encode_descriptor(
                "slidesync_poller_lag_seconds",
                "Each poller's time since its last applied poll (since its start before the first)",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(
                lags.iter().sum(),
                lags.len() as u64,
                &bucket_counts(&lags, &LAG_BUCKETS),
                None,
            )
    }
}
