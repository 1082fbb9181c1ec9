//! Write-behind: the hot state hands durable changes to one task that commits them in
//! batches, in the order they were queued.
//!
//! Writes are queued by the code that applies them, under the same room lock, so queue
//! order is application order: when one poller skips an event another poller applied a
//! moment earlier, the other poller's write is already ahead of this poller's `since` in
//! the queue, and a device's `since` can never be committed before data it delivered.
//!
//! Memory stays bounded by credits, not by a bounded channel (a bounded channel would
//! need an `.await` under the room lock): a poller reserves credits for each room of a
//! response before applying it, and the writer returns them once the writes are
//! committed. When Postgres
//! falls behind, reservations wait, which slows the pollers (back-pressure) instead of
//! dropping data.
//!
//! A batch that fails for a reason outside its data (connection lost, Postgres
//! restarting) is retried until it commits, so nothing is lost or reordered; retrying is
//! safe because every write is idempotent (events ignore duplicates, the rest upsert). A
//! batch the database refuses ([`PersistError::Rejected`]: a NUL in a text column, a value
//! out of range) would fail forever and hold back everything queued behind it, the
//! `since` of every device included, and with it every credit: the pollers would stall.
//! It is split in halves, committed in order, until the refused rows stand alone; each is
//! logged with its room and event (or user and device), counted in
//! [`WriteQueue::rejected`], and skipped. The rows around it commit in their order.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{oneshot, Notify, Semaphore};
use tokio::task::JoinHandle;

use super::persist::{Persist, PersistError, Write};

/// Rows per transaction: big enough to amortize the commit, small enough to keep
/// latency of a single poll's data low.
const BATCH: usize = 512;
/// The writer also looks for work this often, so nothing waits on a missed wake-up.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// Back-off between retries of a batch that failed for a reason that may pass.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(10);

enum Item {
    Write(Write),
    /// Credits to give back once everything queued before is committed.
    Credit(u32),
    Flush(oneshot::Sender<()>),
}

/// Credits taken for writes not yet committed; hand back with [`WriteQueue::release`].
#[must_use = "credits are returned to the queue with WriteQueue::release"]
pub struct Reservation(u32);

struct Shared {
    /// A plain mutex rather than a channel: `push` runs under a room's lock, and a
    /// channel send wakes the writer (a syscall) on every call. The writer is woken once
    /// per response instead, by `release`.
    items: Mutex<Vec<Item>>,
    /// Writes queued so far: a write's number is this count just after it was queued.
    /// Only changed under `items`' lock, so numbers follow queue order.
    pushed: AtomicU64,
    /// Writes committed so far (or given up on): the queue commits in order, so every
    /// write numbered up to this is done.
    committed: AtomicU64,
    wake: Notify,
    closed: AtomicBool,
    /// Rows the database refused and the writer skipped. Only ever counted up and read
    /// for reporting, so relaxed atomics suffice.
    rejected: AtomicU64,
    /// When the oldest write not yet committed was queued. Its own lock, always taken
    /// after `items`' (never the other way), so `push` and the writer's take see the
    /// queue and its age change together.
    oldest: Mutex<Oldest>,
    metrics: WriterMetrics,
}

/// The queue's age at chunk granularity: the writer takes everything queued at once, and
/// the first write of that chunk is the oldest until the whole chunk is committed.
#[derive(Default)]
struct Oldest {
    /// First write queued since the writer last took the queue.
    queued: Option<Instant>,
    /// First write of the chunk the writer is committing.
    committing: Option<Instant>,
}

/// How the writer's batches fare. Clones share the same counters.
#[derive(Clone)]
pub struct WriterMetrics {
    /// Seconds per transaction that committed.
    pub commit_duration: Histogram,
    /// Transactions that failed (and were retried or split).
    pub failures: Counter,
    /// The writer task runs under it, so its cost shows in the metrics.
    pub task: tokio_metrics::TaskMonitor,
}

impl Default for WriterMetrics {
    fn default() -> Self {
        Self {
            commit_duration: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            failures: Counter::default(),
            task: tokio_metrics::TaskMonitor::new(),
        }
    }
}

/// Dropped with the last `WriteQueue` clone: tells the writer to drain and stop.
struct Senders(Arc<Shared>);

impl Drop for Senders {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.wake.notify_one();
    }
}

#[derive(Clone)]
pub struct WriteQueue {
    shared: Arc<Shared>,
    persist: Arc<dyn Persist>,
    _senders: Arc<Senders>,
    credits: Arc<Semaphore>,
    capacity: u32,
}

impl WriteQueue {
    /// Starts the writer task with room for about `capacity` uncommitted writes. It ends
    /// when every `WriteQueue` clone is dropped and the queue is drained.
    pub fn spawn(persist: Arc<dyn Persist>, capacity: usize) -> (Self, JoinHandle<()>) {
        let shared = Arc::new(Shared {
            items: Mutex::new(Vec::new()),
            pushed: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            rejected: AtomicU64::new(0),
            oldest: Mutex::new(Oldest::default()),
            metrics: WriterMetrics::default(),
        });
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS) as u32;
        let credits = Arc::new(Semaphore::new(capacity as usize));
        let task = tokio::spawn(shared.metrics.task.instrument(run(
            Arc::clone(&persist),
            Arc::clone(&shared),
            Arc::clone(&credits),
        )));
        let queue = Self {
            persist,
            _senders: Arc::new(Senders(Arc::clone(&shared))),
            shared,
            credits,
            capacity,
        };
        (queue, task)
    }

    /// Waits for room for about `writes` writes (at most the whole queue, so one huge
    /// response can still pass).
    pub async fn reserve(&self, writes: usize) -> Reservation {
        let n = (writes as u32).clamp(1, self.capacity);
        match self.credits.acquire_many(n).await {
            Ok(permits) => permits.forget(),
            // Closed only at shutdown; nothing left to protect.
            Err(_) => return Reservation(0),
        }
        Reservation(n)
    }

    /// Queues writes without waiting or waking the writer: callers hold a reservation,
    /// and [`WriteQueue::release`] wakes it. Returns the number of the last write queued
    /// (see [`WriteQueue::committed`]).
    pub fn push(&self, writes: impl IntoIterator<Item = Write>) -> u64 {
        let mut items = self.shared.items.lock();
        let before = items.len();
        items.extend(writes.into_iter().map(Item::Write));
        let added = (items.len() - before) as u64;
        if added > 0 {
            self.shared
                .oldest
                .lock()
                .queued
                .get_or_insert_with(Instant::now);
        }
        self.shared.pushed.fetch_add(added, Ordering::Relaxed) + added
    }

    /// Every write numbered up to this (as [`WriteQueue::push`] numbers them) is
    /// committed.
    pub fn committed(&self) -> u64 {
        self.shared.committed.load(Ordering::Acquire)
    }

    /// The storage behind the queue, for the few reads the hot state makes after
    /// startup.
    pub fn persist(&self) -> &Arc<dyn Persist> {
        &self.persist
    }

    /// Hands credits back (they return to the pool when what was queued before is
    /// committed) and wakes the writer.
    pub fn release(&self, reservation: Reservation) {
        self.send(Item::Credit(reservation.0));
    }

    /// Waits until everything queued before this call is committed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Item::Flush(tx));
        let _ = rx.await;
    }

    /// How many rows the database refused since startup; each was logged and skipped.
    pub fn rejected(&self) -> u64 {
        self.shared.rejected.load(Ordering::Relaxed)
    }

    /// Writes queued and not yet committed.
    pub fn depth(&self) -> u64 {
        let committed = self.shared.committed.load(Ordering::Acquire);
        self.shared
            .pushed
            .load(Ordering::Relaxed)
            .saturating_sub(committed)
    }

    /// Credits reserved and not yet returned: how full the queue is.
    pub fn credits_in_use(&self) -> u64 {
        u64::from(self.capacity).saturating_sub(self.credits.available_permits() as u64)
    }

    /// How long the oldest write not yet committed has waited.
    pub fn oldest_uncommitted(&self) -> Duration {
        let oldest = self.shared.oldest.lock();
        oldest
            .committing
            .or(oldest.queued)
            .map_or(Duration::ZERO, |at| at.elapsed())
    }

    pub fn metrics(&self) -> &WriterMetrics {
        &self.shared.metrics
    }

    fn send(&self, item: Item) {
        self.shared.items.lock().push(item);
        self.shared.wake.notify_one();
    }
}

async fn run(persist: Arc<dyn Persist>, shared: Arc<Shared>, credits: Arc<Semaphore>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut returned = 0usize;
    let mut waiters = Vec::new();
    loop {
        let items = {
            let mut items = shared.items.lock();
            let mut oldest = shared.oldest.lock();
            oldest.committing = oldest.queued.take();
            std::mem::take(&mut *items)
        };
        if items.is_empty() {
            if shared.closed.load(Ordering::Acquire) {
                return;
            }
            let _ = tokio::time::timeout(IDLE_CHECK, shared.wake.notified()).await;
            continue;
        }
        for item in items {
            match item {
                Item::Write(w) => {
                    batch.push(w);
                    if batch.len() >= BATCH {
                        commit(&*persist, &batch, &shared).await;
                        shared
                            .committed
                            .fetch_add(batch.len() as u64, Ordering::Release);
                        batch.clear();
                        credits.add_permits(std::mem::take(&mut returned));
                    }
                }
                Item::Credit(n) => returned += n as usize,
                Item::Flush(done) => waiters.push(done),
            }
        }
        if !batch.is_empty() {
            commit(&*persist, &batch, &shared).await;
            shared
                .committed
                .fetch_add(batch.len() as u64, Ordering::Release);
            batch.clear();
        }
        shared.oldest.lock().committing = None;
        credits.add_permits(std::mem::take(&mut returned));
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
    }
}

/// Commits `batch` in order, retrying failures that may pass until they commit, and
/// narrowing a refused batch down to its refused rows, which are logged, counted and
/// skipped. Never called with an empty batch.
async fn commit(persist: &dyn Persist, batch: &[Write], shared: &Shared) {
    // The parts still to commit, the next one on top: a refused part's right half is
    // pushed before its left, so parts commit in queue order.
    let mut parts = vec![batch];
    while let Some(part) = parts.pop() {
        let Err(error) = commit_retrying(persist, part, &shared.metrics).await else {
            continue;
        };
        match part {
            [row] => {
                log_rejected(row, &error);
                shared.rejected.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                let (left, right) = part.split_at(part.len() / 2);
                parts.push(right);
                parts.push(left);
            }
        }
    }
}

/// Commits one batch, retrying with back-off until it commits or the database refuses
/// its data.
async fn commit_retrying(
    persist: &dyn Persist,
    batch: &[Write],
    metrics: &WriterMetrics,
) -> Result<(), PersistError> {
    let mut delay = RETRY_FIRST;
    loop {
        let started = Instant::now();
        let span = tracing::info_span!("commit", rows = batch.len());
        let written = tracing::Instrument::instrument(persist.write(batch), span).await;
        if written.is_ok() {
            metrics
                .commit_duration
                .observe(started.elapsed().as_secs_f64());
        } else {
            metrics.failures.inc();
        }
        match written {
            Ok(()) => return Ok(()),
            Err(refused @ PersistError::Rejected(_)) => return Err(refused),
            Err(e) => {
                tracing::warn!(error = %e, rows = batch.len(), retry_in = ?delay, "write-behind batch failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Names a refused row well enough to find its source. IDs are printed with `Debug` so a
/// NUL or a control character in one shows escaped.
fn log_rejected(row: &Write, error: &PersistError) {
    let what = "the database refused a row; skipped, it will be missing after a restart";
    match row {
        Write::Event(e) => {
            tracing::error!(room = ?e.room_id, event = ?e.event_id, position = e.position, %error, "{what}")
        }
        Write::Redacted {
            room_id, event_id, ..
        } => {
            tracing::error!(room = ?room_id, event = ?event_id, kind = "redaction", %error, "{what}")
        }
        Write::GapFilled { room_id, event_id } => {
            tracing::error!(room = ?room_id, event = ?event_id, kind = "gap filled", %error, "{what}")
        }
        Write::Snapshot {
            room_id, position, ..
        } => tracing::error!(room = ?room_id, snapshot_position = position, %error, "{what}"),
        Write::Membership {
            user_id, room_id, ..
        } => {
            tracing::error!(room = ?room_id, user = ?user_id, kind = "membership", %error, "{what}")
        }
        Write::Unread {
            user_id, room_id, ..
        } => tracing::error!(room = ?room_id, user = ?user_id, kind = "unread", %error, "{what}"),
        Write::DeviceSince { device, since } => {
            tracing::error!(user = ?device.user_id, device = ?device.device_id, since = ?since, %error, "{what}")
        }
        Write::AccountData {
            user_id,
            room_id,
            kind,
            ..
        } => {
            tracing::error!(room = ?room_id, user = ?user_id, account_data = ?kind, %error, "{what}")
        }
        Write::Receipt { room_id, receipt } => {
            tracing::error!(room = ?room_id, user = ?receipt.user_id, event = ?receipt.event_id, kind = "receipt", %error, "{what}")
        }
        Write::ToDevice {
            device, position, ..
        } => {
            tracing::error!(user = ?device.user_id, device = ?device.device_id, to_device_position = position, %error, "{what}")
        }
        Write::ToDeviceAck { device, position } | Write::ToDeviceDrop { device, position } => {
            tracing::error!(user = ?device.user_id, device = ?device.device_id, to_device_position = position, kind = "to-device deletion", %error, "{what}")
        }
        Write::ToDeviceDelivered { device, position } => {
            tracing::error!(user = ?device.user_id, device = ?device.device_id, to_device_position = position, kind = "to-device delivered", %error, "{what}")
        }
        Write::DeviceKeys { device, .. } => {
            tracing::error!(user = ?device.user_id, device = ?device.device_id, kind = "device keys", %error, "{what}")
        }
        Write::DeviceListChange {
            device, user_id, ..
        } => {
            tracing::error!(user = ?device.user_id, device = ?device.device_id, target = ?user_id, kind = "device list", %error, "{what}")
        }
        Write::DeviceListsCatchUp { device, .. } => {
            tracing::error!(user = ?device.user_id, device = ?device.device_id, kind = "device lists catch-up", %error, "{what}")
        }
        Write::DeviceListsDelivered { device } => {
            tracing::error!(user = ?device.user_id, device = ?device.device_id, kind = "device lists delivered", %error, "{what}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::persist::StoredEvent;
    use crate::store::testing::TestPersist;
    use crate::types::DeviceKey;

    fn since(s: &str) -> Write {
        Write::DeviceSince {
            device: DeviceKey::new("@a:x", "D"),
            since: s.into(),
        }
    }

    fn event(position: u64) -> Write {
        Write::Event(StoredEvent {
            room_id: "!r:x".into(),
            position,
            event_id: format!("$e{position}").into(),
            in_timeline: true,
            is_state: false,
            prev_batch: None,
            gap_before: false,
            filled_order: None,
            ts: None,
            json: bytes::Bytes::from_static(b"{}"),
        })
    }

    async fn push_all(queue: &WriteQueue, writes: &[Write]) {
        let r = queue.reserve(writes.len()).await;
        queue.push(writes.iter().cloned());
        queue.release(r);
    }

    #[tokio::test]
    async fn refused_rows_are_skipped_and_every_other_row_commits_in_order() {
        let persist = Arc::new(TestPersist::open());
        let (queue, _task) = WriteQueue::spawn(persist.clone(), 64);
        let mut writes: Vec<Write> = (1..=11).map(event).collect();
        writes.push(since("after"));
        // Two neighbours and one far away, so halves holding more than one refused row
        // are split again.
        *persist.refuse.lock() = vec![event(4), event(5), event(10)];
        push_all(&queue, &writes).await;
        tokio::time::timeout(Duration::from_secs(10), queue.flush())
            .await
            .expect("the refused rows do not hold the queue");

        let expected: Vec<Write> = writes
            .iter()
            .filter(|w| !persist.refuse.lock().contains(w))
            .cloned()
            .collect();
        assert_eq!(*persist.committed.lock(), expected);
        assert_eq!(queue.rejected(), 3);

        // Nothing is held back: the refused rows' credits came back, and later writes
        // commit.
        push_all(&queue, &[event(12), since("later")]).await;
        queue.flush().await;
        let tail = persist.committed.lock().split_off(expected.len());
        assert_eq!(tail, [event(12), since("later")]);
        let all = tokio::time::timeout(Duration::from_secs(5), queue.reserve(64))
            .await
            .expect("every credit was returned");
        queue.release(all);
    }

    #[tokio::test]
    async fn a_lost_connection_is_retried_until_the_batch_commits() {
        let persist = Arc::new(TestPersist::open());
        persist.transient_failures.store(2, Ordering::Relaxed);
        let (queue, _task) = WriteQueue::spawn(persist.clone(), 64);
        let writes = [event(1), event(2), since("s1")];
        push_all(&queue, &writes).await;
        queue.flush().await;
        assert_eq!(*persist.committed.lock(), writes);
        assert_eq!(queue.rejected(), 0);
        assert_eq!(persist.transient_failures.load(Ordering::Relaxed), 0);
        assert_eq!(
            queue.metrics().failures.get(),
            2,
            "each failed try is counted"
        );
    }

    #[tokio::test]
    async fn a_stalled_database_holds_reservations_back_and_order_is_kept() {
        let persist = Arc::new(TestPersist::stalled());
        let (queue, _task) = WriteQueue::spawn(persist.clone(), 4);
        let r = queue.reserve(3).await;
        queue.push([since("1"), since("2"), since("3")]);
        queue.release(r);
        let waited = tokio::time::timeout(Duration::from_millis(50), queue.reserve(3)).await;
        assert!(
            waited.is_err(),
            "no credits while the first writes are uncommitted"
        );
        persist.resume();
        let r = queue.reserve(3).await;
        queue.push([since("4")]);
        queue.release(r);
        queue.flush().await;
        assert_eq!(
            *persist.committed.lock(),
            [since("1"), since("2"), since("3"), since("4")]
        );
    }

    #[tokio::test]
    async fn the_queue_reports_its_depth_credits_and_oldest_write_until_committed() {
        let persist = Arc::new(TestPersist::stalled());
        let (queue, _task) = WriteQueue::spawn(persist.clone(), 8);
        assert_eq!(queue.oldest_uncommitted(), Duration::ZERO);
        let r = queue.reserve(3).await;
        queue.push([since("1"), since("2")]);
        queue.release(r);
        let r = queue.reserve(1).await;
        queue.push([since("3")]);
        queue.release(r);

        assert_eq!(queue.depth(), 3);
        assert_eq!(queue.credits_in_use(), 4);
        assert!(queue.oldest_uncommitted() > Duration::ZERO);

        persist.resume();
        queue.flush().await;
        assert_eq!(queue.depth(), 0);
        assert_eq!(queue.credits_in_use(), 0);
        assert_eq!(queue.oldest_uncommitted(), Duration::ZERO);
        assert_eq!(queue.metrics().failures.get(), 0);
    }
}
