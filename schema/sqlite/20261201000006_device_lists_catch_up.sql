-- The Go proxy's `since` of a device imported by `slidesync import-go`, as on Postgres
-- (schema/postgres/20261201000008_device_lists_catch_up.sql): the device-list changes
-- since it are asked of the homeserver after the device's first poll. NULL: nothing to
-- catch up.
ALTER TABLE slidesync_device_data ADD COLUMN device_lists_from TEXT;
