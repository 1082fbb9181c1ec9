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
//! dropping data. A failed batch is retried until it commits: a write is never dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify, Semaphore};
use tokio::task::JoinHandle;

use super::persist::{Persist, Write};

/// Rows per transaction: big enough to amortize the commit, small enough to keep
/// latency of a single poll's data low.
const BATCH: usize = 512;
/// The writer also looks for work this often, so nothing waits on a missed wake-up.
const IDLE_CHECK: Duration = Duration::from_secs(1);

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
        });
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS) as u32;
        let credits = Arc::new(Semaphore::new(capacity as usize));
        let task = tokio::spawn(run(
            Arc::clone(&persist),
            Arc::clone(&shared),
            Arc::clone(&credits),
        ));
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
        let items = std::mem::take(&mut *shared.items.lock());
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
                        commit(&*persist, &batch).await;
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
            commit(&*persist, &batch).await;
            shared
                .committed
                .fetch_add(batch.len() as u64, Ordering::Release);
            batch.clear();
        }
        credits.add_permits(std::mem::take(&mut returned));
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
    }
}

async fn commit(persist: &dyn Persist, batch: &[Write]) {
    let mut delay = Duration::from_millis(100);
    loop {
        match persist.write(batch).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, rows = batch.len(), retry_in = ?delay, "write-behind batch failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::TestPersist;
    use crate::types::DeviceKey;

    fn since(s: &str) -> Write {
        Write::DeviceSince {
            device: DeviceKey::new("@a:x", "D"),
            since: s.into(),
        }
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
}
