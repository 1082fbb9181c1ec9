-- What a restarted proxy needs to serve a timeline the way it did before: the v2
-- `prev_batch` token of the chunk an event started (clients paginate back from it), and
-- whether the homeserver left out events just before it (a gappy sync: `limited`).
ALTER TABLE slidesync_events
    ADD COLUMN prev_batch TEXT,
    ADD COLUMN gap_before BOOLEAN NOT NULL DEFAULT FALSE;
