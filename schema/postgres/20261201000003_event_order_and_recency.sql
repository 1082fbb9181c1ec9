-- A room's timeline order where positions do not give it: events filled into a gap are
-- older than the event after the gap, but were given later positions. They take that
-- event's order (`filled_order`, NULL: the event's own position) and a `filled_sub`
-- below its own, so a restart reads them back where they belong.
-- `ts` is `origin_server_ts` as the recency order uses it: clamped to when the proxy
-- received the event, since any federated server can date an event in the future.
ALTER TABLE slidesync_events
    ADD COLUMN filled_order BIGINT,
    ADD COLUMN filled_sub INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN ts BIGINT;

DROP INDEX slidesync_events_timeline_idx;
-- Newest timeline events of a room in timeline order (scanned backwards), and the list
-- of rooms.
CREATE INDEX slidesync_events_timeline_idx
    ON slidesync_events (room_id, (COALESCE(filled_order, position)), filled_sub)
    WHERE in_timeline;
-- The newest event IDs of a room, timeline or state, read at startup for deduplication.
CREATE INDEX slidesync_events_room_idx ON slidesync_events (room_id, position);
