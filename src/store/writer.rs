//! Write-behind: the hot state hands durable changes to one task that commits them in
//! batches, in order.
//!
//! The queue is bounded: when Postgres falls behind, `send` waits, which slows the
//! pollers (back-pressure) instead of dropping data or growing memory. A failed batch is
//! retried until it commits: a write is never dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::persist::{Persist, Write};

/// Rows per transaction: big enough to amortize the commit, small enough to keep
/// latency of a single poll's data low.
const BATCH: usize = 512;

enum Item {
    Write(Write),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct WriteQueue {
    tx: mpsc::Sender<Item>,
}

impl WriteQueue {
    /// Starts the writer task. It ends when every `WriteQueue` clone is dropped and the
    /// queue is drained.
    pub fn spawn(persist: Arc<dyn Persist>, capacity: usize) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(capacity);
        let task = tokio::spawn(run(persist, rx));
        (Self { tx }, task)
    }

    pub async fn send(&self, writes: Vec<Write>) {
        for w in writes {
            // The receiver lives until every sender is gone, so this only fails during
            // shutdown, when there is nothing left to do with the write.
            let _ = self.tx.send(Item::Write(w)).await;
        }
    }

    /// Waits until everything sent before this call is committed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Item::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn run(persist: Arc<dyn Persist>, mut rx: mpsc::Receiver<Item>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut waiters = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Item::Write(w) => batch.push(w),
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
