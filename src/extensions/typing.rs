//! MSC3961 typing of the rooms in scope: a room new to the connection gets its typing
//! users if anyone types; later, each change (an empty list when typing stops).

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{Context, PerRoom, RoomsSent};
use crate::types::{RoomId, UserId};

/// Each room's typing users, to be sent as one `m.typing` EDU.
pub type Response = PerRoom<Arc<[UserId]>>;

/// `sent` records each room's `Typing::seq`.
pub fn step(sent: &mut RoomsSent, scope: &BTreeSet<RoomId>, ctx: &Context<'_>) -> Response {
    let mut out = Response::default();
    for (room, after) in sent.to_look_at(scope, ctx) {
        let Some(typing) = ctx.store.ephemeral(&room).map(|e| e.typing.clone()) else {
            continue;
        };
        let send = match after {
            None => !typing.users.is_empty(),
            Some(after) => typing.seq > after,
        };
        if send {
            out.rooms.insert(room.clone(), typing.users);
        }
        sent.sent(room, typing.seq);
    }
    out
}
