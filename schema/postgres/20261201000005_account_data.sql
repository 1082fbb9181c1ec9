-- Account data and read receipts, kept so a restart serves what the homeserver sent
-- before it (the homeserver sends each only when it changes).

-- The newest account data event of each type per user: global when `room_id` is ''.
CREATE TABLE slidesync_account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type    TEXT NOT NULL,
    json    BYTEA NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);

-- The newest read receipt per (room, user, private, thread); `thread_id` '' is an
-- unthreaded receipt. Private ones (`m.read.private`) are served only to their user.
CREATE TABLE slidesync_receipts (
    room_id   TEXT NOT NULL,
    user_id   TEXT NOT NULL,
    private   BOOLEAN NOT NULL,
    thread_id TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    ts        BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id, private, thread_id)
);
