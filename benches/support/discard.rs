//! A [`Persist`] for the benches: the numbers are the hot state's, not storage's.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;
use slidesync::store::persist::{
    LoadedAccountData, LoadedDevice, LoadedMembership, LoadedReceipt, LoadedRoom, LoadedUnread,
    Persist, PersistError, StoredDevice, StoredToDevice, StoredToken, Write,
};
use slidesync::types::{DeviceKey, Position, RoomId};

/// Counts rows, keeps the newest one and drops the rest: the benches measure the hot
/// state, not storage.
#[derive(Default)]
pub struct Discard {
    pub rows: AtomicUsize,
    pub last: Mutex<Option<Write>>,
}

#[async_trait]
impl Persist for Discard {
    async fn write(&self, batch: &[Write]) -> Result<(), PersistError> {
        self.rows.fetch_add(batch.len(), Ordering::Relaxed);
        *self.last.lock() = batch.last().cloned();
        Ok(())
    }
    async fn load_rooms(
        &self,
        _timeline_per_room: usize,
        _ids_per_room: usize,
        _progress: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<(RoomId, LoadedRoom)>, PersistError> {
        Ok(Vec::new())
    }
    async fn stored_event_ids(&self, _ids: &[Box<str>]) -> Result<Vec<Box<str>>, PersistError> {
        Ok(Vec::new())
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
    async fn token(&self, _token_hash: &str) -> Result<Option<StoredToken>, PersistError> {
        Ok(None)
    }
    async fn insert_token(
        &self,
        _token_hash: &str,
        _token_encrypted: &str,
        _device: &DeviceKey,
    ) -> Result<(), PersistError> {
        Ok(())
    }
    async fn delete_token(&self, _token_hash: &str) -> Result<(), PersistError> {
        Ok(())
    }
    async fn devices(&self) -> Result<Vec<StoredDevice>, PersistError> {
        Ok(Vec::new())
    }
    async fn load_device_data(&self) -> Result<Vec<LoadedDevice>, PersistError> {
        Ok(Vec::new())
    }
    async fn to_device_after(
        &self,
        _device: &DeviceKey,
        _after: Position,
        _limit: usize,
    ) -> Result<Vec<StoredToDevice>, PersistError> {
        Ok(Vec::new())
    }
}
