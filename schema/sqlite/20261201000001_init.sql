-- slidesync's tables in SQLite: the Postgres schema (schema/postgres/) as it stands after
-- all its migrations, in SQLite's terms. STRICT tables refuse a value of the wrong type
-- instead of storing it anyway, as Postgres would. Booleans are 0 or 1; positions, counts
-- and timestamps are 64-bit integers, and the store refuses values above i64::MAX.

-- One row per access token ever seen, found by the hash of the plaintext; the token
-- itself is AES-256-GCM encrypted exactly as the Go proxy does.
CREATE TABLE slidesync_tokens (
    token_hash      TEXT PRIMARY KEY,
    token_encrypted TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    device_id       TEXT NOT NULL,
    created_ms      INTEGER NOT NULL,
    last_seen_ms    INTEGER NOT NULL,
    -- Orders the tokens of one device by when they were last inserted. SQLite has no
    -- sequences: the store writes one more than the highest, on its only writing
    -- connection.
    seen_seq        INTEGER NOT NULL
) STRICT;
CREATE INDEX slidesync_tokens_device_idx
    ON slidesync_tokens (user_id, device_id, seen_seq DESC);
CREATE INDEX slidesync_tokens_seen_idx ON slidesync_tokens (seen_seq);

-- Every device a poller runs for. `since` is the last committed v2 `next_batch`; NULL
-- until the first response of a new device has been persisted.
CREATE TABLE slidesync_devices (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    since     TEXT,
    PRIMARY KEY (user_id, device_id)
) STRICT;

-- Every event, as the raw JSON that is served. `position` is assigned by the proxy and is
-- the rowid, so reading an event by position is one lookup.
CREATE TABLE slidesync_events (
    position     INTEGER PRIMARY KEY,
    room_id      TEXT NOT NULL,
    event_id     TEXT NOT NULL UNIQUE,
    in_timeline  INTEGER NOT NULL CHECK (in_timeline IN (0, 1)),
    is_state     INTEGER NOT NULL CHECK (is_state IN (0, 1)),
    json         BLOB NOT NULL,
    -- The v2 `prev_batch` of the chunk this event started, and whether the homeserver
    -- left out events just before it.
    prev_batch   TEXT,
    gap_before   INTEGER NOT NULL DEFAULT 0 CHECK (gap_before IN (0, 1)),
    -- Timeline order where positions do not give it (events filled into a gap); NULL:
    -- the event's own position.
    filled_order INTEGER,
    filled_sub   INTEGER NOT NULL DEFAULT 0,
    -- `origin_server_ts`, clamped to when the proxy received the event.
    ts           INTEGER
) STRICT;
-- Newest timeline events of a room in timeline order (scanned backwards), and the list
-- of rooms.
CREATE INDEX slidesync_events_timeline_idx
    ON slidesync_events (room_id, COALESCE(filled_order, position), filled_sub)
    WHERE in_timeline;
-- State events of a room after its snapshot's position, and the list of rooms.
CREATE INDEX slidesync_events_state_idx
    ON slidesync_events (room_id, position) WHERE is_state;
-- The newest event IDs of a room, timeline or state, read at startup for deduplication.
CREATE INDEX slidesync_events_room_idx ON slidesync_events (room_id, position);

-- The newest rkyv snapshot of each room's state, valid as of `position`.
CREATE TABLE slidesync_snapshots (
    room_id  TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    bytes    BLOB NOT NULL
) STRICT;

-- The current membership of each user in each room they were ever in.
CREATE TABLE slidesync_memberships (
    user_id      TEXT NOT NULL,
    room_id      TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('join', 'invite', 'leave')),
    position     INTEGER NOT NULL,
    -- Stripped state (JSON array) of an invite; NULL for other kinds.
    invite_state BLOB,
    PRIMARY KEY (user_id, room_id)
) STRICT;

-- The latest v2 `unread_notifications` of each user in each room.
CREATE TABLE slidesync_unread (
    user_id            TEXT NOT NULL,
    room_id            TEXT NOT NULL,
    notification_count INTEGER NOT NULL,
    highlight_count    INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id)
) STRICT;
