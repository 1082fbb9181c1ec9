-- What the sliding sync extensions keep per device (to-device messages, one-time-key
-- counts, fallback key types, device-list changes): committed before the device's `since`
-- moves past the v2 response that delivered it, so a crash re-delivers and never loses.

-- Unacknowledged to-device messages. `position` is the client-visible `next_batch`.
-- `key_request`: for an `m.room_key_request` asking for a key, what its cancellation
-- names (sender, requesting device, request ID).
CREATE TABLE slidesync_to_device (
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    position    BIGINT NOT NULL,
    json        BYTEA NOT NULL,
    key_request TEXT,
    PRIMARY KEY (user_id, device_id, position)
);

-- Per device: the highest acknowledged to-device position (positions are never handed
-- out twice, even once every message is deleted) and the newest key data, as JSON.
-- `fallback_types` NULL means never reported; an empty array means the key was used.
CREATE TABLE slidesync_device_data (
    user_id         TEXT NOT NULL,
    device_id       TEXT NOT NULL,
    to_device_acked BIGINT NOT NULL DEFAULT 0,
    otk_counts      BYTEA,
    fallback_types  BYTEA,
    PRIMARY KEY (user_id, device_id)
);

-- Device-list changes for a device: not yet delivered (`sent` false), or delivered last
-- (sent again to a new connection).
CREATE TABLE slidesync_device_lists (
    user_id        TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    target_user_id TEXT NOT NULL,
    change         TEXT NOT NULL CHECK (change IN ('changed', 'left')),
    sent           BOOLEAN NOT NULL,
    PRIMARY KEY (user_id, device_id, sent, target_user_id)
);
