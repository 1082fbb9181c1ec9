//! Recency by chosen event types: MSC3575 `bump_event_types` (a list's order and each
//! room's `timestamp`) and MSC4186 `bump_stamp`.
//!
//! A room's summary keeps the newest timeline event of each type
//! (`RoomMeta::latest_by_type`), so either costs a few comparisons per room. Nothing
//! bumps a room from before the user's join: until an event of the chosen types comes
//! after it, the join is the room's latest activity for that user.

use crate::store::room::{LatestByType, RoomSnapshot, Stamp};
use crate::types::Position;

/// The event types Synapse's sliding sync bumps rooms on by default, for the MSC4186
/// `bump_stamp`.
pub const SYNAPSE_BUMP_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
];

/// The position of the newest event of `types` in the room's timeline, never before
/// `join` (the user's join, or invite): a number that orders rooms by their latest
/// activity of those types. `join: 0` gives the room's own newest such event (0 when
/// the proxy has seen none).
pub fn bump_stamp(room: &RoomSnapshot, join: Position, types: &[&str]) -> Position {
    newest(room, types).map_or(join, |s| s.position.max(join))
}

/// The `origin_server_ts` of the newest event of `types`, never before `join_ts`: the
/// recency of a list with `bump_event_types`, and the Go proxy's `timestamp`.
pub fn bump_ts<'a>(
    latest: &LatestByType,
    join_ts: u64,
    types: impl IntoIterator<Item = &'a str>,
) -> u64 {
    latest
        .newest_of(types)
        .map_or(join_ts, |s| s.ts.max(join_ts))
}

fn newest(room: &RoomSnapshot, types: &[&str]) -> Option<Stamp> {
    room.meta.latest_by_type.newest_of(types.iter().copied())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{delta, event, store};

    #[tokio::test]
    async fn only_the_chosen_types_bump_and_never_before_the_join() {
        let store = store();
        store.apply_room(delta(
            "!r:x",
            vec![],
            vec![
                event("m.room.create", Some(""), "@a:x", 10),
                event("m.room.message", None, "@a:x", 20),
                event("m.room.member", Some("@me:x"), "@me:x", 30),
                event("m.room.topic", Some(""), "@a:x", 40),
            ],
        ));
        let room = store.room("!r:x").unwrap();
        let at = |i: usize| room.timeline[i].position;
        assert_eq!(bump_stamp(&room, 0, &SYNAPSE_BUMP_TYPES), at(1));
        assert_eq!(
            bump_stamp(&room, at(2), &SYNAPSE_BUMP_TYPES),
            at(2),
            "the message came before the join"
        );
        assert_eq!(bump_stamp(&room, at(2), &["m.room.topic"]), at(3));
        let latest = &room.meta.latest_by_type;
        assert_eq!(bump_ts(latest, 30, ["m.room.message"]), 30);
        assert_eq!(bump_ts(latest, 0, ["m.room.message", "m.room.topic"]), 40);
    }
}
