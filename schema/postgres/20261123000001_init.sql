-- slidesync's own tables. They sit beside the Go proxy's `syncv3_*` tables without
-- touching them, so one database can serve either binary during a switch-over.
-- Positions, counts and timestamps are u64 in Rust and BIGINT here; the store refuses
-- values above i64::MAX instead of wrapping them.

-- One row per access token ever seen. The plaintext is never stored: rows are found by
-- its hash, and the token itself is AES-256-GCM encrypted exactly as the Go proxy does.
CREATE SEQUENCE slidesync_tokens_seen_seq;
CREATE TABLE slidesync_tokens (
    token_hash      TEXT PRIMARY KEY,
    token_encrypted TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    device_id       TEXT NOT NULL,
    created_ms      BIGINT NOT NULL,
    last_seen_ms    BIGINT NOT NULL,
    -- Orders the tokens of one device by when they were last inserted: a refresh can
    -- insert two within one millisecond, and "newest" must not be a coin toss.
    seen_seq        BIGINT NOT NULL DEFAULT nextval('slidesync_tokens_seen_seq')
);
CREATE INDEX slidesync_tokens_device_idx
    ON slidesync_tokens (user_id, device_id, seen_seq DESC);

-- Every device a poller runs for. `since` is the last committed v2 `next_batch`; NULL
-- until the first response of a new device has been persisted.
CREATE TABLE slidesync_devices (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    since     TEXT,
    PRIMARY KEY (user_id, device_id)
);

-- Every event, as the raw JSON that is served. `position` is assigned by the proxy, not
-- by a sequence here, because the hot state hands positions out before the write lands.
CREATE TABLE slidesync_events (
    position    BIGINT PRIMARY KEY,
    room_id     TEXT NOT NULL,
    event_id    TEXT NOT NULL UNIQUE,
    in_timeline BOOLEAN NOT NULL,
    is_state    BOOLEAN NOT NULL,
    json        BYTEA NOT NULL
);
-- Newest timeline events of a room (scanned backwards), and the list of rooms.
CREATE INDEX slidesync_events_timeline_idx
    ON slidesync_events (room_id, position) WHERE in_timeline;
-- State events of a room after its snapshot's position, and the list of rooms.
CREATE INDEX slidesync_events_state_idx
    ON slidesync_events (room_id, position) WHERE is_state;

-- The newest rkyv snapshot of each room's state, valid as of `position`.
CREATE TABLE slidesync_snapshots (
    room_id  TEXT PRIMARY KEY,
    position BIGINT NOT NULL,
    bytes    BYTEA NOT NULL
);

-- The current membership of each user in each room they were ever in.
CREATE TABLE slidesync_memberships (
    user_id      TEXT NOT NULL,
    room_id      TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('join', 'invite', 'leave')),
    position     BIGINT NOT NULL,
    -- Stripped state (JSON array) of an invite; NULL for other kinds.
    invite_state BYTEA,
    PRIMARY KEY (user_id, room_id)
);

-- The latest v2 `unread_notifications` of each user in each room.
CREATE TABLE slidesync_unread (
    user_id            TEXT NOT NULL,
    room_id            TEXT NOT NULL,
    notification_count BIGINT NOT NULL,
    highlight_count    BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);
