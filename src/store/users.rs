//! Per-user data: memberships, unread counts, the recency index, and the wake-up that
//! parked long-polls wait on.

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use imbl::{HashMap, Vector};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::account::AccountData;
use crate::event::{Event, InviteFacts};
use crate::rooms::bump::bump_ts;
use crate::rooms::filter::RoomFacts;
use crate::rooms::name::invite_name;
use crate::rooms::sort::{order_key, ListOrder, OrderKey, SortBy, SortIndex, SortInputs};
use crate::store::room::LatestByType;
use crate::types::{Position, RoomId, UserId};

/// Room changes remembered per user. A connection further behind than this rebuilds its
/// windows from the index instead of replaying the log.
const CHANGE_LOG: usize = 4096;

#[derive(Clone, Debug, PartialEq)]
pub enum UserMembership {
    /// Joined; timeline events after `since` are visible.
    Join { since: Position },
    /// Invited; only the stripped `invite_state` may be shown.
    Invite {
        position: Position,
        invite_state: Bytes,
        /// What `invite_state` says, read once.
        facts: Arc<InviteFacts>,
        ts: u64,
    },
    /// Left, kicked or banned; `event` is the leave event to end the stream with.
    Leave {
        position: Position,
        event: Option<Arc<Event>>,
    },
}

impl UserMembership {
    pub fn is_member(&self) -> bool {
        !matches!(self, UserMembership::Leave { .. })
    }

    /// The user was kicked or banned after joining: their leave was sent by someone
    /// else. The store keeps the event of such a leave only after a join, so a
    /// withdrawn invite or a ban before joining is not one.
    pub fn is_removed(&self) -> bool {
        matches!(self, UserMembership::Leave { event: Some(ev), .. }
            if ev.state_key.as_deref() != Some(&*ev.sender))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct UserRoom {
    pub membership: UserMembership,
    pub notification_count: u64,
    pub highlight_count: u64,
    /// Recency: the newest event's timestamp while joined, the invite's while invited.
    pub stamp: u64,
    /// The room was upgraded and the user is joined to its successor: it leaves every
    /// list, as in the Go proxy (a list's `include_old_rooms` still shows it).
    pub replaced: bool,
}

/// What the room orders and filters need of a room's snapshot, for one user.
#[derive(Default)]
pub struct RoomLooks {
    pub name: String,
    pub encrypted: bool,
    pub tombstoned: bool,
    pub room_type: Option<Box<str>>,
    /// The room's newest timeline event by type and the user's join's timestamp:
    /// recency for lists with `bump_event_types`. `None` for an invite, placed by the
    /// invite in every order.
    pub bumps: Option<(LatestByType, u64)>,
    /// Spaces whose `m.space.child` state lists the room (whether or not the user is
    /// in them: [`UserData`] checks that).
    pub parents: Vec<RoomId>,
}

/// One published version of a user's data. Persistent maps and shared chunks: a clone
/// is O(1) apart from the index's chunk pointers, so every change can publish a new
/// version instead of locking readers out.
#[derive(Clone, Default)]
pub struct UserData {
    pub rooms: HashMap<RoomId, UserRoom>,
    /// Joined and invited rooms, newest first: the rooms every list starts from.
    pub index: SortIndex,
    /// The other orders this user's lists use, each kept in step with `index`.
    orders: HashMap<ListOrder, SortIndex>,
    pub account: AccountData,
    version: u64,
    changes: Vector<(u64, RoomId)>,
    /// The log holds every room change after this version.
    log_start: u64,
}

impl UserData {
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Records that something about `room` changed for this user.
    pub fn touch(&mut self, room: &RoomId) {
        self.version += 1;
        self.changes.push_back((self.version, room.clone()));
        if self.changes.len() > CHANGE_LOG {
            if let Some((v, _)) = self.changes.pop_front() {
                self.log_start = v;
            }
        }
    }

    /// Records that something not about one room changed (global account data): a new
    /// version wakes the user's connections, and no room counts as changed.
    pub fn bump(&mut self) {
        self.version += 1;
    }

    /// Rooms changed after `version`, or `None` when the log no longer reaches back that
    /// far (the caller then treats every room as changed).
    pub fn changed_since(&self, version: u64) -> Option<Vec<RoomId>> {
        if version >= self.version {
            return Some(Vec::new());
        }
        if version < self.log_start {
            return None;
        }
        // Newest last: walk back only over the changes this caller has not seen.
        let mut rooms: Vec<RoomId> = self
            .changes
            .iter()
            .rev()
            .take_while(|(v, _)| *v > version)
            .map(|(_, r)| r.clone())
            .collect();
        rooms.sort_unstable();
        rooms.dedup();
        Some(rooms)
    }

    pub fn membership(&self, room: &str) -> Option<&UserMembership> {
        self.rooms.get(room).map(|r| &r.membership)
    }

    /// Whether the user is joined to the room.
    pub fn joined(&self, room: &str) -> bool {
        matches!(self.membership(room), Some(UserMembership::Join { .. }))
    }

    /// A DM for this user: listed in `m.direct`, or invited to as a DM.
    pub fn is_dm(&self, room: &str) -> bool {
        self.account.is_dm(room)
            || matches!(self.membership(room), Some(UserMembership::Invite { facts, .. }) if facts.is_direct)
    }

    /// Whether any of this user's lists filters by space.
    pub fn filters_spaces(&self) -> bool {
        self.orders.keys().any(|o| !o.filters.spaces.is_empty())
    }

    /// The rooms of `order`, in it; by recency while that order is not kept.
    pub fn order(&self, order: &ListOrder) -> &SortIndex {
        self.orders.get(order).unwrap_or(&self.index)
    }

    pub fn orders(&self) -> impl Iterator<Item = &ListOrder> + '_ {
        self.orders.keys()
    }

    /// The inputs of the room's keys; `looks` is asked only when an order needs it.
    fn inputs(&self, room: &str, looks: Option<&RoomLooks>) -> Option<SortInputs> {
        let r = self.rooms.get(room)?;
        Some(SortInputs {
            stamp: r.stamp,
            name: looks.map(|l| l.name.clone()).unwrap_or_default(),
            encrypted: looks.is_some_and(|l| l.encrypted),
            notification_count: r.notification_count,
            highlight_count: r.highlight_count,
        })
    }

    /// What the orders may know of the room: an invitee may see only the invite's
    /// stripped state, never the room's own name or state, so an invite is placed by
    /// what its stripped state says (filtering or sorting by the room's real name would
    /// tell an invitee what the room is called now).
    ///
    /// A room the user was removed from keeps its type and encryption, which do not
    /// change, but not its name, which may have changed since.
    fn looks_for(&self, room: &str, looks: impl FnOnce() -> RoomLooks) -> RoomLooks {
        match self.membership(room) {
            Some(UserMembership::Invite { facts, .. }) => RoomLooks {
                name: invite_name(facts).name,
                encrypted: facts.encrypted,
                tombstoned: false,
                room_type: facts.room_type.clone(),
                bumps: None,
                parents: Vec::new(),
            },
            // Nothing that changed after the removal: placed by the removal itself
            // (`bumps: None` falls back to its stamp), in no space.
            Some(m) if m.is_removed() => RoomLooks {
                name: String::new(),
                bumps: None,
                parents: Vec::new(),
                ..looks()
            },
            _ => looks(),
        }
    }

    /// Whether the room belongs in `order`, and where.
    fn place_in(
        &self,
        order: &ListOrder,
        room: &str,
        inputs: &SortInputs,
        looks: Option<&RoomLooks>,
    ) -> Option<OrderKey> {
        if !order.filters.is_empty() {
            let looks = looks?;
            // Only spaces the user is joined to count: a space's children must not tell
            // anyone else what the space holds.
            let parents: Vec<RoomId> = looks
                .parents
                .iter()
                .filter(|s| matches!(self.membership(s), Some(UserMembership::Join { .. })))
                .cloned()
                .collect();
            let facts = RoomFacts {
                name: &looks.name,
                encrypted: looks.encrypted,
                tombstoned: looks.tombstoned,
                room_type: looks.room_type.as_deref(),
                invite: matches!(self.membership(room), Some(UserMembership::Invite { .. })),
                dm: self.is_dm(room),
                tags: self.account.tags(room),
                parents: &parents,
            };
            if !order.filters.matches(&facts) {
                return None;
            }
        }
        if let (Some(types), Some((latest, join_ts))) =
            (&order.bump, looks.and_then(|l| l.bumps.as_ref()))
        {
            let stamp = bump_ts(latest, *join_ts, types.iter().map(|t| &**t));
            let inputs = SortInputs {
                stamp,
                ..inputs.clone()
            };
            return Some(order_key(&order.sort, &inputs));
        }
        Some(order_key(&order.sort, inputs))
    }

    /// Puts the room where it belongs in every order, or takes it out of them when the
    /// user is no longer in it. `looks` is called only if an order other than recency is
    /// kept, so the common case computes no name.
    ///
    /// A room the user was removed from stays only in the orders that keep such rooms.
    pub fn place(&mut self, room: &RoomId, looks: impl FnOnce() -> RoomLooks) {
        let listed = self
            .rooms
            .get(room)
            .is_some_and(|r| r.membership.is_member() && !r.replaced);
        let removed = self
            .membership(room)
            .is_some_and(UserMembership::is_removed);
        let keeps_removed = removed && self.orders.keys().any(|o| o.keep_removed);
        if !listed && !keeps_removed {
            self.index.remove(room);
            for (_, index) in self.orders.iter_mut() {
                index.remove(room);
            }
            return;
        }
        let looks = (!self.orders.is_empty()).then(|| self.looks_for(room, looks));
        let Some(inputs) = self.inputs(room, looks.as_ref()) else {
            return;
        };
        if listed {
            self.index
                .upsert(room, order_key(&[SortBy::Recency], &inputs));
        } else {
            self.index.remove(room);
        }
        let places: Vec<(ListOrder, Option<OrderKey>)> = self
            .orders
            .keys()
            .map(|order| {
                let place = (listed || order.keep_removed)
                    .then(|| self.place_in(order, room, &inputs, looks.as_ref()))
                    .flatten();
                (order.clone(), place)
            })
            .collect();
        for (order, place) in places {
            if let Some(index) = self.orders.get_mut(&order) {
                match place {
                    Some(key) => index.upsert(room, key),
                    None => {
                        index.remove(room);
                    }
                }
            }
        }
    }

    /// Starts keeping the order `index`, built from this version's rooms.
    pub fn add_order(&mut self, order: ListOrder, index: SortIndex) {
        self.orders.insert(order, index);
    }

    pub fn drop_order(&mut self, order: &ListOrder) {
        self.orders.remove(order);
    }

    /// An order built from scratch over this version's rooms.
    pub fn build_order(
        &self,
        order: &ListOrder,
        looks: impl Fn(&RoomId) -> RoomLooks,
    ) -> SortIndex {
        let mut index = SortIndex::default();
        let removed = order
            .keep_removed
            .then(|| self.rooms.iter())
            .into_iter()
            .flatten()
            .filter(|(_, r)| r.membership.is_removed())
            .map(|(room, _)| room);
        for room in self.index.iter().chain(removed) {
            let looks = order
                .needs_room()
                .then(|| self.looks_for(room, || looks(room)));
            let Some(inputs) = self.inputs(room, looks.as_ref()) else {
                continue;
            };
            if let Some(key) = self.place_in(order, room, &inputs, looks.as_ref()) {
                index.upsert(room, key);
            }
        }
        index
    }
}

pub struct UserState {
    pub user_id: UserId,
    /// The current version, swapped whole by writers. Readers (connections building a
    /// response, for as long as that takes) hold an `Arc` of one version and never block
    /// a writer, nor wait for one.
    data: ArcSwap<UserData>,
    /// Serializes writers, so no change is lost between a clone and its publication.
    /// Held while one change is applied to a clone, never across `.await`.
    write: Mutex<()>,
    /// The data version, published after every change. A `watch` rather than a queue per
    /// connection: a slow connection cannot overflow anything, it reads the newest state
    /// when it wakes.
    wake: watch::Sender<u64>,
    /// Set once a device of this user has finished its first poll: from then on the
    /// user's rooms are known and new devices need not wait for their own poller.
    ready: watch::Sender<bool>,
    /// When a connection last used each order in `UserData::orders`: one unused for a
    /// while is dropped, so only orders in use are kept up to date.
    orders_used: Mutex<std::collections::HashMap<ListOrder, std::time::Instant>>,
    /// Requests waiting for this user's first poll (see [`UserState::wait_slot`]).
    waiting: std::sync::atomic::AtomicUsize,
}

/// A request's place among those waiting for a user's first poll; given back on drop.
pub struct WaitSlot<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl UserState {
    pub fn new(user_id: UserId) -> Self {
        Self {
            user_id,
            data: ArcSwap::from_pointee(UserData::default()),
            write: Mutex::new(()),
            wake: watch::channel(0).0,
            ready: watch::channel(false).0,
            orders_used: Mutex::default(),
            waiting: Default::default(),
        }
    }

    /// The current version; it stays as it is however long the caller keeps it.
    pub fn read(&self) -> Arc<UserData> {
        self.data.load_full()
    }

    /// Applies a change to a copy, publishes it, and wakes the user's connections if
    /// the change touched a room.
    pub fn update<R>(&self, f: impl FnOnce(&mut UserData) -> R) -> R {
        let (out, before, after) = {
            let _writer = self.write.lock();
            let mut data = UserData::clone(&self.data.load());
            let before = data.version;
            let out = f(&mut data);
            let after = data.version;
            self.data.store(Arc::new(data));
            (out, before, after)
        };
        if after != before {
            self.wake.send_replace(after);
        }
        out
    }

    /// Subscribe before reading state: a change between the read and the wait is then
    /// still seen as a version bump.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub fn set_ready(&self) {
        self.ready.send_replace(true);
    }

    pub fn ready_signal(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// A place among the requests waiting for this user's first poll, if fewer than
    /// `max` wait: each holds a parsed request for as long as a first sync takes, so a
    /// client looping on its first request cannot pile them up.
    pub fn wait_slot(&self, max: usize) -> Option<WaitSlot<'_>> {
        use std::sync::atomic::Ordering;
        let taken = self
            .waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            });
        taken.is_ok().then(|| WaitSlot(&self.waiting))
    }

    /// Notes that a connection uses these orders now; false, noting nothing, if the
    /// user would then keep more than `max` (each is an index of all the user's rooms).
    pub fn use_orders(&self, orders: &[ListOrder], max: usize) -> bool {
        let now = std::time::Instant::now();
        let mut used = self.orders_used.lock();
        let new = orders.iter().filter(|o| !used.contains_key(*o)).count();
        if used.len() + new > max {
            return false;
        }
        for order in orders {
            used.insert(order.clone(), now);
        }
        true
    }

    /// Drops the orders no connection used for `idle`. Deciding and dropping happen
    /// under the user's writer lock with the record of use held, so a request that
    /// uses an order meanwhile either keeps it or finds it gone and builds it again.
    pub fn drop_unused_orders(&self, idle: std::time::Duration) {
        self.update(|d| {
            let mut used = self.orders_used.lock();
            let stale: Vec<ListOrder> = used
                .iter()
                .filter(|(_, at)| at.elapsed() >= idle)
                .map(|(order, _)| order.clone())
                .collect();
            for order in &stale {
                used.remove(order);
                d.drop_order(order);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_log_reports_rooms_once_and_gives_up_when_truncated() {
        let mut d = UserData::default();
        let a: RoomId = "!a".into();
        let b: RoomId = "!b".into();
        d.touch(&a);
        d.touch(&b);
        d.touch(&a);
        assert_eq!(d.changed_since(0), Some(vec![a.clone(), b.clone()]));
        assert_eq!(d.changed_since(2), Some(vec![a.clone()]));
        assert_eq!(d.changed_since(3), Some(vec![]));
        for _ in 0..CHANGE_LOG + 1 {
            d.touch(&a);
        }
        assert_eq!(d.changed_since(1), None);
    }

    #[test]
    fn only_so_many_requests_wait_for_a_first_poll() {
        let user = UserState::new("@a:x".into());
        let slots: Vec<_> = (0..3).filter_map(|_| user.wait_slot(2)).collect();
        assert_eq!(slots.len(), 2);
        drop(slots);
        assert!(
            user.wait_slot(2).is_some(),
            "a slot comes back when its request ends"
        );
    }
}
