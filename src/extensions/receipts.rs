//! MSC3960 read receipts of the rooms in scope. A room new to the connection gets the
//! receipts on the timeline events sent with it (on its recent events when it came into
//! scope without them), plus all of the user's own; later, each receipt that changes.
//! Private receipts (`m.read.private`) only ever reach their owner.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{Context, PerRoom, RoomsSent};
use crate::event::Receipt;
use crate::store::room::TIMELINE_RING;
use crate::store::users::UserMembership;
use crate::types::{Position, RoomId};

/// Each room's receipts, to be sent as one `m.receipt` EDU.
pub type Response = PerRoom<Vec<Arc<Receipt>>>;

/// `sent` records each room's `RoomEphemeral::seq`.
pub fn step(sent: &mut RoomsSent, scope: &BTreeSet<RoomId>, ctx: &Context<'_>) -> Response {
    let mut out = Response::default();
    for (room, after) in sent.to_look_at(scope, ctx) {
        let Some(ephemeral) = ctx.store.ephemeral(&room) else {
            continue;
        };
        let changes = match after {
            Some(after) if after == ephemeral.seq => Some(Vec::new()),
            Some(after) => ephemeral.receipts.since(after, ctx.user_id),
            None => None,
        };
        // New to the connection, or too far behind for the room's change log: the
        // receipts on the events the client has of the room.
        let receipts = changes.unwrap_or_else(|| {
            let events = shown_events(&room, ctx);
            ephemeral
                .receipts
                .initial(events.iter().map(|e| &**e), ctx.user_id)
        });
        if !receipts.is_empty() {
            out.rooms.insert(room.clone(), receipts);
        }
        sent.sent(room, ephemeral.seq);
    }
    out
}

/// The timeline events the response sends of the room, or, for a room the client got
/// earlier, the room's recent events the user may see.
fn shown_events(room: &RoomId, ctx: &Context<'_>) -> Vec<Box<str>> {
    if let Some(shown) = ctx.response_rooms.get(room).filter(|r| r.initial) {
        return shown.timeline_ids.clone();
    }
    let (Some(UserMembership::Join { since }), Some(snapshot)) =
        (ctx.data.membership(room), (ctx.room)(room))
    else {
        return Vec::new();
    };
    let shares = snapshot.shares_history();
    snapshot
        .timeline_between(
            since.saturating_sub(1),
            Position::MAX,
            (*since, 0),
            TIMELINE_RING,
        )
        .0
        .iter()
        // The events the user may be shown (see `conn::connection::visible_timeline`).
        .filter(|e| shares || e.filled_order.is_none())
        .filter(|e| e.is_state() || !ctx.data.account.ignores(&e.sender))
        .map(|e| e.event_id.clone())
        .collect()
}
