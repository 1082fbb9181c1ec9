//! One connection's state and the pure step that turns (sticky request, current store)
//! into a response. No I/O and no locks: the caller hands in a read view of the user's
//! data and a way to fetch room snapshots.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::request::{
    Hero, ListParams, ListResult, Op, Range, RoomResult, RoomSubscription, SyncRequest,
    SyncResponse,
};
use super::required_state;
use super::window;
use crate::rooms::bump::bump_ts;
use crate::rooms::name::{
    avatar, display_name, heroes_for, invite_avatar, invite_heroes, invite_name,
};
use crate::rooms::sort::{BumpTypes, ListOrder};
use crate::store::room::{RoomSnapshot, TIMELINE_RING};
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
    joined: u32,
    invited: u32,
    unread: (u64, u64),
}

#[derive(Default)]
pub struct Connection {
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
            match (&params.ranges, self.lists.get(name)) {
                (Some(ranges), _) => held(ranges),
                (None, Some(list)) => held(&list.ranges),
                (None, None) => 0,
            }
        });
        let kept = self
            .lists
            .iter()
            .filter(|(name, _)| !req.is_some_and(|r| r.lists.contains_key(*name)))
            .map(|(_, list)| held(&list.ranges));
        requested.chain(kept).fold(0, usize::saturating_add)
    }

    /// The orders this connection's lists use once `req` is applied.
    pub fn orders(&self, req: Option<&SyncRequest>) -> Vec<ListOrder> {
        let mut orders: Vec<ListOrder> = Vec::new();
        let requested = req.iter().flat_map(|r| &r.lists).map(|(name, params)| {
            let mut order = self
                .lists
                .get(name)
                .map(|l| l.order.clone())
                .unwrap_or_default();
            apply_order(&mut order, params);
            order
        });
        let kept = self
            .lists
            .iter()
            .filter(|(name, _)| !req.is_some_and(|r| r.lists.contains_key(*name)))
            .map(|(_, l)| l.order.clone());
        for order in requested.chain(kept) {
            if !orders.contains(&order) {
                orders.push(order);
            }
        }
        orders
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
        for (name, params) in req.iter().flat_map(|r| &r.lists) {
            let list = self.lists.entry(name.clone()).or_default();
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
    /// only while the user is joined or invited: it never shows another room, and a room
    /// the user left then gets its farewell like one leaving a window.
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
        let subscribed = self
            .subscriptions
            .iter()
            .filter(|(room, _)| data.membership(room).is_some_and(UserMembership::is_member))
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
                        (view.room)(room_id).map(|room| RoomResult {
                            required_state: required_state::resolve(
                                &params.required_state,
                                &room.state,
                                view.user_id,
                            ),
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
                        ..
                    }),
                    None,
                ) => {
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
                            joined: 1,
                            invited: 1,
                            unread: (0, 0),
                        },
                    );
                    Some(RoomResult {
                        initial: true,
                        name: Some(name.name),
                        heroes,
                        avatar: Some(invite_avatar(facts)),
                        invite_state: Some(invite_state.clone()),
                        timestamp: Some(*ts).filter(|ts| *ts > 0),
                        joined_count: Some(1),
                        invited_count: Some(1),
                        ..RoomResult::default()
                    })
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
            let mut timeline: Vec<_> = (view.room)(&room_id)
                .map(|room| {
                    room.timeline_between(
                        sent.position,
                        ev.position,
                        (sent.since, 0),
                        TIMELINE_RING,
                    )
                    .0
                })
                .unwrap_or_default()
                .into_iter()
                .map(|e| e.json.clone())
                .collect();
            timeline.push(ev.json.clone());
            resp.rooms.insert(
                room_id,
                RoomResult {
                    num_live: timeline.len(),
                    timeline,
                    ..RoomResult::default()
                },
            );
        }
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
        let (timeline, gap) =
            room.timeline_between(since.saturating_sub(1), Position::MAX, (since, 0), limit);
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
            .iter()
            .find_map(|e| e.prev_batch.as_deref().map(str::to_owned));
        let fields = RoomFields::of(&room, params, view);
        let unread = unread(view.data, room_id);
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
                joined: room.meta.joined_count,
                invited: room.meta.invited_count,
                unread,
            },
        );
        Some(RoomResult {
            initial: true,
            name: Some(fields.name),
            heroes: fields.heroes,
            avatar: Some(fields.avatar),
            required_state: required_state::resolve(
                &params.required_state,
                &room.state,
                view.user_id,
            ),
            // A room that enters a window because of new events says which are new.
            num_live: horizon.map_or(0, |h| timeline.iter().filter(|e| e.position > h).count()),
            timeline: timeline.iter().map(|e| e.json.clone()).collect(),
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
        let sent = self.sent.get_mut(room_id)?;
        let after = sent.position.max(since.saturating_sub(1));
        let (timeline, gap) =
            room.timeline_between(after, Position::MAX, (since, 0), TIMELINE_RING);
        let mut out = RoomResult {
            num_live: timeline.len(),
            limited: gap,
            timeline: timeline.iter().map(|e| e.json.clone()).collect(),
            ..RoomResult::default()
        };
        let fields = RoomFields::of(&room, params, view);
        if fields.timestamp != sent.timestamp {
            out.timestamp = Some(fields.timestamp);
            sent.timestamp = fields.timestamp;
        }
        if fields.name != sent.name {
            out.name = Some(fields.name.clone());
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
            && out.name.is_none()
            && out.heroes.is_none()
            && out.avatar.is_none()
            && out.timestamp.is_none()
            && out.joined_count.is_none()
            && out.invited_count.is_none()
            && out.notification_count.is_none();
        (!empty).then_some(out)
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
    fn of(room: &RoomSnapshot, params: &RoomParams, view: &View<'_>) -> Self {
        let name = display_name(&room.meta, view.user_id);
        // Heroes go with a name made from them, as in the Go proxy.
        let heroes = (params.include_heroes && name.calculated).then(|| {
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
            name: name.name,
            heroes,
            avatar: avatar(&room.meta, view.user_id, view.data.is_dm(&room.room_id)),
            timestamp,
        }
    }
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
        let user = store.user_or_insert(&ME.into());
        store.apply_room(delta(
            "!r:x",
            vec![],
            vec![
                event("m.room.create", Some(""), "@other:x", 1),
                event("m.room.name", Some(""), "@other:x", 2),
                event("m.room.message", None, "@other:x", 3),
            ],
        ));
        store.set_invite(
            &user,
            &"!r:x".into(),
            bytes::Bytes::from_static(b"[]"),
            Default::default(),
            4,
        );
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
}
