//! Write-behind: the hot state hands durable changes to one task that commits them in
//! batches, in the order they were queued.
//!
//! Writes are queued by the code that applies them, under the same room lock, so queue
//! order is application order: when one poller skips an event another poller applied a
//! moment earlier, the other poller's write is already ahead of this poller's `since` in
//! the queue, and a device's `since` can never be committed before data it delivered.
//!
//! Memory stays bounded by credits, not by a bounded channel (a bounded channel would
//! need an `.await` under the room lock): a poller reserves credits for a response before
//! applying it, and the writer returns them once the writes are committed. When Postgres
//! falls behind, reservations wait, which slows the pollers (back-pressure) instead of
//! dropping data. A failed batch is retried until it commits: a write is never dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;

use super::persist::{Persist, Write};

/// Rows per transaction: big enough to amortize the commit, small enough to keep
/// latency of a single poll's data low.
const BATCH: usize = 512;

enum Item {
    Write(Write),
    /// Credits to give back once everything queued before is committed.
    Credit(u32),
    Flush(oneshot::Sender<()>),
}

/// Credits taken for writes not yet committed; hand back with [`WriteQueue::release`].
#[must_use = "credits are returned to the queue with WriteQueue::release"]
pub struct Reservation(u32);

#[derive(Clone)]
pub struct WriteQueue {
    tx: mpsc::UnboundedSender<Item>,
    credits: Arc<Semaphore>,
    capacity: u32,
}

impl WriteQueue {
    /// Starts the writer task with room for about `capacity` uncommitted writes. It ends
    /// when every `WriteQueue` clone is dropped and the queue is drained.
    pub fn spawn(persist: Arc<dyn Persist>, capacity: usize) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS) as u32;
        let credits = Arc::new(Semaphore::new(capacity as usize));
        let task = tokio::spawn(run(persist, rx, Arc::clone(&credits)));
        (
            Self {
                tx,
                credits,
                capacity,
            },
            task,
        )
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

    /// Queues writes without waiting: callers reserved room first.
    pub fn push(&self, writes: impl IntoIterator<Item = Write>) {
        for w in writes {
            // The receiver lives until every sender is gone, so this only fails during
            // shutdown, when there is nothing left to do with the write.
            let _ = self.tx.send(Item::Write(w));
        }
    }

    /// Hands credits back; they return to the pool when what was queued is committed.
    pub fn release(&self, reservation: Reservation) {
        let _ = self.tx.send(Item::Credit(reservation.0));
    }

    /// Waits until everything queued before this call is committed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Item::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

async fn run(
    persist: Arc<dyn Persist>,
    mut rx: mpsc::UnboundedReceiver<Item>,
    credits: Arc<Semaphore>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut waiters = Vec::new();
    let mut returned = 0usize;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Item::Write(w) => batch.push(w),
                Item::Credit(n) => returned += n as usize,
                Item::Flush(done) => waiters.push(done),
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            commit(&*persist, &batch).await;
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
