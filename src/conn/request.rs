//! The protocol-neutral request and response both wire dialects translate to and from.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::extensions::{ExtensionsRequest, ExtensionsResponse};
use crate::types::RoomId;

/// An inclusive range of list indexes, as clients send them.
pub type Range = (usize, usize);

/// One list as a request states it. `None` keeps the sticky value from earlier requests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListParams {
    pub ranges: Option<Vec<Range>>,
    pub sort: Option<SortSpec>,
    /// Replaces the list's filters whole.
    pub filters: Option<Arc<Filters>>,
    pub timeline_limit: Option<usize>,
    pub required_state: Option<Vec<(String, String)>>,
    /// `Some(None)`: every event bumps (an empty `bump_event_types`).
    pub bump_event_types: Option<Option<BumpTypes>>,
    pub include_heroes: Option<bool>,
    /// What to send of the rooms the list's rooms replaced, as far back as the user is
    /// joined to them.
    pub include_old_rooms: Option<Arc<RoomSubscription>>,
    /// Every room of the list in one `SYNC`, whatever the ranges; live changes move no
    /// index (MSC3575, as the Go proxy served it).
    pub slow_get_all_rooms: Option<bool>,
}

impl ListParams {
    /// Takes every parameter `later` states, keeping the rest: two requests' sticky
    /// parameters as one.
    pub fn overlay(&mut self, later: ListParams) {
        let ListParams {
            ranges,
            sort,
            filters,
            timeline_limit,
            required_state,
            bump_event_types,
            include_heroes,
            include_old_rooms,
            slow_get_all_rooms,
        } = later;
        fn take<T>(slot: &mut Option<T>, later: Option<T>) {
            if later.is_some() {
                *slot = later;
            }
        }
        take(&mut self.ranges, ranges);
        take(&mut self.sort, sort);
        take(&mut self.filters, filters);
        take(&mut self.timeline_limit, timeline_limit);
        take(&mut self.required_state, required_state);
        take(&mut self.bump_event_types, bump_event_types);
        take(&mut self.include_heroes, include_heroes);
        take(&mut self.include_old_rooms, include_old_rooms);
        take(&mut self.slow_get_all_rooms, slow_get_all_rooms);
    }
}

pub use crate::rooms::filter::Filters;
pub use crate::rooms::sort::{BumpTypes, SortBy, SortSpec};
pub use crate::store::room::Hero;

/// A room subscription as a request states it. Sticky per room: a new one for the
/// same room replaces it whole, as in the Go proxy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoomSubscription {
    pub timeline_limit: usize,
    pub required_state: Vec<(String, String)>,
    pub include_heroes: bool,
    /// What to send of the rooms this one replaced, as far back as the user is joined
    /// to them.
    pub include_old_rooms: Option<Arc<RoomSubscription>>,
}

/// Which sliding sync a connection speaks: the engine rules that differ between the
/// two wire dialects. A connection keeps the dialect it was opened with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dialect {
    /// MSC3575 as the Go proxy served it: sticky lists and subscriptions, list
    /// operations as differences, only joined and invited rooms listed.
    #[default]
    Msc3575,
    /// MSC4186 as Synapse serves it: every request states all its lists and
    /// subscriptions (those it leaves out are gone), every response carries each
    /// range's rooms whole, and rooms the user was kicked or banned from stay listed.
    Msc4186,
}

impl Dialect {
    /// Whether lists and subscriptions a request leaves out are kept.
    pub fn is_sticky(self) -> bool {
        self == Dialect::Msc3575
    }

    /// Whether rooms the user was kicked or banned from stay in lists.
    pub fn keeps_removed(self) -> bool {
        self == Dialect::Msc4186
    }
}

/// One request, after the dialect validated it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncRequest {
    pub dialect: Dialect,
    pub conn_id: Option<String>,
    pub txn_id: Option<String>,
    pub lists: BTreeMap<String, ListParams>,
    pub room_subscriptions: BTreeMap<RoomId, RoomSubscription>,
    /// Applied after `room_subscriptions`: a room in both ends up unsubscribed.
    pub unsubscribe_rooms: Vec<RoomId>,
    pub extensions: ExtensionsRequest,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Sync { range: Range, room_ids: Vec<RoomId> },
    Invalidate { range: Range },
    Delete { index: usize },
    Insert { index: usize, room_id: RoomId },
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListResult {
    pub count: usize,
    pub ops: Vec<Op>,
}

/// A room in a response: all of it (`initial`) or what changed since the last response.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoomResult {
    pub initial: bool,
    /// A DM: `Some(true)` with a DM's initial data, and either value when it changes.
    pub is_dm: Option<bool>,
    pub name: Option<String>,
    /// Sent with a name made from them, when a list or subscription asks for heroes.
    pub heroes: Option<Vec<Hero>>,
    /// Absent: unchanged (or never known); `Some(None)`: no avatar (`null`).
    pub avatar: Option<Option<Box<str>>>,
    pub required_state: Vec<Bytes>,
    pub timeline: Vec<Bytes>,
    /// The event IDs of `timeline` when the room is `initial` (not serialized: the
    /// receipts extension sends the receipts on them).
    pub timeline_ids: Vec<Box<str>>,
    /// `unsigned.transaction_id` to add to events of `timeline`, by index.
    pub transaction_ids: Vec<(usize, Box<str>)>,
    /// Events in `timeline` that arrived live (not part of the initial window).
    pub num_live: usize,
    pub limited: bool,
    pub prev_batch: Option<String>,
    /// Stripped state for invites; nothing else of the room is sent to an invitee.
    pub invite_state: Option<Bytes>,
    /// `origin_server_ts` of the newest event that bumps the room in the lists showing
    /// it, never before the user's join (the Go proxy's `timestamp`).
    pub timestamp: Option<u64>,
    /// Orders the room among others (MSC4186): see `Connection`'s `bump_stamp`.
    pub bump_stamp: Option<u64>,
    /// The timeline goes further back than what was sent before, because the room's
    /// `timeline_limit` rose (Synapse's `unstable_expanded_timeline`).
    pub expanded_timeline: bool,
    pub joined_count: Option<u32>,
    pub invited_count: Option<u32>,
    pub notification_count: Option<u64>,
    pub highlight_count: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncResponse {
    pub pos: String,
    pub txn_id: Option<String>,
    pub lists: BTreeMap<String, ListResult>,
    pub rooms: BTreeMap<RoomId, RoomResult>,
    /// A list's `count` differs from the last response (not serialized: every response
    /// carries the counts).
    pub counts_changed: bool,
    pub extensions: ExtensionsResponse,
}

impl SyncResponse {
    /// Whether there is anything for the client: without it a request long-polls.
    pub fn has_data(&self) -> bool {
        self.counts_changed
            || !self.rooms.is_empty()
            || self.lists.values().any(|l| !l.ops.is_empty())
            || self.extensions.has_data()
    }
}
