-- State snapshots now also hold a second content field of some events (a member's
-- avatar, a room's predecessor), which the stored archives lack. Without a snapshot a
-- room's state is rebuilt from its stored state events at startup, and the next fold
-- writes a snapshot in the new form.
DELETE FROM slidesync_snapshots;
