-- Account data and read receipts, as in schema/postgres/20261201000005_account_data.sql.

-- The newest account data event of each type per user: global when `room_id` is ''.
CREATE TABLE slidesync_account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type    TEXT NOT NULL,
    json    BLOB NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
) STRICT;

-- The newest read receipt per (room, user, private, thread); `thread_id` '' is an
-- unthreaded receipt. Private ones (`m.read.private`) are served only to their user.
CREATE TABLE slidesync_receipts (
    room_id   TEXT NOT NULL,
    user_id   TEXT NOT NULL,
    private   INTEGER NOT NULL CHECK (private IN (0, 1)),
    thread_id TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    ts        INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id, private, thread_id)
) STRICT;
