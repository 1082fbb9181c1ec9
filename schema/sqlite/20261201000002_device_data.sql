-- What the sliding sync extensions keep per device, as on Postgres
-- (schema/postgres/20261201000004_device_data.sql): committed before the device's
-- `since` moves past the v2 response that delivered it.

-- Unacknowledged to-device messages. `position` is the client-visible `next_batch`.
CREATE TABLE slidesync_to_device (
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    position    INTEGER NOT NULL,
    json        BLOB NOT NULL,
    key_request TEXT,
    PRIMARY KEY (user_id, device_id, position)
) STRICT;

-- Per device: the highest acknowledged to-device position and the newest key data.
CREATE TABLE slidesync_device_data (
    user_id         TEXT NOT NULL,
    device_id       TEXT NOT NULL,
    to_device_acked INTEGER NOT NULL DEFAULT 0,
    otk_counts      BLOB,
    fallback_types  BLOB,
    PRIMARY KEY (user_id, device_id)
) STRICT;

-- Device-list changes: not yet delivered (`sent` 0) or delivered last (1).
CREATE TABLE slidesync_device_lists (
    user_id        TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    target_user_id TEXT NOT NULL,
    change         TEXT NOT NULL CHECK (change IN ('changed', 'left')),
    sent           INTEGER NOT NULL CHECK (sent IN (0, 1)),
    PRIMARY KEY (user_id, device_id, sent, target_user_id)
) STRICT;
