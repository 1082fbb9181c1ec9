//! SQLite behind [`Persist`], in one file, with the migrations in `schema/sqlite/`.
//!
//! The embedded store: the same tables, batching rules and read-back as [`super::pg`], in
//! a file beside the proxy, in WAL mode so startup's reads and token lookups never wait
//! for the writer. All writes go through one connection: SQLite lets one writer in at a
//! time anyway, and queuing in the process keeps batches in order instead of polling a
//! lock. A batch is one transaction, so a device's `since` is never committed before the
//! data of its response. SQLite has no array parameters: rows go in multi-row `INSERT`s,
//! and the rooms of a startup chunk travel as one JSON array that `json_each` expands.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, Transaction};

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

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./schema/sqlite");

/// Readers at once: startup loading and token checks.
const READERS: u32 = 4;
/// How long a statement waits for another process holding the file's write lock before
/// it fails (and the write-behind retries).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Rooms loaded per round of queries at startup, as on Postgres: bounds the rows one
/// query returns and sets how often progress is reported.
const ROOMS_PER_CHUNK: usize = 1000;
/// Rows per `INSERT`: 11 parameters an event keeps a statement far below SQLite's limit
/// of 32 766, and few statements per batch.
const ROWS_PER_INSERT: usize = 500;

/// One transaction on the writing connection, begun and ended here rather than by
/// sqlx: when SQLite rolls a transaction back by itself (a full disk, an I/O error),
/// sqlx would go on counting it as open, make the next one a savepoint inside no
/// transaction, and report commits that never reach the file. A transaction that is
/// not committed takes its connection with it (SQLite rolls it back as it closes),
/// and the pool opens a fresh one.
struct WriteTx {
    conn: PoolConnection<Sqlite>,
    committed: bool,
}

impl WriteTx {
    async fn begin(pool: &SqlitePool) -> Result<WriteTx, PersistError> {
        let mut conn = pool.acquire().await.map_err(query_error)?;
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *conn)
            .await
            .map_err(query_error)?;
        Ok(WriteTx {
            conn,
            committed: false,
        })
    }

    async fn commit(mut self) -> Result<(), PersistError> {
        sqlx::query("COMMIT")
            .execute(&mut *self.conn)
            .await
            .map_err(query_error)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if !self.committed {
            self.conn.close_on_drop();
        }
    }
}

/// The SQLite store. Cloning shares the pools.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// One connection: every write, in the order it was asked for.
    writer: SqlitePool,
    readers: SqlitePool,
    /// This process's claim on the file (see [`lock_exclusively`]).
    _lock: Arc<std::fs::File>,
}

impl SqliteStore {
    /// Opens (creating it and its directory if need be) the database file at `path` and
    /// applies the migrations.
    pub async fn connect(path: &Path) -> Result<SqliteStore, PersistError> {
        let connect_error = |e: &dyn std::fmt::Display| {
            PersistError::Connect(format!("cannot open {}: {e}", path.display()))
        };
        // The file holds every private room's events: the directory and the file are
        // the proxy's alone (SQLite gives its -wal and -shm files the file's mode).
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| connect_error(&e))?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| connect_error(&e))?;
        let lock = lock_exclusively(path)
            .await
            .map_err(|e| connect_error(&e))?;
        // FULL makes each commit durable on disk, as a Postgres commit is; a batch is one
        // commit, so it costs one sync per batch.
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            // The one connection stays open: reopening it would re-read the schema.
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await
            .map_err(|e| connect_error(&e))?;
        MIGRATOR
            .run(&writer)
            .await
            .map_err(|e| PersistError::Migrate(format!("{}: {e}", path.display())))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_lazy_with(options);
        Ok(SqliteStore {
            writer,
            readers,
            _lock: Arc::new(lock),
        })
    }
}

/// How long opening waits for another process to let go of the database file: a
/// restarted service may start before the old process has finished exiting.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Takes an exclusive lock beside the database file, held while the store lives: a
/// second proxy on the same file would hand out the same positions and lose rows.
async fn lock_exclusively(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let lock_path = path.with_extension("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)?;
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    // SAFETY: flock(2) on a descriptor `file` keeps open; closing it unlocks.
    let try_lock = || unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    while !try_lock() {
        if tokio::time::Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!(
                    "another slidesync is using this database (it holds {}); stop it first",
                    lock_path.display()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(file)
}

#[async_trait]
impl Persist for SqliteStore {
    /// A later membership, unread count or `since` for the same key replaces an earlier
    /// one, and the snapshot with the highest position wins, as on Postgres.
    async fn write(&self, batch: &[Write]) -> Result<(), PersistError> {
        if batch.is_empty() {
            return Ok(());
        }
        let rows = Grouped::new(batch)?;
        let mut tx = WriteTx::begin(&self.writer).await?;
        insert(&rows, &mut tx.conn).await.map_err(query_error)?;
        tx.commit().await
    }

    /// Rooms come back sorted by room ID, found as on Postgres. The whole load is one read
    /// transaction: in WAL mode it sees one moment of the file while the writer goes on.
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
        let mut tx = self.readers.begin().await.map_err(query_error)?;
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
        if event_ids.is_empty() {
            return Ok(Vec::new());
        }
        let found: Vec<String> = sqlx::query_scalar(
            "SELECT event_id FROM slidesync_events \
             WHERE event_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_array(event_ids)?)
        .fetch_all(&self.readers)
        .await
        .map_err(query_error)?;
        Ok(found.into_iter().map(String::into_boxed_str).collect())
    }

    /// Streamed, so startup never holds every raw row and every decoded value at once.
    async fn load_memberships(&self) -> Result<Vec<LoadedMembership>, PersistError> {
        let mut ids = Interner::default();
        let mut rows = sqlx::query(
            "SELECT user_id, room_id, kind, position, invite_state FROM slidesync_memberships",
        )
        .fetch(&self.readers);
        let mut out = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(query_error)? {
            let kind: &str = row.try_get("kind").map_err(query_error)?;
            let kind = MembershipKind::parse(kind)
                .ok_or_else(|| PersistError::Corrupt(format!("membership kind {kind:?}")))?;
            out.push(LoadedMembership {
                user_id: ids.get(row.try_get("user_id").map_err(query_error)?),
                room_id: ids.get(row.try_get("room_id").map_err(query_error)?),
                kind,
                position: position_from_db(row.try_get("position").map_err(query_error)?)?,
                invite_state: row
                    .try_get::<Option<Vec<u8>>, _>("invite_state")
                    .map_err(query_error)?
                    .map(Bytes::from),
            });
        }
        Ok(out)
    }

    async fn load_account_data(&self) -> Result<Vec<LoadedAccountData>, PersistError> {
        let mut ids = Interner::default();
        let mut rows = sqlx::query("SELECT user_id, room_id, json FROM slidesync_account_data")
            .fetch(&self.readers);
        let mut out = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(query_error)? {
            let room_id: String = row.try_get("room_id").map_err(query_error)?;
            out.push(LoadedAccountData {
                user_id: ids.get(row.try_get("user_id").map_err(query_error)?),
                room_id: (!room_id.is_empty()).then(|| ids.get(&room_id)),
                json: Bytes::from(row.try_get::<Vec<u8>, _>("json").map_err(query_error)?),
            });
        }
        Ok(out)
    }

    async fn load_receipts(&self) -> Result<Vec<LoadedReceipt>, PersistError> {
        let mut ids = Interner::default();
        let mut rows = sqlx::query(
            "SELECT room_id, user_id, private, thread_id, event_id, ts FROM slidesync_receipts",
        )
        .fetch(&self.readers);
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
        Ok(out)
    }

    async fn load_unread(&self) -> Result<Vec<LoadedUnread>, PersistError> {
        let mut ids = Interner::default();
        let mut rows = sqlx::query(
            "SELECT user_id, room_id, notification_count, highlight_count FROM slidesync_unread",
        )
        .fetch(&self.readers);
        let mut out = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(query_error)? {
            out.push(LoadedUnread {
                user_id: ids.get(row.try_get("user_id").map_err(query_error)?),
                room_id: ids.get(row.try_get("room_id").map_err(query_error)?),
                notification_count: count_from_db(
                    row.try_get("notification_count").map_err(query_error)?,
                )?,
                highlight_count: count_from_db(
                    row.try_get("highlight_count").map_err(query_error)?,
                )?,
            });
        }
        Ok(out)
    }

    async fn max_position(&self) -> Result<Position, PersistError> {
        let max: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM slidesync_events")
                .fetch_one(&self.readers)
                .await
                .map_err(query_error)?;
        position_from_db(max)
    }

    async fn token(&self, token_hash: &str) -> Result<Option<StoredToken>, PersistError> {
        let row = sqlx::query(
            "SELECT user_id, device_id, token_encrypted FROM slidesync_tokens \
             WHERE token_hash = ?1",
        )
        .bind(token_hash)
        .fetch_optional(&self.readers)
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
        // One transaction, so the token never exists without its device row. The next
        // `seen_seq` is read in the same statement on the only writing connection, so no
        // two tokens get the same one.
        let mut tx = WriteTx::begin(&self.writer).await?;
        sqlx::query(
            "INSERT INTO slidesync_tokens \
                 (token_hash, token_encrypted, user_id, device_id, created_ms, last_seen_ms, \
                  seen_seq) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, \
                     (SELECT COALESCE(MAX(seen_seq), 0) + 1 FROM slidesync_tokens)) \
             ON CONFLICT (token_hash) DO UPDATE SET \
                 token_encrypted = excluded.token_encrypted, \
                 user_id = excluded.user_id, \
                 device_id = excluded.device_id, \
                 last_seen_ms = excluded.last_seen_ms, \
                 seen_seq = excluded.seen_seq",
        )
        .bind(token_hash)
        .bind(token_encrypted)
        .bind(&*device.user_id)
        .bind(&*device.device_id)
        .bind(count_to_db(crate::types::now_ms()))
        .execute(&mut *tx.conn)
        .await
        .map_err(query_error)?;
        sqlx::query(
            "INSERT INTO slidesync_devices (user_id, device_id) VALUES (?1, ?2) \
             ON CONFLICT (user_id, device_id) DO NOTHING",
        )
        .bind(&*device.user_id)
        .bind(&*device.device_id)
        .execute(&mut *tx.conn)
        .await
        .map_err(query_error)?;
        tx.commit().await
    }

    /// The device row stays: a new token for the same device resumes from its `since`.
    async fn delete_token(&self, token_hash: &str) -> Result<(), PersistError> {
        sqlx::query("DELETE FROM slidesync_tokens WHERE token_hash = ?1")
            .bind(token_hash)
            .execute(&self.writer)
            .await
            .map_err(query_error)?;
        Ok(())
    }

    async fn devices(&self) -> Result<Vec<StoredDevice>, PersistError> {
        let rows = sqlx::query(
            "SELECT user_id, device_id, token_encrypted, since FROM ( \
                 SELECT t.user_id, t.device_id, t.token_encrypted, d.since, \
                        ROW_NUMBER() OVER ( \
                            PARTITION BY t.user_id, t.device_id ORDER BY t.seen_seq DESC \
                        ) AS newest \
                 FROM slidesync_tokens t \
                 LEFT JOIN slidesync_devices d USING (user_id, device_id) \
             ) WHERE newest = 1",
        )
        .fetch_all(&self.readers)
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
        let mut tx = self.readers.begin().await.map_err(query_error)?;
        let devices = load_devices::<Sqlite>(&mut tx, query_error).await?;
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
             WHERE user_id = ?1 AND device_id = ?2 AND position > ?3 \
             ORDER BY position LIMIT ?4",
        )
        .bind(&*device.user_id)
        .bind(&*device.device_id)
        .bind(position_to_db(after)?)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.readers)
        .await
        .map_err(query_error)?;
        stored_to_device(rows)
    }
}

/// Every room with a snapshot, a state event or a timeline event. The recursive parts
/// hop from one room ID to the next in the partial indexes instead of reading every
/// event, as on Postgres.
const ROOM_IDS_SQL: &str = "\
WITH RECURSIVE
timeline_rooms(room_id) AS (
    SELECT (SELECT room_id FROM slidesync_events WHERE in_timeline ORDER BY room_id LIMIT 1)
    UNION ALL
    SELECT (SELECT e.room_id FROM slidesync_events e
            WHERE e.in_timeline AND e.room_id > r.room_id ORDER BY e.room_id LIMIT 1)
    FROM timeline_rooms r WHERE r.room_id IS NOT NULL
),
state_rooms(room_id) AS (
    SELECT (SELECT room_id FROM slidesync_events WHERE is_state ORDER BY room_id LIMIT 1)
    UNION ALL
    SELECT (SELECT e.room_id FROM slidesync_events e
            WHERE e.is_state AND e.room_id > r.room_id ORDER BY e.room_id LIMIT 1)
    FROM state_rooms r WHERE r.room_id IS NOT NULL
)
SELECT room_id FROM timeline_rooms WHERE room_id IS NOT NULL
UNION SELECT room_id FROM state_rooms WHERE room_id IS NOT NULL
UNION SELECT room_id FROM slidesync_snapshots";

// The chunk queries below expand the chunk's JSON array of room IDs with `json_each` and
// return each room's index in it (`key`, 0-based) instead of the room ID: rows are placed
// by index, with no string per row. `CROSS JOIN` keeps the rooms as the outer loop, so
// each room costs index lookups, never a scan of the events.

const CHUNK_SNAPSHOTS_SQL: &str = "\
SELECT r.key AS idx, s.position, s.bytes
FROM json_each(?1) AS r
CROSS JOIN slidesync_snapshots s
WHERE s.room_id = r.value";

const CHUNK_STATE_SQL: &str = "\
SELECT r.key AS idx, e.position, e.event_id, e.in_timeline, e.prev_batch, e.gap_before,
       e.filled_order, e.filled_sub, e.ts, e.json
FROM json_each(?1) AS r
CROSS JOIN slidesync_events e
WHERE e.is_state AND e.room_id = r.value
  AND e.position > COALESCE(
      (SELECT s.position FROM slidesync_snapshots s WHERE s.room_id = r.value), -1)
ORDER BY r.key, e.position";

/// In timeline order, which is position order except for events filled into a gap. The
/// subquery is the newest `?2` of one room, as `LATERAL` is on Postgres.
const CHUNK_TIMELINE_SQL: &str = "\
SELECT r.key AS idx, e.position, e.event_id, e.is_state, e.prev_batch, e.gap_before,
       e.filled_order, e.filled_sub, e.ts, e.json
FROM json_each(?1) AS r
CROSS JOIN slidesync_events e
WHERE e.position IN (
    SELECT t.position FROM slidesync_events t
    WHERE t.in_timeline AND t.room_id = r.value
    ORDER BY COALESCE(t.filled_order, t.position) DESC, t.filled_sub DESC LIMIT ?2)
ORDER BY r.key, COALESCE(e.filled_order, e.position), e.filled_sub";

/// One more than asked for, newest first: a room with no more than that many is known
/// whole.
const CHUNK_IDS_SQL: &str = "\
SELECT r.key AS idx, e.event_id
FROM json_each(?1) AS r
CROSS JOIN slidesync_events e
WHERE e.position IN (
    SELECT t.position FROM slidesync_events t
    WHERE t.room_id = r.value ORDER BY t.position DESC LIMIT ?2 + 1)
ORDER BY r.key, e.position DESC";

/// How much of each room startup reads.
struct Limits {
    timeline: i64,
    ids: i64,
}

/// Fills `rooms` (already holding the IDs of `room_ids`, in that order) with four
/// queries for the whole chunk.
async fn load_room_chunk(
    tx: &mut Transaction<'static, Sqlite>,
    room_ids: &[String],
    limits: &Limits,
    rooms: &mut [(RoomId, LoadedRoom)],
) -> Result<(), PersistError> {
    let room_ids = json_array(room_ids)?;
    for row in sqlx::query(CHUNK_SNAPSHOTS_SQL)
        .bind(&room_ids)
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
        .bind(&room_ids)
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
        .bind(&room_ids)
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
        .bind(&room_ids)
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

/// The room a chunk row belongs to, by its 0-based index in the chunk.
fn room_at<'r>(
    rooms: &'r mut [(RoomId, LoadedRoom)],
    row: &SqliteRow,
) -> Result<(RoomId, &'r mut LoadedRoom), PersistError> {
    let idx: i64 = row.try_get("idx").map_err(query_error)?;
    let (room_id, room) = usize::try_from(idx)
        .ok()
        .and_then(|i| rooms.get_mut(i))
        .ok_or_else(|| PersistError::Corrupt(format!("room index {idx} out of range")))?;
    Ok((room_id.clone(), room))
}

/// IDs as the JSON array `json_each` reads.
fn json_array<S: AsRef<str>>(ids: &[S]) -> Result<String, PersistError> {
    let ids: Vec<&str> = ids.iter().map(AsRef::as_ref).collect();
    sonic_rs::to_string(&ids).map_err(|e| PersistError::Rejected(e.to_string()))
}

/// Writes a grouped batch; the conflict rules are Postgres' (see `pg.rs`).
async fn insert(rows: &Grouped<'_>, tx: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    for chunk in rows.events.chunks(ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO slidesync_events \
                 (position, room_id, event_id, in_timeline, is_state, prev_batch, \
                  gap_before, filled_order, filled_sub, ts, json) ",
        );
        q.push_values(chunk, |mut b, row| {
            let event = row.event;
            b.push_bind(row.position)
                .push_bind(&*event.room_id)
                .push_bind(&*event.event_id)
                .push_bind(event.in_timeline)
                .push_bind(event.is_state)
                .push_bind(event.prev_batch.as_deref())
                .push_bind(event.gap_before)
                .push_bind(row.filled_order)
                .push_bind(row.filled_sub)
                .push_bind(row.ts)
                .push_bind(&event.json[..]);
        });
        q.push(" ON CONFLICT (event_id) DO NOTHING");
        q.build().execute(&mut *tx).await?;
    }

    // One statement per redaction: they are rare, and a later one of the same event in
    // the batch must win.
    for (event_id, json) in &rows.redacted {
        sqlx::query("UPDATE slidesync_events SET json = ? WHERE event_id = ?")
            .bind(json)
            .bind(event_id)
            .execute(&mut *tx)
            .await?;
    }

    for chunk in rows.gaps_filled.chunks(ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "UPDATE slidesync_events SET gap_before = 0 WHERE event_id IN (",
        );
        let mut ids = q.separated(", ");
        for id in chunk {
            ids.push_bind(*id);
        }
        q.push(")");
        q.build().execute(&mut *tx).await?;
    }

    let snapshots: Vec<_> = rows.snapshots.iter().collect();
    for chunk in snapshots.chunks(ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO slidesync_snapshots (room_id, position, bytes) ",
        );
        q.push_values(chunk, |mut b, &(&room_id, &(position, bytes))| {
            b.push_bind(room_id).push_bind(position).push_bind(bytes);
        });
        // A snapshot older than the stored one is ignored, as on Postgres.
        q.push(
            " ON CONFLICT (room_id) DO UPDATE \
                 SET position = excluded.position, bytes = excluded.bytes \
                 WHERE slidesync_snapshots.position <= excluded.position",
        );
        q.build().execute(&mut *tx).await?;
    }

    let memberships: Vec<_> = rows.memberships.iter().collect();
    for chunk in memberships.chunks(ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO slidesync_memberships (user_id, room_id, kind, position, invite_state) ",
        );
        q.push_values(chunk, |mut b, &(&(user_id, room_id), row)| {
            b.push_bind(user_id)
                .push_bind(room_id)
                .push_bind(row.kind)
                .push_bind(row.position)
                .push_bind(row.invite_state);
        });
        q.push(
            " ON CONFLICT (user_id, room_id) DO UPDATE SET \
                 kind = excluded.kind, \
                 position = excluded.position, \
                 invite_state = excluded.invite_state",
        );
        q.build().execute(&mut *tx).await?;
    }

    let unread: Vec<_> = rows.unread.iter().collect();
    for chunk in unread.chunks(ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO slidesync_unread \
                 (user_id, room_id, notification_count, highlight_count) ",
        );
        q.push_values(
            chunk,
            |mut b, &(&(user_id, room_id), &(notifications, highlights))| {
                b.push_bind(user_id)
                    .push_bind(room_id)
                    .push_bind(notifications)
                    .push_bind(highlights);
            },
        );
        q.push(
            " ON CONFLICT (user_id, room_id) DO UPDATE SET \
                 notification_count = excluded.notification_count, \
                 highlight_count = excluded.highlight_count",
        );
        q.build().execute(&mut *tx).await?;
    }

    let account_data: Vec<_> = rows.account_data.iter().collect();
    for chunk in account_data.chunks(ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO slidesync_account_data (user_id, room_id, type, json) ",
        );
        q.push_values(chunk, |mut b, &(&(user_id, room_id, kind), &json)| {
            b.push_bind(user_id)
                .push_bind(room_id)
                .push_bind(kind)
                .push_bind(json);
        });
        q.push(" ON CONFLICT (user_id, room_id, type) DO UPDATE SET json = excluded.json");
        q.build().execute(&mut *tx).await?;
    }

    let receipts: Vec<_> = rows.receipts.iter().collect();
    for chunk in receipts.chunks(ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO slidesync_receipts \
                 (room_id, user_id, private, thread_id, event_id, ts) ",
        );
        q.push_values(
            chunk,
            |mut b, &(&(room_id, user_id, private, thread), &(event_id, ts))| {
                b.push_bind(room_id)
                    .push_bind(user_id)
                    .push_bind(private)
                    .push_bind(thread)
                    .push_bind(event_id)
                    .push_bind(ts);
            },
        );
        q.push(
            " ON CONFLICT (room_id, user_id, private, thread_id) DO UPDATE SET \
                 event_id = excluded.event_id, ts = excluded.ts",
        );
        q.build().execute(&mut *tx).await?;
    }
    insert_device_data(rows, tx).await?;

    let since: Vec<_> = rows.since.iter().collect();
    for chunk in since.chunks(ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO slidesync_devices (user_id, device_id, since) ",
        );
        q.push_values(chunk, |mut b, &(&(user_id, device_id), &since)| {
            b.push_bind(user_id).push_bind(device_id).push_bind(since);
        });
        q.push(" ON CONFLICT (user_id, device_id) DO UPDATE SET since = excluded.since");
        q.build().execute(&mut *tx).await?;
    }
    Ok(())
}

/// To-device messages (then what drops or acknowledges them), key data, and device-list
/// steps in batch order, as on Postgres.
async fn insert_device_data(
    rows: &Grouped<'_>,
    tx: &mut SqliteConnection,
) -> Result<(), sqlx::Error> {
    for chunk in rows.to_device.chunks(ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO slidesync_to_device \
                 (user_id, device_id, position, json, key_request) ",
        );
        q.push_values(chunk, |mut b, row| {
            b.push_bind(row.device.0)
                .push_bind(row.device.1)
                .push_bind(row.position)
                .push_bind(row.json)
                .push_bind(row.key_request);
        });
        q.push(" ON CONFLICT DO NOTHING");
        q.build().execute(&mut *tx).await?;
    }
    for &((user_id, device_id), position) in &rows.to_device_drops {
        sqlx::query(
            "DELETE FROM slidesync_to_device \
             WHERE user_id = ?1 AND device_id = ?2 AND position = ?3",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(position)
        .execute(&mut *tx)
        .await?;
    }
    for (&(user_id, device_id), &position) in &rows.to_device_acks {
        sqlx::query(
            "DELETE FROM slidesync_to_device \
             WHERE user_id = ?1 AND device_id = ?2 AND position <= ?3",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(position)
        .execute(&mut *tx)
        .await?;
    }
    for (&(user_id, device_id), &(acked, delivered)) in &rows.to_device_marks {
        sqlx::query(
            "INSERT INTO slidesync_device_data \
                 (user_id, device_id, to_device_acked, to_device_delivered) \
             VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (user_id, device_id) DO UPDATE SET \
                 to_device_acked = MAX(slidesync_device_data.to_device_acked, \
                                       excluded.to_device_acked), \
                 to_device_delivered = MAX(slidesync_device_data.to_device_delivered, \
                                           excluded.to_device_delivered)",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(acked)
        .bind(delivered)
        .execute(&mut *tx)
        .await?;
    }
    for (&(user_id, device_id), &(otk, fallback)) in &rows.device_keys {
        sqlx::query(
            "INSERT INTO slidesync_device_data \
                 (user_id, device_id, otk_counts, fallback_types) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (user_id, device_id) DO UPDATE SET \
                 otk_counts = excluded.otk_counts, fallback_types = excluded.fallback_types",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(otk)
        .bind(fallback)
        .execute(&mut *tx)
        .await?;
    }
    for (&(user_id, device_id), &from) in &rows.lists_catch_up {
        sqlx::query(
            "INSERT INTO slidesync_device_data (user_id, device_id, device_lists_from) \
             VALUES (?1, ?2, ?3) \
             ON CONFLICT (user_id, device_id) DO UPDATE SET \
                 device_lists_from = excluded.device_lists_from",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(from)
        .execute(&mut *tx)
        .await?;
    }
    for step in &rows.device_lists {
        match step {
            ListStep::Changes(changes) => {
                let changes: Vec<_> = changes.iter().collect();
                for chunk in changes.chunks(ROWS_PER_INSERT) {
                    let mut q = QueryBuilder::<Sqlite>::new(
                        "INSERT INTO slidesync_device_lists \
                             (user_id, device_id, target_user_id, change, sent) ",
                    );
                    q.push_values(
                        chunk,
                        |mut b, &(&((user_id, device_id), target), &change)| {
                            b.push_bind(user_id)
                                .push_bind(device_id)
                                .push_bind(target)
                                .push_bind(change)
                                .push_bind(false);
                        },
                    );
                    q.push(
                        " ON CONFLICT (user_id, device_id, sent, target_user_id) \
                         DO UPDATE SET change = excluded.change",
                    );
                    q.build().execute(&mut *tx).await?;
                }
            }
            ListStep::Delivered((user_id, device_id)) => {
                sqlx::query(
                    "DELETE FROM slidesync_device_lists \
                     WHERE user_id = ?1 AND device_id = ?2 AND sent",
                )
                .bind(user_id)
                .bind(device_id)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE slidesync_device_lists SET sent = 1 \
                     WHERE user_id = ?1 AND device_id = ?2 AND NOT sent",
                )
                .bind(user_id)
                .bind(device_id)
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    Ok(())
}

/// Tells a row SQLite can never store from a failure that may pass, by the primary result
/// code: SQLITE_TOOBIG (18), SQLITE_CONSTRAINT (19: a violated key, check, NOT NULL or
/// STRICT type) and SQLITE_MISMATCH (20) are about the data, as is a value sqlx cannot
/// encode. Anything else (SQLITE_BUSY from another process, I/O errors, a full disk) is
/// retried, as on Postgres: retrying a permanent error costs only log lines, skipping a
/// transient one loses data.
fn query_error(e: sqlx::Error) -> PersistError {
    let rejected = match &e {
        sqlx::Error::Encode(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| matches!(code & 0xff, 18..=20)),
        _ => false,
    };
    if rejected {
        PersistError::Rejected(e.to_string())
    } else {
        PersistError::Query(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::store::persist::StoredEvent;

    fn event(position: Position, size: usize) -> Write {
        Write::Event(StoredEvent {
            room_id: "!r:x".into(),
            position,
            event_id: format!("$e{position}").into(),
            in_timeline: true,
            is_state: false,
            prev_batch: None,
            gap_before: false,
            filled_order: None,
            ts: None,
            json: Bytes::from(vec![b'x'; size]),
        })
    }

    /// A full disk makes SQLite roll the batch back by itself. The writes after it must
    /// reach the file again, a refused row among them, not vanish into a transaction
    /// that never ends.
    #[tokio::test]
    async fn writes_after_a_full_disk_reach_the_file() {
        let dir = std::env::temp_dir().join(format!("slidesync-full-{}", rand::random::<u64>()));
        let store = SqliteStore::connect(&dir.join("db.sqlite")).await.unwrap();
        store.write(&[event(1, 10)]).await.unwrap();
        // The disk is full: the writing connection may not grow the file.
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&store.writer)
            .await
            .unwrap();
        sqlx::query(&format!("PRAGMA max_page_count = {pages}"))
            .execute(&store.writer)
            .await
            .unwrap();
        assert!(store.write(&[event(2, 1 << 20)]).await.is_err());
        // A refused row (another event at position 1), then plain writes.
        let mut clash = event(1, 10);
        if let Write::Event(e) = &mut clash {
            e.event_id = "$clash".into();
        }
        let refused = store.write(&[event(3, 10), clash]).await;
        assert!(
            matches!(refused, Err(PersistError::Rejected(_))),
            "{refused:?}"
        );
        store.write(&[event(4, 10)]).await.unwrap();
        drop(store);

        let reopened = SqliteStore::connect(&dir.join("db.sqlite")).await.unwrap();
        assert_eq!(reopened.max_position().await.unwrap(), 4);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn one_database_file_serves_one_proxy() {
        let dir = std::env::temp_dir().join(format!("slidesync-lock-{}", rand::random::<u64>()));
        let path = dir.join("db.sqlite");
        let first = SqliteStore::connect(&path).await.unwrap();
        let second = SqliteStore::connect(&path).await.unwrap_err();
        assert!(second.to_string().contains("another slidesync"), "{second}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the file is the proxy's alone");
        drop(first);
        SqliteStore::connect(&path).await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
