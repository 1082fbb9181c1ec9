//! The store seam: what the hot state asks of durable storage.
//!
//! One narrow trait so Postgres (production) and an embedded store can sit behind it and
//! tests can count or stall writes. The hot state writes behind (see [`super::writer`])
//! and reads everything back once, in the `load_*` calls, to rebuild itself. The one
//! read after startup is [`Persist::stored_event_ids`]: whether events a poller delivers
//! were applied long ago, when a room's memory of its event IDs no longer reaches back.

use async_trait::async_trait;
use bytes::Bytes;

use crate::event::Receipt;
use crate::types::{DeviceKey, Position, RoomId, UserId};

/// Why a storage call failed. Storage errors never reach a client as such: callers retry
/// (writes) or stop startup with a message naming `SYNCV3_DB` (connect, migrate, load).
/// The write-behind queue retries every error but [`PersistError::Rejected`], which it
/// narrows down to the one bad row and skips.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The database could not be reached or refused the connection.
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    /// Applying the migrations in `schema/` failed.
    #[error("cannot apply database migrations: {0}")]
    Migrate(String),
    /// A query failed for a reason outside the data (connection lost, server restarting,
    /// pool timeout, serialization conflict): the same write may succeed later.
    #[error("database query failed: {0}")]
    Query(String),
    /// The database refused the data itself (a value it cannot store, a violated
    /// constraint): the same write fails however often it is retried.
    #[error("the database refused the data: {0}")]
    Rejected(String),
    /// Stored bytes did not validate (a corrupt or foreign snapshot).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// How a user relates to a room, as persisted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MembershipKind {
    Join,
    Invite,
    Leave,
}

impl MembershipKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MembershipKind::Join => "join",
            MembershipKind::Invite => "invite",
            MembershipKind::Leave => "leave",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "join" => Some(MembershipKind::Join),
            "invite" => Some(MembershipKind::Invite),
            "leave" => Some(MembershipKind::Leave),
            _ => None,
        }
    }
}

/// One event as stored: its position and its JSON exactly as it will be served.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    pub room_id: RoomId,
    pub position: Position,
    pub event_id: Box<str>,
    /// Whether the event came in a timeline (and may be served in one) or only in a v2
    /// `state` block.
    pub in_timeline: bool,
    /// Whether it is a state event (has a `state_key`).
    pub is_state: bool,
    /// The v2 `prev_batch` of the timeline chunk this event started.
    pub prev_batch: Option<Box<str>>,
    /// The homeserver left out events just before this one.
    pub gap_before: bool,
    /// See [`crate::event::Event::filled_order`]; `None` orders by `position`.
    pub filled_order: Option<crate::event::TimelineOrder>,
    /// `origin_server_ts` as the recency order uses it: never later than when the proxy
    /// received the event. `None` only for rows written before it was stored.
    pub ts: Option<u64>,
    pub json: Bytes,
}

/// One durable change. A batch of these is committed in one transaction, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// A new event (timeline or state block). Duplicate event IDs are ignored.
    Event(StoredEvent),
    /// A redaction replaced a stored event's JSON with its redacted form.
    Redacted {
        room_id: RoomId,
        event_id: Box<str>,
        json: Bytes,
    },
    /// Events were filled into the gap before this stored event: it no longer starts a
    /// gap (a restart must not report the timeline as `limited` there).
    GapFilled { room_id: RoomId, event_id: Box<str> },
    /// A room's current state folded into an rkyv archive, valid as of `position`: state
    /// events at or below it need not be replayed at startup.
    Snapshot {
        room_id: RoomId,
        position: Position,
        bytes: Bytes,
    },
    /// The user's membership of a room changed.
    Membership {
        user_id: UserId,
        room_id: RoomId,
        kind: MembershipKind,
        position: Position,
        /// Stripped state of an invite, as a JSON array; `None` for other kinds.
        invite_state: Option<Bytes>,
    },
    /// v2 `unread_notifications` of a room for a user.
    Unread {
        user_id: UserId,
        room_id: RoomId,
        notification_count: u64,
        highlight_count: u64,
    },
    /// The newest account data event of its type for the user: global (no `room_id`)
    /// or of a room. Replaces the stored one.
    AccountData {
        user_id: UserId,
        room_id: Option<RoomId>,
        kind: Box<str>,
        json: Bytes,
    },
    /// The newest read receipt of its (room, user, private, thread). Replaces the stored
    /// one.
    Receipt { room_id: RoomId, receipt: Receipt },
    /// The device's v2 `since` token. Queued after the data that response delivered, so it
    /// is committed in the same transaction or a later one, never before.
    DeviceSince { device: DeviceKey, since: String },
    /// A to-device message for the device, at its position.
    ToDevice {
        device: DeviceKey,
        position: Position,
        json: Bytes,
        /// What a cancellation of this room key request would name.
        key_request: Option<Box<str>>,
    },
    /// The client acknowledged the device's messages up to `position`: they go, and
    /// positions up to it are never handed out again.
    ToDeviceAck {
        device: DeviceKey,
        position: Position,
    },
    /// The device's client was handed messages up to `position` before this database
    /// held the device (written by `slidesync import-go`): a `since` acknowledges up to
    /// it, and no later message takes a position at or below it.
    ToDeviceDelivered {
        device: DeviceKey,
        position: Position,
    },
    /// One message dropped before delivery (a cancelled room key request).
    ToDeviceDrop {
        device: DeviceKey,
        position: Position,
    },
    /// The device's newest one-time-key counts and unused fallback key types, as JSON.
    DeviceKeys {
        device: DeviceKey,
        otk_counts: Option<Bytes>,
        fallback_types: Option<Bytes>,
    },
    /// A device-list change not yet delivered to the device; replaces an earlier one
    /// about the same user.
    DeviceListChange {
        device: DeviceKey,
        user_id: UserId,
        change: crate::store::devices::ListChange,
    },
    /// Where the device's device lists catch up from: the Go proxy's `since` of a device
    /// imported by `slidesync import-go` (`Some`), or caught up (`None`, queued after
    /// the changes since it).
    DeviceListsCatchUp {
        device: DeviceKey,
        from: Option<String>,
    },
    /// The device's undelivered device-list changes were delivered: they replace the
    /// ones delivered before.
    DeviceListsDelivered { device: DeviceKey },
}

/// A room as it is read back at startup.
#[derive(Debug, Default)]
pub struct LoadedRoom {
    /// The newest snapshot (position, rkyv bytes), if one was written.
    pub snapshot: Option<(Position, Bytes)>,
    /// State events after the snapshot (or all, without one), in position order.
    pub state_after_snapshot: Vec<StoredEvent>,
    /// The newest timeline events, oldest first, at most the `timeline_per_room` asked for.
    pub timeline: Vec<StoredEvent>,
    /// IDs of the room's newest events, at most the `ids_per_room` asked for.
    pub recent_ids: Vec<Box<str>>,
    /// Whether `recent_ids` holds every event of the room.
    pub ids_complete: bool,
}

/// A membership row read back at startup.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedMembership {
    pub user_id: UserId,
    pub room_id: RoomId,
    pub kind: MembershipKind,
    pub position: Position,
    pub invite_state: Option<Bytes>,
}

/// An unread-count row read back at startup.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedUnread {
    pub user_id: UserId,
    pub room_id: RoomId,
    pub notification_count: u64,
    pub highlight_count: u64,
}

/// An account data row read back at startup.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedAccountData {
    pub user_id: UserId,
    /// `None` for global account data.
    pub room_id: Option<RoomId>,
    pub json: Bytes,
}

/// A receipt row read back at startup.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedReceipt {
    pub room_id: RoomId,
    pub receipt: Receipt,
}

/// A device's extension data as read back at startup.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedDevice {
    pub device: DeviceKey,
    /// The highest acknowledged to-device position.
    pub acked: Position,
    /// What [`Write::ToDeviceDelivered`] recorded (0: nothing).
    pub delivered: Position,
    /// The newest stored to-device message (0: none); memory reads them back on demand.
    pub to_device_max: Position,
    pub otk_counts: Option<Bytes>,
    pub fallback_types: Option<Bytes>,
    /// Device-list changes: (user, change, whether it was delivered last).
    pub lists: Vec<(UserId, crate::store::devices::ListChange, bool)>,
    /// See [`Write::DeviceListsCatchUp`].
    pub lists_catch_up: Option<Box<str>>,
}

/// A stored to-device message.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredToDevice {
    pub position: Position,
    pub json: Bytes,
    pub key_request: Option<Box<str>>,
}

/// A device the proxy polls for, with its newest token (still encrypted) and `since`.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredDevice {
    pub device: DeviceKey,
    pub token_encrypted: String,
    pub since: Option<String>,
}

/// A token row, looked up by the SHA-256 hash of the plaintext token.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredToken {
    pub device: DeviceKey,
    pub token_encrypted: String,
}

#[async_trait]
pub trait Persist: Send + Sync + 'static {
    /// Commits a batch in one transaction, in order.
    async fn write(&self, batch: &[Write]) -> Result<(), PersistError>;

    /// Every room with its snapshot, later state, newest timeline events and newest
    /// event IDs. `progress` is called with the number of rooms read so far, now and then.
    async fn load_rooms(
        &self,
        timeline_per_room: usize,
        ids_per_room: usize,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<(RoomId, LoadedRoom)>, PersistError>;
    /// Which of these events are stored (committed).
    async fn stored_event_ids(&self, event_ids: &[Box<str>])
        -> Result<Vec<Box<str>>, PersistError>;
    async fn load_memberships(&self) -> Result<Vec<LoadedMembership>, PersistError>;
    async fn load_unread(&self) -> Result<Vec<LoadedUnread>, PersistError>;
    async fn load_account_data(&self) -> Result<Vec<LoadedAccountData>, PersistError>;
    async fn load_receipts(&self) -> Result<Vec<LoadedReceipt>, PersistError>;
    /// The highest event position ever stored (0 when empty).
    async fn max_position(&self) -> Result<Position, PersistError>;

    /// Tokens: written synchronously (not behind) because a poller must find its token
    /// after a restart the moment the client has been answered.
    async fn token(&self, token_hash: &str) -> Result<Option<StoredToken>, PersistError>;
    async fn insert_token(
        &self,
        token_hash: &str,
        token_encrypted: &str,
        device: &DeviceKey,
    ) -> Result<(), PersistError>;
    /// Forgets a token the homeserver rejected.
    async fn delete_token(&self, token_hash: &str) -> Result<(), PersistError>;
    /// Every device with a token, for resuming pollers.
    async fn devices(&self) -> Result<Vec<StoredDevice>, PersistError>;

    /// Every device with extension data (acknowledged position, key data, device-list
    /// changes, or stored messages).
    async fn load_device_data(&self) -> Result<Vec<LoadedDevice>, PersistError>;
    /// The device's committed to-device messages after `after`, oldest first, at most
    /// `limit`. Read after startup, when memory has handed out what it holds.
    async fn to_device_after(
        &self,
        device: &DeviceKey,
        after: Position,
        limit: usize,
    ) -> Result<Vec<StoredToDevice>, PersistError>;
}
