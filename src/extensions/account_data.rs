//! MSC3959 account data: the user's global account data, and the room account data of
//! the rooms in scope. First all of it (a room's all of it also when the room comes into
//! scope or is sent `initial`), then what changed since the last response.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::{Context, RoomsSent};
use crate::types::RoomId;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Response {
    /// Global account data events, as the homeserver sent them.
    pub global: Vec<Bytes>,
    pub rooms: BTreeMap<RoomId, Vec<Bytes>>,
}

impl Response {
    pub fn has_data(&self) -> bool {
        !self.global.is_empty() || !self.rooms.is_empty()
    }
}

/// What this connection sent: changes are numbered per user (`AccountData::seq`), so
/// "sent up to" is one number for the global data and one per room.
#[derive(Debug, Default)]
pub struct Sent {
    /// `None`: nothing sent yet.
    global: Option<u64>,
    rooms: RoomsSent,
}

pub fn step(sent: &mut Sent, scope: &BTreeSet<RoomId>, ctx: &Context<'_>) -> Response {
    let account = &ctx.data.account;
    let newer = |after: Option<u64>| move |seq: u64| after.is_none_or(|after| seq > after);
    let global = newer(sent.global);
    let mut out = Response {
        global: account
            .global
            .values()
            .filter(|e| global(e.seq))
            .map(|e| e.json.clone())
            .collect(),
        ..Response::default()
    };
    sent.global = Some(account.seq);
    for (room, after) in sent.rooms.to_look_at(scope, ctx) {
        let newer = newer(after);
        let events: Vec<Bytes> = account
            .rooms
            .get(&room)
            .into_iter()
            .flat_map(|types| types.values())
            .filter(|e| newer(e.seq))
            .map(|e| e.json.clone())
            .collect();
        if !events.is_empty() {
            out.rooms.insert(room.clone(), events);
        }
        sent.rooms.sent(room, account.seq);
    }
    out
}
