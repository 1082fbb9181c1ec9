//! One connection's state and the pure step that turns (sticky request, current store)
//! into a response. No I/O and no locks: the caller hands in a read view of the user's
//! data and a way to fetch room snapshots.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::request::{
    Dialect, Hero, ListParams, ListResult, Op, Range, RoomResult, RoomSubscription, SyncRequest,
    SyncResponse,
};
use super::required_state::{Lazy, Selection};
use super::window;
use crate::event::{Event, Membership, TimelineOrder};
use crate::rooms::bump::{bump_ts, SYNAPSE_BUMP_TYPES};
use crate::rooms::name::{
    avatar, display_name, heroes_for, invite_avatar, invite_heroes, invite_name,
};
use crate::rooms::sort::{BumpTypes, ListOrder};
use crate::store::room::{HistoryGap, RoomMeta, RoomSnapshot, TIMELINE_RING};
use crate::store::users::{UserData, UserMembership};
use crate::types::{Position, RoomId};

/// What the user's data and the rooms look like right now.
pub struct View<'a> {
    pub user_id: &'a str,
    pub data: &'a UserData,
    pub room: &'a dyn Fn(&str) -> Option<Arc<RoomSnapshot>>,
    /// The store's last position before `data` was read: what comes after it arrived
    /// after this step looked.
    pub position: Position,
    /// The transaction ID the connection's device sent an event with.
    pub txn_id: &'a dyn Fn(&str) -> Option<Box<str>>,
}

/// The transaction IDs of the reader's own events in `timeline` that this device sent,
/// by index: only the sending device may see them (its client matches its local echo
/// by them).
fn transaction_ids(
    timeline: &[Arc<crate::event::Event>],
    view: &View<'_>,
) -> Vec<(usize, Box<str>)> {
    timeline
        .iter()
        .enumerate()
        .filter(|(_, e)| &*e.sender == view.user_id)
        .filter_map(|(i, e)| (view.txn_id)(&e.event_id).map(|t| (i, t)))
        .collect()
}

#[derive(Clone, Debug, Default, PartialEq)]
struct ListState {
    ranges: Vec<Range>,
    /// The list's sorts and filters: which rooms it shows, in what order.
    order: ListOrder,
    timeline_limit: usize,
    required_state: Vec<(String, String)>,
    include_heroes: bool,
    /// What to send of the rooms the list's rooms replaced (`include_old_rooms`).
    include_old_rooms: Option<Arc<RoomSubscription>>,
    /// Index → room, for every index the client holds.
    have: BTreeMap<usize, RoomId>,
    /// The `count` last sent.
    count: Option<usize>,
    /// Ranges the client holds in an order it no longer asked for: invalidated whole at
    /// the next step.
    invalidate: Vec<Range>,
    /// `slow_get_all_rooms`: the range is the whole list, and rooms entering or moving
    /// are sent without `DELETE`/`INSERT`.
    all_rooms: bool,
}

/// What the client was last told about a room, to send only what changed.
#[derive(Clone, Debug, PartialEq)]
struct SentRoom {
    /// Timeline events up to here were sent (or predate what the client may see).
    position: Position,
    /// The user's join: nothing before it in the timeline's order is theirs to see.
    since: Position,
    invite: bool,
    name: String,
    /// The heroes last sent with the name (empty: none sent).
    heroes: Vec<Hero>,
    avatar: Option<Box<str>>,
    timestamp: u64,
    dm: bool,
    joined: u32,
    invited: u32,
    unread: (u64, u64),
    /// Members sent for `$LAZY`.
    lazy: Lazy,
    /// The newest place in the room's timeline the client was sent (or chose not to
    /// have): events filled in before it later (history fetched for another reader, a
    /// gap another poller filled) are history the client pages back to, not live events
    /// to append after what it shows.
    newest: TimelineOrder,
    /// The `timeline_limit` the room was last sent whole with: a higher one sends
    /// its timeline again, further back.
    timeline_limit: usize,
}

#[derive(Default)]
pub struct Connection {
    dialect: Dialect,
    lists: BTreeMap<String, ListState>,
    /// Rooms the client asked for by ID, sent whether or not a window shows them (only
    /// while the user is joined or invited: a subscription shows nothing else).
    subscriptions: BTreeMap<RoomId, RoomSubscription>,
    sent: HashMap<RoomId, SentRoom>,
    /// The user data version this connection last looked at.
    seen_version: Option<u64>,
    /// [`View::position`] of the last step: events after it are live to this
    /// connection, even in a room it is sent whole (one entering a window).
    horizon: Option<Position>,
    /// The horizon the last step counted live events against, for a room it sends
    /// again after fetching its history ([`Connection::resend_whole`]).
    step_horizon: Option<Position>,
    /// Rooms of the last step sent with less history than asked for, which the
    /// homeserver may have (see [`Connection::take_history_gaps`]).
    gaps: Vec<HistoryGap>,
}

/// Room parameters merged over every list showing the room: the union of
/// `required_state`, the largest `timeline_limit`, heroes if any asks for them, and the
/// union of the event types that bump it (every type if any list bumps on all).
#[derive(Default)]
struct RoomParams {
    timeline_limit: usize,
    required_state: Vec<(String, String)>,
    include_heroes: bool,
    bump: Bump,
}

/// Which events give a room's `timestamp`.
#[derive(Default)]
enum Bump {
    /// Not decided yet: no list or subscription merged.
    #[default]
    Unset,
    All,
    Types(Vec<Box<str>>),
}

impl Bump {
    fn merge(&mut self, types: Option<&BumpTypes>) {
        match (&mut *self, types) {
            (Bump::All, _) => {}
            (_, None) => *self = Bump::All,
            (Bump::Unset, Some(t)) => *self = Bump::Types(t.to_vec()),
            (Bump::Types(have), Some(t)) => {
                for ty in t.iter() {
                    if !have.contains(ty) {
                        have.push(ty.clone());
                    }
                }
            }
        }
    }
}

impl Connection {
    pub fn new(dialect: Dialect) -> Self {
        Self {
            dialect,
            ..Self::default()
        }
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// A list new to this connection: its order keeps the rooms its dialect lists.
    fn new_list(&self) -> ListState {
        ListState {
            order: ListOrder {
                keep_removed: self.dialect.keeps_removed(),
                ..ListOrder::default()
            },
            ..ListState::default()
        }
    }

    /// Lists the connection holds that a request leaves as they are: all of them in
    /// a sticky dialect, none in the other (a request states every list it wants).
    fn kept_lists<'a>(
        &'a self,
        req: Option<&'a SyncRequest>,
    ) -> impl Iterator<Item = &'a ListState> + 'a {
        let replaced = req.is_some() && !self.dialect.is_sticky();
        self.lists
            .iter()
            .filter(move |(name, _)| !replaced && !req.is_some_and(|r| r.lists.contains_key(*name)))
            .map(|(_, list)| list)
    }

    pub fn list_count(&self) -> usize {
        self.lists.len()
    }

    pub fn has_list(&self, name: &str) -> bool {
        self.lists.contains_key(name)
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    pub fn is_subscribed(&self, room: &str) -> bool {
        self.subscriptions.contains_key(room)
    }

    /// How many rooms this connection's windows hold once `req` is applied, in a list
    /// of `rooms`: ranges clamped to the list, each counted once.
    pub fn window_rooms(&self, req: Option<&SyncRequest>, rooms: usize) -> usize {
        let held = |ranges: &[Range]| -> usize {
            ranges
                .iter()
                .filter(|(start, _)| *start < rooms)
                .map(|&(start, end)| (end.min(rooms - 1) - start).saturating_add(1))
                .sum()
        };
        let requested = req.iter().flat_map(|r| &r.lists).map(|(name, params)| {
            let list = self.lists.get(name);
            let all_rooms = params
                .slow_get_all_rooms
                .or(list.map(|l| l.all_rooms))
                .unwrap_or(false);
            match (&params.ranges, list) {
                _ if all_rooms => rooms,
                (Some(ranges), _) => held(ranges),
                (None, Some(list)) => held(&list.ranges),
                (None, None) => 0,
            }
        });
        let kept = self.kept_lists(req).map(|list| held(&list.ranges));
        requested.chain(kept).fold(0, usize::saturating_add)
    }

    /// The orders this connection's lists use once `req` is applied.
    pub fn orders(&self, req: Option<&SyncRequest>) -> Vec<ListOrder> {
        let mut orders: Vec<ListOrder> = Vec::new();
        let requested = req.iter().flat_map(|r| &r.lists).map(|(name, params)| {
            let mut order = self
                .lists
                .get(name)
                .map_or_else(|| self.new_list().order, |l| l.order.clone());
            apply_order(&mut order, params);
            order
        });
        let kept = self.kept_lists(req).map(|l| l.order.clone());
        for order in requested.chain(kept) {
            if !orders.contains(&order) {
                orders.push(order);
            }
        }
        orders
    }

    /// Adds to `resp` the member events of `typing` users the client has not been sent,
    /// in rooms whose `required_state` loads members lazily (`$LAZY`): a client shows who
    /// is typing by name. Only rooms the client holds, so only rooms it may see.
    pub fn lazy_typing(
        &mut self,
        typing: &BTreeMap<RoomId, Arc<[crate::types::UserId]>>,
        view: &View<'_>,
        resp: &mut SyncResponse,
    ) {
        let visible = self.visible_rooms(view);
        for (room_id, users) in typing {
            let (Some(params), Some(sent), Some(room)) = (
                visible.get(room_id),
                self.sent.get_mut(room_id),
                (view.room)(room_id),
            ) else {
                continue;
            };
            if left_meanwhile(&room, view.user_id) {
                continue;
            }
            if sent.invite || !Selection::new(&params.required_state, view.user_id).wants_lazy() {
                continue;
            }
            for user in users.iter() {
                if !sent.lazy.insert(user) {
                    continue;
                }
                if let Some(member) = room.state.get("m.room.member", user) {
                    resp.rooms
                        .entry(room_id.clone())
                        .or_default()
                        .required_state
                        .push(bytes::Bytes::copy_from_slice(member.json()));
                }
            }
        }
    }

    /// The history gaps of the rooms the last step sent whole: the caller may fetch them
    /// and then [`Connection::resend_whole`] those rooms.
    pub fn take_history_gaps(&mut self) -> Vec<HistoryGap> {
        std::mem::take(&mut self.gaps)
    }

    /// Computes `rooms` whole again into `resp`, after their history was fetched.
    /// Reports no gaps: what a fetch did not bring is not asked for twice.
    pub fn resend_whole(&mut self, rooms: &[RoomId], view: &View<'_>, resp: &mut SyncResponse) {
        let visible = self.visible_rooms(view);
        let horizon = self.step_horizon;
        for room_id in rooms {
            let (Some(params), Some(UserMembership::Join { since })) =
                (visible.get(room_id), view.data.membership(room_id))
            else {
                continue;
            };
            if let Some(mut room) = self.full_room(room_id, *since, params, horizon, view) {
                // The first computation knew whether the timeline was expanded; this one
                // sees the new limit already recorded.
                if let Some(before) = resp.rooms.get(room_id) {
                    room.initial = before.initial;
                    room.expanded_timeline = before.expanded_timeline;
                }
                resp.rooms.insert(room_id.clone(), room);
            }
        }
        self.gaps.clear();
    }

    /// Applies the request's sticky parameters and computes what the client lacks.
    /// An empty result (see [`SyncResponse::has_data`]) means "wait for changes".
    pub fn step(&mut self, req: Option<&SyncRequest>, view: &View<'_>) -> SyncResponse {
        let changed: Option<HashSet<RoomId>> = match self.seen_version {
            Some(v) => view
                .data
                .changed_since(v)
                .map(|rooms| rooms.into_iter().collect()),
            None => Some(HashSet::new()),
        };
        self.seen_version = Some(view.data.version());
        let horizon = self.horizon.replace(view.position);
        self.step_horizon = horizon;
        let mut resp = SyncResponse::default();
        let (old_ranges, resend, params_changed) = self.merge_request(req);
        // Nothing of the user's changed and the request changed nothing: the client is up
        // to date, whatever the size of its windows (the common long-poll wake-up and
        // no-change request).
        if !params_changed && changed.as_ref().is_some_and(HashSet::is_empty) {
            for (name, list) in &self.lists {
                let count = list.count.unwrap_or(view.data.index.len());
                resp.lists.insert(
                    name.clone(),
                    ListResult {
                        count,
                        ops: Vec::new(),
                    },
                );
            }
            return resp;
        }
        self.list_ops(old_ranges, view, &mut resp);
        let visible = self.visible_rooms(view);
        self.room_results(
            &visible,
            changed.as_ref(),
            &resend,
            horizon,
            view,
            &mut resp,
        );
        self.farewells(&visible, view, &mut resp);
        resp
    }

    /// Finishes a response the way the connection's dialect sends it: in MSC4186 every
    /// list carries each of its ranges' rooms whole (Synapse's `SYNC` operations, which
    /// older matrix-rust-sdk reads), not the changes. Costs the windows' size.
    pub fn finish(&self, resp: &mut SyncResponse) {
        if self.dialect != Dialect::Msc4186 {
            return;
        }
        for (name, list) in &self.lists {
            let Some(result) = resp.lists.get_mut(name) else {
                continue;
            };
            result.ops = list
                .ranges
                .iter()
                .map(|&(start, end)| Op::Sync {
                    range: (start, end),
                    room_ids: list
                        .have
                        .range(start..=end)
                        .map(|(_, r)| r.clone())
                        .collect(),
                })
                .collect();
        }
    }

    /// Merges the request's lists into the sticky ones. Returns each listed list's
    /// ranges from before, the rooms to send again (their list's timeline or state
    /// selection changed), and whether the request changed anything at all.
    fn merge_request(
        &mut self,
        req: Option<&SyncRequest>,
    ) -> (BTreeMap<String, Vec<Range>>, HashMap<RoomId, Resend>, bool) {
        let mut old_ranges = BTreeMap::new();
        let mut resend: HashMap<RoomId, Resend> = HashMap::new();
        let mut again = |room: &RoomId, what: Resend| {
            let entry = resend.entry(room.clone()).or_insert(what);
            *entry = (*entry).max(what);
        };
        let mut changed = false;
        if let Some(req) = req.filter(|_| !self.dialect.is_sticky()) {
            // The request states every list and subscription it wants.
            let before = (self.lists.len(), self.subscriptions.len());
            self.lists.retain(|name, _| req.lists.contains_key(name));
            self.subscriptions
                .retain(|room, _| req.room_subscriptions.contains_key(room));
            changed |= before != (self.lists.len(), self.subscriptions.len());
        }
        for (name, params) in req.iter().flat_map(|r| &r.lists) {
            let fresh = self.new_list();
            let list = self.lists.entry(name.clone()).or_insert(fresh);
            let before = (list.ranges.clone(), list.order.clone());
            // A new order or new filters invalidate every index the client holds: all of
            // it is synced again, as in the Go proxy.
            let mut order = list.order.clone();
            apply_order(&mut order, params);
            let reorder = order != list.order;
            old_ranges.insert(
                name.clone(),
                if reorder {
                    Vec::new()
                } else {
                    list.ranges.clone()
                },
            );
            if reorder {
                list.invalidate = list.ranges.clone();
            }
            let resend_list = merge(list, params);
            if let Some(what) = resend_list {
                for room in list.have.values() {
                    again(room, what);
                }
            }
            changed |= resend_list.is_some()
                || list.count.is_none()
                || before != (list.ranges.clone(), list.order.clone());
        }
        for (room, sub) in req.iter().flat_map(|r| &r.room_subscriptions) {
            if self.subscriptions.get(room) != Some(sub) {
                // New or changed: the room goes out whole, with what it asks for now.
                again(room, Resend::Whole);
                self.subscriptions.insert(room.clone(), sub.clone());
                changed = true;
            }
        }
        for room in req.iter().flat_map(|r| &r.unsubscribe_rooms) {
            changed |= self.subscriptions.remove(room).is_some();
        }
        (old_ranges, resend, changed)
    }

    /// Each list's ops and count: ranges kept from before move the client's rooms to
    /// where they are now, dropped ranges are invalidated, new ranges synced.
    ///
    /// Ranges are clamped to the list: every loop here is bounded by the rooms in the
    /// list or held by the client, never by the indexes a client wrote, so a range like
    /// `[0, 2^64-1]` costs what the list holds.
    fn list_ops(
        &mut self,
        mut old_ranges: BTreeMap<String, Vec<Range>>,
        view: &View<'_>,
        resp: &mut SyncResponse,
    ) {
        for (name, list) in &mut self.lists {
            let index = view.data.order(&list.order);
            let old = old_ranges
                .remove(name)
                .unwrap_or_else(|| list.ranges.clone());
            let mut ops = Vec::new();
            let mut kept = window::subtract(&list.ranges, &window::subtract(&list.ranges, &old));
            // The furthest window first, as the Go proxy ordered the pairs of a move
            // across several windows (each pair stays within its window, so any order
            // leaves the client in the same place).
            kept.sort_unstable_by_key(|&(start, _)| std::cmp::Reverse(start));
            for &(start, end) in &kept {
                // Rooms before indexes in each `zip`: the counter then stops at the last
                // room instead of stepping toward the end of a range that may be 2^64.
                let mut have: Vec<RoomId> = list
                    .have
                    .range(start..=end)
                    .zip(start..)
                    .map_while(|((&i, r), want)| (i == want).then(|| r.clone()))
                    .collect();
                let now: Vec<RoomId> = index.range(start, end).cloned().collect();
                // The window holds what the list has there, not what the range could
                // hold: past the end of the list the range is clamped. (A room entering
                // then pushes out the list's last room, not an empty slot.)
                let capacity = have.len().max(now.len());
                window::diff(start, capacity, &mut have, &now, &mut ops);
                if list.all_rooms {
                    // The client holds the whole list unordered: a move is no news,
                    // and a room entering is sent in `rooms`, as in the Go proxy.
                    ops.retain(|op| !matches!(op, Op::Delete { .. } | Op::Insert { .. }));
                }
                forget(&mut list.have, (start, end));
                list.have
                    .extend(have.into_iter().zip(start..).map(|(r, i)| (i, r)));
            }
            // The client holds nothing at or past the count it was last sent.
            let held = list.count.unwrap_or(0);
            let dropped = window::subtract(&old, &list.ranges);
            for (start, end) in std::mem::take(&mut list.invalidate)
                .into_iter()
                .chain(dropped)
            {
                if start >= held {
                    continue;
                }
                let range = (start, end.min(held - 1));
                ops.push(Op::Invalidate { range });
                forget(&mut list.have, range);
            }
            for (start, end) in window::subtract(&list.ranges, &old) {
                if start >= index.len() {
                    continue;
                }
                let end = end.min(index.len() - 1);
                let room_ids: Vec<RoomId> = index.range(start, end).cloned().collect();
                list.have
                    .extend(room_ids.iter().cloned().zip(start..).map(|(r, i)| (i, r)));
                ops.push(Op::Sync {
                    range: (start, end),
                    room_ids,
                });
            }
            resp.counts_changed |= list.count != Some(index.len());
            list.count = Some(index.len());
            resp.lists.insert(
                name.clone(),
                ListResult {
                    count: index.len(),
                    ops,
                },
            );
        }
    }

    /// Every room the client holds in some window or subscribed to, with the parameters
    /// of all the lists and the subscription that show it merged. A subscription counts
    /// only while the user is joined or invited (or, in a dialect that lists them,
    /// removed): it never shows another room, and a room the user left then gets its
    /// farewell like one leaving a window.
    fn visible_rooms(&self, view: &View<'_>) -> BTreeMap<RoomId, RoomParams> {
        let data = view.data;
        let mut visible: BTreeMap<RoomId, RoomParams> = BTreeMap::new();
        let mut show = |room: &RoomId,
                        timeline_limit: usize,
                        required_state: &[(String, String)],
                        include_heroes: bool,
                        bump: Option<&BumpTypes>| {
            let p = visible.entry(room.clone()).or_default();
            p.timeline_limit = p.timeline_limit.max(timeline_limit);
            for rs in required_state {
                if !p.required_state.contains(rs) {
                    p.required_state.push(rs.clone());
                }
            }
            p.include_heroes |= include_heroes;
            p.bump.merge(bump);
        };
        // Each shown room with what its list or subscription asks for it and its old
        // rooms.
        let listed = self.lists.values().flat_map(|list| {
            list.have.values().map(move |room| {
                let asks = (
                    list.timeline_limit,
                    &list.required_state[..],
                    list.include_heroes,
                );
                (
                    room,
                    asks,
                    list.order.bump.as_ref(),
                    &list.include_old_rooms,
                )
            })
        });
        let removed_too = self.dialect.keeps_removed();
        let subscribed = self
            .subscriptions
            .iter()
            .filter(|(room, _)| {
                data.membership(room)
                    .is_some_and(|m| m.is_member() || (removed_too && m.is_removed()))
            })
            .map(|(room, sub)| {
                let asks = (
                    sub.timeline_limit,
                    &sub.required_state[..],
                    sub.include_heroes,
                );
                (room, asks, None, &sub.include_old_rooms)
            });
        for (room, (limit, required_state, heroes), bump, old) in listed.chain(subscribed) {
            show(room, limit, required_state, heroes, bump);
            if let Some(old) = old {
                for pred in predecessors(room, view) {
                    show(
                        &pred,
                        old.timeline_limit,
                        &old.required_state,
                        old.include_heroes,
                        None,
                    );
                }
            }
        }
        visible
    }

    /// Room data for visible rooms: whole for rooms new to the client (or to resend),
    /// what changed for the others, `invite_state` alone for invites.
    fn room_results(
        &mut self,
        visible: &BTreeMap<RoomId, RoomParams>,
        changed: Option<&HashSet<RoomId>>,
        resend: &HashMap<RoomId, Resend>,
        horizon: Option<Position>,
        view: &View<'_>,
        resp: &mut SyncResponse,
    ) {
        for (room_id, params) in visible {
            let sent = self.sent.get(room_id);
            let is_changed = changed.is_none_or(|c| c.contains(room_id));
            let again = resend.get(room_id).copied();
            let result = match (view.data.membership(room_id), sent) {
                (Some(UserMembership::Join { since }), Some(s))
                    if !s.invite && again != Some(Resend::Whole) =>
                {
                    let live = is_changed
                        .then(|| self.live_room(room_id, *since, params, view))
                        .flatten();
                    if again == Some(Resend::State) {
                        // The state selection changed: its state again, no timeline.
                        self.state_again(room_id, *since, params, view)
                            .map(|required_state| RoomResult {
                                required_state,
                                ..live.unwrap_or_default()
                            })
                    } else {
                        live
                    }
                }
                (Some(UserMembership::Join { since }), _) => {
                    self.full_room(room_id, *since, params, horizon, view)
                }
                (
                    Some(UserMembership::Invite {
                        invite_state,
                        facts,
                        ts,
                        position,
                        ..
                    }),
                    sent,
                    // New to the client, or held as joined by a client that missed the
                    // leave (kicked and invited again between two requests): sent as
                    // the invite it is now.
                ) if sent.is_none_or(|s| !s.invite) => {
                    // All from the stripped state: the room's own name, members and
                    // counts are not the invitee's to see. As in the Go proxy, the counts
                    // are those of a room of the inviter and the invitee.
                    let name = invite_name(facts);
                    let heroes =
                        (params.include_heroes && name.calculated).then(|| invite_heroes(facts));
                    self.sent.insert(
                        room_id.clone(),
                        SentRoom {
                            position: 0,
                            since: 0,
                            invite: true,
                            name: name.name.clone(),
                            heroes: heroes.clone().unwrap_or_default(),
                            avatar: None,
                            timestamp: *ts,
                            dm: view.data.is_dm(room_id),
                            joined: 1,
                            invited: 1,
                            unread: (0, 0),
                            lazy: Lazy::default(),
                            newest: (0, 0),
                            timeline_limit: 0,
                        },
                    );
                    Some(RoomResult {
                        initial: true,
                        name: Some(name.name),
                        heroes,
                        avatar: Some(invite_avatar(facts)),
                        // Omitted when false, as the Go proxy did.
                        is_dm: view.data.is_dm(room_id).then_some(true),
                        invite_state: Some(invite_state.clone()),
                        timestamp: Some(*ts).filter(|ts| *ts > 0),
                        // The Go proxy's counts of a room of inviter and invitee; Synapse
                        // (MSC4186) sends none for an invite.
                        joined_count: (self.dialect == Dialect::Msc3575).then_some(1),
                        invited_count: (self.dialect == Dialect::Msc3575).then_some(1),
                        bump_stamp: Some(*position),
                        ..RoomResult::default()
                    })
                }
                (
                    Some(
                        m @ UserMembership::Leave {
                            event: Some(ev), ..
                        },
                    ),
                    _,
                ) if self.dialect.keeps_removed() && m.is_removed() => {
                    self.removed_room(room_id, ev, params, view)
                }
                _ => None,
            };
            if let Some(result) = result {
                resp.rooms.insert(room_id.clone(), result);
            }
        }
    }

    /// Rooms the client no longer sees: a room the user left gets what happened since
    /// the last response up to the leave (still the user's to see), the leave event
    /// last, then nothing more; others are forgotten so they come back whole.
    fn farewells(
        &mut self,
        visible: &BTreeMap<RoomId, RoomParams>,
        view: &View<'_>,
        resp: &mut SyncResponse,
    ) {
        let gone: Vec<RoomId> = self
            .sent
            .keys()
            .filter(|r| !visible.contains_key(*r))
            .cloned()
            .collect();
        for room_id in gone {
            let Some(sent) = self.sent.remove(&room_id) else {
                continue;
            };
            let Some(UserMembership::Leave {
                event: Some(ev), ..
            }) = view.data.membership(&room_id)
            else {
                continue;
            };
            if ev.position <= sent.position || sent.invite {
                continue;
            }
            resp.rooms
                .insert(room_id.clone(), farewell(&room_id, &sent, ev, view));
        }
    }

    /// A room the user was kicked or banned from, in a dialect that keeps listing
    /// such rooms: as it was when they were removed, then nothing more. A client that
    /// saw the room before gets what happened since, up to the removal.
    fn removed_room(
        &mut self,
        room_id: &RoomId,
        ev: &Arc<Event>,
        params: &RoomParams,
        view: &View<'_>,
    ) -> Option<RoomResult> {
        if let Some(sent) = self.sent.get_mut(room_id).filter(|s| !s.invite) {
            if ev.position <= sent.position {
                return None;
            }
            let result = farewell(room_id, sent, ev, view);
            sent.position = ev.position;
            return Some(result);
        }
        let room = (view.room)(room_id)?;
        let limit = params.timeline_limit.min(TIMELINE_RING);
        // The store counts a removal only after a join (see `UserMembership::is_removed`):
        // the state up to it was theirs to see. So was the history from their join on;
        // without the join in the ring (long ago, or in a sync's state block) nothing
        // tells which events came after it, and the removal alone is shown.
        let join = room.timeline.iter().rev().find(|e| {
            e.position < ev.position
                && &*e.kind == "m.room.member"
                && e.state_key.as_deref() == Some(view.user_id)
                && e.membership == Some(Membership::Join)
        });
        let (mut timeline, gap, since) = match join {
            Some(join) => {
                let (timeline, gap) = visible_timeline(
                    &room,
                    view.data,
                    join.position.saturating_sub(1),
                    ev.position,
                    join.timeline_order(),
                    limit.saturating_sub(1),
                );
                (timeline, gap, join.position)
            }
            None => (Vec::new(), true, ev.position),
        };
        if limit > 0 {
            timeline.push(Arc::clone(ev));
        }
        let prev_batch = timeline
            .first()
            .and_then(|first| room.prev_batch_at(first))
            .map(str::to_owned);
        let required_state = Selection::new(&params.required_state, view.user_id).resolve_until(
            &room.state,
            &[],
            ev.position,
        );
        // The name the room was given, as it was at the removal. Not one made of its
        // members, who may have changed since (Synapse sends no heroes here either).
        let named: Vec<_> = ["m.room.name", "m.room.canonical_alias"]
            .iter()
            .filter_map(|kind| room.state.get(kind, ""))
            .collect();
        let name = (!named.is_empty() && named.iter().all(|s| s.position() <= ev.position))
            .then(|| room_name(self.dialect, &room.meta, view.user_id))
            .flatten();
        let unread = unread(view.data, room_id);
        self.sent.insert(
            room_id.clone(),
            SentRoom {
                position: ev.position,
                since,
                invite: false,
                name: name.clone().unwrap_or_default(),
                heroes: Vec::new(),
                avatar: None,
                timestamp: 0,
                dm: false,
                joined: 0,
                invited: 0,
                unread,
                lazy: Lazy::default(),
                newest: newest_order(&room),
                timeline_limit: limit,
            },
        );
        Some(RoomResult {
            initial: true,
            name,
            required_state,
            timeline: timeline.iter().map(|e| e.json.clone()).collect(),
            limited: gap && limit > 0,
            prev_batch,
            bump_stamp: Some(ev.position),
            notification_count: Some(unread.0),
            highlight_count: Some(unread.1),
            ..RoomResult::default()
        })
    }

    fn full_room(
        &mut self,
        room_id: &RoomId,
        since: Position,
        params: &RoomParams,
        horizon: Option<Position>,
        view: &View<'_>,
    ) -> Option<RoomResult> {
        let room = (view.room)(room_id)?;
        if left_meanwhile(&room, view.user_id) {
            return None;
        }
        let limit = params.timeline_limit.min(TIMELINE_RING);
        let (timeline, gap) = visible_timeline(
            &room,
            view.data,
            since.saturating_sub(1),
            Position::MAX,
            (since, 0),
            limit,
        );
        // The client has nothing of this room: the timeline is limited when the room
        // has visible history before what we return, which we know unless the oldest
        // event returned is the room's creation or the reader's join.
        let history_before = timeline.first().is_some_and(|first| {
            room.timeline.front().map(|e| e.position) == Some(first.position)
                && &*first.kind != "m.room.create"
                && first.position > since
        });
        let limited = gap || history_before;
        let prev_batch = timeline
            .first()
            .and_then(|first| room.prev_batch_at(first))
            .map(str::to_owned);
        // History fetched for one member must not reach another who joined later.
        if let Some(history) = room
            .history_gap(&timeline, since, limit)
            .filter(|_| room.shares_history())
        {
            self.gaps.push(history);
        }
        let fields = RoomFields::of(self.dialect, &room, params, view);
        let unread = unread(view.data, room_id);
        let dm = view.data.is_dm(room_id);
        let selection = Selection::new(&params.required_state, view.user_id);
        let mut lazy = Lazy::default();
        let mut lazy_members: Vec<&str> = Vec::new();
        if selection.wants_lazy() {
            for e in &timeline {
                if lazy.insert(&e.sender) {
                    lazy_members.push(&e.sender);
                }
            }
        }
        let required_state = selection.resolve(&room.state, &lazy_members);
        // A room sent before goes out again because its `timeline_limit` rose: MSC4186
        // says so with `expanded_timeline`, and the room is not new to the client.
        let expanded = self
            .sent
            .get(room_id)
            .is_some_and(|s| !s.invite && s.timeline_limit < limit);
        let initial = !(expanded && self.dialect == Dialect::Msc4186);
        self.sent.insert(
            room_id.clone(),
            SentRoom {
                position: room.meta.latest_position,
                since,
                invite: false,
                name: fields.name.clone(),
                heroes: fields.heroes.clone().unwrap_or_default(),
                avatar: fields.avatar.clone(),
                timestamp: fields.timestamp,
                dm,
                joined: room.meta.joined_count,
                invited: room.meta.invited_count,
                unread,
                lazy,
                newest: newest_order(&room),
                timeline_limit: limit,
            },
        );
        Some(RoomResult {
            initial,
            expanded_timeline: expanded,
            bump_stamp: Some(bump_stamp(&room, since)),
            name: Some(fields.name).filter(|n| !n.is_empty()),
            heroes: fields.heroes,
            avatar: Some(fields.avatar),
            is_dm: dm.then_some(true),
            required_state,
            // A room that enters a window because of new events says which are new.
            num_live: horizon.map_or(0, |h| timeline.iter().filter(|e| e.position > h).count()),
            timeline: timeline.iter().map(|e| e.json.clone()).collect(),
            timeline_ids: timeline.iter().map(|e| e.event_id.clone()).collect(),
            transaction_ids: transaction_ids(&timeline, view),
            limited: limited && limit > 0,
            prev_batch,
            invite_state: None,
            timestamp: Some(fields.timestamp).filter(|ts| *ts > 0),
            joined_count: Some(room.meta.joined_count),
            invited_count: Some(room.meta.invited_count),
            notification_count: Some(unread.0),
            highlight_count: Some(unread.1),
        })
    }

    /// The room's state for a changed selection, without its timeline. `$LAZY` stands
    /// for the members sent lazily so far and the senders of the timeline the client
    /// was sent.
    fn state_again(
        &mut self,
        room_id: &RoomId,
        since: Position,
        params: &RoomParams,
        view: &View<'_>,
    ) -> Option<Vec<bytes::Bytes>> {
        let room = (view.room)(room_id)?;
        if left_meanwhile(&room, view.user_id) {
            return None;
        }
        let sent = self.sent.get_mut(room_id)?;
        let selection = Selection::new(&params.required_state, view.user_id);
        if selection.wants_lazy() {
            let limit = params.timeline_limit.min(TIMELINE_RING);
            let (timeline, _) = visible_timeline(
                &room,
                view.data,
                since.saturating_sub(1),
                sent.position.saturating_add(1),
                (since, 0),
                limit,
            );
            for e in &timeline {
                sent.lazy.insert(&e.sender);
            }
        }
        let members: Vec<&str> = sent.lazy.iter().collect();
        Some(selection.resolve(&room.state, &members))
    }

    fn live_room(
        &mut self,
        room_id: &RoomId,
        since: Position,
        params: &RoomParams,
        view: &View<'_>,
    ) -> Option<RoomResult> {
        let room = (view.room)(room_id)?;
        if left_meanwhile(&room, view.user_id) {
            return None;
        }
        let dialect = self.dialect;
        let sent = self.sent.get_mut(room_id)?;
        let after = sent.position.max(since.saturating_sub(1));
        let from = (since, 0).max((sent.newest.0, sent.newest.1.saturating_add(1)));
        let (timeline, gap) =
            visible_timeline(&room, view.data, after, Position::MAX, from, TIMELINE_RING);
        sent.newest = sent.newest.max(newest_order(&room));
        let mut out = RoomResult {
            num_live: timeline.len(),
            limited: gap,
            timeline: timeline.iter().map(|e| e.json.clone()).collect(),
            transaction_ids: transaction_ids(&timeline, view),
            required_state: live_state(&room, &timeline, gap, params, &mut sent.lazy, view),
            ..RoomResult::default()
        };
        if !out.timeline.is_empty() {
            out.bump_stamp = Some(bump_stamp(&room, since));
        }
        let fields = RoomFields::of(dialect, &room, params, view);
        if fields.timestamp != sent.timestamp {
            out.timestamp = Some(fields.timestamp);
            sent.timestamp = fields.timestamp;
        }
        if fields.name != sent.name {
            out.name = Some(fields.name.clone()).filter(|n| !n.is_empty());
            sent.name = fields.name;
        }
        let heroes = fields.heroes.unwrap_or_default();
        if heroes != sent.heroes {
            out.heroes = Some(heroes.clone()).filter(|h| !h.is_empty());
            sent.heroes = heroes;
        }
        if fields.avatar != sent.avatar {
            out.avatar = Some(fields.avatar.clone());
            sent.avatar = fields.avatar;
        }
        // The Go proxy never sent a changed DM flag (its bug 10); clients keep the one
        // they were sent, so a change is sent like a rename.
        let dm = view.data.is_dm(room_id);
        if dm != sent.dm {
            out.is_dm = Some(dm);
            sent.dm = dm;
        }
        if room.meta.joined_count != sent.joined {
            out.joined_count = Some(room.meta.joined_count);
            sent.joined = room.meta.joined_count;
        }
        if room.meta.invited_count != sent.invited {
            out.invited_count = Some(room.meta.invited_count);
            sent.invited = room.meta.invited_count;
        }
        let unread = unread(view.data, room_id);
        if unread != sent.unread {
            out.notification_count = Some(unread.0);
            out.highlight_count = Some(unread.1);
            sent.unread = unread;
        }
        sent.position = sent.position.max(room.meta.latest_position);
        let empty = out.timeline.is_empty()
            && out.required_state.is_empty()
            && out.name.is_none()
            && out.heroes.is_none()
            && out.avatar.is_none()
            && out.timestamp.is_none()
            && out.is_dm.is_none()
            && out.joined_count.is_none()
            && out.invited_count.is_none()
            && out.notification_count.is_none();
        (!empty).then_some(out)
    }
}

/// What the extensions' scope reads: each list's window as the client holds it.
impl crate::extensions::Windows for Connection {
    fn list_names(&self) -> Vec<&str> {
        self.lists.keys().map(String::as_str).collect()
    }

    fn window(&self, list: &str) -> Vec<RoomId> {
        self.lists
            .get(list)
            .map(|l| l.have.values().cloned().collect())
            .unwrap_or_default()
    }

    fn subscriptions(&self) -> Vec<RoomId> {
        self.subscriptions.keys().cloned().collect()
    }
}

/// The state a live update carries: the current version of each state event the new
/// timeline changed that the room's `required_state` selects, and the members of new
/// senders not yet sent for `$LAZY`. After a gap the changes are unknown (the homeserver
/// may have sent them as state, without a timeline event), so the selection is sent
/// whole.
fn live_state(
    room: &RoomSnapshot,
    timeline: &[Arc<crate::event::Event>],
    gap: bool,
    params: &RoomParams,
    lazy: &mut Lazy,
    view: &View<'_>,
) -> Vec<bytes::Bytes> {
    let selection = Selection::new(&params.required_state, view.user_id);
    let mut new_lazy: Vec<&str> = Vec::new();
    if selection.wants_lazy() {
        for e in timeline {
            if !lazy.contains(&e.sender) && !new_lazy.contains(&&*e.sender) {
                new_lazy.push(&e.sender);
            }
        }
    }
    let is_lazy = |user: &str| lazy.contains(user) || new_lazy.contains(&user);
    let mut out = Vec::new();
    let mut sent_ids: HashSet<&str> = HashSet::new();
    if gap {
        out = selection.resolve(&room.state, &new_lazy);
        // Members sent lazily before may have changed in the gap too.
        for user in lazy.iter() {
            if let Some(s) = room.state.get("m.room.member", user) {
                out.push(bytes::Bytes::copy_from_slice(s.json()));
            }
        }
    } else {
        for e in timeline {
            let Some(key) = e.state_key.as_deref() else {
                continue;
            };
            if !selection.includes(&e.kind, key, &is_lazy) {
                continue;
            }
            if let Some(s) = room.state.get(&e.kind, key) {
                if sent_ids.insert(s.event_id()) {
                    out.push(bytes::Bytes::copy_from_slice(s.json()));
                }
            }
        }
        for user in &new_lazy {
            if let Some(s) = room.state.get("m.room.member", user) {
                if sent_ids.insert(s.event_id()) {
                    out.push(bytes::Bytes::copy_from_slice(s.json()));
                }
            }
        }
    }
    for user in new_lazy {
        lazy.insert(user);
    }
    out
}

/// Where the room's timeline ends now, in its order.
fn newest_order(room: &RoomSnapshot) -> TimelineOrder {
    room.timeline.back().map_or((0, 0), |e| e.timeline_order())
}

/// A room's `name` in the dialect: the display name slidesync computes for MSC3575 (as
/// the Go proxy did); for MSC4186 the room's `m.room.name` alone, as Synapse sends it
/// (clients make a name of the room's members themselves; matrix-js-sdk takes `name`
/// for the room's `m.room.name`).
fn room_name(dialect: Dialect, meta: &RoomMeta, reader: &str) -> Option<String> {
    match dialect {
        Dialect::Msc3575 => Some(display_name(meta, reader).name),
        Dialect::Msc4186 => meta.name.as_deref().map(str::to_owned),
    }
}

/// A room's `bump_stamp`: the position of its newest event of Synapse's bump types,
/// never before the user's join, so a room joined long after its last message sorts by
/// the join.
fn bump_stamp(room: &RoomSnapshot, since: Position) -> u64 {
    crate::rooms::bump::bump_stamp(room, since, &SYNAPSE_BUMP_TYPES)
}

/// What a client that saw the room while the user was in it has yet to see, up to and
/// including the user's leave `ev`, after which nothing more of the room is theirs.
fn farewell(room_id: &str, sent: &SentRoom, ev: &Event, view: &View<'_>) -> RoomResult {
    let mut timeline: Vec<_> = (view.room)(room_id)
        .map(|room| {
            visible_timeline(
                &room,
                view.data,
                sent.position,
                ev.position,
                // History filled in behind what the client holds is not live news.
                (sent.since, 0).max((sent.newest.0, sent.newest.1.saturating_add(1))),
                TIMELINE_RING,
            )
            .0
        })
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.json.clone())
        .collect();
    timeline.push(ev.json.clone());
    RoomResult {
        num_live: timeline.len(),
        timeline,
        bump_stamp: Some(ev.position),
        ..RoomResult::default()
    }
}

/// Whether the room's snapshot already has the user out while the user's data, read a
/// moment earlier, still has them joined: the step sends nothing of the room (not its
/// timeline, name or state after the leave); the leave has bumped the user's version, so
/// the next step says farewell.
fn left_meanwhile(room: &RoomSnapshot, user: &str) -> bool {
    room.visible_until(user) != Position::MAX
}

/// Rooms an upgrade chain links to, furthest back.
const MAX_PREDECESSORS: usize = 16;

/// The rooms `room` replaced (its `m.room.create` `predecessor`, that room's, ...), as
/// far back as the user is still joined to them: MSC3575 `include_old_rooms`. A room
/// anyone can create may name any room, or a cycle, as its predecessor: the walk stops
/// at a room the user is not joined to, at a room already seen, and after
/// [`MAX_PREDECESSORS`].
fn predecessors(room: &RoomId, view: &View<'_>) -> Vec<RoomId> {
    let mut chain: Vec<RoomId> = Vec::new();
    let mut at = (view.room)(room);
    while let Some(pred) = at.as_ref().and_then(|r| r.meta.predecessor.clone()) {
        let pred: RoomId = pred.into();
        let joined = matches!(
            view.data.membership(&pred),
            Some(UserMembership::Join { .. })
        );
        if !joined || chain.len() >= MAX_PREDECESSORS || *room == pred || chain.contains(&pred) {
            break;
        }
        at = (view.room)(&pred);
        chain.push(pred);
    }
    chain
}

/// The fields of a joined room that depend on who reads it and through which lists.
struct RoomFields {
    name: String,
    heroes: Option<Vec<Hero>>,
    avatar: Option<Box<str>>,
    timestamp: u64,
}

impl RoomFields {
    fn of(dialect: Dialect, room: &RoomSnapshot, params: &RoomParams, view: &View<'_>) -> Self {
        // MSC4186 sends the room's own name alone, as Synapse does: clients name a room
        // without one from its heroes themselves.
        let (name, calculated) = match dialect {
            Dialect::Msc3575 => {
                let name = display_name(&room.meta, view.user_id);
                (name.name, name.calculated)
            }
            Dialect::Msc4186 => (
                room.meta.name.as_deref().unwrap_or_default().to_owned(),
                room.meta.name.is_none(),
            ),
        };
        // Heroes go with a name made from them, as in the Go proxy.
        let heroes = (params.include_heroes && calculated).then(|| {
            heroes_for(&room.meta, view.user_id)
                .into_iter()
                .cloned()
                .collect()
        });
        let timestamp = match &params.bump {
            Bump::Types(types) => {
                let join_ts = room
                    .state
                    .get("m.room.member", view.user_id)
                    .map_or(0, |m| m.origin_server_ts());
                bump_ts(
                    &room.meta.latest_by_type,
                    join_ts,
                    types.iter().map(|t| &**t),
                )
            }
            Bump::All | Bump::Unset => room.meta.latest_ts,
        };
        Self {
            name,
            heroes,
            avatar: avatar(&room.meta, view.user_id, view.data.is_dm(&room.room_id)),
            timestamp,
        }
    }
}

/// [`RoomSnapshot::timeline_between`] without the messages of users the reader ignores
/// (`m.ignored_user_list`; their state events stay, since they change the room), and
/// without filled-in history where the room does not share history with new members
/// (see [`RoomSnapshot::shares_history`]).
fn visible_timeline(
    room: &RoomSnapshot,
    data: &UserData,
    after: Position,
    until: Position,
    from: TimelineOrder,
    limit: usize,
) -> (Vec<Arc<Event>>, bool) {
    let hides_fills = !room.shares_history();
    if !data.account.ignores_anyone() && !hides_fills {
        return room.timeline_between(after, until, from, limit);
    }
    let (all, gap) = room.timeline_between(after, until, from, TIMELINE_RING);
    let mut hidden = false;
    let kept: Vec<Arc<Event>> = all
        .into_iter()
        .filter(|e| {
            let fill = hides_fills && e.filled_order.is_some();
            hidden |= fill;
            !fill && (e.is_state() || !data.account.ignores(&e.sender))
        })
        .collect();
    let skip = kept.len().saturating_sub(limit);
    (kept[skip..].to_vec(), gap || hidden || skip > 0)
}

/// Drops what the client holds at `start..=end`, visiting only the entries there.
fn forget(have: &mut BTreeMap<usize, RoomId>, (start, end): Range) {
    let held: Vec<usize> = have.range(start..=end).map(|(&i, _)| i).collect();
    for i in held {
        have.remove(&i);
    }
}

fn unread(data: &UserData, room_id: &str) -> (u64, u64) {
    data.rooms
        .get(room_id)
        .map_or((0, 0), |r| (r.notification_count, r.highlight_count))
}

/// The sorts and filters `params` state replace the sticky ones.
fn apply_order(order: &mut ListOrder, params: &ListParams) {
    if let Some(sort) = &params.sort {
        order.sort = sort.clone();
    }
    if let Some(filters) = &params.filters {
        order.filters = filters.clone();
    }
    if let Some(bump) = &params.bump_event_types {
        order.bump = bump.clone();
    }
}

/// What a room already shown is sent again, when the parameters of a list or
/// subscription showing it change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Resend {
    /// `required_state` changed: the state again, without the timeline (as in the Go
    /// proxy).
    State,
    /// `timeline_limit` changed, or a subscription: the whole room.
    Whole,
}

/// Merges sticky list parameters. Returns what rooms already shown must be sent again.
fn merge(list: &mut ListState, params: &ListParams) -> Option<Resend> {
    let mut resend = None;
    if let Some(ranges) = &params.ranges {
        list.ranges = ranges.clone();
    }
    if let Some(all) = params.slow_get_all_rooms {
        list.all_rooms = all;
    }
    if list.all_rooms {
        // Clamped to the list like any range: it costs what the list holds.
        list.ranges = vec![(0, usize::MAX)];
    }
    apply_order(&mut list.order, params);
    if let Some(rs) = &params.required_state {
        if *rs != list.required_state {
            resend = Some(Resend::State);
        }
        list.required_state = rs.clone();
    }
    if let Some(heroes) = params.include_heroes {
        list.include_heroes = heroes;
    }
    if let Some(old) = &params.include_old_rooms {
        list.include_old_rooms = Some(old.clone());
    }
    if let Some(limit) = params.timeline_limit {
        if limit != list.timeline_limit {
            resend = Some(Resend::Whole);
        }
        list.timeline_limit = limit;
    }
    resend
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::event::Membership;
    use crate::store::testing::{delta, event, store, with_membership};
    use crate::store::Store;

    const ME: &str = "@me:x";

    fn list(ranges: Vec<Range>, timeline_limit: usize) -> SyncRequest {
        let mut lists = BTreeMap::new();
        lists.insert(
            "all".to_owned(),
            ListParams {
                ranges: Some(ranges),
                timeline_limit: Some(timeline_limit),
                ..ListParams::default()
            },
        );
        SyncRequest {
            lists,
            ..SyncRequest::default()
        }
    }

    /// A room the reader is joined to, with `messages` messages after the join.
    fn joined_room(store: &Store, room: &str, messages: u64, ts: u64) {
        let user = store.user_or_insert(&ME.into());
        let mut timeline = vec![
            event("m.room.create", Some(""), ME, ts),
            event("m.room.member", Some(ME), ME, ts),
        ];
        timeline.extend((0..messages).map(|i| event("m.room.message", None, ME, ts + 1 + i)));
        store.apply_room(delta(room, vec![], timeline));
        store.confirm_join(&user, &room.into());
    }

    /// A room `inviter` made (created, named, a message) with the reader invited.
    fn invited_room(store: &Store, room: &str, inviter: &str) {
        let user = store.user_or_insert(&ME.into());
        store.apply_room(delta(
            room,
            vec![],
            vec![
                event("m.room.create", Some(""), inviter, 1),
                event("m.room.name", Some(""), inviter, 2),
                event("m.room.message", None, inviter, 3),
            ],
        ));
        store.set_invite(
            &user,
            &room.into(),
            bytes::Bytes::from_static(b"[]"),
            Default::default(),
            4,
        );
    }

    fn step(conn: &mut Connection, store: &Store, req: Option<&SyncRequest>) -> SyncResponse {
        let user = store.user(ME).unwrap();
        let data = user.read();
        let room = |id: &str| store.room(id);
        conn.step(
            req,
            &View {
                user_id: ME,
                data: &data,
                room: &room,
                position: store.position_now(),
                txn_id: &|_| None,
            },
        )
    }

    #[tokio::test]
    async fn omitted_list_keeps_its_ranges() {
        let store = store();
        joined_room(&store, "!a:x", 1, 100);
        joined_room(&store, "!b:x", 1, 200);
        let mut conn = Connection::default();
        let first = step(&mut conn, &store, Some(&list(vec![(0, 0)], 1)));
        assert_eq!(
            first.lists["all"].ops,
            [Op::Sync {
                range: (0, 0),
                room_ids: vec!["!b:x".into()]
            }]
        );
        let again = step(&mut conn, &store, Some(&SyncRequest::default()));
        assert!(again.lists["all"].ops.is_empty(), "{again:?}");
        assert_eq!(again.lists["all"].count, 2);
        assert!(!again.has_data());
    }

    #[tokio::test]
    async fn repeating_the_same_request_sends_nothing_until_something_changes() {
        let store = store();
        joined_room(&store, "!a:x", 1, 100);
        joined_room(&store, "!b:x", 1, 200);
        let req = list(vec![(0, 9)], 1);
        let mut conn = Connection::default();
        assert!(step(&mut conn, &store, Some(&req)).has_data());
        let same = step(&mut conn, &store, Some(&req));
        assert!(!same.has_data(), "{same:?}");
        assert_eq!(same.lists["all"].count, 2);
        store.apply_room(delta(
            "!a:x",
            vec![],
            vec![event("m.room.message", None, ME, 300)],
        ));
        let moved = step(&mut conn, &store, Some(&req));
        assert_eq!(
            moved.lists["all"].ops,
            [
                Op::Delete { index: 1 },
                Op::Insert {
                    index: 0,
                    room_id: "!a:x".into()
                }
            ]
        );
    }

    #[tokio::test]
    async fn a_timeline_is_limited_only_when_older_visible_events_exist() {
        let store = store();
        joined_room(&store, "!small:x", 2, 100);
        joined_room(&store, "!big:x", 10, 200);
        let mut conn = Connection::default();
        let resp = step(&mut conn, &store, Some(&list(vec![(0, 1)], 5)));
        let big = &resp.rooms["!big:x"];
        assert_eq!(big.timeline.len(), 5);
        assert!(big.limited);
        let small = &resp.rooms["!small:x"];
        assert_eq!(
            small.timeline.len(),
            3,
            "the join and two messages; the create came before the join"
        );
        assert!(!small.limited, "everything since the join fits");
    }

    #[tokio::test]
    async fn raising_timeline_limit_resends_rooms_whole() {
        let store = store();
        joined_room(&store, "!a:x", 5, 100);
        let mut conn = Connection::default();
        step(&mut conn, &store, Some(&list(vec![(0, 0)], 1)));
        let mut more = list(vec![(0, 0)], 4);
        more.lists.get_mut("all").unwrap().ranges = None;
        let resp = step(&mut conn, &store, Some(&more));
        let room = &resp.rooms["!a:x"];
        assert!(room.initial);
        assert_eq!(room.timeline.len(), 4);
        assert!(resp.lists["all"].ops.is_empty(), "the window did not move");
    }

    #[tokio::test]
    async fn changing_required_state_resends_the_state_without_the_timeline() {
        let store = store();
        joined_room(&store, "!a:x", 5, 100);
        let mut conn = Connection::default();
        step(&mut conn, &store, Some(&list(vec![(0, 0)], 3)));
        let mut create_only = list(vec![(0, 0)], 3);
        let all = create_only.lists.get_mut("all").unwrap();
        all.ranges = None;
        all.timeline_limit = None;
        all.required_state = Some(vec![("m.room.create".into(), "".into())]);
        let resp = step(&mut conn, &store, Some(&create_only));
        let room = &resp.rooms["!a:x"];
        assert!(!room.initial);
        assert!(room.timeline.is_empty(), "{room:?}");
        assert_eq!(room.required_state.len(), 1);
        assert!(resp.lists["all"].ops.is_empty());
    }

    #[tokio::test]
    async fn an_invite_shows_only_its_invite_state_until_joined() {
        let store = store();
        invited_room(&store, "!r:x", "@other:x");
        let mut conn = Connection::default();
        let resp = step(&mut conn, &store, Some(&list(vec![(0, 9)], 10)));
        let invite = &resp.rooms["!r:x"];
        assert_eq!(invite.invite_state.as_deref(), Some(&b"[]"[..]));
        assert!(invite.timeline.is_empty() && invite.required_state.is_empty());
        assert_eq!(
            invite.name.as_deref(),
            Some("Empty Room"),
            "named from the stripped state, which names nobody"
        );
        assert_eq!(
            (invite.joined_count, invite.invited_count),
            (Some(1), Some(1))
        );

        store.apply_room(delta(
            "!r:x",
            vec![],
            vec![event("m.room.member", Some(ME), ME, 5)],
        ));
        let resp = step(&mut conn, &store, None);
        let joined = &resp.rooms["!r:x"];
        assert!(joined.initial, "joining sends the room whole");
        assert_eq!(
            joined.timeline.len(),
            1,
            "history before the join stays hidden"
        );
    }

    #[tokio::test]
    async fn ranges_past_the_end_cost_what_the_list_holds() {
        let store = store();
        for i in 0..10 {
            joined_room(&store, &format!("!r{i}:x"), 0, 100 + i);
        }
        let lists = |ranges: Vec<Range>| {
            let mut req = SyncRequest::default();
            for l in 0..100 {
                req.lists.insert(
                    format!("l{l}"),
                    ListParams {
                        ranges: Some(ranges.clone()),
                        timeline_limit: Some(1),
                        ..ListParams::default()
                    },
                );
            }
            req
        };
        let mut conn = Connection::default();
        let resp = step(
            &mut conn,
            &store,
            Some(&lists(vec![(0, 4), (5, usize::MAX)])),
        );
        let all: Vec<RoomId> = (0..10).rev().map(|i| format!("!r{i}:x").into()).collect();
        for list in resp.lists.values() {
            assert_eq!(list.count, 10);
            assert_eq!(
                list.ops,
                [
                    Op::Sync {
                        range: (0, 4),
                        room_ids: all[..5].to_vec()
                    },
                    Op::Sync {
                        range: (5, 9),
                        room_ids: all[5..].to_vec()
                    }
                ]
            );
        }
        assert!(conn.lists.values().all(|l| l.have.len() == 10));
        assert_eq!(conn.sent.len(), 10);

        store.apply_room(delta(
            "!r0:x",
            vec![],
            vec![event("m.room.message", None, ME, 1_000)],
        ));
        let resp = step(&mut conn, &store, None);
        for list in resp.lists.values() {
            assert_eq!(
                list.ops,
                [
                    Op::Delete { index: 9 },
                    Op::Insert {
                        index: 5,
                        room_id: "!r5:x".into()
                    },
                    Op::Delete { index: 4 },
                    Op::Insert {
                        index: 0,
                        room_id: "!r0:x".into()
                    }
                ],
                "one pair per window, the huge one ending at the list's end"
            );
        }

        let resp = step(
            &mut conn,
            &store,
            Some(&lists(vec![(0, 0), (usize::MAX - 1, usize::MAX)])),
        );
        for list in resp.lists.values() {
            assert_eq!(list.count, 10);
            assert_eq!(
                list.ops,
                [
                    Op::Invalidate { range: (1, 4) },
                    Op::Invalidate { range: (5, 9) }
                ],
                "only what the client holds is invalidated; nothing is synced past the end"
            );
        }
        assert!(conn.lists.values().all(|l| l.have.len() == 1));
    }

    #[tokio::test]
    async fn a_left_room_ends_with_its_leave_event_and_then_stays_silent() {
        let store = store();
        joined_room(&store, "!r:x", 1, 100);
        let mut conn = Connection::default();
        step(&mut conn, &store, Some(&list(vec![(0, 9)], 5)));
        let leave = with_membership(event("m.room.member", Some(ME), ME, 300), Membership::Leave);
        store.apply_room(delta("!r:x", vec![], vec![leave]));
        let resp = step(&mut conn, &store, None);
        assert_eq!(resp.lists["all"].ops, [Op::Delete { index: 0 }]);
        assert_eq!(resp.rooms["!r:x"].timeline.len(), 1);
        store.apply_room(delta(
            "!r:x",
            vec![],
            vec![event("m.room.message", None, "@o:x", 400)],
        ));
        let resp = step(&mut conn, &store, None);
        assert!(resp.rooms.is_empty(), "{resp:?}");
    }

    /// A step that read the user's data before a kick was applied, and the room after:
    /// nothing of the room goes out then (not the message after the kick, not the
    /// name set after it), and the next step says farewell with what came before.
    #[tokio::test]
    async fn a_step_racing_a_leave_sends_nothing_of_the_room_after_the_leave() {
        let store = store();
        joined_room(&store, "!r:x", 1, 100);
        let mut conn = Connection::default();
        let mut req = list(vec![(0, 9)], 5);
        req.lists.get_mut("all").unwrap().required_state = Some(vec![("*".into(), "*".into())]);
        step(&mut conn, &store, Some(&req));
        let before = event("m.room.message", None, "@o:x", 299);
        let before_json = before.json.clone();
        store.apply_room(delta("!r:x", vec![], vec![before]));
        let user = store.user(ME).unwrap();
        let before_the_kick = user.read();
        let kick = with_membership(
            event("m.room.member", Some(ME), "@mod:x", 300),
            Membership::Leave,
        );
        let kick_json = kick.json.clone();
        let mut rename = event("m.room.name", Some(""), "@o:x", 301);
        rename.text = Some("Secret plan".into());
        let secret = event("m.room.message", None, "@o:x", 302);
        store.apply_room(delta("!r:x", vec![], vec![kick, rename, secret]));

        let room = |id: &str| store.room(id);
        let view = View {
            user_id: ME,
            data: &before_the_kick,
            room: &room,
            position: store.position_now(),
            txn_id: &|_| None,
        };
        let racing = conn.step(None, &view);
        assert!(!racing.rooms.contains_key("!r:x"), "{racing:?}");
        let farewell = step(&mut conn, &store, None);
        assert_eq!(farewell.rooms["!r:x"].timeline, [before_json, kick_json]);
        assert!(farewell.rooms["!r:x"].name.is_none());
    }

    /// History a lagging poller fills in before the user's join is not in the farewell.
    #[tokio::test]
    async fn a_farewell_holds_nothing_from_before_the_join() {
        let store = store();
        let user = store.user_or_insert(&ME.into());
        let old1 = event("m.room.message", None, "@o:x", 10);
        let old2 = event("m.room.message", None, "@o:x", 11);
        let join = event("m.room.member", Some(ME), ME, 100);
        let after = event("m.room.message", None, ME, 101);
        let (o1, o2) = (old1.json.clone(), old2.json.clone());
        let mut first = delta("!r:x", vec![], vec![join.clone(), after.clone()]);
        first.limited = true;
        store.apply_room(first);
        store.confirm_join(&user, &"!r:x".into());
        let mut conn = Connection::default();
        step(&mut conn, &store, Some(&list(vec![(0, 9)], 5)));
        store.apply_room(delta("!r:x", vec![], vec![old1, old2, join, after]));
        let leave = with_membership(event("m.room.member", Some(ME), ME, 200), Membership::Leave);
        let leave_json = leave.json.clone();
        store.apply_room(delta("!r:x", vec![], vec![leave]));
        let resp = step(&mut conn, &store, None);
        let timeline = &resp.rooms["!r:x"].timeline;
        assert!(
            !timeline.contains(&o1) && !timeline.contains(&o2),
            "{timeline:?}"
        );
        assert_eq!(timeline.last(), Some(&leave_json));
    }

    fn with_required_state(mut req: SyncRequest, entries: &[(&str, &str)]) -> SyncRequest {
        for list in req.lists.values_mut() {
            list.required_state = Some(
                entries
                    .iter()
                    .map(|(t, k)| ((*t).to_owned(), (*k).to_owned()))
                    .collect(),
            );
        }
        req
    }

    #[tokio::test]
    async fn live_state_reaches_the_required_state_it_matches() {
        let store = store();
        joined_room(&store, "!r:x", 1, 100);
        let mut conn = Connection::default();
        let req = with_required_state(list(vec![(0, 0)], 5), &[("m.room.name", "")]);
        step(&mut conn, &store, Some(&req));
        let first_name = event("m.room.name", Some(""), "@o:x", 200);
        let name = event("m.room.name", Some(""), "@o:x", 201);
        let topic = event("m.room.topic", Some(""), "@o:x", 202);
        let name_json = name.json.clone();
        store.apply_room(delta("!r:x", vec![], vec![first_name, name, topic]));
        let resp = step(&mut conn, &store, None);
        let room = &resp.rooms["!r:x"];
        assert_eq!(room.timeline.len(), 3);
        assert_eq!(
            room.required_state,
            [name_json],
            "the current name once; the topic is not asked for"
        );
        store.apply_room(delta(
            "!r:x",
            vec![],
            vec![event("m.room.message", None, "@o:x", 300)],
        ));
        let resp = step(&mut conn, &store, None);
        assert!(resp.rooms["!r:x"].required_state.is_empty());
    }

    #[tokio::test]
    async fn lazy_members_go_out_once_per_connection() {
        let store = store();
        joined_room(&store, "!r:x", 0, 100);
        let o = event("m.room.member", Some("@o:x"), "@o:x", 150);
        let p = event("m.room.member", Some("@p:x"), "@p:x", 151);
        let (o_json, p_json) = (o.json.clone(), p.json.clone());
        store.apply_room(delta("!r:x", vec![o, p], vec![]));
        store.apply_room(delta(
            "!r:x",
            vec![],
            vec![event("m.room.message", None, "@o:x", 200)],
        ));
        let mut conn = Connection::default();
        let req = with_required_state(list(vec![(0, 0)], 1), &[("m.room.member", "$LAZY")]);
        let resp = step(&mut conn, &store, Some(&req));
        assert_eq!(resp.rooms["!r:x"].required_state, [o_json]);

        store.apply_room(delta(
            "!r:x",
            vec![],
            vec![event("m.room.message", None, "@o:x", 300)],
        ));
        let resp = step(&mut conn, &store, None);
        assert!(
            resp.rooms["!r:x"].required_state.is_empty(),
            "sent before on this connection"
        );
        store.apply_room(delta(
            "!r:x",
            vec![],
            vec![event("m.room.message", None, "@p:x", 400)],
        ));
        let resp = step(&mut conn, &store, None);
        assert_eq!(resp.rooms["!r:x"].required_state, [p_json]);
    }

    #[tokio::test]
    async fn all_rooms_are_synced_at_once_and_moves_send_no_ops() {
        let store = store();
        for i in 0..5 {
            joined_room(&store, &format!("!r{i}:x"), 0, 100 + i);
        }
        let mut req = list(vec![(0, 0)], 1);
        req.lists.get_mut("all").unwrap().slow_get_all_rooms = Some(true);
        let mut conn = Connection::default();
        let resp = step(&mut conn, &store, Some(&req));
        assert_eq!(resp.rooms.len(), 5);
        assert!(matches!(
            &resp.lists["all"].ops[..],
            [Op::Sync { range: (0, 4), room_ids }] if room_ids.len() == 5
        ));
        store.apply_room(delta(
            "!r0:x",
            vec![],
            vec![event("m.room.message", None, ME, 1_000)],
        ));
        joined_room(&store, "!new:x", 0, 2_000);
        let resp = step(&mut conn, &store, None);
        assert!(resp.lists["all"].ops.is_empty(), "{resp:?}");
        assert_eq!(resp.lists["all"].count, 6);
        assert!(resp.rooms["!new:x"].initial);
        assert_eq!(resp.rooms["!r0:x"].timeline.len(), 1);
    }

    #[tokio::test]
    async fn a_short_timeline_after_a_gap_is_reported_for_fetching() {
        let store = store();
        let user = store.user_or_insert(&ME.into());
        let mut first_poll = delta(
            "!r:x",
            vec![
                event("m.room.create", Some(""), ME, 1),
                event("m.room.member", Some(ME), ME, 2),
            ],
            vec![event("m.room.message", None, "@o:x", 50)],
        );
        first_poll.limited = true;
        first_poll.prev_batch = Some("before_50".into());
        store.apply_room(first_poll);
        store.confirm_join(&user, &"!r:x".into());
        let mut conn = Connection::default();
        let resp = step(&mut conn, &store, Some(&list(vec![(0, 0)], 20)));
        assert_eq!(resp.rooms["!r:x"].prev_batch.as_deref(), Some("before_50"));
        let gaps = conn.take_history_gaps();
        assert_eq!(gaps.len(), 1);
        assert_eq!(&*gaps[0].from, "before_50");
        assert_eq!(gaps[0].want, 19);
        let resp = step(&mut conn, &store, Some(&list(vec![(0, 0)], 1)));
        assert!(conn.take_history_gaps().is_empty(), "{resp:?}");
    }

    /// An MSC4186 request: every list and subscription it wants, nothing sticky.
    fn simplified(lists: &[(&str, Range, usize)], subs: &[(&str, usize)]) -> SyncRequest {
        SyncRequest {
            dialect: Dialect::Msc4186,
            lists: lists
                .iter()
                .map(|&(name, range, limit)| {
                    let params = ListParams {
                        ranges: Some(vec![range]),
                        timeline_limit: Some(limit),
                        required_state: Some(vec![("*".into(), "*".into())]),
                        ..ListParams::default()
                    };
                    (name.to_owned(), params)
                })
                .collect(),
            room_subscriptions: subs
                .iter()
                .map(|&(room, limit)| {
                    let sub = RoomSubscription {
                        timeline_limit: limit,
                        ..RoomSubscription::default()
                    };
                    (room.into(), sub)
                })
                .collect(),
            ..SyncRequest::default()
        }
    }

    /// A step the way `Conns::sync` takes it: the orders the lists use are kept, and
    /// the response is finished for the dialect.
    fn full_step(conn: &mut Connection, store: &Store, req: Option<&SyncRequest>) -> SyncResponse {
        let user = store.user(ME).unwrap();
        store.use_orders(&user, &conn.orders(req)).unwrap();
        let mut resp = step(conn, store, req);
        conn.finish(&mut resp);
        resp
    }

    #[tokio::test]
    async fn msc4186_requests_replace_lists_and_subscriptions() {
        let store = store();
        joined_room(&store, "!a:x", 1, 100);
        joined_room(&store, "!b:x", 1, 200);
        let mut conn = Connection::new(Dialect::Msc4186);
        let both = simplified(&[("one", (0, 0), 1), ("two", (0, 9), 1)], &[("!a:x", 3)]);
        let first = full_step(&mut conn, &store, Some(&both));
        assert_eq!(first.lists.len(), 2);
        let only_one = simplified(&[("one", (0, 0), 1)], &[]);
        let second = full_step(&mut conn, &store, Some(&only_one));
        assert_eq!(second.lists.keys().collect::<Vec<_>>(), ["one"]);
        assert!(
            !conn.is_subscribed("!a:x"),
            "a subscription left out is dropped"
        );
        assert_eq!(conn.list_count(), 1);
    }

    #[tokio::test]
    async fn msc4186_lists_carry_their_windows_whole_in_every_response() {
        let store = store();
        joined_room(&store, "!a:x", 1, 100);
        joined_room(&store, "!b:x", 1, 200);
        let mut conn = Connection::new(Dialect::Msc4186);
        let req = simplified(&[("all_rooms", (0, 19), 1)], &[]);
        let whole = [Op::Sync {
            range: (0, 19),
            room_ids: vec!["!b:x".into(), "!a:x".into()],
        }];
        let first = full_step(&mut conn, &store, Some(&req));
        assert_eq!(first.lists["all_rooms"].ops, whole);
        let quiet = step(&mut conn, &store, Some(&req));
        assert!(!quiet.has_data(), "nothing new: the long-poll waits");
        let mut again = quiet;
        conn.finish(&mut again);
        assert_eq!(again.lists["all_rooms"].ops, whole);
        store.apply_room(delta(
            "!a:x",
            vec![],
            vec![event("m.room.message", None, ME, 300)],
        ));
        let moved = full_step(&mut conn, &store, Some(&req));
        assert_eq!(
            moved.lists["all_rooms"].ops,
            [Op::Sync {
                range: (0, 19),
                room_ids: vec!["!a:x".into(), "!b:x".into()],
            }]
        );
        assert!(moved.rooms["!a:x"].bump_stamp > first.rooms["!b:x"].bump_stamp);
    }

    /// Synapse's native endpoint keeps rooms the user was kicked from in the list, as
    /// they were at the kick; MSC3575 (as the Go proxy did) drops them.
    #[tokio::test]
    async fn a_kicked_room_stays_listed_as_it_was_at_the_kick_in_msc4186_only() {
        let store = store();
        joined_room(&store, "!kept:x", 1, 100);
        joined_room(&store, "!kicked:x", 2, 200);
        let before = event("m.room.message", None, "@o:x", 250);
        let before_json = before.json.clone();
        let kick = with_membership(
            event("m.room.member", Some(ME), "@mod:x", 300),
            Membership::Leave,
        );
        let kick_json = kick.json.clone();
        store.apply_room(delta("!kicked:x", vec![], vec![before, kick]));
        let mut rename = event("m.room.name", Some(""), "@o:x", 301);
        rename.text = Some("After the kick".into());
        let secret = event("m.room.message", None, "@o:x", 302);
        let secret_json = secret.json.clone();
        store.apply_room(delta("!kicked:x", vec![], vec![rename, secret]));

        let req = simplified(&[("all_rooms", (0, 19), 3)], &[]);
        let mut conn = Connection::new(Dialect::Msc4186);
        let resp = full_step(&mut conn, &store, Some(&req));
        assert_eq!(resp.lists["all_rooms"].count, 2);
        let kicked = &resp.rooms["!kicked:x"];
        assert!(kicked.initial);
        assert_eq!(kicked.timeline.last(), Some(&kick_json));
        assert!(kicked.timeline.contains(&before_json));
        assert!(!kicked.timeline.contains(&secret_json), "{kicked:?}");
        assert!(kicked.name.is_none(), "renamed after the kick: {kicked:?}");
        assert!(kicked
            .required_state
            .iter()
            .all(|ev| !String::from_utf8_lossy(ev).contains("After the kick")));
        let again = full_step(&mut conn, &store, Some(&req));
        assert!(!again.rooms.contains_key("!kicked:x"), "told once");

        let mut old = Connection::new(Dialect::Msc3575);
        let mut go_proxy = list(vec![(0, 19)], 3);
        go_proxy.dialect = Dialect::Msc3575;
        let resp = full_step(&mut old, &store, Some(&go_proxy));
        assert_eq!(resp.lists["all"].count, 1);
        assert!(!resp.rooms.contains_key("!kicked:x"));
    }

    #[tokio::test]
    async fn a_room_left_by_the_user_is_not_kept_in_msc4186_lists() {
        let store = store();
        joined_room(&store, "!r:x", 1, 100);
        let req = simplified(&[("all_rooms", (0, 19), 1)], &[]);
        let mut conn = Connection::new(Dialect::Msc4186);
        full_step(&mut conn, &store, Some(&req));
        let leave = with_membership(event("m.room.member", Some(ME), ME, 300), Membership::Leave);
        let leave_json = leave.json.clone();
        store.apply_room(delta("!r:x", vec![], vec![leave]));
        let resp = full_step(&mut conn, &store, Some(&req));
        assert_eq!(resp.lists["all_rooms"].count, 0);
        assert_eq!(
            resp.rooms["!r:x"].timeline,
            [leave_json],
            "ends with the leave"
        );
    }

    #[tokio::test]
    async fn a_kick_of_a_room_on_screen_ends_its_timeline_and_keeps_it_listed() {
        let store = store();
        joined_room(&store, "!r:x", 1, 100);
        let req = simplified(&[("all_rooms", (0, 19), 1)], &[]);
        let mut conn = Connection::new(Dialect::Msc4186);
        full_step(&mut conn, &store, Some(&req));
        let kick = with_membership(
            event("m.room.member", Some(ME), "@mod:x", 300),
            Membership::Ban,
        );
        let kick_json = kick.json.clone();
        store.apply_room(delta("!r:x", vec![], vec![kick]));
        let resp = full_step(&mut conn, &store, Some(&req));
        assert_eq!(resp.lists["all_rooms"].count, 1);
        let room = &resp.rooms["!r:x"];
        assert!(!room.initial);
        assert_eq!(room.timeline, [kick_json]);
        store.apply_room(delta(
            "!r:x",
            vec![],
            vec![event("m.room.message", None, "@o:x", 400)],
        ));
        let resp = full_step(&mut conn, &store, Some(&req));
        assert!(!resp.rooms.contains_key("!r:x"), "{resp:?}");
    }

    #[tokio::test]
    async fn a_subscription_raising_the_timeline_limit_expands_the_timeline() {
        let store = store();
        joined_room(&store, "!a:x", 6, 100);
        let mut conn = Connection::new(Dialect::Msc4186);
        let list_only = simplified(&[("all_rooms", (0, 19), 1)], &[]);
        let first = full_step(&mut conn, &store, Some(&list_only));
        assert_eq!(first.rooms["!a:x"].timeline.len(), 1);
        assert!(!first.rooms["!a:x"].expanded_timeline);
        let subscribed = simplified(&[("all_rooms", (0, 19), 1)], &[("!a:x", 5)]);
        let resp = full_step(&mut conn, &store, Some(&subscribed));
        let room = &resp.rooms["!a:x"];
        assert!(room.expanded_timeline);
        assert!(!room.initial, "the client has the room already");
        assert_eq!(room.timeline.len(), 5);
        assert_eq!(room.timeline.last(), first.rooms["!a:x"].timeline.last());
    }

    #[tokio::test]
    async fn a_withdrawn_invite_is_not_a_kicked_room() {
        let store = store();
        invited_room(&store, "!r:x", "@mod:x");
        let withdrawn = with_membership(
            event("m.room.member", Some(ME), "@mod:x", 4),
            Membership::Leave,
        );
        store.apply_room(delta("!r:x", vec![], vec![withdrawn]));
        let req = simplified(&[("all_rooms", (0, 19), 5)], &[]);
        let mut conn = Connection::new(Dialect::Msc4186);
        let resp = full_step(&mut conn, &store, Some(&req));
        assert_eq!(resp.lists["all_rooms"].count, 0, "{resp:?}");
        assert!(resp.rooms.is_empty(), "{resp:?}");
    }

    /// A room joined in a sync's state block has no join in its timeline: the kick
    /// shows the room's name and state, and no history it cannot place after the join.
    #[tokio::test]
    async fn a_kick_from_a_room_joined_long_ago_shows_its_state_and_the_kick_alone() {
        let store = store();
        let user = store.user_or_insert(&ME.into());
        let mut named = event("m.room.name", Some(""), "@o:x", 2);
        named.text = Some("Old room".into());
        store.apply_room(delta(
            "!r:x",
            vec![
                event("m.room.create", Some(""), "@o:x", 1),
                named,
                event("m.room.member", Some(ME), ME, 3),
            ],
            vec![event("m.room.message", None, "@o:x", 4)],
        ));
        store.confirm_join(&user, &"!r:x".into());
        let kick = with_membership(
            event("m.room.member", Some(ME), "@o:x", 5),
            Membership::Leave,
        );
        let kick_json = kick.json.clone();
        store.apply_room(delta("!r:x", vec![], vec![kick]));
        let req = simplified(&[("all_rooms", (0, 19), 5)], &[]);
        let mut conn = Connection::new(Dialect::Msc4186);
        let resp = full_step(&mut conn, &store, Some(&req));
        let room = &resp.rooms["!r:x"];
        assert_eq!(room.name.as_deref(), Some("Old room"));
        assert_eq!(room.timeline, [kick_json]);
        assert!(room.limited);
        assert_eq!(
            room.required_state.len(),
            3,
            "create, name, the kick: {room:?}"
        );
    }

    #[tokio::test]
    async fn an_unnamed_kicked_room_gets_no_name_made_of_its_members() {
        let store = store();
        joined_room(&store, "!r:x", 1, 100);
        let kick = with_membership(
            event("m.room.member", Some(ME), "@o:x", 200),
            Membership::Leave,
        );
        store.apply_room(delta("!r:x", vec![], vec![kick]));
        let req = simplified(&[("all_rooms", (0, 19), 1)], &[]);
        let mut conn = Connection::new(Dialect::Msc4186);
        let resp = full_step(&mut conn, &store, Some(&req));
        assert!(resp.rooms["!r:x"].name.is_none(), "{resp:?}");
    }

    #[tokio::test]
    async fn a_subscription_shows_a_kicked_room_in_msc4186() {
        let store = store();
        joined_room(&store, "!r:x", 1, 100);
        let kick = with_membership(
            event("m.room.member", Some(ME), "@o:x", 200),
            Membership::Leave,
        );
        let kick_json = kick.json.clone();
        store.apply_room(delta("!r:x", vec![], vec![kick]));
        let mut conn = Connection::new(Dialect::Msc4186);
        let req = simplified(&[], &[("!r:x", 5)]);
        let resp = full_step(&mut conn, &store, Some(&req));
        assert_eq!(resp.rooms["!r:x"].timeline.last(), Some(&kick_json));
    }

    #[tokio::test]
    async fn msc4186_names_a_room_by_its_m_room_name_alone() {
        let store = store();
        joined_room(&store, "!unnamed:x", 1, 100);
        let mut named = event("m.room.name", Some(""), ME, 300);
        named.text = Some("Named".into());
        joined_room(&store, "!named:x", 1, 200);
        store.apply_room(delta("!named:x", vec![], vec![named]));
        let req = simplified(&[("all_rooms", (0, 19), 1)], &[]);
        let mut conn = Connection::new(Dialect::Msc4186);
        let resp = full_step(&mut conn, &store, Some(&req));
        assert_eq!(resp.rooms["!named:x"].name.as_deref(), Some("Named"));
        assert_eq!(resp.rooms["!unnamed:x"].name, None, "clients name it");
        let mut old = Connection::new(Dialect::Msc3575);
        let resp = full_step(&mut old, &store, Some(&list(vec![(0, 19)], 1)));
        assert_eq!(resp.rooms["!unnamed:x"].name.as_deref(), Some("Empty Room"));
    }

    /// Kicked and invited again between two requests: the client, which still holds
    /// the room as joined, gets the invite.
    #[tokio::test]
    async fn a_room_held_as_joined_that_is_now_an_invite_is_sent_as_one() {
        use crate::store::testing::with_membership;
        let store = store();
        let user = store.user_or_insert(&ME.into());
        joined_room(&store, "!r:x", 1, 100);
        let mut conn = Connection::default();
        let first = step(&mut conn, &store, Some(&list(vec![(0, 9)], 5)));
        assert!(first.rooms["!r:x"].invite_state.is_none());
        let kick = with_membership(
            event("m.room.member", Some(ME), "@mod:x", 200),
            Membership::Leave,
        );
        store.apply_room(delta("!r:x", vec![], vec![kick]));
        store.set_invite(
            &user,
            &"!r:x".into(),
            bytes::Bytes::from_static(b"[]"),
            Default::default(),
            300,
        );
        let resp = step(&mut conn, &store, None);
        let room = &resp.rooms["!r:x"];
        assert!(room.initial && room.invite_state.is_some(), "{resp:?}");
        assert!(
            room.timeline.is_empty(),
            "nothing of the room itself: {resp:?}"
        );
    }
}
