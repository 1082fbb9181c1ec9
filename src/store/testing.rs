//! A store for unit tests: writes are recorded in memory, events are built from a few
//! fields.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::persist::*;
use super::writer::WriteQueue;
use super::{RoomDelta, Store};
use crate::event::{Event, Membership};
use crate::types::{DeviceKey, Position, RoomId};

/// Records committed writes and has nothing to load. Commits wait while its gate is
/// closed, to play a stalled database; it can also play a lost connection and a row the
/// database refuses.
pub struct TestPersist {
    gate: Semaphore,
    pub committed: Mutex<Vec<Write>>,
    /// Rows refused as bad data: a batch holding one fails whole and commits nothing.
    pub refuse: Mutex<Vec<Write>>,
    /// How many more batches fail as if the connection was lost.
    pub transient_failures: AtomicUsize,
    /// How many more lookups fail, to play a database that is away.
    failing_lookups: AtomicUsize,
}

impl TestPersist {
    pub fn open() -> Self {
        Self::with_gate(Semaphore::MAX_PERMITS)
    }

    pub fn stalled() -> Self {
        Self::with_gate(0)
    }

    fn with_gate(permits: usize) -> Self {
        Self {
            gate: Semaphore::new(permits),
            committed: Mutex::new(Vec::new()),
            refuse: Mutex::new(Vec::new()),
            transient_failures: AtomicUsize::new(0),
            failing_lookups: AtomicUsize::new(0),
        }
    }

    /// Makes the next `n` lookups fail.
    pub fn fail_lookups(&self, n: usize) {
        self.failing_lookups
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn resume(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }
}

#[async_trait]
impl Persist for TestPersist {
    async fn write(&self, batch: &[Write]) -> Result<(), PersistError> {
        let _open = self.gate.acquire().await.expect("gate never closes");
        let lost =
            self.transient_failures
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if lost.is_ok() {
            return Err(PersistError::Query("connection reset".into()));
        }
        if let Some(bad) = batch.iter().find(|w| self.refuse.lock().contains(w)) {
            return Err(PersistError::Rejected(format!("refused {bad:?}")));
        }
        self.committed.lock().extend_from_slice(batch);
        Ok(())
    }
    async fn load_rooms(
        &self,
        _: usize,
        _: usize,
        _: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<(RoomId, LoadedRoom)>, PersistError> {
        Ok(Vec::new())
    }
    async fn stored_event_ids(&self, ids: &[Box<str>]) -> Result<Vec<Box<str>>, PersistError> {
        let failing = &self.failing_lookups;
        let fail = failing
            .fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |n| n.checked_sub(1),
            )
            .is_ok();
        if fail {
            return Err(PersistError::Query("the database is away".into()));
        }
        let committed = self.committed.lock();
        Ok(ids
            .iter()
            .filter(|id| {
                committed
                    .iter()
                    .any(|w| matches!(w, Write::Event(e) if e.event_id == **id))
            })
            .cloned()
            .collect())
    }
    async fn load_memberships(&self) -> Result<Vec<LoadedMembership>, PersistError> {
        Ok(Vec::new())
    }
    async fn load_unread(&self) -> Result<Vec<LoadedUnread>, PersistError> {
        Ok(Vec::new())
    }
    async fn load_account_data(&self) -> Result<Vec<LoadedAccountData>, PersistError> {
        Ok(Vec::new())
    }
    async fn load_receipts(&self) -> Result<Vec<LoadedReceipt>, PersistError> {
        Ok(Vec::new())
    }
    async fn max_position(&self) -> Result<Position, PersistError> {
        Ok(0)
    }
    async fn token(&self, _: &str) -> Result<Option<StoredToken>, PersistError> {
        Ok(None)
    }
    async fn insert_token(&self, _: &str, _: &str, _: &DeviceKey) -> Result<(), PersistError> {
        Ok(())
    }
    async fn delete_token(&self, _: &str) -> Result<(), PersistError> {
        Ok(())
    }
    async fn devices(&self) -> Result<Vec<StoredDevice>, PersistError> {
        Ok(Vec::new())
    }
    async fn load_device_data(&self) -> Result<Vec<LoadedDevice>, PersistError> {
        Ok(Vec::new())
    }
    /// What the committed writes leave of the device's messages.
    async fn to_device_after(
        &self,
        device: &DeviceKey,
        after: Position,
        limit: usize,
    ) -> Result<Vec<StoredToDevice>, PersistError> {
        let committed = self.committed.lock();
        let mut out: Vec<StoredToDevice> = Vec::new();
        for write in committed.iter() {
            match write {
                Write::ToDevice {
                    device: d,
                    position,
                    json,
                    key_request,
                } if d == device => out.push(StoredToDevice {
                    position: *position,
                    json: json.clone(),
                    key_request: key_request.clone(),
                }),
                Write::ToDeviceDrop {
                    device: d,
                    position,
                } if d == device => {
                    out.retain(|m| m.position != *position);
                }
                Write::ToDeviceAck {
                    device: d,
                    position,
                } if d == device => {
                    out.retain(|m| m.position > *position);
                }
                _ => {}
            }
        }
        out.retain(|m| m.position > after);
        out.truncate(limit);
        Ok(out)
    }
}

/// A store over an open [`TestPersist`]; needs a tokio runtime for its writer task.
pub fn store() -> Store {
    store_over(Arc::new(TestPersist::open()))
}

pub fn store_over(persist: Arc<TestPersist>) -> Store {
    let (queue, _writer) = WriteQueue::spawn(persist, 1 << 20);
    Store::new(queue, 1)
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub fn event(kind: &str, state_key: Option<&str>, sender: &str, ts: u64) -> Event {
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let membership = (kind == "m.room.member").then_some(Membership::Join);
    Event {
        event_id: format!("$t{id}").into(),
        kind: kind.into(),
        state_key: state_key.map(Into::into),
        sender: sender.into(),
        origin_server_ts: ts,
        membership,
        text: None,
        detail: None,
        prev_batch: None,
        gap_before: false,
        filled_order: None,
        position: 0,
        json: Bytes::from(format!(
            r#"{{"event_id":"$t{id}","type":"{kind}","origin_server_ts":{ts}}}"#
        )),
    }
}

pub fn with_membership(mut ev: Event, m: Membership) -> Event {
    ev.membership = Some(m);
    ev
}

pub fn delta(room: &str, state: Vec<Event>, timeline: Vec<Event>) -> RoomDelta {
    RoomDelta {
        room_id: room.into(),
        state,
        timeline,
        prev_batch: None,
        limited: false,
        stored: Default::default(),
        redacted: Vec::new(),
    }
}
