//! Postgres behind [`Persist`], with the migrations in `schema/postgres/`.
//!
//! Writes come from the write-behind queue in batches. A batch is one transaction with at
//! most one statement per table: the rows of a kind travel as array parameters and are
//! expanded by `UNNEST`, so a batch costs a handful of round trips whatever its size and
//! never meets Postgres' limit of 65 535 bind parameters. Reads happen once, at startup;
//! each load runs in one read-only repeatable-read transaction, so its pages and chunks
//! see one moment of the database.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Postgres, Row, Transaction};

use super::persist::{
    LoadedAccountData, LoadedDevice, LoadedMembership, LoadedReceipt, LoadedRoom, LoadedUnread,
    MembershipKind, Persist, PersistError, StoredDevice, StoredToDevice, StoredToken, Write,
};
use super::rows::{
    count_from_db, count_to_db, device_key, event_from_row, load_devices, position_from_db,
    position_to_db, settle_recent_ids, stored_to_device, Grouped, Interner, ListStep,
    ToDeviceMessageRow,
};
use crate::event::Receipt;
use crate::types::{DeviceKey, Position, RoomId};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./schema/postgres");

/// Pool size when `SYNCV3_MAX_DB_CONN` is 0 (unset): the writer needs one or two, startup
/// loading and token checks the rest.
const DEFAULT_MAX_CONNECTIONS: u32 = 16;
/// How long startup waits for the database. Short, so a wrong `SYNCV3_DB` is reported at
/// once instead of looking like a hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Rooms loaded per round of queries at startup: bounds the rows one query returns and
/// sets how often progress is reported.
const ROOMS_PER_CHUNK: usize = 1000;
/// Membership and unread rows fetched per page at startup, for the same reason.
const ROWS_PER_PAGE: i64 = 10_000;

/// The Postgres store. Cloning shares the pool.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects, applies the migrations, and returns a store with a pool of
    /// `max_connections` (0 means a default of 16). Error messages never contain the
    /// password from `url`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<PgStore, PersistError> {
        let (options, mut conn) = connect_once(url).await.map_err(PersistError::Connect)?;
        // Not under the timeout: a migration on a big database may rightly take minutes.
        // The migrator takes an advisory lock, so two proxies starting together are safe.
        MIGRATOR
            .run(&mut conn)
            .await
            .map_err(|e| PersistError::Migrate(redact(&e.to_string(), url)))?;
        // Failing to say goodbye on a connection that worked is not worth failing startup.
        let _ = conn.close().await;

        let max_connections = match max_connections {
            0 => DEFAULT_MAX_CONNECTIONS,
            n => n,
        };
        // Lazy: the probe above already proved the settings, and the pool opens
        // connections as the writer and loaders ask for them.
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_lazy_with(options);
        Ok(PgStore { pool })
    }

    async fn read_only(&self) -> Result<Transaction<'static, Postgres>, PersistError> {
        let mut tx = self.pool.begin().await.map_err(query_error)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(query_error)?;
        Ok(tx)
    }

    /// Reads a table keyed by `(user_id, room_id)` page by page, so startup never holds
    /// every raw row and every decoded value at once. `sql` takes the last key read as
    /// `$1, $2` and the page size as `$3`, and returns `user_id` and `room_id` columns.
    async fn read_by_user_and_room<T>(
        &self,
        sql: &'static str,
        mut decode: impl FnMut(&PgRow) -> Result<T, PersistError>,
    ) -> Result<Vec<T>, PersistError> {
        let mut tx = self.read_only().await?;
        let mut out = Vec::new();
        // Starting after ("", "") skips nothing real: Matrix IDs are never empty.
        let mut after = (String::new(), String::new());
        loop {
            let rows = sqlx::query(sql)
                .bind(&after.0)
                .bind(&after.1)
                .bind(ROWS_PER_PAGE)
                .fetch_all(&mut *tx)
                .await
                .map_err(query_error)?;
            for row in &rows {
                out.push(decode(row)?);
            }
            match rows.last() {
                Some(last) if rows.len() as i64 == ROWS_PER_PAGE => {
                    after = (
                        last.try_get("user_id").map_err(query_error)?,
                        last.try_get("room_id").map_err(query_error)?,
                    );
                }
                _ => break,
            }
        }
        tx.commit().await.map_err(query_error)?;
        Ok(out)
    }
}

#[async_trait]
impl Persist for PgStore {
    /// Rows of one kind go in one statement. Within a batch, a later membership, unread
    /// count or `since` for the same key replaces an earlier one, and the snapshot with the
    /// highest position wins, exactly as if the rows had been applied one by one.
    async fn write(&self, batch: &[Write]) -> Result<(), PersistError> {
        if batch.is_empty() {
            return Ok(());
        }
        let rows = BatchRows::group(batch)?;
        let mut tx = self.pool.begin().await.map_err(query_error)?;
        rows.insert(&mut tx).await.map_err(query_error)?;
        // Dropping `tx` on an error above rolls the whole batch back.
        tx.commit().await.map_err(query_error)
    }

    /// Rooms come back sorted by room ID. A room is found through its snapshot, its state
    /// events or its timeline events; an event that is neither state nor timeline is never
    /// read back, so a room holding only such events is not listed.
    async fn load_rooms(
        &self,
        timeline_per_room: usize,
        ids_per_room: usize,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<(RoomId, LoadedRoom)>, PersistError> {
        let limits = Limits {
            timeline: i64::try_from(timeline_per_room).unwrap_or(i64::MAX),
            ids: i64::try_from(ids_per_room).unwrap_or(i64::MAX),
        };
        let mut tx = self.read_only().await?;
        let mut room_ids: Vec<String> = sqlx::query_scalar(ROOM_IDS_SQL)
            .fetch_all(&mut *tx)
            .await
            .map_err(query_error)?;
        room_ids.sort_unstable();

        let mut rooms = Vec::with_capacity(room_ids.len());
        for chunk in room_ids.chunks(ROOMS_PER_CHUNK) {
            let start = rooms.len();
            rooms.extend(
                chunk
                    .iter()
                    .map(|id| (RoomId::from(id.as_str()), LoadedRoom::default())),
            );
            load_room_chunk(&mut tx, chunk, &limits, &mut rooms[start..]).await?;
            progress(rooms.len());
        }
        tx.commit().await.map_err(query_error)?;
        Ok(rooms)
    }

    async fn stored_event_ids(
        &self,
        event_ids: &[Box<str>],
    ) -> Result<Vec<Box<str>>, PersistError> {
        let ids: Vec<&str> = event_ids.iter().map(|id| &**id).collect();
        let found: Vec<String> = sqlx::query_scalar(
            "SELECT event_id FROM slidesync_events WHERE event_id = ANY($1::TEXT[])",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error)?;
        Ok(found.into_iter().map(String::into_boxed_str).collect())
    }

    async fn load_memberships(&self) -> Result<Vec<LoadedMembership>, PersistError> {
        let mut ids = Interner::default();
        self.read_by_user_and_room(
            "SELECT user_id, room_id, kind, position, invite_state \
             FROM slidesync_memberships \
             WHERE (user_id, room_id) > ($1, $2) \
             ORDER BY user_id, room_id LIMIT $3",
            |row| {
                let kind: &str = row.try_get("kind").map_err(query_error)?;
                let kind = MembershipKind::parse(kind)
                    .ok_or_else(|| PersistError::Corrupt(format!("membership kind {kind:?}")))?;
                Ok(LoadedMembership {
                    user_id: ids.get(row.try_get("user_id").map_err(query_error)?),
                    room_id: ids.get(row.try_get("room_id").map_err(query_error)?),
                    kind,
                    position: position_from_db(row.try_get("position").map_err(query_error)?)?,
                    invite_state: row
                        .try_get::<Option<Vec<u8>>, _>("invite_state")
                        .map_err(query_error)?
                        .map(Bytes::from),
                })
            },
        )
        .await
    }

    async fn load_account_data(&self) -> Result<Vec<LoadedAccountData>, PersistError> {
        let mut ids = Interner::default();
        let mut tx = self.read_only().await?;
        let mut rows = sqlx::query("SELECT user_id, room_id, json FROM slidesync_account_data")
            .fetch(&mut *tx);
        let mut out = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(query_error)? {
            let room_id: String = row.try_get("room_id").map_err(query_error)?;
            out.push(LoadedAccountData {
                user_id: ids.get(row.try_get("user_id").map_err(query_error)?),
                room_id: (!room_id.is_empty()).then(|| ids.get(&room_id)),
                json: Bytes::from(row.try_get::<Vec<u8>, _>("json").map_err(query_error)?),
            });
        }
        drop(rows);
        tx.commit().await.map_err(query_error)?;
        Ok(out)
    }

    async fn load_receipts(&self) -> Result<Vec<LoadedReceipt>, PersistError> {
        let mut ids = Interner::default();
        let mut tx = self.read_only().await?;
        let mut rows = sqlx::query(
            "SELECT room_id, user_id, private, thread_id, event_id, ts FROM slidesync_receipts",
        )
        .fetch(&mut *tx);
        let mut out = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(query_error)? {
            let thread: String = row.try_get("thread_id").map_err(query_error)?;
            let event_id: String = row.try_get("event_id").map_err(query_error)?;
            out.push(LoadedReceipt {
                room_id: ids.get(row.try_get("room_id").map_err(query_error)?),
                receipt: Receipt {
                    event_id: event_id.into(),
                    user_id: ids.get(row.try_get("user_id").map_err(query_error)?),
                    private: row.try_get("private").map_err(query_error)?,
                    thread_id: (!thread.is_empty()).then(|| thread.into()),
                    ts: count_from_db(row.try_get("ts").map_err(query_error)?)?,
                },
            });
        }
        drop(rows);
        tx.commit().await.map_err(query_error)?;
        Ok(out)
    }

    async fn load_unread(&self) -> Result<Vec<LoadedUnread>, PersistError> {
        let mut ids = Interner::default();
        self.read_by_user_and_room(
            "SELECT user_id, room_id, notification_count, highlight_count \
             FROM slidesync_unread \
             WHERE (user_id, room_id) > ($1, $2) \
             ORDER BY user_id, room_id LIMIT $3",
            |row| {
                Ok(LoadedUnread {
                    user_id: ids.get(row.try_get("user_id").map_err(query_error)?),
                    room_id: ids.get(row.try_get("room_id").map_err(query_error)?),
                    notification_count: count_from_db(
                        row.try_get("notification_count").map_err(query_error)?,
                    )?,
                    highlight_count: count_from_db(
                        row.try_get("highlight_count").map_err(query_error)?,
                    )?,
                })
            },
        )
        .await
    }

    async fn max_position(&self) -> Result<Position, PersistError> {
        let max: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM slidesync_events")
                .fetch_one(&self.pool)
                .await
                .map_err(query_error)?;
        position_from_db(max)
    }

    async fn token(&self, token_hash: &str) -> Result<Option<StoredToken>, PersistError> {
        let row = sqlx::query(
            "SELECT user_id, device_id, token_encrypted FROM slidesync_tokens \
             WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error)?;
        row.map(|row| {
            Ok(StoredToken {
                device: device_key(&row)?,
                token_encrypted: row.try_get("token_encrypted").map_err(query_error)?,
            })
        })
        .transpose()
    }

    /// Seeing a token again makes it its device's newest. The device row keeps its `since`.
    async fn insert_token(
        &self,
        token_hash: &str,
        token_encrypted: &str,
        device: &DeviceKey,
    ) -> Result<(), PersistError> {
        // One statement, so the token never exists without its device row.
        sqlx::query(
            "WITH token AS ( \
                 INSERT INTO slidesync_tokens \
                     (token_hash, token_encrypted, user_id, device_id, created_ms, last_seen_ms) \
                 VALUES ($1, $2, $3, $4, $5, $5) \
                 ON CONFLICT (token_hash) DO UPDATE SET \
                     token_encrypted = excluded.token_encrypted, \
                     user_id = excluded.user_id, \
                     device_id = excluded.device_id, \
                     last_seen_ms = excluded.last_seen_ms, \
                     seen_seq = nextval('slidesync_tokens_seen_seq') \
             ) \
             INSERT INTO slidesync_devices (user_id, device_id) VALUES ($3, $4) \
             ON CONFLICT (user_id, device_id) DO NOTHING",
        )
        .bind(token_hash)
        .bind(token_encrypted)
        .bind(&*device.user_id)
        .bind(&*device.device_id)
        .bind(count_to_db(crate::types::now_ms()))
        .execute(&self.pool)
        .await
        .map_err(query_error)?;
        Ok(())
    }

    /// The device row stays: a new token for the same device resumes from its `since`.
    async fn delete_token(&self, token_hash: &str) -> Result<(), PersistError> {
        sqlx::query("DELETE FROM slidesync_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.pool)
            .await
            .map_err(query_error)?;
        Ok(())
    }

    async fn devices(&self) -> Result<Vec<StoredDevice>, PersistError> {
        let rows = sqlx::query(
            "SELECT DISTINCT ON (t.user_id, t.device_id) \
                 t.user_id, t.device_id, t.token_encrypted, d.since \
             FROM slidesync_tokens t \
             LEFT JOIN slidesync_devices d USING (user_id, device_id) \
             ORDER BY t.user_id, t.device_id, t.seen_seq DESC",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_error)?;
        rows.iter()
            .map(|row| {
                Ok(StoredDevice {
                    device: device_key(row)?,
                    token_encrypted: row.try_get("token_encrypted").map_err(query_error)?,
                    since: row.try_get("since").map_err(query_error)?,
                })
            })
            .collect()
    }

    async fn load_device_data(&self) -> Result<Vec<LoadedDevice>, PersistError> {
        let mut tx = self.read_only().await?;
        let devices = load_devices::<Postgres>(&mut tx, query_error).await?;
        tx.commit().await.map_err(query_error)?;
        Ok(devices)
    }

    async fn to_device_after(
        &self,
        device: &DeviceKey,
        after: Position,
        limit: usize,
    ) -> Result<Vec<StoredToDevice>, PersistError> {
        let rows: Vec<ToDeviceMessageRow> = sqlx::query_as(
            "SELECT position, json, key_request FROM slidesync_to_device \
             WHERE user_id = $1 AND device_id = $2 AND position > $3 \
             ORDER BY position LIMIT $4",
        )
        .bind(&*device.user_id)
        .bind(&*device.device_id)
        .bind(position_to_db(after)?)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error)?;
        stored_to_device(rows)
    }
}

/// Every room with a snapshot, a state event or a timeline event. The two recursive
/// parts are loose index scans: they hop from one room ID to the next in the partial
/// indexes instead of reading every event, which matters when events outnumber rooms a
/// thousand to one (Postgres before 18 cannot skip-scan on its own).
const ROOM_IDS_SQL: &str = "\
WITH RECURSIVE
timeline_rooms(room_id) AS (
    (SELECT room_id FROM slidesync_events WHERE in_timeline ORDER BY room_id LIMIT 1)
    UNION ALL
    SELECT (SELECT e.room_id FROM slidesync_events e
            WHERE e.in_timeline AND e.room_id > r.room_id ORDER BY e.room_id LIMIT 1)
    FROM timeline_rooms r WHERE r.room_id IS NOT NULL
),
state_rooms(room_id) AS (
    (SELECT room_id FROM slidesync_events WHERE is_state ORDER BY room_id LIMIT 1)
    UNION ALL
    SELECT (SELECT e.room_id FROM slidesync_events e
            WHERE e.is_state AND e.room_id > r.room_id ORDER BY e.room_id LIMIT 1)
    FROM state_rooms r WHERE r.room_id IS NOT NULL
)
SELECT room_id FROM timeline_rooms WHERE room_id IS NOT NULL
UNION SELECT room_id FROM state_rooms WHERE room_id IS NOT NULL
UNION SELECT room_id FROM slidesync_snapshots";

// The chunk queries below number the rooms of `$1` with ORDINALITY and return that
// number instead of the room ID: rows are placed by index, with no string per row.

const CHUNK_SNAPSHOTS_SQL: &str = "\
SELECT r.idx, s.position, s.bytes
FROM UNNEST($1::TEXT[]) WITH ORDINALITY AS r(room_id, idx)
JOIN slidesync_snapshots s ON s.room_id = r.room_id";

const CHUNK_STATE_SQL: &str = "\
SELECT r.idx, e.position, e.event_id, e.in_timeline, e.prev_batch, e.gap_before,
       e.filled_order, e.filled_sub, e.ts, e.json
FROM UNNEST($1::TEXT[]) WITH ORDINALITY AS r(room_id, idx)
LEFT JOIN slidesync_snapshots s ON s.room_id = r.room_id
CROSS JOIN LATERAL (
    SELECT position, event_id, in_timeline, prev_batch, gap_before, filled_order, filled_sub,
           ts, json
    FROM slidesync_events e
    WHERE e.is_state AND e.room_id = r.room_id AND e.position > COALESCE(s.position, -1)
) e
ORDER BY r.idx, e.position";

/// In timeline order, which is position order except for events filled into a gap.
const CHUNK_TIMELINE_SQL: &str = "\
SELECT r.idx, e.position, e.event_id, e.is_state, e.prev_batch, e.gap_before,
       e.filled_order, e.filled_sub, e.ts, e.json
FROM UNNEST($1::TEXT[]) WITH ORDINALITY AS r(room_id, idx)
CROSS JOIN LATERAL (
    SELECT position, event_id, is_state, prev_batch, gap_before, filled_order, filled_sub,
           ts, json
    FROM slidesync_events e
    WHERE e.in_timeline AND e.room_id = r.room_id
    ORDER BY COALESCE(e.filled_order, e.position) DESC, e.filled_sub DESC LIMIT $2
) e
ORDER BY r.idx, COALESCE(e.filled_order, e.position), e.filled_sub";

/// Newest first, one more than asked for: a room with no more than that many is known whole.
const CHUNK_IDS_SQL: &str = "\
SELECT r.idx, e.event_id
FROM UNNEST($1::TEXT[]) WITH ORDINALITY AS r(room_id, idx)
CROSS JOIN LATERAL (
    SELECT event_id, position FROM slidesync_events e
    WHERE e.room_id = r.room_id
    ORDER BY e.position DESC LIMIT $2 + 1
) e
ORDER BY r.idx, e.position DESC";

/// How much of each room startup reads.
struct Limits {
    timeline: i64,
    ids: i64,
}

/// Fills `rooms` (already holding the IDs of `room_ids`, in that order) with three
/// queries for the whole chunk.
async fn load_room_chunk(
    tx: &mut Transaction<'static, Postgres>,
    room_ids: &[String],
    limits: &Limits,
    rooms: &mut [(RoomId, LoadedRoom)],
) -> Result<(), PersistError> {
    for row in sqlx::query(CHUNK_SNAPSHOTS_SQL)
        .bind(room_ids)
        .fetch_all(&mut **tx)
        .await
        .map_err(query_error)?
    {
        let (_, room) = room_at(rooms, &row)?;
        let position = position_from_db(row.try_get("position").map_err(query_error)?)?;
        let bytes: Vec<u8> = row.try_get("bytes").map_err(query_error)?;
        room.snapshot = Some((position, Bytes::from(bytes)));
    }

    for row in sqlx::query(CHUNK_STATE_SQL)
        .bind(room_ids)
        .fetch_all(&mut **tx)
        .await
        .map_err(query_error)?
    {
        let (room_id, room) = room_at(rooms, &row)?;
        let in_timeline = row.try_get("in_timeline").map_err(query_error)?;
        room.state_after_snapshot
            .push(event_from_row(room_id, &row, in_timeline, true)?);
    }

    for row in sqlx::query(CHUNK_IDS_SQL)
        .bind(room_ids)
        .bind(limits.ids)
        .fetch_all(&mut **tx)
        .await
        .map_err(query_error)?
    {
        let (_, room) = room_at(rooms, &row)?;
        let event_id: String = row.try_get("event_id").map_err(query_error)?;
        room.recent_ids.push(event_id.into_boxed_str());
    }
    let ids = usize::try_from(limits.ids).unwrap_or(usize::MAX);
    for (_, room) in rooms.iter_mut() {
        room.ids_complete = settle_recent_ids(&mut room.recent_ids, ids);
    }

    if limits.timeline == 0 {
        return Ok(());
    }
    for row in sqlx::query(CHUNK_TIMELINE_SQL)
        .bind(room_ids)
        .bind(limits.timeline)
        .fetch_all(&mut **tx)
        .await
        .map_err(query_error)?
    {
        let (room_id, room) = room_at(rooms, &row)?;
        let is_state = row.try_get("is_state").map_err(query_error)?;
        room.timeline
            .push(event_from_row(room_id, &row, true, is_state)?);
    }
    Ok(())
}

/// The room a chunk row belongs to, by its 1-based ordinality.
fn room_at<'r>(
    rooms: &'r mut [(RoomId, LoadedRoom)],
    row: &PgRow,
) -> Result<(RoomId, &'r mut LoadedRoom), PersistError> {
    let idx: i64 = row.try_get("idx").map_err(query_error)?;
    let (room_id, room) = usize::try_from(idx - 1)
        .ok()
        .and_then(|i| rooms.get_mut(i))
        .ok_or_else(|| PersistError::Corrupt(format!("room ordinality {idx} out of range")))?;
    Ok((room_id.clone(), room))
}

/// The rows of one batch as the array parameters `UNNEST` expands.
struct BatchRows<'a> {
    events: EventColumns<'a>,
    rows: Grouped<'a>,
}

#[derive(Default)]
struct EventColumns<'a> {
    position: Vec<i64>,
    room_id: Vec<&'a str>,
    event_id: Vec<&'a str>,
    in_timeline: Vec<bool>,
    is_state: Vec<bool>,
    prev_batch: Vec<Option<&'a str>>,
    gap_before: Vec<bool>,
    filled_order: Vec<Option<i64>>,
    filled_sub: Vec<i32>,
    ts: Vec<Option<i64>>,
    json: Vec<&'a [u8]>,
}

impl<'a> BatchRows<'a> {
    fn group(batch: &'a [Write]) -> Result<Self, PersistError> {
        let rows = Grouped::new(batch)?;
        let mut e = EventColumns::default();
        for row in &rows.events {
            let event = row.event;
            e.position.push(row.position);
            e.room_id.push(&event.room_id);
            e.event_id.push(&event.event_id);
            e.in_timeline.push(event.in_timeline);
            e.is_state.push(event.is_state);
            e.prev_batch.push(event.prev_batch.as_deref());
            e.gap_before.push(event.gap_before);
            e.filled_order.push(row.filled_order);
            e.filled_sub.push(row.filled_sub);
            e.ts.push(row.ts);
            e.json.push(&event.json);
        }
        Ok(BatchRows { events: e, rows })
    }

    /// The `since` rows go last only for readability: the transaction is what keeps a
    /// `since` from being visible without the data it acknowledges.
    async fn insert(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        let e = &self.events;
        if !e.position.is_empty() {
            sqlx::query(
                "INSERT INTO slidesync_events \
                     (position, room_id, event_id, in_timeline, is_state, prev_batch, \
                      gap_before, filled_order, filled_sub, ts, json) \
                 SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], \
                                      $4::BOOLEAN[], $5::BOOLEAN[], $6::TEXT[], \
                                      $7::BOOLEAN[], $8::BIGINT[], $9::INTEGER[], \
                                      $10::BIGINT[], $11::BYTEA[]) \
                 ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(&e.position)
            .bind(&e.room_id)
            .bind(&e.event_id)
            .bind(&e.in_timeline)
            .bind(&e.is_state)
            .bind(&e.prev_batch)
            .bind(&e.gap_before)
            .bind(&e.filled_order)
            .bind(&e.filled_sub)
            .bind(&e.ts)
            .bind(&e.json)
            .execute(&mut **tx)
            .await?;
        }

        // One statement per redaction: they are rare, and a later one of the same event
        // in the batch must win.
        for (event_id, json) in &self.rows.redacted {
            sqlx::query("UPDATE slidesync_events SET json = $1 WHERE event_id = $2")
                .bind(json)
                .bind(event_id)
                .execute(&mut **tx)
                .await?;
        }

        if !self.rows.gaps_filled.is_empty() {
            sqlx::query(
                "UPDATE slidesync_events SET gap_before = FALSE \
                 WHERE event_id = ANY($1::TEXT[])",
            )
            .bind(&self.rows.gaps_filled)
            .execute(&mut **tx)
            .await?;
        }

        if !self.rows.snapshots.is_empty() {
            let mut cols = (Vec::new(), Vec::new(), Vec::new());
            for (&room_id, &(position, bytes)) in &self.rows.snapshots {
                cols.0.push(room_id);
                cols.1.push(position);
                cols.2.push(bytes);
            }
            // A snapshot older than the stored one is ignored: it would make startup
            // replay state events that the newer one already folds in, or lose some.
            sqlx::query(
                "INSERT INTO slidesync_snapshots (room_id, position, bytes) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BYTEA[]) \
                 ON CONFLICT (room_id) DO UPDATE \
                     SET position = excluded.position, bytes = excluded.bytes \
                     WHERE slidesync_snapshots.position <= excluded.position",
            )
            .bind(cols.0)
            .bind(cols.1)
            .bind(cols.2)
            .execute(&mut **tx)
            .await?;
        }

        if !self.rows.memberships.is_empty() {
            let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (&(user_id, room_id), row) in &self.rows.memberships {
                cols.0.push(user_id);
                cols.1.push(room_id);
                cols.2.push(row.kind);
                cols.3.push(row.position);
                cols.4.push(row.invite_state);
            }
            sqlx::query(
                "INSERT INTO slidesync_memberships \
                     (user_id, room_id, kind, position, invite_state) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], \
                                      $4::BIGINT[], $5::BYTEA[]) \
                 ON CONFLICT (user_id, room_id) DO UPDATE SET \
                     kind = excluded.kind, \
                     position = excluded.position, \
                     invite_state = excluded.invite_state",
            )
            .bind(cols.0)
            .bind(cols.1)
            .bind(cols.2)
            .bind(cols.3)
            .bind(cols.4)
            .execute(&mut **tx)
            .await?;
        }

        if !self.rows.unread.is_empty() {
            let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (&(user_id, room_id), &(notifications, highlights)) in &self.rows.unread {
                cols.0.push(user_id);
                cols.1.push(room_id);
                cols.2.push(notifications);
                cols.3.push(highlights);
            }
            sqlx::query(
                "INSERT INTO slidesync_unread \
                     (user_id, room_id, notification_count, highlight_count) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[]) \
                 ON CONFLICT (user_id, room_id) DO UPDATE SET \
                     notification_count = excluded.notification_count, \
                     highlight_count = excluded.highlight_count",
            )
            .bind(cols.0)
            .bind(cols.1)
            .bind(cols.2)
            .bind(cols.3)
            .execute(&mut **tx)
            .await?;
        }

        if !self.rows.account_data.is_empty() {
            let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (&(user_id, room_id, kind), &json) in &self.rows.account_data {
                cols.0.push(user_id);
                cols.1.push(room_id);
                cols.2.push(kind);
                cols.3.push(json);
            }
            sqlx::query(
                "INSERT INTO slidesync_account_data (user_id, room_id, type, json) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BYTEA[]) \
                 ON CONFLICT (user_id, room_id, type) DO UPDATE SET json = excluded.json",
            )
            .bind(cols.0)
            .bind(cols.1)
            .bind(cols.2)
            .bind(cols.3)
            .execute(&mut **tx)
            .await?;
        }

        if !self.rows.receipts.is_empty() {
            let mut cols = (
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
            );
            for (&(room_id, user_id, private, thread), &(event_id, ts)) in &self.rows.receipts {
                cols.0.push(room_id);
                cols.1.push(user_id);
                cols.2.push(private);
                cols.3.push(thread);
                cols.4.push(event_id);
                cols.5.push(ts);
            }
            sqlx::query(
                "INSERT INTO slidesync_receipts \
                     (room_id, user_id, private, thread_id, event_id, ts) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BOOLEAN[], $4::TEXT[], \
                                      $5::TEXT[], $6::BIGINT[]) \
                 ON CONFLICT (room_id, user_id, private, thread_id) DO UPDATE SET \
                     event_id = excluded.event_id, ts = excluded.ts",
            )
            .bind(cols.0)
            .bind(cols.1)
            .bind(cols.2)
            .bind(cols.3)
            .bind(cols.4)
            .bind(cols.5)
            .execute(&mut **tx)
            .await?;
        }
        self.insert_device_data(tx).await?;

        if !self.rows.since.is_empty() {
            let mut cols = (Vec::new(), Vec::new(), Vec::new());
            for (&(user_id, device_id), &since) in &self.rows.since {
                cols.0.push(user_id);
                cols.1.push(device_id);
                cols.2.push(since);
            }
            sqlx::query(
                "INSERT INTO slidesync_devices (user_id, device_id, since) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[]) \
                 ON CONFLICT (user_id, device_id) DO UPDATE SET since = excluded.since",
            )
            .bind(cols.0)
            .bind(cols.1)
            .bind(cols.2)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}

impl BatchRows<'_> {
    /// To-device messages (then what drops or acknowledges them), key data, and
    /// device-list steps in batch order.
    async fn insert_device_data(
        &self,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<(), sqlx::Error> {
        let rows = &self.rows;
        if !rows.to_device.is_empty() {
            let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for row in &rows.to_device {
                cols.0.push(row.device.0);
                cols.1.push(row.device.1);
                cols.2.push(row.position);
                cols.3.push(row.json);
                cols.4.push(row.key_request);
            }
            sqlx::query(
                "INSERT INTO slidesync_to_device \
                     (user_id, device_id, position, json, key_request) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], \
                                      $4::BYTEA[], $5::TEXT[]) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(cols.0)
            .bind(cols.1)
            .bind(cols.2)
            .bind(cols.3)
            .bind(cols.4)
            .execute(&mut **tx)
            .await?;
        }
        if !rows.to_device_drops.is_empty() {
            let mut cols = (Vec::new(), Vec::new(), Vec::new());
            for &((user_id, device_id), position) in &rows.to_device_drops {
                cols.0.push(user_id);
                cols.1.push(device_id);
                cols.2.push(position);
            }
            sqlx::query(
                "DELETE FROM slidesync_to_device t \
                 USING UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[]) AS d(u, dev, p) \
                 WHERE t.user_id = d.u AND t.device_id = d.dev AND t.position = d.p",
            )
            .bind(cols.0)
            .bind(cols.1)
            .bind(cols.2)
            .execute(&mut **tx)
            .await?;
        }
        if !rows.to_device_acks.is_empty() {
            let mut cols = (Vec::new(), Vec::new(), Vec::new());
            for (&(user_id, device_id), &position) in &rows.to_device_acks {
                cols.0.push(user_id);
                cols.1.push(device_id);
                cols.2.push(position);
            }
            sqlx::query(
                "DELETE FROM slidesync_to_device t \
                 USING UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[]) AS a(u, dev, p) \
                 WHERE t.user_id = a.u AND t.device_id = a.dev AND t.position <= a.p",
            )
            .bind(&cols.0)
            .bind(&cols.1)
            .bind(&cols.2)
            .execute(&mut **tx)
            .await?;
        }
        if !rows.to_device_marks.is_empty() {
            let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (&(user_id, device_id), &(acked, delivered)) in &rows.to_device_marks {
                cols.0.push(user_id);
                cols.1.push(device_id);
                cols.2.push(acked);
                cols.3.push(delivered);
            }
            sqlx::query(
                "INSERT INTO slidesync_device_data \
                     (user_id, device_id, to_device_acked, to_device_delivered) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[]) \
                 ON CONFLICT (user_id, device_id) DO UPDATE SET \
                     to_device_acked = GREATEST(slidesync_device_data.to_device_acked, \
                                                excluded.to_device_acked), \
                     to_device_delivered = GREATEST(slidesync_device_data.to_device_delivered, \
                                                    excluded.to_device_delivered)",
            )
            .bind(cols.0)
            .bind(cols.1)
            .bind(cols.2)
            .bind(cols.3)
            .execute(&mut **tx)
            .await?;
        }
        if !rows.device_keys.is_empty() {
            let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (&(user_id, device_id), &(otk, fallback)) in &rows.device_keys {
                cols.0.push(user_id);
                cols.1.push(device_id);
                cols.2.push(otk);
                cols.3.push(fallback);
            }
            sqlx::query(
                "INSERT INTO slidesync_device_data \
                     (user_id, device_id, otk_counts, fallback_types) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BYTEA[], $4::BYTEA[]) \
                 ON CONFLICT (user_id, device_id) DO UPDATE SET \
                     otk_counts = excluded.otk_counts, \
                     fallback_types = excluded.fallback_types",
            )
            .bind(cols.0)
            .bind(cols.1)
            .bind(cols.2)
            .bind(cols.3)
            .execute(&mut **tx)
            .await?;
        }
        if !rows.lists_catch_up.is_empty() {
            let mut cols = (Vec::new(), Vec::new(), Vec::new());
            for (&(user_id, device_id), &from) in &rows.lists_catch_up {
                cols.0.push(user_id);
                cols.1.push(device_id);
                cols.2.push(from);
            }
            sqlx::query(
                "INSERT INTO slidesync_device_data (user_id, device_id, device_lists_from) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[]) \
                 ON CONFLICT (user_id, device_id) DO UPDATE SET \
                     device_lists_from = excluded.device_lists_from",
            )
            .bind(cols.0)
            .bind(cols.1)
            .bind(cols.2)
            .execute(&mut **tx)
            .await?;
        }
        for step in &rows.device_lists {
            match step {
                ListStep::Changes(changes) => {
                    let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                    for (&((user_id, device_id), target), &change) in changes {
                        cols.0.push(user_id);
                        cols.1.push(device_id);
                        cols.2.push(target);
                        cols.3.push(change);
                    }
                    sqlx::query(
                        "INSERT INTO slidesync_device_lists \
                             (user_id, device_id, target_user_id, change, sent) \
                         SELECT u, d, t, c, FALSE \
                         FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[]) \
                             AS x(u, d, t, c) \
                         ON CONFLICT (user_id, device_id, sent, target_user_id) \
                         DO UPDATE SET change = excluded.change",
                    )
                    .bind(cols.0)
                    .bind(cols.1)
                    .bind(cols.2)
                    .bind(cols.3)
                    .execute(&mut **tx)
                    .await?;
                }
                ListStep::Delivered((user_id, device_id)) => {
                    sqlx::query(
                        "DELETE FROM slidesync_device_lists \
                         WHERE user_id = $1 AND device_id = $2 AND sent",
                    )
                    .bind(user_id)
                    .bind(device_id)
                    .execute(&mut **tx)
                    .await?;
                    sqlx::query(
                        "UPDATE slidesync_device_lists SET sent = TRUE \
                         WHERE user_id = $1 AND device_id = $2 AND NOT sent",
                    )
                    .bind(user_id)
                    .bind(device_id)
                    .execute(&mut **tx)
                    .await?;
                }
            }
        }
        Ok(())
    }
}

/// Tells a row the database can never store from a failure that may pass. SQLSTATE
/// class 22 (data exception: a NUL in text, a value out of range) and class 23 (integrity
/// constraint violation) are about the data; a value sqlx cannot encode is too. Anything
/// else (I/O, pool timeout, class 08 connection exceptions, 57P01 admin shutdown, 40001
/// and 40P01 conflicts) is worth retrying; so is an error we do not know, since retrying
/// a permanent error costs only log lines while skipping a transient one loses data.
fn query_error(e: sqlx::Error) -> PersistError {
    let rejected = match &e {
        sqlx::Error::Encode(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
        _ => false,
    };
    if rejected {
        PersistError::Rejected(e.to_string())
    } else {
        PersistError::Query(e.to_string())
    }
}

/// The settings in `url` and one plain connection with them, made within
/// [`CONNECT_TIMEOUT`]. One plain connection, rather than a pool's own check: a pool
/// retries a refused connection until its timeout and then reports only "timed out",
/// losing the reason an operator needs. The error never contains the password.
pub(super) async fn connect_once(url: &str) -> Result<(PgConnectOptions, PgConnection), String> {
    let options = PgConnectOptions::from_str(url).map_err(|e| redact(&e.to_string(), url))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => Ok((options, conn)),
        Ok(Err(e)) => Err(redact(&e.to_string(), url)),
        Err(_) => Err(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())),
    }
}

/// `message` with every form of the password in `url` replaced by `***`. sqlx does not
/// echo the URL today; this keeps a future error message from putting the password in
/// the log.
pub(super) fn redact(message: &str, url: &str) -> String {
    let mut out = message.to_owned();
    for secret in passwords_in(url) {
        let decoded = percent_encoding::percent_decode_str(secret).decode_utf8_lossy();
        for form in [secret, &*decoded] {
            if !form.is_empty() {
                out = out.replace(form, "***");
            }
        }
    }
    out
}

/// The password of `scheme://user:password@host` and of any `password=` parameter, in URL
/// query or `key=value` form.
fn passwords_in(url: &str) -> Vec<&str> {
    let mut found = Vec::new();
    if let Some((_, rest)) = url.split_once("://") {
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if let Some((_, password)) = userinfo.split_once(':') {
                found.push(password);
            }
        }
    }
    for (i, _) in url.match_indices("password=") {
        let value = &url[i + "password=".len()..];
        let end = value
            .find(|c: char| c == '&' || c.is_whitespace())
            .unwrap_or(value.len());
        found.push(&value[..end]);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_of_a_url_is_redacted_in_every_form() {
        let url = "postgres://proxy:p%40ss@db.example:5432/syncv3?password=other&sslmode=off";
        let message = "failed for p%40ss, p@ss and other";
        assert_eq!(redact(message, url), "failed for ***, *** and ***");
    }

    #[test]
    fn a_url_without_a_password_leaves_the_message_alone() {
        let url = "postgres://postgres@127.0.0.1/syncv3";
        assert_eq!(redact("refused by postgres", url), "refused by postgres");
    }

    #[test]
    fn a_key_value_password_is_redacted() {
        let url = "user=proxy password=hunter2 dbname=syncv3";
        assert_eq!(redact("bad hunter2", url), "bad ***");
    }
}
