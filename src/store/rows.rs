//! What the SQL stores share: a batch grouped by table, and the integer conversions.
//!
//! Both stores keep the same rules for what a batch means (duplicates, which snapshot
//! wins, which membership is the last), so they are decided here once and each store only
//! says how its database receives the rows.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use super::persist::{PersistError, StoredEvent, Write};
use crate::types::{DeviceKey, Position, RoomId};

/// One batch split by table. The upserted rows sit in ordered maps so every transaction
/// touches keys in the same order: two batches written at once then wait for each other
/// instead of deadlocking. One row per key also suits Postgres, which refuses an
/// `ON CONFLICT DO UPDATE` that touches the same row twice in one statement.
#[derive(Default)]
pub(super) struct Grouped<'a> {
    /// In batch order; a duplicate event ID is left to the database to ignore.
    pub events: Vec<EventRow<'a>>,
    /// Events whose gap was filled; applied after `events`, which may hold them.
    pub gaps_filled: Vec<&'a str>,
    /// (event ID, redacted JSON), in batch order; applied after `events`.
    pub redacted: Vec<(&'a str, &'a [u8])>,
    /// room → (position, bytes); the highest position wins.
    pub snapshots: BTreeMap<&'a str, (i64, &'a [u8])>,
    /// The last membership per (user, room) wins.
    pub memberships: BTreeMap<UserRoom<'a>, MembershipRow<'a>>,
    /// (notifications, highlights); the last count per (user, room) wins.
    pub unread: BTreeMap<UserRoom<'a>, (i64, i64)>,
    /// (user, device) → since; the last one wins.
    pub since: BTreeMap<(&'a str, &'a str), &'a str>,
}

pub(super) type UserRoom<'a> = (&'a str, &'a str);

/// An event with its integers already in database form.
pub(super) struct EventRow<'a> {
    pub event: &'a StoredEvent,
    pub position: i64,
    pub filled_order: Option<i64>,
    pub filled_sub: i32,
    pub ts: Option<i64>,
}

pub(super) struct MembershipRow<'a> {
    pub kind: &'static str,
    pub position: i64,
    pub invite_state: Option<&'a [u8]>,
}

impl<'a> Grouped<'a> {
    /// Applying the groups gives what applying the writes one by one would.
    pub fn new(batch: &'a [Write]) -> Result<Self, PersistError> {
        let mut rows = Grouped::default();
        for write in batch {
            match write {
                Write::Event(event) => {
                    let (filled_order, filled_sub) = match event.filled_order {
                        Some((order, sub)) => (Some(position_to_db(order)?), sub),
                        None => (None, 0),
                    };
                    rows.events.push(EventRow {
                        event,
                        position: position_to_db(event.position)?,
                        filled_order,
                        filled_sub,
                        ts: event.ts.map(count_to_db),
                    });
                }
                Write::GapFilled { event_id, .. } => rows.gaps_filled.push(event_id),
                Write::Redacted { event_id, json, .. } => rows.redacted.push((event_id, json)),
                Write::Snapshot {
                    room_id,
                    position,
                    bytes,
                } => {
                    let position = position_to_db(*position)?;
                    let bytes = &bytes[..];
                    let slot = rows.snapshots.entry(room_id).or_insert((position, bytes));
                    if position >= slot.0 {
                        *slot = (position, bytes);
                    }
                }
                Write::Membership {
                    user_id,
                    room_id,
                    kind,
                    position,
                    invite_state,
                } => {
                    rows.memberships.insert(
                        (&**user_id, &**room_id),
                        MembershipRow {
                            kind: kind.as_str(),
                            position: position_to_db(*position)?,
                            invite_state: invite_state.as_deref(),
                        },
                    );
                }
                Write::Unread {
                    user_id,
                    room_id,
                    notification_count,
                    highlight_count,
                } => {
                    rows.unread.insert(
                        (&**user_id, &**room_id),
                        (
                            count_to_db(*notification_count),
                            count_to_db(*highlight_count),
                        ),
                    );
                }
                Write::DeviceSince { device, since } => {
                    rows.since
                        .insert((&*device.user_id, &*device.device_id), since);
                }
            }
        }
        Ok(rows)
    }
}

/// Shares one allocation per distinct ID read back: a room ID appears once per member,
/// and the hot state keeps every copy.
#[derive(Default)]
pub(super) struct Interner(HashSet<Arc<str>>);

impl Interner {
    pub fn get(&mut self, id: &str) -> Arc<str> {
        if let Some(known) = self.0.get(id) {
            return known.clone();
        }
        let id: Arc<str> = Arc::from(id);
        self.0.insert(id.clone());
        id
    }
}

pub(super) fn position_to_db(position: Position) -> Result<i64, PersistError> {
    i64::try_from(position).map_err(|_| {
        PersistError::Rejected(format!("position {position} does not fit a 64-bit integer"))
    })
}

pub(super) fn position_from_db(position: i64) -> Result<Position, PersistError> {
    Position::try_from(position)
        .map_err(|_| PersistError::Corrupt(format!("negative position {position}")))
}

/// Counts come from the homeserver; one past `i64::MAX` is nonsense, so it saturates
/// rather than failing the batch it arrived in.
pub(super) fn count_to_db(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

pub(super) fn count_from_db(count: i64) -> Result<u64, PersistError> {
    u64::try_from(count).map_err(|_| PersistError::Corrupt(format!("negative count {count}")))
}

/// Startup reads one event ID more than `ids_per_room` (newest first): a room with no more
/// than that many is known whole. Says whether it is, and drops the extra one.
pub(super) fn settle_recent_ids(recent_ids: &mut Vec<Box<str>>, ids_per_room: usize) -> bool {
    let complete = recent_ids.len() <= ids_per_room;
    recent_ids.truncate(ids_per_room);
    complete
}

/// Column `name` of a row read back at startup; a column that is missing or of another
/// type means the database is not one the migrations made.
fn column<'r, R, T>(row: &'r R, name: &str) -> Result<T, PersistError>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    T: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    row.try_get(name)
        .map_err(|e| PersistError::Corrupt(format!("column {name}: {e}")))
}

/// One event row, as both stores' chunk queries return it.
pub(super) fn event_from_row<R>(
    room_id: RoomId,
    row: &R,
    in_timeline: bool,
    is_state: bool,
) -> Result<StoredEvent, PersistError>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let event_id: String = column(row, "event_id")?;
    let json: Vec<u8> = column(row, "json")?;
    let prev_batch: Option<String> = column(row, "prev_batch")?;
    let filled_order = match column::<R, Option<i64>>(row, "filled_order")? {
        Some(order) => Some((position_from_db(order)?, column(row, "filled_sub")?)),
        None => None,
    };
    let ts: Option<i64> = column(row, "ts")?;
    Ok(StoredEvent {
        room_id,
        position: position_from_db(column(row, "position")?)?,
        event_id: event_id.into_boxed_str(),
        in_timeline,
        is_state,
        prev_batch: prev_batch.map(String::into_boxed_str),
        gap_before: column(row, "gap_before")?,
        filled_order,
        ts: ts.map(count_from_db).transpose()?,
        json: Bytes::from(json),
    })
}

/// A device's user and device IDs.
pub(super) fn device_key<R>(row: &R) -> Result<DeviceKey, PersistError>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(DeviceKey::new(
        column::<R, String>(row, "user_id")?,
        column::<R, String>(row, "device_id")?,
    ))
}
