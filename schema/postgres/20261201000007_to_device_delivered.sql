-- The newest to-device position a device's client was handed before this database held
-- it (the Go proxy's `unack_pos`, written by `slidesync import-go`). A client's `since`
-- acknowledges up to it, and new positions start above it, so a `since` the client got
-- from the Go proxy keeps meaning what it meant there.
ALTER TABLE slidesync_device_data ADD COLUMN to_device_delivered BIGINT NOT NULL DEFAULT 0;
