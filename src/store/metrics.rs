//! The store's metrics: what it holds and how far the write-behind queue is behind.
//!
//! Everything but the commit timings is read at scrape time from the store itself, so
//! no writer pays for it.

use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::Store;
use crate::ops::metrics::{encode_value, Collector};

/// Registers the store's families under `slidesync_`.
pub fn register(store: &Arc<Store>, registry: &mut Registry) {
    let metrics = store.queue().metrics();
    let ours = registry.sub_registry_with_prefix("slidesync_write");
    ours.register(
        "batch_commit_seconds",
        "Time to commit one write-behind batch (one transaction)",
        metrics.commit_duration.clone(),
    );
    ours.register(
        "batch_failures",
        "Write-behind transactions that failed and were retried or split",
        metrics.failures.clone(),
    );
    registry.register_collector(Box::new(StoreCollector(Arc::downgrade(store))));
}

/// Weak: the registry outlives the app at shutdown, and a strong handle would keep the
/// store's write queue open, so its writer would never finish.
struct StoreCollector(std::sync::Weak<Store>);

impl fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreCollector")
    }
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(store) = self.0.upgrade() else {
            return Ok(());
        };
        let queue = store.queue();
        let gauge = MetricType::Gauge;
        // One pass over the rooms, each an `Arc` load: a few milliseconds at 100,000
        // rooms, and no lock a writer waits on.
        let archive_bytes: usize = store
            .rooms
            .iter()
            .map(|room| room.snapshot.load().state.base().size())
            .sum();
        let values = [
            ("slidesync_rooms", "Rooms in memory", gauge, store.rooms.len() as f64),
            ("slidesync_users", "Users in memory", gauge, store.users.len() as f64),
            (
                "slidesync_state_archive_bytes",
                "Bytes of the rooms' state archives (without their overlays of recent changes)",
                gauge,
                archive_bytes as f64,
            ),
            (
                "slidesync_write_queue_depth",
                "Writes queued and not yet committed",
                gauge,
                queue.depth() as f64,
            ),
            (
                "slidesync_write_queue_credits_in_use",
                "Write-behind credits reserved and not yet returned (the queue is full when this reaches its capacity)",
                gauge,
                queue.credits_in_use() as f64,
            ),
            (
                "slidesync_write_oldest_uncommitted_seconds",
                "Age of the oldest write not yet committed",
                gauge,
                queue.oldest_uncommitted().as_secs_f64(),
            ),
            (
                "slidesync_write_rejected_rows",
                "Rows the database refused; each was logged and skipped",
                MetricType::Counter,
                queue.rejected() as f64,
            ),
        ];
        for (name, help, kind, value) in values {
            encode_value(&mut encoder, name, help, kind, value)?;
        }
        Ok(())
    }
}
