-- The Go proxy's `since` of a device imported by `slidesync import-go`: its first poll
-- here is an initial sync, which reports no device-list changes, so the changes since
-- this point are asked of the homeserver (`/keys/changes`) after that poll, and the
-- point is cleared once they are stored. NULL: nothing to catch up.
ALTER TABLE slidesync_device_data ADD COLUMN device_lists_from TEXT;
