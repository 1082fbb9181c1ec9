//! A store for unit tests: writes are discarded, events are built from a few fields.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::event::{Event, Membership};
use super::persist::*;
use super::writer::WriteQueue;
use super::{RoomDelta, Store};
use crate::types::{DeviceKey, Position, RoomId};

/// Keeps nothing and has nothing to load.
pub struct NullPersist;

#[async_trait]
impl Persist for NullPersist {
    async fn write(&self, _: &[Write]) -> Result<(), PersistError> {
        Ok(())
    }
    async fn load_rooms(
        &self,
        _: usize,
        _: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<(RoomId, LoadedRoom)>, PersistError> {
        Ok(Vec::new())
    }
    async fn load_memberships(&self) -> Result<Vec<LoadedMembership>, PersistError> {
        Ok(Vec::new())
    }
    async fn load_unread(&self) -> Result<Vec<LoadedUnread>, PersistError> {
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
}

/// A store over [`NullPersist`]; needs a tokio runtime for its writer task.
pub fn store() -> Store {
    let (queue, _writer) = WriteQueue::spawn(Arc::new(NullPersist), 1 << 20);
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
        prev_batch: None,
        gap_before: false,
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
    }
}
