//! What the SQL stores share: a batch grouped by table, and the integer conversions.
//!
//! Both stores keep the same rules for what a batch means (duplicates, which snapshot
//! wins, which membership is the last), so they are decided here once and each store only
//! says how its database receives the rows.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use super::devices::ListChange;
use super::persist::{LoadedDevice, PersistError, StoredEvent, StoredToDevice, Write};
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
    /// (user, room or '' for global, type) → JSON; the last one wins.
    pub account_data: BTreeMap<(&'a str, &'a str, &'a str), &'a [u8]>,
    /// (room, user, private, thread or '') → (event ID, ts); the last one wins.
    pub receipts: BTreeMap<(&'a str, &'a str, bool, &'a str), (&'a str, i64)>,
    /// To-device messages, in batch order.
    pub to_device: Vec<ToDeviceRow<'a>>,
    /// Messages dropped before delivery; applied after `to_device`, which may hold them.
    pub to_device_drops: Vec<(UserDevice<'a>, i64)>,
    /// The highest acknowledged position per device; applied after `to_device` (a
    /// client acknowledges only messages queued before).
    pub to_device_acks: BTreeMap<UserDevice<'a>, i64>,
    /// Per device, the positions `slidesync_device_data` keeps, each only ever raised:
    /// (acknowledged, handed out before the device was stored here); 0 leaves one as is.
    pub to_device_marks: BTreeMap<UserDevice<'a>, (i64, i64)>,
    /// (one-time-key counts, fallback key types); the last per device wins.
    pub device_keys: BTreeMap<UserDevice<'a>, KeysRow<'a>>,
    /// Where each device's device lists catch up from (`None` clears); the last wins.
    pub lists_catch_up: BTreeMap<UserDevice<'a>, Option<&'a str>>,
    /// Device-list changes and deliveries, in batch order: a delivery moves only the
    /// changes before it.
    pub device_lists: Vec<ListStep<'a>>,
}

pub(super) type UserRoom<'a> = (&'a str, &'a str);
pub(super) type UserDevice<'a> = (&'a str, &'a str);
/// A device's (one-time-key counts, fallback key types), as JSON.
pub(super) type KeysRow<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

pub(super) struct ToDeviceRow<'a> {
    pub device: UserDevice<'a>,
    pub position: i64,
    pub json: &'a [u8],
    pub key_request: Option<&'a str>,
}

/// A run of device-list changes (the last per device and user wins, as `changed` or
/// `left`), or the delivery of a device's undelivered ones.
pub(super) enum ListStep<'a> {
    Changes(BTreeMap<(UserDevice<'a>, &'a str), &'static str>),
    Delivered(UserDevice<'a>),
}

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
                    rows.since.insert(user_device(device), since);
                }
                Write::AccountData {
                    user_id,
                    room_id,
                    kind,
                    json,
                } => {
                    let room = room_id.as_deref().unwrap_or("");
                    rows.account_data.insert((user_id, room, kind), json);
                }
                Write::Receipt { room_id, receipt } => {
                    let thread = receipt.thread_id.as_deref().unwrap_or("");
                    rows.receipts.insert(
                        (room_id, &receipt.user_id, receipt.private, thread),
                        (&receipt.event_id, count_to_db(receipt.ts)),
                    );
                }
                Write::ToDevice {
                    device,
                    position,
                    json,
                    key_request,
                } => rows.to_device.push(ToDeviceRow {
                    device: user_device(device),
                    position: position_to_db(*position)?,
                    json,
                    key_request: key_request.as_deref(),
                }),
                Write::ToDeviceDrop { device, position } => rows
                    .to_device_drops
                    .push((user_device(device), position_to_db(*position)?)),
                Write::ToDeviceAck { device, position } => {
                    let position = position_to_db(*position)?;
                    let acked = rows.to_device_acks.entry(user_device(device)).or_default();
                    *acked = (*acked).max(position);
                    let marks = rows.to_device_marks.entry(user_device(device)).or_default();
                    marks.0 = marks.0.max(position);
                }
                Write::ToDeviceDelivered { device, position } => {
                    let position = position_to_db(*position)?;
                    let marks = rows.to_device_marks.entry(user_device(device)).or_default();
                    marks.1 = marks.1.max(position);
                }
                Write::DeviceKeys {
                    device,
                    otk_counts,
                    fallback_types,
                } => {
                    rows.device_keys.insert(
                        user_device(device),
                        (otk_counts.as_deref(), fallback_types.as_deref()),
                    );
                }
                Write::DeviceListChange {
                    device,
                    user_id,
                    change,
                } => {
                    if !matches!(rows.device_lists.last(), Some(ListStep::Changes(_))) {
                        rows.device_lists.push(ListStep::Changes(BTreeMap::new()));
                    }
                    if let Some(ListStep::Changes(changes)) = rows.device_lists.last_mut() {
                        changes.insert((user_device(device), user_id), change.as_str());
                    }
                }
                Write::DeviceListsCatchUp { device, from } => {
                    rows.lists_catch_up
                        .insert(user_device(device), from.as_deref());
                }
                Write::DeviceListsDelivered { device } => rows
                    .device_lists
                    .push(ListStep::Delivered(user_device(device))),
            }
        }
        Ok(rows)
    }
}

fn user_device(device: &DeviceKey) -> UserDevice<'_> {
    (&device.user_id, &device.device_id)
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

/// A `slidesync_device_data` row: (user, device, acknowledged, delivered, otk counts,
/// fallback types, device lists' catch-up point).
pub(super) type DeviceDataRow = (
    String,
    String,
    i64,
    i64,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<String>,
);
/// (user, device, newest stored to-device position).
pub(super) type ToDeviceMaxRow = (String, String, i64);
/// A `slidesync_device_lists` row: (user, device, target user, change, sent).
pub(super) type DeviceListRow = (String, String, String, String, bool);

/// Every device's extension data, read in `conn`'s transaction: the same queries on
/// both stores. `error` is the store's own classification of a failed query.
pub(super) async fn load_devices<DB>(
    conn: &mut DB::Connection,
    error: fn(sqlx::Error) -> PersistError,
) -> Result<Vec<LoadedDevice>, PersistError>
where
    DB: sqlx::Database,
    for<'e> &'e mut DB::Connection: sqlx::Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'r> DeviceDataRow: sqlx::FromRow<'r, DB::Row>,
    for<'r> ToDeviceMaxRow: sqlx::FromRow<'r, DB::Row>,
    for<'r> DeviceListRow: sqlx::FromRow<'r, DB::Row>,
{
    let data: Vec<DeviceDataRow> = sqlx::query_as(
        "SELECT user_id, device_id, to_device_acked, to_device_delivered, otk_counts, \
                fallback_types, device_lists_from \
         FROM slidesync_device_data",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(error)?;
    let maxes: Vec<ToDeviceMaxRow> = sqlx::query_as(
        "SELECT user_id, device_id, MAX(position) FROM slidesync_to_device \
         GROUP BY user_id, device_id",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(error)?;
    let lists: Vec<DeviceListRow> = sqlx::query_as(
        "SELECT user_id, device_id, target_user_id, change, sent FROM slidesync_device_lists",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(error)?;
    loaded_devices(data, maxes, lists)
}

/// Both stores' device rows, one [`LoadedDevice`] per device.
fn loaded_devices(
    data: Vec<DeviceDataRow>,
    maxes: Vec<ToDeviceMaxRow>,
    lists: Vec<DeviceListRow>,
) -> Result<Vec<LoadedDevice>, PersistError> {
    let mut ids = Interner::default();
    let mut out: BTreeMap<DeviceKey, LoadedDevice> = BTreeMap::new();
    for (user, device, acked, delivered, otk, fallback, lists_from) in data {
        let d = device_entry(&mut out, &mut ids, &user, &device);
        d.acked = position_from_db(acked)?;
        d.delivered = position_from_db(delivered)?;
        d.otk_counts = otk.map(Bytes::from);
        d.fallback_types = fallback.map(Bytes::from);
        d.lists_catch_up = lists_from.map(String::into_boxed_str);
    }
    for (user, device, max) in maxes {
        device_entry(&mut out, &mut ids, &user, &device).to_device_max = position_from_db(max)?;
    }
    for (user, device, target, change, sent) in lists {
        let change = ListChange::parse(&change)
            .ok_or_else(|| PersistError::Corrupt(format!("device-list change {change:?}")))?;
        let target = ids.get(&target);
        device_entry(&mut out, &mut ids, &user, &device)
            .lists
            .push((target, change, sent));
    }
    Ok(out.into_values().collect())
}

fn device_entry<'m>(
    out: &'m mut BTreeMap<DeviceKey, LoadedDevice>,
    ids: &mut Interner,
    user: &str,
    device: &str,
) -> &'m mut LoadedDevice {
    let key = DeviceKey::new(ids.get(user), ids.get(device));
    out.entry(key.clone()).or_insert_with(|| LoadedDevice {
        device: key,
        acked: 0,
        delivered: 0,
        to_device_max: 0,
        otk_counts: None,
        fallback_types: None,
        lists: Vec::new(),
        lists_catch_up: None,
    })
}

/// A stored to-device message: (position, json, key request).
pub(super) type ToDeviceMessageRow = (i64, Vec<u8>, Option<String>);

pub(super) fn stored_to_device(
    rows: Vec<ToDeviceMessageRow>,
) -> Result<Vec<StoredToDevice>, PersistError> {
    rows.into_iter()
        .map(|(position, json, key_request)| {
            Ok(StoredToDevice {
                position: position_from_db(position)?,
                json: Bytes::from(json),
                key_request: key_request.map(String::into_boxed_str),
            })
        })
        .collect()
}
