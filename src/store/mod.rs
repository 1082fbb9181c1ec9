//! The hot state, and the only owner of it.
//!
//! - [`room`]: each room is an `Arc<RoomSnapshot>` in a sharded map; readers clone the
//!   `Arc` and read in place, writers build the next version and swap it.
//! - [`users`]: memberships, unread counts and the recency index per user, plus the
//!   wake-up connections park on.
//! - [`writer`]: everything durable goes behind, in batches, through a bounded queue to a
//!   [`persist::Persist`] (Postgres in production), and is read back once at startup.

pub mod event;
pub mod persist;
pub mod pg;
pub mod room;
pub mod sessions;
pub mod state;
#[cfg(test)]
pub mod testing;
pub mod tokens;
pub mod users;
pub mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;

use self::event::{Event, Membership};
use self::persist::{MembershipKind, Persist, PersistError, Write};
use self::room::{RoomSlot, RoomSnapshot, TIMELINE_RING};
use self::state::{RoomState, StateBase};
use self::users::{UserMembership, UserRoom, UserState};
use self::writer::WriteQueue;
use crate::types::{Position, RoomId, UserId};
use crate::upstream::wire;

pub struct Store {
    /// `DashMap`: sharded locks, so pollers writing different rooms rarely contend and
    /// readers only hold a shard for an `Arc` clone. Ordering is per room (the shard lock
    /// serializes writers of one room); there is no global writer.
    rooms: DashMap<RoomId, RoomSlot>,
    users: DashMap<UserId, Arc<UserState>>,
    next_position: AtomicU64,
    queue: WriteQueue,
}

/// One room's new events from one v2 response.
pub struct RoomDelta {
    pub room_id: RoomId,
    /// The v2 `state` block: state before the timeline.
    pub state: Vec<Event>,
    pub timeline: Vec<Event>,
    /// The timeline's `prev_batch` token.
    pub prev_batch: Option<String>,
    /// The homeserver's `limited`: events before this timeline were left out.
    pub limited: bool,
}

impl Store {
    pub fn new(queue: WriteQueue, next_position: Position) -> Self {
        Self {
            rooms: DashMap::new(),
            users: DashMap::new(),
            next_position: AtomicU64::new(next_position.max(1)),
            queue,
        }
    }

    pub fn queue(&self) -> &WriteQueue {
        &self.queue
    }

    pub fn room(&self, id: &str) -> Option<Arc<RoomSnapshot>> {
        self.rooms.get(id).map(|slot| Arc::clone(&slot.snapshot))
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    pub fn user(&self, id: &str) -> Option<Arc<UserState>> {
        self.users.get(id).map(|u| Arc::clone(&u))
    }

    pub fn user_or_insert(&self, id: &UserId) -> Arc<UserState> {
        Arc::clone(
            &self
                .users
                .entry(id.clone())
                .or_insert_with(|| Arc::new(UserState::new(id.clone()))),
        )
    }

    fn position(&self) -> Position {
        self.next_position.fetch_add(1, Ordering::Relaxed)
    }

    /// Applies one room's new events: drops the ones already seen (many pollers deliver
    /// the same room), gives the rest positions, updates state and timeline, then updates
    /// the memberships of this proxy's users and wakes those in the room.
    pub fn apply_room(&self, delta: RoomDelta) {
        let room_id = delta.room_id;
        let (members, locals, latest_ts) = {
            let mut slot = self
                .rooms
                .entry(room_id.clone())
                .or_insert_with(|| RoomSlot::new(room_id.clone()));
            let slot = &mut *slot;
            let mut applying = Applying {
                store: self,
                room_id: &room_id,
                next: (*slot.snapshot).clone(),
                seen: &mut slot.seen,
                writes: Vec::new(),
                members: Vec::new(),
                new_timeline: false,
            };
            applying.state_block(delta.state);
            applying.timeline(delta.timeline, delta.prev_batch, delta.limited);
            applying.fold_if_due();
            let Applying {
                next,
                writes,
                members,
                new_timeline,
                ..
            } = applying;
            let latest_ts = next.meta.latest_ts;
            slot.snapshot = Arc::new(next);
            // Queued while the room is still locked: see `writer` on why order matters.
            self.queue.push(writes);
            let locals: Vec<UserId> = if new_timeline {
                slot.locals.iter().cloned().collect()
            } else {
                Vec::new()
            };
            (members, locals, latest_ts)
        };
        for ev in members {
            let Some(user) = ev.state_key.as_deref().and_then(|u| self.user(u)) else {
                continue;
            };
            self.on_member_event(&user, &room_id, &ev);
        }
        for user_id in locals {
            if let Some(user) = self.user(&user_id) {
                user.update(|d| {
                    if let Some(UserRoom {
                        membership: UserMembership::Join { .. },
                        ..
                    }) = d.rooms.get(&room_id)
                    {
                        d.index.upsert(&room_id, latest_ts);
                        d.touch(&room_id);
                    }
                });
            }
        }
    }

    /// A member event about one of our users, from whichever poller saw it first: the
    /// room's event order decides membership, so a lagging poller cannot undo a leave.
    fn on_member_event(&self, user: &UserState, room_id: &RoomId, ev: &Arc<Event>) {
        match ev.membership {
            Some(Membership::Join) => {
                let joined = matches!(
                    user.read().membership(room_id),
                    Some(UserMembership::Join { .. })
                );
                if !joined {
                    self.set_membership(user, room_id, UserMembership::Join { since: ev.position });
                }
            }
            Some(Membership::Leave | Membership::Ban) => {
                // Only a user who was in the room hears of leaving it: a ban of someone
                // who never joined (pre-emptive) is not theirs to see.
                let was_member = user
                    .read()
                    .membership(room_id)
                    .is_some_and(UserMembership::is_member);
                if was_member {
                    let leave = UserMembership::Leave {
                        position: ev.position,
                        event: Some(Arc::clone(ev)),
                    };
                    self.set_membership(user, room_id, leave);
                }
            }
            // Invites come with their stripped state from the invitee's own poller.
            _ => {}
        }
    }

    /// The user's own poller lists the room under `join`: after its events were applied,
    /// the room's state has the user's join event (or the room predates our knowledge).
    pub fn confirm_join(&self, user: &UserState, room_id: &RoomId) {
        if matches!(
            user.read().membership(room_id),
            Some(UserMembership::Join { .. })
        ) {
            return;
        }
        let since = match self.room(room_id) {
            Some(room) => match room.state.get("m.room.member", &user.user_id) {
                Some(m) if m.membership() == Some(Membership::Join) => m.position(),
                Some(_) => return,
                None => room.meta.latest_position,
            },
            None => return,
        };
        self.set_membership(user, room_id, UserMembership::Join { since });
    }

    /// The user's own poller lists the room under `invite`.
    pub fn set_invite(&self, user: &UserState, room_id: &RoomId, invite_state: Bytes, ts: u64) {
        let joined = self
            .room(room_id)
            .and_then(|r| r.membership_of(&user.user_id))
            == Some(Membership::Join);
        let already = matches!(user.read().membership(room_id), Some(UserMembership::Invite { invite_state: s, .. }) if *s == invite_state);
        if !joined && !already {
            let position = self.position();
            let invite = UserMembership::Invite {
                position,
                invite_state,
                ts,
            };
            self.set_membership(user, room_id, invite);
        }
    }

    /// The user's own poller lists the room under `leave` (including rejected invites,
    /// which have no room state here).
    pub fn set_left(&self, user: &UserState, room_id: &RoomId, event: Option<Arc<Event>>) {
        if user
            .read()
            .membership(room_id)
            .is_some_and(UserMembership::is_member)
        {
            let position = event
                .as_ref()
                .map_or_else(|| self.position(), |e| e.position);
            self.set_membership(user, room_id, UserMembership::Leave { position, event });
        }
    }

    pub fn set_unread(
        &self,
        user: &UserState,
        room_id: &RoomId,
        notification: u64,
        highlight: u64,
    ) {
        if Self::apply_unread(user, room_id, notification, highlight) {
            self.queue.push([Write::Unread {
                user_id: user.user_id.clone(),
                room_id: room_id.clone(),
                notification_count: notification,
                highlight_count: highlight,
            }]);
        }
    }

    /// Sets the counts in memory; returns whether they changed.
    fn apply_unread(user: &UserState, room_id: &RoomId, notification: u64, highlight: u64) -> bool {
        user.update(|d| match d.rooms.get_mut(room_id) {
            Some(r) if (r.notification_count, r.highlight_count) != (notification, highlight) => {
                r.notification_count = notification;
                r.highlight_count = highlight;
                d.touch(room_id);
                true
            }
            _ => false,
        })
    }

    fn set_membership(&self, user: &UserState, room_id: &RoomId, membership: UserMembership) {
        let (kind, position, invite_state) = match &membership {
            UserMembership::Join { since } => (MembershipKind::Join, *since, None),
            UserMembership::Invite {
                position,
                invite_state,
                ..
            } => (
                MembershipKind::Invite,
                *position,
                Some(invite_state.clone()),
            ),
            UserMembership::Leave { position, .. } => (MembershipKind::Leave, *position, None),
        };
        self.queue.push([Write::Membership {
            user_id: user.user_id.clone(),
            room_id: room_id.clone(),
            kind,
            position,
            invite_state,
        }]);
        self.install_membership(user, room_id, membership);
    }

    /// Puts a membership into the user's data, index and the room's local-user set.
    fn install_membership(&self, user: &UserState, room_id: &RoomId, membership: UserMembership) {
        let stamp = match &membership {
            UserMembership::Join { .. } => Some(self.room(room_id).map_or(0, |r| r.meta.latest_ts)),
            UserMembership::Invite { ts, .. } => Some(*ts),
            UserMembership::Leave { .. } => None,
        };
        {
            let mut slot = self
                .rooms
                .entry(room_id.clone())
                .or_insert_with(|| RoomSlot::new(room_id.clone()));
            if stamp.is_some() {
                slot.locals.insert(user.user_id.clone());
            } else {
                slot.locals.remove(&user.user_id);
            }
        }
        user.update(|d| {
            match stamp {
                Some(stamp) => d.index.upsert(room_id, stamp),
                None => {
                    d.index.remove(room_id);
                }
            }
            let entry = d.rooms.entry(room_id.clone()).or_insert(UserRoom {
                membership: membership.clone(),
                notification_count: 0,
                highlight_count: 0,
            });
            entry.membership = membership;
            d.touch(room_id);
        });
    }

    /// Rebuilds the hot state from storage. Snapshots load without parsing; only the
    /// state events after a room's snapshot and its newest timeline events are parsed.
    pub async fn load(persist: &dyn Persist, queue: WriteQueue) -> Result<Store, PersistError> {
        let mut next_position = persist.max_position().await? + 1;
        let store = Store::new(queue, next_position);
        let rooms = persist
            .load_rooms(TIMELINE_RING, &|n| {
                tracing::info!(rooms = n, "rebuilding rooms")
            })
            .await?;
        let total = rooms.len();
        for (room_id, loaded) in rooms {
            let mut slot = RoomSlot::new(room_id.clone());
            let mut snap = RoomSnapshot::new(room_id.clone());
            if let Some((position, bytes)) = loaded.snapshot {
                let base = StateBase::from_stored(&bytes)
                    .map_err(|e| PersistError::Corrupt(format!("snapshot of {room_id}: {e}")))?;
                snap.state = RoomState::from_base(base, position);
            }
            let parse = |stored: &persist::StoredEvent| match wire::parse_event(&stored.json) {
                Ok(mut ev) => {
                    ev.position = stored.position;
                    ev.prev_batch = stored.prev_batch.clone();
                    ev.gap_before = stored.gap_before;
                    Some(Arc::new(ev))
                }
                Err(e) => {
                    tracing::warn!(room = %room_id, position = stored.position, error = %e, "skipping unreadable stored event");
                    None
                }
            };
            for stored in &loaded.state_after_snapshot {
                if let Some(ev) = parse(stored) {
                    slot.seen.insert(&ev.event_id);
                    snap.state.set(ev);
                }
            }
            for stored in &loaded.timeline {
                if let Some(ev) = parse(stored) {
                    slot.seen.insert(&ev.event_id);
                    snap.push_timeline(ev);
                }
            }
            next_position = next_position.max(snap.state.base_position() + 1);
            snap.recompute_meta();
            slot.snapshot = Arc::new(snap);
            store.rooms.insert(room_id, slot);
        }
        let memberships = persist.load_memberships().await?;
        let users = memberships.len();
        for m in memberships {
            let user = store.user_or_insert(&m.user_id);
            let membership = match m.kind {
                MembershipKind::Join => UserMembership::Join { since: m.position },
                MembershipKind::Invite => {
                    let invite_state = m.invite_state.unwrap_or_default();
                    let ts = wire::invite_ts(&invite_state, &m.user_id).unwrap_or(0);
                    UserMembership::Invite {
                        position: m.position,
                        invite_state,
                        ts,
                    }
                }
                MembershipKind::Leave => UserMembership::Leave {
                    position: m.position,
                    event: None,
                },
            };
            next_position = next_position.max(m.position + 1);
            store.install_membership(&user, &m.room_id, membership);
            user.set_ready();
        }
        // Invites and snapshots take positions too; none may be handed out again.
        store
            .next_position
            .fetch_max(next_position, Ordering::Relaxed);
        for u in persist.load_unread().await? {
            if let Some(user) = store.user(&u.user_id) {
                Self::apply_unread(&user, &u.room_id, u.notification_count, u.highlight_count);
            }
        }
        tracing::info!(rooms = total, memberships = users, "hot state rebuilt");
        Ok(store)
    }
}

/// One room being updated under its lock: the next snapshot and what to do after.
struct Applying<'a> {
    store: &'a Store,
    room_id: &'a RoomId,
    next: RoomSnapshot,
    seen: &'a mut room::SeenIds,
    writes: Vec<Write>,
    /// Member events applied, for our users' memberships once the lock is released.
    members: Vec<Arc<Event>>,
    new_timeline: bool,
}

impl Applying<'_> {
    /// A v2 `state` block: state from before the timeline.
    fn state_block(&mut self, events: Vec<Event>) {
        for ev in events {
            let current = ev.state_key.as_deref().and_then(|k| {
                self.next
                    .state
                    .get(&ev.kind, k)
                    .map(|s| s.event_id() == &*ev.event_id)
            });
            if current == Some(true) || !self.seen.insert(&ev.event_id) || !ev.is_state() {
                continue;
            }
            let ev = self.accept(ev, false, true);
            if ev.membership.is_some() {
                self.members.push(Arc::clone(&ev));
            }
            self.next.set_state(ev);
        }
    }

    /// A timeline chunk. The events after the last one we know are new. Unknown ones
    /// before it are history backfilled into the homeserver, not live events, unless
    /// the known one is where we know a gap starts (it came first in a limited chunk,
    /// e.g. another user's one-event initial sync): then they are the missing events,
    /// and go in before it.
    fn timeline(&mut self, mut events: Vec<Event>, prev_batch: Option<String>, limited: bool) {
        let known = (events.len() > 1)
            .then(|| events.iter().rposition(|e| self.seen.contains(&e.event_id)))
            .flatten();
        let start = known.map_or(0, |i| i + 1);
        let after = events.split_off(start);
        let mut prev_batch = prev_batch.map(String::into_boxed_str);
        if let Some(anchor) = events.pop() {
            self.fill_gap(&anchor.event_id, events, limited, &mut prev_batch);
        }
        // Only a gap before events we did not know is a gap for our readers.
        let mut gap = limited && start == 0;
        for mut ev in after {
            if !self.seen.insert(&ev.event_id) {
                continue;
            }
            ev.prev_batch = prev_batch.take();
            ev.gap_before = std::mem::take(&mut gap);
            let state = ev.is_state();
            let ev = self.accept(ev, true, state);
            if ev.is_state() {
                if ev.membership.is_some() {
                    self.members.push(Arc::clone(&ev));
                }
                self.next.set_state(Arc::clone(&ev));
            }
            self.next.push_timeline(ev);
            self.new_timeline = true;
        }
    }

    /// Puts events the room was missing in front of `anchor`, when the timeline has a
    /// gap there. They are history by now: they go into the timeline (clients receive
    /// them, late rather than never) but not into the current state, which `anchor`
    /// already follows.
    fn fill_gap(
        &mut self,
        anchor: &str,
        before: Vec<Event>,
        limited: bool,
        prev_batch: &mut Option<Box<str>>,
    ) {
        let Some(at) = self
            .next
            .timeline
            .iter()
            .position(|e| &*e.event_id == anchor && e.gap_before)
        else {
            return;
        };
        let chunk_start = before.first().map(|e| e.event_id.clone());
        let missing: Vec<Event> = before
            .into_iter()
            .filter(|e| self.seen.insert(&e.event_id))
            .collect();
        let Some(first) = missing.first() else {
            return;
        };
        // The gap moves in front of the first filled event, or closes if the chunk
        // reached back to what came before it.
        let gap_remains = limited && chunk_start.as_deref() == Some(&*first.event_id);
        let mut closed = (*self.next.timeline[at]).clone();
        closed.gap_before = false;
        self.next.timeline.set(at, Arc::new(closed));
        for (i, mut ev) in missing.into_iter().enumerate() {
            ev.gap_before = i == 0 && gap_remains;
            ev.prev_batch = if i == 0 { prev_batch.take() } else { None };
            let ev = self.accept(ev, true, false);
            // Readers track "sent up to" by the highest position in the timeline.
            self.next.meta.latest_position = self.next.meta.latest_position.max(ev.position);
            self.next.timeline.insert(at + i, ev);
        }
        self.next.trim_timeline();
        self.new_timeline = true;
    }

    fn fold_if_due(&mut self) {
        if self.next.state.wants_fold() {
            let position = self.store.next_position.load(Ordering::Relaxed);
            self.next.state.fold(position);
            self.writes.push(Write::Snapshot {
                room_id: self.room_id.clone(),
                position,
                bytes: self.next.state.base().bytes(),
            });
        }
    }

    /// Gives the event its position and queues its row. `state` says whether startup
    /// replays it into the room's state.
    fn accept(&mut self, mut ev: Event, in_timeline: bool, state: bool) -> Arc<Event> {
        ev.position = self.store.position();
        self.writes.push(Write::Event(persist::StoredEvent {
            room_id: self.room_id.clone(),
            position: ev.position,
            event_id: ev.event_id.clone(),
            in_timeline,
            is_state: state,
            prev_batch: ev.prev_batch.clone(),
            gap_before: ev.gap_before,
            json: ev.json.clone(),
        }));
        Arc::new(ev)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{delta, event, store};
    use super::*;

    fn ids(store: &Store, room: &str) -> Vec<String> {
        store
            .room(room)
            .unwrap()
            .timeline
            .iter()
            .map(|e| e.event_id.to_string())
            .collect()
    }

    /// Another user's first poll (limit 1, limited) brings only the newest event; a
    /// poller that was already following the room then delivers the two before it too.
    #[tokio::test]
    async fn events_missing_before_a_known_gap_are_filled_in_order() {
        let store = store();
        let e1 = event("m.room.message", None, "@b:x", 1);
        let e2 = event("m.room.message", None, "@b:x", 2);
        let name = event("m.room.name", Some(""), "@b:x", 3);
        let e4 = event("m.room.message", None, "@b:x", 4);
        let mut first_poll = delta("!r:x", vec![], vec![e2.clone()]);
        first_poll.limited = true;
        store.apply_room(first_poll);
        assert!(store.room("!r:x").unwrap().timeline[0].gap_before);

        store.apply_room(delta(
            "!r:x",
            vec![],
            vec![e1.clone(), name.clone(), e2.clone(), e4.clone()],
        ));
        let room = store.room("!r:x").unwrap();
        assert_eq!(
            ids(&store, "!r:x"),
            [&e1.event_id, &name.event_id, &e2.event_id, &e4.event_id].map(|s| s.to_string())
        );
        assert!(
            room.timeline.iter().all(|e| !e.gap_before),
            "the gap is filled"
        );
        let highest = room.timeline.iter().map(|e| e.position).max().unwrap();
        assert_eq!(
            room.meta.latest_position, highest,
            "readers can say they sent it all"
        );
        assert!(
            room.state.get("m.room.name", "").is_none(),
            "history before the newest known event does not change current state"
        );
    }

    #[tokio::test]
    async fn unknown_events_before_a_known_event_without_a_gap_are_history() {
        let store = store();
        let e1 = event("m.room.message", None, "@b:x", 1);
        let e2 = event("m.room.message", None, "@b:x", 2);
        let e3 = event("m.room.message", None, "@b:x", 3);
        store.apply_room(delta("!r:x", vec![], vec![e2.clone()]));
        store.apply_room(delta("!r:x", vec![], vec![e1, e2.clone(), e3.clone()]));
        assert_eq!(
            ids(&store, "!r:x"),
            [e2.event_id.to_string(), e3.event_id.to_string()]
        );
    }
}
