//! The hot state, and the only owner of it.
//!
//! - [`room`]: each room is an `Arc<RoomSnapshot>` in a sharded map; readers clone the
//!   `Arc` and read in place, writers build the next version and swap it.
//! - [`users`]: memberships, unread counts and the recency index per user, plus the
//!   wake-up connections park on.
//! - [`writer`]: everything durable goes behind, in batches, through a bounded queue to a
//!   [`persist::Persist`] (Postgres or the embedded SQLite file), and is read back once at startup.

pub mod account;
pub mod devices;
pub mod ephemeral;
pub mod go;
pub mod metrics;
pub mod persist;
pub mod pg;
pub mod room;
mod rows;
pub mod secret;
pub mod sessions;
pub mod sqlite;
pub mod state;
#[cfg(test)]
pub mod testing;
pub mod tokens;
pub mod txn_ids;
pub mod users;
pub mod writer;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;

use self::ephemeral::RoomEphemeral;
use self::persist::{MembershipKind, Persist, PersistError, Write};
use self::room::{Room, RoomSnapshot, RoomWriter, TIMELINE_RING};
use self::state::{RoomState, StateBase};
use self::users::{RoomLooks, UserMembership, UserRoom, UserState};
use self::writer::WriteQueue;
use crate::event::{AccountEvent, Decoder, Event, InviteFacts, Membership, Receipt};
use crate::rooms::name::display_name;
use crate::rooms::sort::ListOrder;
use crate::types::{now_ms, DeviceKey, Position, RoomId, UserId};

/// Orders (sorts and filters) kept for one user besides recency: each indexes all of
/// the user's rooms and is updated with every change, so a client naming a new filter
/// in every list cannot make the proxy keep thousands.
pub const MAX_ORDERS: usize = 32;

/// How long ingest waits for one answer from storage on whether events are known.
const STORED_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Takes a room's writer lock from async code. Uncontended, it costs what `lock` costs;
/// when another writer holds it (possibly folding a big state archive), the wait runs in
/// `block_in_place` on a multi-threaded runtime, so this worker's other tasks (readers
/// among them) move to another thread instead of waiting with it.
fn blocking_lock(
    mutex: &parking_lot::Mutex<RoomWriter>,
) -> parking_lot::MutexGuard<'_, RoomWriter> {
    if let Some(guard) = mutex.try_lock() {
        return guard;
    }
    blocking(|| mutex.lock())
}

/// Runs work that may take long without yielding (a wait on a lock, a fold) so it does
/// not hold up the other tasks of this worker thread (see [`blocking_lock`]).
fn blocking<R>(work: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    // Only a task on a worker thread has other tasks to hand over; elsewhere (a
    // current-thread runtime, a plain thread) blocking is all there is.
    let on_worker = tokio::task::try_id().is_some()
        && Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if on_worker {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

pub struct Store {
    /// Room ID → room. A shard lock of the map is held only to clone an `Arc<Room>` or
    /// to insert a new room: ordering is per room, through the room's own writer lock,
    /// and readers load the room's snapshot pointer without any lock (see [`Room`]).
    rooms: DashMap<RoomId, Arc<Room>>,
    users: DashMap<UserId, Arc<UserState>>,
    /// Room → the spaces whose `m.space.child` state lists it (with a `via`), for the
    /// `spaces` filter. Written under the space's writer lock; a shard lock is held only
    /// to read or change one entry.
    space_parents: DashMap<RoomId, Vec<RoomId>>,
    /// Devices' to-device queues, key data and device-list changes.
    devices: DashMap<DeviceKey, Arc<devices::DeviceState>>,
    next_position: AtomicU64,
    /// The next to-device position: above every one stored or acknowledged, so a
    /// client's `since` never names a message it has not seen.
    next_to_device: AtomicU64,
    queue: WriteQueue,
    pub txn_ids: txn_ids::TxnIds,
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
    /// Events of this delta the room applied long ago and no longer remembers in memory:
    /// found in storage by [`Store::stored_copies`].
    pub stored: HashSet<Box<str>>,
    /// (event ID, redacted JSON) for the events this delta's redactions target, made by
    /// ingest (the store does not read JSON); applied with the redaction, if it is new.
    pub redacted: Vec<(Box<str>, Bytes)>,
}

impl Store {
    pub fn new(queue: WriteQueue, next_position: Position) -> Self {
        Self {
            rooms: DashMap::new(),
            users: DashMap::new(),
            space_parents: DashMap::new(),
            devices: DashMap::new(),
            next_position: AtomicU64::new(next_position.max(1)),
            next_to_device: AtomicU64::new(1),
            queue,
            txn_ids: txn_ids::TxnIds::default(),
        }
    }

    pub fn queue(&self) -> &WriteQueue {
        &self.queue
    }

    pub fn room(&self, id: &str) -> Option<Arc<RoomSnapshot>> {
        self.rooms.get(id).map(|room| room.snapshot.load_full())
    }

    /// The room's receipts and typing users, as of now.
    pub fn ephemeral(&self, id: &str) -> Option<Arc<RoomEphemeral>> {
        self.rooms.get(id).map(|room| room.ephemeral.load_full())
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// The room, created empty if it is new.
    fn room_entry(&self, id: &RoomId) -> Arc<Room> {
        if let Some(room) = self.rooms.get(id) {
            return Arc::clone(&room);
        }
        Arc::clone(
            &self
                .rooms
                .entry(id.clone())
                .or_insert_with(|| Arc::new(Room::new(id.clone()))),
        )
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

    /// The last position handed out: every event applied from now on comes after it.
    pub fn position_now(&self) -> Position {
        self.next_position.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// The events of `delta` its room has applied before: those memory remembers now
    /// (one it forgets before [`Store::apply_room`] runs is still known that way), and,
    /// when memory no longer reaches back to the room's first event, those storage
    /// holds. Asked with no lock held. Most rooms remember every event they applied and
    /// ask storage nothing; a room past [`room::SEEN_IDS`] events asks about the IDs it
    /// does not remember.
    ///
    /// If storage cannot answer, this retries until it does: taking old events as new
    /// could put back state the room has since replaced (even a membership), so a poller
    /// delivering a big room waits out a database outage instead.
    pub async fn stored_copies(&self, delta: &RoomDelta) -> HashSet<Box<str>> {
        let Some(room) = self.rooms.get(&delta.room_id).map(|r| Arc::clone(&r)) else {
            return HashSet::new();
        };
        let ids = delta
            .state
            .iter()
            .chain(&delta.timeline)
            .map(|e| &e.event_id);
        let (mut known, unknown, complete) = {
            let writer = blocking_lock(&room.writer);
            let mut known = HashSet::new();
            let mut unknown = Vec::new();
            for id in ids {
                if writer.seen.contains(id) {
                    known.insert(id.clone());
                } else {
                    unknown.push(id.clone());
                }
            }
            (known, unknown, writer.seen.is_complete())
        };
        if complete || unknown.is_empty() {
            return known;
        }
        let mut delay = std::time::Duration::from_millis(100);
        loop {
            let lookup = self.queue.persist().stored_event_ids(&unknown);
            let failure = match tokio::time::timeout(STORED_LOOKUP_TIMEOUT, lookup).await {
                Ok(Ok(found)) => {
                    known.extend(found);
                    return known;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {STORED_LOOKUP_TIMEOUT:?}"),
            };
            tracing::warn!(room = %delta.room_id, error = %failure, retry_in = ?delay, "cannot ask storage which events the room has; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(10));
        }
    }

    /// Applies one room's new events: drops the ones already seen (many pollers deliver
    /// the same room), gives the rest positions, updates state and timeline, publishes
    /// the next snapshot, then updates the memberships of this proxy's users and wakes
    /// those in the room.
    ///
    /// All of it runs under the room's writer lock, memberships included: they then
    /// change in the room's event order, so a member event one poller delivers can never
    /// be overtaken by an older one another poller delivers at the same moment.
    pub fn apply_room(&self, delta: RoomDelta) {
        let room_id = delta.room_id;
        let room = self.room_entry(&room_id);
        let mut writer = blocking_lock(&room.writer);
        let writer = &mut *writer;
        let mut applying = Applying {
            store: self,
            room_id: &room_id,
            next: RoomSnapshot::clone(&room.snapshot.load()),
            seen: &mut writer.seen,
            stored: &delta.stored,
            redacted: &delta.redacted,
            fold_now: false,
            received: now_ms(),
            writes: Vec::new(),
            members: Vec::new(),
            space_children: Vec::new(),
            sent: Vec::new(),
            new_timeline: false,
        };
        // A timeline holding an event the room already has starts before the room's
        // current state: the state block, state from before that timeline, is older
        // than what the room holds and may only fill in what the room lacks (a lagging
        // poller must not put back a name the room has since changed).
        let behind = delta.timeline.iter().any(|e| applying.known(&e.event_id));
        applying.state_block(delta.state, behind);
        applying.timeline(delta.timeline, delta.prev_batch, delta.limited);
        applying.fold_if_due();
        let Applying {
            next,
            writes,
            members,
            space_children,
            sent,
            new_timeline,
            ..
        } = applying;
        for (sender, event_id) in sent {
            if let Some(user) = self.user(&sender) {
                self.txn_ids.sent_by(&user.user_id, &event_id);
            }
        }
        let latest_ts = next.meta.latest_ts;
        let looks_changed = !next.meta.looks_like(&room.snapshot.load().meta);
        let next = Arc::new(next);
        room.snapshot.store(Arc::clone(&next));
        // Queued while the room is still locked: see `writer` on why order matters.
        let queued = self.queue.push(writes);
        writer.seen.settle(queued, self.queue.committed());
        for ev in members {
            let Some(user) = ev.state_key.as_deref().and_then(|u| self.user(u)) else {
                continue;
            };
            self.on_member_event(&user, &room_id, &room, writer, &ev);
        }
        if !space_children.is_empty() {
            self.on_space_children(&room_id, writer, space_children);
        }
        if !new_timeline && !looks_changed {
            return;
        }
        for user_id in &writer.locals {
            if let Some(user) = self.user(user_id) {
                user.update(|d| {
                    let successor_joined =
                        next.meta.tombstone.as_deref().is_some_and(|s| d.joined(s));
                    let Some(r) = d.rooms.get_mut(&room_id) else {
                        return;
                    };
                    if matches!(r.membership, UserMembership::Join { .. }) {
                        r.stamp = latest_ts;
                        r.replaced = successor_joined;
                    }
                    d.place(&room_id, || self.looks(&next, user_id));
                    d.touch(&room_id);
                });
            }
        }
    }

    /// The space `space` gained or lost children: the index learns it, and each of its
    /// joined local users whose lists filter by space gets those rooms placed again.
    /// Costs what changed, never what the space or the user holds.
    fn on_space_children(
        &self,
        space: &RoomId,
        writer: &RoomWriter,
        children: Vec<(RoomId, bool)>,
    ) {
        for (child, listed) in &children {
            let mut parents = self.space_parents.entry(child.clone()).or_default();
            parents.retain(|p| p != space);
            if *listed {
                parents.push(space.clone());
            }
            let empty = parents.is_empty();
            drop(parents);
            if empty {
                self.space_parents.remove_if(child, |_, p| p.is_empty());
            }
        }
        for user_id in &writer.locals {
            let Some(user) = self.user(user_id) else {
                continue;
            };
            user.update(|d| {
                if !d.filters_spaces() {
                    return;
                }
                for (child, _) in &children {
                    if d.rooms.contains_key(child) {
                        d.place(child, || self.room_looks(child, user_id));
                        d.touch(child);
                    }
                }
            });
        }
    }

    /// The spaces whose `m.space.child` state lists `room`.
    fn parents(&self, room: &str) -> Vec<RoomId> {
        self.space_parents
            .get(room)
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    /// A room's name for `user` and the rest the orders and filters may ask about.
    fn looks(&self, snapshot: &RoomSnapshot, user: &str) -> RoomLooks {
        let join_ts = snapshot
            .state
            .get("m.room.member", user)
            .filter(|m| m.membership() == Some(Membership::Join))
            .map_or(0, |m| m.origin_server_ts());
        RoomLooks {
            name: display_name(&snapshot.meta, user).name,
            encrypted: snapshot.meta.encrypted,
            tombstoned: snapshot.meta.tombstone.is_some(),
            room_type: snapshot.meta.room_type.clone(),
            bumps: Some((snapshot.meta.latest_by_type.clone(), join_ts)),
            parents: self.parents(&snapshot.room_id),
        }
    }

    /// [`Store::looks`] of a room that may not be known yet (then nameless and
    /// unencrypted).
    fn room_looks(&self, room: &str, user: &str) -> RoomLooks {
        match self.room(room) {
            Some(snapshot) => self.looks(&snapshot, user),
            None => RoomLooks {
                parents: self.parents(room),
                ..RoomLooks::default()
            },
        }
    }

    /// Keeps a new account data event of `user` (global, or of `room`), queues it for
    /// storage, and moves the rooms whose DM flag or tags it changed in the user's
    /// filtered lists.
    pub fn set_account_data(&self, user: &UserState, room: Option<&RoomId>, ev: AccountEvent) {
        let changed = user.update(|d| {
            let changed = d.account.set(room, &ev)?;
            for r in &changed.rooms {
                d.place(r, || self.room_looks(r, &user.user_id));
                d.touch(r);
            }
            match room {
                Some(room) => d.touch(room),
                None => d.bump(),
            }
            Some(())
        });
        if changed.is_some() {
            self.queue.push([Write::AccountData {
                user_id: user.user_id.clone(),
                room_id: room.cloned(),
                kind: ev.kind,
                json: ev.json,
            }]);
        }
    }

    /// Read receipts of a room, from `user`'s poller: the newer ones are kept, queued for
    /// storage, and wake those who may see them (a private receipt only its owner, who
    /// is the only one whose poller receives it).
    pub fn set_receipts(&self, user: &UserState, room_id: &RoomId, receipts: Vec<Receipt>) {
        let Some(room) = self.rooms.get(room_id).map(|r| Arc::clone(&r)) else {
            return;
        };
        let writer = blocking_lock(&room.writer);
        let mut next = RoomEphemeral::clone(&room.ephemeral.load());
        let snapshot = room.snapshot.load();
        let mut writes = Vec::new();
        let mut public = false;
        for receipt in receipts {
            if receipt.private && receipt.user_id != user.user_id {
                continue;
            }
            // Only members' receipts are kept: a server could name any number of users
            // who are not in the room, and the receipts are kept for good.
            if snapshot.membership_of(&receipt.user_id) != Some(Membership::Join) {
                continue;
            }
            if next.set_receipt(receipt.clone()) {
                public |= !receipt.private;
                writes.push(Write::Receipt {
                    room_id: room_id.clone(),
                    receipt,
                });
            }
        }
        if writes.is_empty() {
            return;
        }
        room.ephemeral.store(Arc::new(next));
        self.queue.push(writes);
        if public {
            self.touch_locals(&writer, room_id);
        } else {
            user.update(|d| d.touch(room_id));
        }
    }

    /// The typing users of a room, as `device`'s poller reports them (see
    /// [`RoomEphemeral::set_typing`]). Memory only: typing is stale after a restart.
    pub fn set_typing(&self, device: &DeviceKey, room_id: &RoomId, users: Vec<UserId>) {
        let Some(room) = self.rooms.get(room_id).map(|r| Arc::clone(&r)) else {
            return;
        };
        let writer = blocking_lock(&room.writer);
        let mut next = RoomEphemeral::clone(&room.ephemeral.load());
        let owned = next.typing.owner.is_some();
        let changed = next.set_typing(device, users);
        if changed || !owned {
            room.ephemeral.store(Arc::new(next));
        }
        if changed {
            self.touch_locals(&writer, room_id);
        }
    }

    /// `device`'s poller stopped: the rooms it reported typing for take typing from the
    /// next poller that reports it. Visits the user's rooms, and happens only when a
    /// poller ends.
    pub fn poller_stopped(&self, device: &DeviceKey) {
        let Some(user) = self.user(&device.user_id) else {
            return;
        };
        for room_id in user.read().rooms.keys() {
            self.release_typing(room_id, |owner| owner == device);
        }
    }

    fn release_typing(&self, room_id: &RoomId, owner: impl Fn(&DeviceKey) -> bool) {
        let Some(room) = self.rooms.get(room_id).map(|r| Arc::clone(&r)) else {
            return;
        };
        // Most rooms take typing from another poller: no lock for those. (Checked again
        // under the lock, where it counts.)
        if !takes_typing_from(&room, &owner) {
            return;
        }
        let writer = blocking_lock(&room.writer);
        self.release_typing_locked(&room, &writer, room_id, owner);
    }

    /// [`Store::release_typing`] for callers holding the room's writer lock.
    fn release_typing_locked(
        &self,
        room: &Room,
        writer: &RoomWriter,
        room_id: &RoomId,
        owner: impl Fn(&DeviceKey) -> bool,
    ) {
        if !takes_typing_from(room, &owner) {
            return;
        }
        let mut next = RoomEphemeral::clone(&room.ephemeral.load());
        let changed = next.release_typing(owner);
        room.ephemeral.store(Arc::new(next));
        if changed {
            self.touch_locals(writer, room_id);
        }
    }

    /// Records a change of the room for every local user in it, waking their
    /// connections. Callers hold the room's writer lock.
    fn touch_locals(&self, writer: &RoomWriter, room_id: &RoomId) {
        for user_id in &writer.locals {
            if let Some(user) = self.user(user_id) {
                user.update(|d| d.touch(room_id));
            }
        }
    }

    /// A member event about one of our users, from whichever poller saw it first: the
    /// room's event order decides membership, so a lagging poller cannot undo a leave.
    fn on_member_event(
        &self,
        user: &UserState,
        room_id: &RoomId,
        room: &Room,
        writer: &mut RoomWriter,
        ev: &Arc<Event>,
    ) {
        match ev.membership {
            Some(Membership::Join) => {
                let joined = matches!(
                    user.read().membership(room_id),
                    Some(UserMembership::Join { .. })
                );
                if !joined {
                    let join = UserMembership::Join { since: ev.position };
                    self.set_membership(user, room_id, room, writer, join);
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
                    self.set_membership(user, room_id, room, writer, leave);
                }
            }
            // Invites come with their stripped state from the invitee's own poller.
            _ => {}
        }
    }

    /// The user's own poller lists the room under `join`: after its events were applied,
    /// the room's state has the user's join event (or the room predates our knowledge).
    pub fn confirm_join(&self, user: &UserState, room_id: &RoomId) {
        let Some(room) = self.rooms.get(room_id).map(|r| Arc::clone(&r)) else {
            return;
        };
        let mut writer = blocking_lock(&room.writer);
        if matches!(
            user.read().membership(room_id),
            Some(UserMembership::Join { .. })
        ) {
            return;
        }
        let since = {
            let snapshot = room.snapshot.load();
            match snapshot.state.get("m.room.member", &user.user_id) {
                Some(m) if m.membership() == Some(Membership::Join) => m.position(),
                // The room's newer state says otherwise: this poller is behind it.
                Some(_) => return,
                None => snapshot.meta.latest_position,
            }
        };
        let join = UserMembership::Join { since };
        self.set_membership(user, room_id, &room, &mut writer, join);
    }

    /// The user's own poller lists the room under `invite`.
    pub fn set_invite(
        &self,
        user: &UserState,
        room_id: &RoomId,
        invite_state: Bytes,
        facts: InviteFacts,
        ts: u64,
    ) {
        let room = self.room_entry(room_id);
        let mut writer = blocking_lock(&room.writer);
        let joined = room.snapshot.load().membership_of(&user.user_id) == Some(Membership::Join);
        let already = matches!(user.read().membership(room_id), Some(UserMembership::Invite { invite_state: s, .. }) if *s == invite_state);
        if !joined && !already {
            let invite = UserMembership::Invite {
                position: self.position(),
                invite_state,
                facts: Arc::new(facts),
                ts,
            };
            self.set_membership(user, room_id, &room, &mut writer, invite);
        }
    }

    /// The user's own poller lists the room under `leave` (including rejected invites,
    /// which have no room state here). A join the room's state shows after `event` is
    /// newer than this poller's view, and wins.
    pub fn set_left(&self, user: &UserState, room_id: &RoomId, event: Option<Arc<Event>>) {
        // A room the user was never in is not created just to be left.
        let Some(room) = self.rooms.get(room_id).map(|r| Arc::clone(&r)) else {
            return;
        };
        let mut writer = blocking_lock(&room.writer);
        if !user
            .read()
            .membership(room_id)
            .is_some_and(UserMembership::is_member)
        {
            return;
        }
        if let Some(ev) = &event {
            let rejoined = room
                .snapshot
                .load()
                .state
                .get("m.room.member", &user.user_id)
                .is_some_and(|m| {
                    m.membership() == Some(Membership::Join) && m.position() > ev.position
                });
            if rejoined {
                return;
            }
        }
        let position = event
            .as_ref()
            .map_or_else(|| self.position(), |e| e.position);
        let leave = UserMembership::Leave { position, event };
        self.set_membership(user, room_id, &room, &mut writer, leave);
    }

    pub fn set_unread(
        &self,
        user: &UserState,
        room_id: &RoomId,
        notification: u64,
        highlight: u64,
    ) {
        if self.apply_unread(user, room_id, notification, highlight) {
            self.queue.push([Write::Unread {
                user_id: user.user_id.clone(),
                room_id: room_id.clone(),
                notification_count: notification,
                highlight_count: highlight,
            }]);
        }
    }

    /// Sets the counts in memory; returns whether they changed.
    fn apply_unread(
        &self,
        user: &UserState,
        room_id: &RoomId,
        notification: u64,
        highlight: u64,
    ) -> bool {
        user.update(|d| match d.rooms.get_mut(room_id) {
            Some(r) if (r.notification_count, r.highlight_count) != (notification, highlight) => {
                r.notification_count = notification;
                r.highlight_count = highlight;
                // The snapshot as of now, under the user's lock: a room writer that
                // published a newer one places the room after this.
                d.place(room_id, || self.room_looks(room_id, &user.user_id));
                d.touch(room_id);
                true
            }
            _ => false,
        })
    }

    /// Keeps the orders `orders` for this user, building those it lacks; refuses (with
    /// the most the user may keep) when the user would keep more than [`MAX_ORDERS`].
    /// A build reads one version of the user's data with no lock held, then catches up,
    /// under the user's lock, with the rooms that changed meanwhile.
    pub fn use_orders(&self, user: &UserState, orders: &[ListOrder]) -> Result<(), usize> {
        let orders: Vec<ListOrder> = orders.iter().filter(|o| !o.is_recency()).cloned().collect();
        if !user.use_orders(&orders, MAX_ORDERS) {
            return Err(MAX_ORDERS);
        }
        for order in &orders {
            let looks_of = |room: &RoomId| self.room_looks(room, &user.user_id);
            // Built from one version with no lock held, then caught up under the lock
            // with the rooms that changed meanwhile; built again if too much changed.
            // After a few tries with more changes than the log holds, the last one builds
            // under the lock.
            let mut built = false;
            for attempt in 0..3 {
                let data = user.read();
                if built || data.orders().any(|o| o == order) {
                    break;
                }
                let index = blocking(|| data.build_order(order, looks_of));
                user.update(|d| {
                    match d.changed_since(data.version()) {
                        Some(rooms) => {
                            d.add_order(order.clone(), index);
                            for room in rooms {
                                d.place(&room, || looks_of(&room));
                            }
                        }
                        None if attempt == 2 => {
                            let index = d.build_order(order, looks_of);
                            d.add_order(order.clone(), index);
                        }
                        None => return,
                    }
                    built = true;
                });
            }
        }
        Ok(())
    }

    /// Drops every order unused for `idle`, for every user.
    pub fn sweep_orders(&self, idle: std::time::Duration) {
        // Not under the map's shard locks: each drop waits for that user's writer.
        let users: Vec<Arc<UserState>> = self.users.iter().map(|u| Arc::clone(&u)).collect();
        for user in users {
            user.drop_unused_orders(idle);
        }
    }

    /// Records and installs a membership. Callers hold the room's writer lock.
    fn set_membership(
        &self,
        user: &UserState,
        room_id: &RoomId,
        room: &Room,
        writer: &mut RoomWriter,
        membership: UserMembership,
    ) {
        // Kicked or banned counts only for someone who had joined (MSC4186 lists keep
        // such rooms, as they were at the removal): an invitee whose invite was
        // withdrawn, or who was banned before joining, may not see the room.
        let membership = match membership {
            UserMembership::Leave { position, event }
                if !matches!(
                    user.read().membership(room_id),
                    Some(UserMembership::Join { .. })
                ) =>
            {
                UserMembership::Leave {
                    position,
                    event: event.filter(|ev| ev.sender.as_ref() == user.user_id.as_ref()),
                }
            }
            other => other,
        };
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
        if kind == MembershipKind::Leave {
            // A poller of someone out of the room reports nothing more about it.
            self.release_typing_locked(room, writer, room_id, |owner| {
                owner.user_id == user.user_id
            });
        }
        self.queue.push([Write::Membership {
            user_id: user.user_id.clone(),
            room_id: room_id.clone(),
            kind,
            position,
            invite_state,
        }]);
        self.install_membership(user, room_id, room, writer, membership);
    }

    /// Rebuilds the hot state from storage. Snapshots load without parsing; only the
    /// state events after a room's snapshot and its newest timeline events are parsed.
    pub async fn load(
        persist: &dyn Persist,
        queue: WriteQueue,
        decoder: &Decoder,
    ) -> Result<Store, PersistError> {
        let mut next_position = persist.max_position().await? + 1;
        let store = Store::new(queue, next_position);
        let rooms = persist
            .load_rooms(TIMELINE_RING, room::SEEN_IDS, &|n| {
                tracing::info!(rooms = n, "rebuilding rooms")
            })
            .await?;
        let loaded_at = now_ms();
        let total = rooms.len();
        for (room_id, loaded) in rooms {
            let mut writer = RoomWriter::default();
            let mut snap = RoomSnapshot::new(room_id.clone());
            if let Some((position, bytes)) = loaded.snapshot {
                let base = StateBase::from_stored(&bytes)
                    .map_err(|e| PersistError::Corrupt(format!("snapshot of {room_id}: {e}")))?;
                snap.state = RoomState::from_base(base, position);
            }
            // Oldest first: memory forgets the oldest first, and the newest are the ones
            // resuming pollers deliver again.
            for id in loaded.recent_ids.iter().rev() {
                writer.seen.insert(id);
            }
            if !loaded.ids_complete {
                writer.seen.mark_incomplete();
            }
            let parse = |stored: &persist::StoredEvent| match (decoder.event)(&stored.json) {
                Ok(mut ev) => {
                    ev.position = stored.position;
                    ev.prev_batch = stored.prev_batch.clone();
                    ev.gap_before = stored.gap_before;
                    ev.filled_order = stored.filled_order;
                    // Rows from before `ts` was stored: received before now, at the latest.
                    ev.origin_server_ts = stored.ts.unwrap_or(ev.origin_server_ts.min(loaded_at));
                    Some(Arc::new(ev))
                }
                Err(e) => {
                    tracing::warn!(room = %room_id, position = stored.position, error = %e, "skipping unreadable stored event");
                    None
                }
            };
            for stored in &loaded.state_after_snapshot {
                if let Some(ev) = parse(stored) {
                    writer.seen.insert(&ev.event_id);
                    snap.state.set(ev);
                }
            }
            for stored in &loaded.timeline {
                if let Some(ev) = parse(stored) {
                    writer.seen.insert(&ev.event_id);
                    snap.push_timeline(ev);
                }
            }
            // Everything loaded is committed: the IDs may be forgotten past the bound.
            writer.seen.settle(0, 0);
            next_position = next_position.max(snap.state.base_position() + 1);
            snap.recompute_meta();
            for child in snap.state.of_kind("m.space.child") {
                if child.text().is_some_and(|t| !t.is_empty()) {
                    store
                        .space_parents
                        .entry(child.state_key().into())
                        .or_default()
                        .push(room_id.clone());
                }
            }
            store
                .rooms
                .insert(room_id, Arc::new(Room::from_snapshot(snap, writer)));
        }
        let memberships = persist.load_memberships().await?;
        let users = memberships.len();
        for m in memberships {
            let user = store.user_or_insert(&m.user_id);
            let membership = match m.kind {
                MembershipKind::Join => UserMembership::Join { since: m.position },
                MembershipKind::Invite => {
                    let invite_state = m.invite_state.unwrap_or_default();
                    let facts = (decoder.invite)(&invite_state, &m.user_id);
                    let ts = facts.ts.unwrap_or(0).min(loaded_at);
                    UserMembership::Invite {
                        position: m.position,
                        invite_state,
                        facts: Arc::new(facts),
                        ts,
                    }
                }
                MembershipKind::Leave => UserMembership::Leave {
                    position: m.position,
                    event: None,
                },
            };
            next_position = next_position.max(m.position + 1);
            let room = store.room_entry(&m.room_id);
            // The leave event itself is the room's state: who sent it says whether the
            // user was removed, which MSC4186 lists show after a restart too.
            let membership = match membership {
                UserMembership::Leave { position, .. } => UserMembership::Leave {
                    position,
                    event: stored_removal(&room.snapshot.load(), &m.user_id, position, decoder),
                },
                other => other,
            };
            store.install_membership(
                &user,
                &m.room_id,
                &room,
                &mut room.writer.lock(),
                membership,
            );
            user.set_ready();
        }
        // Invites and snapshots take positions too; none may be handed out again.
        store
            .next_position
            .fetch_max(next_position, Ordering::Relaxed);
        for u in persist.load_unread().await? {
            if let Some(user) = store.user(&u.user_id) {
                store.apply_unread(&user, &u.room_id, u.notification_count, u.highlight_count);
            }
        }
        let mut receipts: std::collections::HashMap<RoomId, RoomEphemeral> = Default::default();
        for r in persist.load_receipts().await? {
            receipts
                .entry(r.room_id)
                .or_default()
                .set_receipt(r.receipt);
        }
        for (room_id, ephemeral) in receipts {
            if let Some(room) = store.rooms.get(&room_id) {
                room.ephemeral.store(Arc::new(ephemeral));
            }
        }
        for a in persist.load_account_data().await? {
            let Some(ev) = (decoder.account)(&a.json) else {
                tracing::warn!(user = %a.user_id, "skipping unreadable stored account data");
                continue;
            };
            let user = store.user_or_insert(&a.user_id);
            user.update(|d| {
                if let Some(changed) = d.account.set(a.room_id.as_ref(), &ev) {
                    for r in &changed.rooms {
                        d.place(r, || store.room_looks(r, &a.user_id));
                    }
                }
            });
        }
        let mut last_to_device = 0;
        let devices = persist.load_device_data().await?;
        let device_count = devices.len();
        for loaded in devices {
            last_to_device = last_to_device
                .max(loaded.acked)
                .max(loaded.delivered)
                .max(loaded.to_device_max);
            let data = devices::DeviceData::from_loaded(&loaded);
            let state = devices::DeviceState::new(loaded.device.clone(), data);
            store.devices.insert(loaded.device, Arc::new(state));
        }
        store
            .next_to_device
            .store(last_to_device + 1, Ordering::Relaxed);
        tracing::info!(
            rooms = total,
            memberships = users,
            devices = device_count,
            "hot state rebuilt"
        );
        Ok(store)
    }
}

/// The user's removal (kick or ban) at `position` as the room's state holds it, read
/// back.
fn stored_removal(
    snapshot: &RoomSnapshot,
    user: &str,
    position: Position,
    decoder: &Decoder,
) -> Option<Arc<Event>> {
    let member = snapshot.state.get("m.room.member", user)?;
    if member.position() != position {
        return None;
    }
    let mut ev = (decoder.event)(member.json()).ok()?;
    // Only removals need their event after a restart (a connection that saw the room
    // leave is gone), and few rooms are left that way: kept for those alone. As when
    // it arrived (see `Store::set_membership`), a removal is one only after a join.
    if ev.sender.as_ref() == user
        || (decoder.prev_membership)(member.json()) != Some(Membership::Join)
    {
        return None;
    }
    ev.position = position;
    // As for every stored event: no later than now, so it cannot pin a list's top.
    ev.origin_server_ts = ev.origin_server_ts.min(now_ms());
    Some(Arc::new(ev))
}

impl Store {
    /// Puts a membership into the user's data and index and the room's local users.
    /// Callers hold the room's writer lock.
    ///
    /// A membership also settles upgrades: a room whose successor the user joined leaves
    /// the lists, whichever of the two joins comes first (at startup, in any order), and
    /// comes back when the user leaves the successor.
    fn install_membership(
        &self,
        user: &UserState,
        room_id: &RoomId,
        room: &Room,
        writer: &mut RoomWriter,
        membership: UserMembership,
    ) {
        let snapshot = room.snapshot.load_full();
        let stamp = match &membership {
            UserMembership::Join { .. } => Some(snapshot.meta.latest_ts),
            UserMembership::Invite { ts, .. } => Some(*ts),
            // A removed user's room is listed (MSC4186) where the kick or ban put it.
            UserMembership::Leave {
                event: Some(ev), ..
            } if membership.is_removed() => Some(ev.origin_server_ts),
            UserMembership::Leave { .. } => None,
        };
        if membership.is_member() {
            writer.locals.insert(user.user_id.clone());
        } else {
            writer.locals.remove(&user.user_id);
        }
        let joining = matches!(membership, UserMembership::Join { .. });
        // The room this one replaced, if its tombstone points here: joining this one puts
        // it out of the lists, leaving this one brings it back.
        let replaced_here = snapshot
            .meta
            .predecessor
            .as_deref()
            .and_then(|p| self.room(p))
            .filter(|p| p.meta.tombstone.as_deref() == Some(&**room_id));
        user.update(|d| {
            let was_joined = d.joined(room_id);
            let replaced = joining
                && snapshot
                    .meta
                    .tombstone
                    .as_deref()
                    .is_some_and(|s| d.joined(s));
            let entry = d.rooms.entry(room_id.clone()).or_insert(UserRoom {
                membership: membership.clone(),
                notification_count: 0,
                highlight_count: 0,
                stamp: 0,
                replaced: false,
            });
            entry.membership = membership;
            entry.replaced = replaced;
            if let Some(stamp) = stamp {
                entry.stamp = stamp;
            }
            d.place(room_id, || self.looks(&snapshot, &user.user_id));
            d.touch(room_id);
            if let Some(old) = &replaced_here {
                if let Some(r) = d.rooms.get_mut(&old.room_id) {
                    if r.replaced != joining {
                        r.replaced = joining;
                        d.place(&old.room_id, || self.looks(old, &user.user_id));
                        d.touch(&old.room_id);
                    }
                }
            }
            // Joining or leaving a space shows or hides its children in lists filtered
            // by it.
            if d.joined(room_id) != was_joined && d.filters_spaces() {
                for child in snapshot.state.of_kind("m.space.child") {
                    let child = child.state_key();
                    if d.rooms.contains_key(child) {
                        let child: RoomId = child.into();
                        d.place(&child, || self.room_looks(&child, &user.user_id));
                        d.touch(&child);
                    }
                }
            }
        });
    }
}

/// Whether the room's typing source is a poller `owner` picks.
fn takes_typing_from(room: &Room, owner: impl Fn(&DeviceKey) -> bool) -> bool {
    room.ephemeral
        .load()
        .typing
        .owner
        .as_ref()
        .is_some_and(owner)
}

/// One room being updated under its lock: the next snapshot and what to do after.
struct Applying<'a> {
    store: &'a Store,
    room_id: &'a RoomId,
    next: RoomSnapshot,
    seen: &'a mut room::SeenIds,
    /// Applied long ago, as storage says (see [`RoomDelta::stored`]).
    stored: &'a HashSet<Box<str>>,
    redacted: &'a [(Box<str>, Bytes)],
    /// A redaction changed state the stored snapshot may hold: fold, so a restart loads
    /// the redacted form.
    fold_now: bool,
    /// When this delta reached the proxy (ms since the epoch): no event's timestamp
    /// counts as later than that.
    received: u64,
    writes: Vec<Write>,
    /// Member events applied, for our users' memberships once the lock is released.
    members: Vec<Arc<Event>>,
    /// `m.space.child` state applied: the child, and whether it is listed now.
    space_children: Vec<(RoomId, bool)>,
    /// (sender, event ID) of the new events, oldest first.
    sent: Vec<(Box<str>, Box<str>)>,
    new_timeline: bool,
}

impl Applying<'_> {
    /// Whether the room applied this event before.
    fn known(&self, event_id: &str) -> bool {
        self.seen.contains(event_id) || self.stored.contains(event_id)
    }

    /// Records the event as applied; false if the room applied it before.
    fn first_sight(&mut self, event_id: &str) -> bool {
        !self.stored.contains(event_id) && self.seen.insert(event_id)
    }

    /// A v2 `state` block: state from before the timeline. `behind`: the room's state is
    /// newer than this block, which then only adds keys the room has no state for.
    fn state_block(&mut self, events: Vec<Event>, behind: bool) {
        for ev in events {
            let Some(key) = ev.state_key.as_deref() else {
                continue;
            };
            let current = self.next.state.get(&ev.kind, key);
            if current.is_some_and(|s| behind || s.event_id() == &*ev.event_id) {
                continue;
            }
            if !self.first_sight(&ev.event_id) {
                continue;
            }
            let ev = self.accept(ev, false, true);
            if ev.membership.is_some() {
                self.members.push(Arc::clone(&ev));
            }
            self.set_state(ev);
        }
    }

    fn set_state(&mut self, ev: Arc<Event>) {
        if &*ev.kind == "m.space.child" {
            if let Some(child) = ev.state_key.as_deref().filter(|c| !c.is_empty()) {
                let listed = ev.text.as_deref().is_some_and(|t| !t.is_empty());
                self.space_children.push((child.into(), listed));
            }
        }
        self.next.set_state(ev);
    }

    /// A timeline chunk. The events after the last one we know are new. Unknown ones
    /// before it are history backfilled into the homeserver, not live events, unless
    /// the known one is where we know a gap starts (it came first in a limited chunk,
    /// e.g. another user's one-event initial sync): then they are the missing events,
    /// and go in before it.
    fn timeline(&mut self, mut events: Vec<Event>, prev_batch: Option<String>, limited: bool) {
        let known = (events.len() > 1)
            .then(|| events.iter().rposition(|e| self.known(&e.event_id)))
            .flatten();
        let start = known.map_or(0, |i| i + 1);
        let after = events.split_off(start);
        let mut prev_batch = prev_batch.map(String::into_boxed_str);
        // Before the last known event, each run of unknown events belongs in front of
        // the known event that follows it, and only there: a run spanning a known
        // event would put older events after it.
        let mut run = Vec::new();
        let mut run_starts_chunk = true;
        for ev in events {
            if !self.known(&ev.event_id) {
                run.push(ev);
                continue;
            }
            let gap_before_run = limited && run_starts_chunk;
            let chunk_prev_batch = if run_starts_chunk {
                &mut prev_batch
            } else {
                &mut None
            };
            self.fill_gap(
                &ev.event_id,
                std::mem::take(&mut run),
                gap_before_run,
                chunk_prev_batch,
            );
            run_starts_chunk = false;
        }
        // Only a gap before events we did not know is a gap for our readers.
        let mut gap = limited && start == 0;
        for mut ev in after {
            if !self.first_sight(&ev.event_id) {
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
                self.set_state(Arc::clone(&ev));
            }
            let redacts = (&*ev.kind == "m.room.redaction")
                .then(|| ev.text.clone())
                .flatten();
            self.sent.push((ev.sender.clone(), ev.event_id.clone()));
            self.next.push_timeline(ev);
            self.new_timeline = true;
            if let Some(target) = redacts {
                self.redact(&target);
            }
        }
    }

    /// Replaces the event a new redaction targets with its redacted form, in the
    /// timeline, in the current state (where a redacted name, avatar or alias then no
    /// longer names the room), and in storage.
    fn redact(&mut self, target: &str) {
        let Some((_, json)) = self.redacted.iter().find(|(id, _)| &**id == target) else {
            return;
        };
        let Some(old) = self.next.redaction_target(target) else {
            return;
        };
        let mut ev = Event::clone(&old);
        ev.json = json.clone();
        // What the summary read from the content is gone; a create event's type stays
        // (room version 11 keeps its content, and a room does not change its type), and
        // so does a history visibility (every room version keeps it).
        if !matches!(&*ev.kind, "m.room.create" | "m.room.history_visibility") {
            ev.text = None;
        }
        let ev = Arc::new(ev);
        if let Some(i) = self
            .next
            .timeline
            .iter()
            .position(|e| &*e.event_id == target)
        {
            self.next.timeline.set(i, Arc::clone(&ev));
        }
        if let Some(key) = ev.state_key.as_deref() {
            if self
                .next
                .state
                .get(&ev.kind, key)
                .is_some_and(|s| s.event_id() == target)
            {
                self.next.set_state(Arc::clone(&ev));
                self.fold_now = true;
            }
        }
        self.writes.push(Write::Redacted {
            room_id: self.room_id.clone(),
            event_id: ev.event_id.clone(),
            json: ev.json.clone(),
        });
    }

    /// Puts events the room was missing in front of `anchor`, when the timeline has a
    /// gap there (another poller's delivery, or history fetched for a reader). They are
    /// history by now: they go into the timeline (new connections receive them, and
    /// clients page back to them; a connection that was sent `anchor` does not get them
    /// as live events after it) but not into the current state, which `anchor` already
    /// follows. `limited`: the homeserver left out events before `before`.
    fn fill_gap(
        &mut self,
        anchor: &str,
        before: Vec<Event>,
        limited: bool,
        prev_batch: &mut Option<Box<str>>,
    ) {
        // Where members see only what happened since they joined, history filled in
        // here may predate a reader's join, which positions cannot tell: it is not kept,
        // so no later change of visibility can show it either.
        if !self.next.shares_history() {
            return;
        }
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
            .filter(|e| self.first_sight(&e.event_id))
            .collect();
        let Some(first) = missing.first() else {
            return;
        };
        // The gap moves in front of the first filled event, or closes if the chunk
        // reached back to what came before it.
        let gap_remains = limited && chunk_start.as_deref() == Some(&*first.event_id);
        let mut closed = (*self.next.timeline[at]).clone();
        closed.gap_before = false;
        self.writes.push(Write::GapFilled {
            room_id: self.room_id.clone(),
            event_id: closed.event_id.clone(),
        });
        // Filled events sort just before the anchor, after a restart too.
        let (anchor_order, anchor_sub) = closed.timeline_order();
        self.next.timeline.set(at, Arc::new(closed));
        let count = missing.len();
        for (i, mut ev) in missing.into_iter().enumerate() {
            ev.gap_before = i == 0 && gap_remains;
            ev.prev_batch = if i == 0 { prev_batch.take() } else { None };
            let below = i32::try_from(count - i).unwrap_or(i32::MAX);
            ev.filled_order = Some((anchor_order, anchor_sub.saturating_sub(below)));
            let ev = self.accept(ev, true, false);
            // Readers track "sent up to" by the highest position in the timeline.
            self.next.meta.latest_position = self.next.meta.latest_position.max(ev.position);
            self.next.timeline.insert(at + i, ev);
        }
        self.next.trim_timeline();
        self.new_timeline = true;
    }

    fn fold_if_due(&mut self) {
        if self.fold_now || self.next.state.wants_fold() {
            // Every event of this room so far has a lower position, every later one at
            // least the next: startup replays state events after this one.
            let position = self.store.next_position.load(Ordering::Relaxed) - 1;
            let state = &mut self.next.state;
            blocking(|| state.fold(position));
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
        ev.origin_server_ts = ev.origin_server_ts.min(self.received);
        self.writes.push(Write::Event(persist::StoredEvent {
            room_id: self.room_id.clone(),
            position: ev.position,
            event_id: ev.event_id.clone(),
            in_timeline,
            is_state: state,
            prev_batch: ev.prev_batch.clone(),
            gap_before: ev.gap_before,
            filled_order: ev.filled_order,
            ts: Some(ev.origin_server_ts),
            json: ev.json.clone(),
        }));
        Arc::new(ev)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::testing::{delta, event, store, store_over, with_membership, TestPersist};
    use super::*;

    /// Runs `f` on another thread; `None` if it has not returned within a few seconds
    /// (it is blocked: the test fails instead of hanging).
    fn unblocked<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(5)).ok()
    }

    fn name(text: &str) -> Event {
        let mut ev = event("m.room.name", Some(""), "@b:x", 1);
        ev.text = Some(text.into());
        ev
    }

    fn room_name(store: &Store, room: &str) -> Option<String> {
        store.room(room)?.meta.name.as_deref().map(str::to_owned)
    }

    fn member(user: &str, m: Membership) -> Event {
        with_membership(event("m.room.member", Some(user), user, 1), m)
    }

    fn member_at(user: &str, m: Membership, ts: u64) -> Event {
        with_membership(event("m.room.member", Some(user), user, ts), m)
    }

    fn hero_ids(store: &Store, room: &str) -> Vec<String> {
        let room = store.room(room).unwrap();
        room.meta
            .heroes
            .iter()
            .map(|h| h.user_id.to_string())
            .collect()
    }

    /// A state block lists members in any order; heroes are the earliest to arrive by
    /// their member events, and stay the earliest as members come and go.
    #[tokio::test]
    async fn heroes_are_the_earliest_members_whatever_order_state_comes_in() {
        let store = store();
        let mut state: Vec<Event> = (0..10u64)
            .map(|i| member_at(&format!("@u{i}:x"), Membership::Join, 100 + i))
            .collect();
        state.reverse();
        store.apply_room(delta("!r:x", state, vec![]));
        let first: Vec<String> = (0..7).map(|i| format!("@u{i}:x")).collect();
        assert_eq!(hero_ids(&store, "!r:x"), first);
        store.apply_room(delta(
            "!r:x",
            vec![],
            vec![member_at("@u2:x", Membership::Leave, 200)],
        ));
        let heroes = hero_ids(&store, "!r:x");
        assert!(!heroes.contains(&"@u2:x".to_owned()));
        assert_eq!(
            heroes.last().map(String::as_str),
            Some("@u7:x"),
            "the next earliest"
        );
        let room = store.room("!r:x").unwrap();
        assert_eq!(room.meta.former.len(), 1);
        assert_eq!(&*room.meta.former[0].user_id, "@u2:x");
        store.apply_room(delta(
            "!r:x",
            vec![],
            vec![member_at("@u2:x", Membership::Join, 300)],
        ));
        assert!(
            store.room("!r:x").unwrap().meta.former.is_empty(),
            "back, so no longer a former member"
        );
    }

    #[tokio::test]
    async fn readers_never_wait_for_a_room_writer() {
        let store = Arc::new(store());
        store.apply_room(delta(
            "!r:x",
            vec![],
            vec![event("m.room.message", None, "@b:x", 1)],
        ));
        let room = store.room_entry(&"!r:x".into());
        // A writer in the middle of building the next snapshot (or folding the state).
        let _writing = room.writer.lock();
        let reader = Arc::clone(&store);
        let read = unblocked(move || reader.room("!r:x").map(|r| r.timeline.len()));
        assert_eq!(read, Some(Some(1)), "the reader got the published snapshot");
    }

    #[tokio::test]
    async fn a_reader_keeps_its_view_of_a_user_while_the_user_changes() {
        let store = store();
        let user = store.user_or_insert(&"@a:x".into());
        store.apply_room(delta(
            "!r:x",
            vec![member("@a:x", Membership::Join)],
            vec![],
        ));
        let view = user.read();
        let writer = Arc::clone(&user);
        // A connection building a long response holds `view`; the poller must not wait.
        let wrote = unblocked(move || writer.update(|d| d.touch(&"!r:x".into())));
        assert!(wrote.is_some(), "the writer was not blocked by the reader");
        assert_eq!(user.read().version(), view.version() + 1);
        assert!(
            view.rooms.contains_key("!r:x"),
            "the reader's version is unchanged"
        );
    }

    /// Another user's poller delivers a leave and a rejoin; the user's own poller, behind,
    /// then lists the room under `leave` with the leave. The rejoin is the final state.
    #[tokio::test]
    async fn a_lagging_pollers_leave_does_not_undo_a_later_rejoin() {
        let store = store();
        let user = store.user_or_insert(&"@a:x".into());
        let join = member("@a:x", Membership::Join);
        store.apply_room(delta("!r:x", vec![], vec![join]));
        let leave = member("@a:x", Membership::Leave);
        let rejoin = member("@a:x", Membership::Join);
        store.apply_room(delta("!r:x", vec![], vec![leave.clone(), rejoin]));
        assert!(matches!(
            user.read().membership("!r:x"),
            Some(UserMembership::Join { .. })
        ));

        store.apply_room(delta("!r:x", vec![], vec![leave.clone()]));
        let leave_event = store
            .room("!r:x")
            .unwrap()
            .timeline
            .iter()
            .find(|e| e.event_id == leave.event_id)
            .cloned();
        store.set_left(&user, &"!r:x".into(), leave_event);
        assert!(
            matches!(
                user.read().membership("!r:x"),
                Some(UserMembership::Join { .. })
            ),
            "{:?}",
            user.read().membership("!r:x")
        );
    }

    /// Many pollers race to deliver the same leave/join sequence in chunks; whatever
    /// the interleaving, the user ends where the room's events end.
    #[test]
    fn memberships_from_racing_pollers_end_in_the_final_state() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        for round in 0..50 {
            let store = Arc::new(store());
            let user = store.user_or_insert(&"@a:x".into());
            let ends_joined = round % 2 == 0;
            let events: Vec<Event> = (0..8 + usize::from(ends_joined))
                .map(|i| {
                    let m = if i % 2 == 0 {
                        Membership::Join
                    } else {
                        Membership::Leave
                    };
                    member("@a:x", m)
                })
                .collect();
            let threads: Vec<_> = (0..4)
                .map(|t| {
                    let store = Arc::clone(&store);
                    let events = events.clone();
                    std::thread::spawn(move || {
                        for chunk in events.chunks(1 + t) {
                            store.apply_room(delta("!r:x", vec![], chunk.to_vec()));
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let joined = matches!(
                user.read().membership("!r:x"),
                Some(UserMembership::Join { .. })
            );
            assert_eq!(joined, ends_joined, "round {round}");
        }
    }

    #[tokio::test]
    async fn an_event_forgotten_in_memory_is_still_known_from_storage() {
        let persist = Arc::new(TestPersist::open());
        let store = store_over(Arc::clone(&persist));
        let old = event("m.room.message", None, "@b:x", 1);
        store.apply_room(delta("!r:x", vec![], vec![old.clone()]));
        for i in 0..room::SEEN_IDS {
            let ev = event("m.room.message", None, "@b:x", 2 + i as u64);
            store.apply_room(delta("!r:x", vec![], vec![ev]));
            if i % 512 == 0 {
                store.queue().flush().await;
            }
        }
        store.queue().flush().await;
        let newest = store.room("!r:x").unwrap().meta.latest_position;

        // A poller far behind delivers the first event again, alone.
        let mut again = delta("!r:x", vec![], vec![old.clone()]);
        again.stored = store.stored_copies(&again).await;
        assert!(again.stored.contains(&old.event_id), "storage knows it");
        store.apply_room(again);
        assert_eq!(
            store.room("!r:x").unwrap().meta.latest_position,
            newest,
            "not applied a second time"
        );
    }

    #[tokio::test]
    async fn a_small_room_never_asks_storage() {
        let store = store();
        let ev = event("m.room.message", None, "@b:x", 1);
        store.apply_room(delta("!r:x", vec![], vec![ev]));
        let new = delta(
            "!r:x",
            vec![],
            vec![event("m.room.message", None, "@b:x", 2)],
        );
        assert!(store.stored_copies(&new).await.is_empty());
        assert!(store
            .rooms
            .get("!r:x")
            .unwrap()
            .writer
            .lock()
            .seen
            .is_complete());
    }

    #[tokio::test]
    async fn an_old_state_event_from_a_lagging_poller_does_not_replace_newer_state() {
        let store = store();
        let first = name("First");
        let msg = event("m.room.message", None, "@b:x", 2);
        store.apply_room(delta("!r:x", vec![], vec![first.clone(), msg.clone()]));
        store.apply_room(delta("!r:x", vec![], vec![name("Second")]));
        assert_eq!(room_name(&store, "!r:x").as_deref(), Some("Second"));

        // Re-delivered as it was: already applied.
        store.apply_room(delta("!r:x", vec![first], vec![msg.clone()]));
        assert_eq!(room_name(&store, "!r:x").as_deref(), Some("Second"));
        // Never seen, but in a state block from before an event the room already has.
        store.apply_room(delta("!r:x", vec![name("Stale")], vec![msg]));
        assert_eq!(room_name(&store, "!r:x").as_deref(), Some("Second"));
        // A state block before new events is news, and applies.
        let next = event("m.room.message", None, "@b:x", 3);
        store.apply_room(delta("!r:x", vec![name("Third")], vec![next]));
        assert_eq!(room_name(&store, "!r:x").as_deref(), Some("Third"));
    }

    #[tokio::test]
    async fn a_future_dated_event_does_not_pin_its_room_to_the_top() {
        let store = store();
        let user = store.user_or_insert(&"@a:x".into());
        for room in ["!a:x", "!b:x"] {
            store.apply_room(delta(room, vec![member("@a:x", Membership::Join)], vec![]));
        }
        let next_year = now_ms() + 365 * 24 * 3600 * 1000;
        store.apply_room(delta(
            "!b:x",
            vec![],
            vec![event("m.room.message", None, "@evil:x", next_year)],
        ));
        assert_eq!(user.read().index.rank("!b:x"), Some(0));
        // A later message in the other room moves that one up, as it should.
        store.apply_room(delta(
            "!a:x",
            vec![],
            vec![event("m.room.message", None, "@b:x", now_ms())],
        ));
        assert_eq!(user.read().index.rank("!a:x"), Some(0));
        assert!(store.room("!b:x").unwrap().meta.latest_ts <= now_ms());
    }

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
        let mut by_stored_order: Vec<&Arc<Event>> = room.timeline.iter().collect();
        by_stored_order.sort_by_key(|e| e.timeline_order());
        assert!(
            by_stored_order
                .iter()
                .map(|e| &e.event_id)
                .eq(room.timeline.iter().map(|e| &e.event_id)),
            "a restart, which reads the timeline back in stored order, keeps this order"
        );
    }

    #[tokio::test]
    async fn a_gap_filled_twice_keeps_its_order_in_the_stored_key() {
        let store = store();
        let events: Vec<Event> = (1..=6)
            .map(|i| event("m.room.message", None, "@b:x", i))
            .collect();
        let mut first = delta("!r:x", vec![], vec![events[5].clone()]);
        first.limited = true;
        store.apply_room(first);
        // Two more chunks, each reaching back a little further and still limited.
        let mut second = delta("!r:x", vec![], events[3..6].to_vec());
        second.limited = true;
        store.apply_room(second);
        let mut third = delta("!r:x", vec![], events[1..4].to_vec());
        third.limited = true;
        store.apply_room(third);
        let expected: Vec<String> = events[1..].iter().map(|e| e.event_id.to_string()).collect();
        assert_eq!(ids(&store, "!r:x"), expected);
        let room = store.room("!r:x").unwrap();
        let mut reloaded: Vec<&Arc<Event>> = room.timeline.iter().collect();
        reloaded.sort_by_key(|e| e.timeline_order());
        let reloaded: Vec<String> = reloaded.iter().map(|e| e.event_id.to_string()).collect();
        assert_eq!(reloaded, expected);
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

    #[tokio::test]
    async fn an_order_is_built_on_first_use_kept_in_step_and_dropped_when_unused() {
        let store = store();
        let user = store.user_or_insert(&"@a:x".into());
        for (room, title) in [("!a:x", "beta"), ("!b:x", "alpha")] {
            let state = vec![member("@a:x", Membership::Join), name(title)];
            store.apply_room(delta(room, state, vec![]));
        }
        let by_name = ListOrder {
            sort: Arc::new([crate::rooms::sort::SortBy::Name]),
            ..ListOrder::default()
        };
        let order = |user: &UserState| -> Vec<String> {
            user.read()
                .order(&by_name)
                .iter()
                .map(|r| r.to_string())
                .collect()
        };
        store
            .use_orders(&user, std::slice::from_ref(&by_name))
            .unwrap();
        assert_eq!(order(&user), ["!b:x", "!a:x"]);
        store.apply_room(delta("!b:x", vec![], vec![name("zeta")]));
        assert_eq!(order(&user), ["!a:x", "!b:x"], "a rename moves the room");
        store.sweep_orders(Duration::from_secs(60));
        assert_eq!(user.read().orders().count(), 1, "still in use");
        store.sweep_orders(Duration::ZERO);
        assert_eq!(user.read().orders().count(), 0, "unused, so no longer kept");
    }

    /// An ID memory forgets between the lookup and the apply was known at the lookup.
    #[tokio::test]
    async fn an_event_forgotten_between_lookup_and_apply_is_not_applied_again() {
        let store = store();
        let mut events = Vec::new();
        for i in 0..=room::SEEN_IDS {
            let ev = event("m.room.message", None, "@b:x", 1 + i as u64);
            events.push(ev.clone());
            store.apply_room(delta("!r:x", vec![], vec![ev]));
        }
        store.queue().flush().await;
        let remembered = |id: &str| {
            store
                .rooms
                .get("!r:x")
                .unwrap()
                .writer
                .lock()
                .seen
                .contains(id)
        };
        let target = events
            .iter()
            .find(|e| remembered(&e.event_id))
            .unwrap()
            .clone();
        let mut again = delta("!r:x", vec![], vec![target.clone()]);
        again.stored = store.stored_copies(&again).await;
        // Meanwhile other pollers apply more, and memory forgets the target.
        for i in 0..2 {
            store.apply_room(delta(
                "!r:x",
                vec![],
                vec![event("m.room.message", None, "@b:x", 9_000 + i)],
            ));
            store.queue().flush().await;
        }
        store.apply_room(delta(
            "!r:x",
            vec![],
            vec![event("m.room.message", None, "@b:x", 9_999)],
        ));
        assert!(!remembered(&target.event_id));
        let before = store.room("!r:x").unwrap().meta.latest_position;
        store.apply_room(again);
        assert_eq!(store.room("!r:x").unwrap().meta.latest_position, before);
    }

    /// When storage cannot answer, the lookup waits for it rather than taking old
    /// events (an old join, here) as new.
    #[tokio::test]
    async fn a_lookup_storage_cannot_answer_is_retried_not_guessed() {
        let persist = Arc::new(TestPersist::open());
        let store = store_over(Arc::clone(&persist));
        let user = store.user_or_insert(&"@a:x".into());
        let join = member("@a:x", Membership::Join);
        store.apply_room(delta("!r:x", vec![], vec![join.clone()]));
        for i in 0..room::SEEN_IDS + 10 {
            store.apply_room(delta(
                "!r:x",
                vec![],
                vec![event("m.room.message", None, "@b:x", 2 + i as u64)],
            ));
        }
        store.queue().flush().await;
        store.apply_room(delta(
            "!r:x",
            vec![],
            vec![member("@a:x", Membership::Leave)],
        ));
        store.queue().flush().await;

        persist.fail_lookups(2);
        let mut lagging = delta(
            "!r:x",
            vec![join.clone()],
            vec![event("m.room.message", None, "@c:x", 1)],
        );
        lagging.stored = store.stored_copies(&lagging).await;
        assert!(
            lagging.stored.contains(&join.event_id),
            "answered once storage was back"
        );
        store.apply_room(lagging);
        assert!(
            !user.read().membership("!r:x").unwrap().is_member(),
            "the old join changed nothing"
        );
    }

    /// Two first polls leave two gaps; a third poller's chunk spans both. Each run of
    /// missing events goes in front of the known event after it, and what came before
    /// the reader's join stays out of the reader's timeline.
    #[tokio::test]
    async fn a_chunk_spanning_two_gaps_fills_each_in_its_place() {
        let store = store();
        let user = store.user_or_insert(&"@a:x".into());
        let old = event("m.room.message", None, "@b:x", 1);
        let join = member("@a:x", Membership::Join);
        let y = event("m.room.message", None, "@b:x", 3);
        let x = event("m.room.message", None, "@b:x", 4);
        let mut a_first = delta("!r:x", vec![], vec![join.clone()]);
        a_first.limited = true;
        store.apply_room(a_first);
        let mut c_first = delta("!r:x", vec![], vec![x.clone()]);
        c_first.limited = true;
        store.apply_room(c_first);
        store.apply_room(delta(
            "!r:x",
            vec![],
            vec![old.clone(), join.clone(), y.clone(), x.clone()],
        ));

        let want: Vec<String> = [&old, &join, &y, &x]
            .iter()
            .map(|e| e.event_id.to_string())
            .collect();
        assert_eq!(ids(&store, "!r:x"), want);
        let room = store.room("!r:x").unwrap();
        let mut stored_order: Vec<&Arc<Event>> = room.timeline.iter().collect();
        stored_order.sort_by_key(|e| e.timeline_order());
        assert!(stored_order
            .iter()
            .map(|e| e.event_id.to_string())
            .eq(want.iter().cloned()));
        let Some(UserMembership::Join { since }) = user.read().membership("!r:x").cloned() else {
            panic!("joined");
        };
        let (visible, _) = room.timeline_between(since - 1, Position::MAX, (since, 0), 64);
        let visible: Vec<String> = visible.iter().map(|e| e.event_id.to_string()).collect();
        assert_eq!(visible, want[1..], "nothing from before the join");
    }

    fn encrypted_only() -> ListOrder {
        ListOrder {
            filters: Arc::new(crate::rooms::filter::Filters {
                is_encrypted: Some(true),
                ..Default::default()
            }),
            ..ListOrder::default()
        }
    }

    /// An invitee's lists know only the invite: a filter on the room's real name (set by
    /// members after the invite) matches nothing.
    #[tokio::test]
    async fn an_invite_is_filtered_on_what_the_invitee_may_see() {
        let store = store();
        let other = store.user_or_insert(&"@o:x".into());
        let me = store.user_or_insert(&"@me:x".into());
        store.apply_room(delta(
            "!r:x",
            vec![],
            vec![member("@o:x", Membership::Join), name("Secret plan")],
        ));
        store.confirm_join(&other, &"!r:x".into());
        store.set_invite(
            &me,
            &"!r:x".into(),
            Bytes::from_static(b"[]"),
            Default::default(),
            10,
        );
        let by_name = ListOrder {
            filters: Arc::new(crate::rooms::filter::Filters {
                room_name_like: Some("secret".into()),
                ..Default::default()
            }),
            ..ListOrder::default()
        };
        store
            .use_orders(&me, std::slice::from_ref(&by_name))
            .unwrap();
        assert_eq!(me.read().order(&by_name).len(), 0);
        store.apply_room(delta("!r:x", vec![], vec![name("Secret plan 2")]));
        assert_eq!(
            me.read().order(&by_name).len(),
            0,
            "nor after a later rename"
        );
    }

    /// A sweep that finds an order unused and a request that uses it again, at once:
    /// the order is either kept or rebuilt, never missing while a list uses it.
    #[tokio::test]
    async fn an_order_in_use_survives_a_sweep_at_the_same_moment() {
        let store = store();
        let me = store.user_or_insert(&"@me:x".into());
        store.apply_room(delta(
            "!r:x",
            vec![member("@me:x", Membership::Join)],
            vec![],
        ));
        let order = encrypted_only();
        store.use_orders(&me, std::slice::from_ref(&order)).unwrap();
        assert_eq!(
            me.read().order(&order).len(),
            0,
            "an unencrypted room is not in it"
        );
        me.drop_unused_orders(Duration::ZERO);
        store.use_orders(&me, std::slice::from_ref(&order)).unwrap();
        assert!(
            me.read().orders().any(|o| *o == order),
            "rebuilt for the request"
        );
        assert_eq!(me.read().order(&order).len(), 0);
    }

    /// A poller of a user who left a room reports nothing more about it: the room
    /// takes typing from the next poller that reports it.
    #[tokio::test]
    async fn a_typing_source_that_leaves_the_room_gives_it_up() {
        let store = store();
        let a = store.user_or_insert(&"@a:x".into());
        store.apply_room(delta(
            "!r:x",
            vec![member("@a:x", Membership::Join)],
            vec![],
        ));
        store.confirm_join(&a, &"!r:x".into());
        let (dev_a, dev_b) = (DeviceKey::new("@a:x", "A"), DeviceKey::new("@b:x", "B"));
        store.set_typing(&dev_a, &"!r:x".into(), vec!["@c:x".into()]);
        store.set_typing(&dev_b, &"!r:x".into(), vec![]);
        assert_eq!(store.ephemeral("!r:x").unwrap().typing.users.len(), 1);
        store.apply_room(delta(
            "!r:x",
            vec![],
            vec![member("@a:x", Membership::Leave)],
        ));
        assert!(store.ephemeral("!r:x").unwrap().typing.users.is_empty());
        store.set_typing(&dev_b, &"!r:x".into(), vec!["@d:x".into()]);
        assert_eq!(
            &*store.ephemeral("!r:x").unwrap().typing.users,
            [UserId::from("@d:x")]
        );
    }

    #[tokio::test]
    async fn filling_a_gap_stores_that_the_gap_is_closed() {
        let persist = Arc::new(TestPersist::open());
        let store = store_over(Arc::clone(&persist));
        let (e1, e2) = (
            event("m.room.message", None, "@b:x", 1),
            event("m.room.message", None, "@b:x", 2),
        );
        let mut first = delta("!r:x", vec![], vec![e2.clone()]);
        first.limited = true;
        store.apply_room(first);
        store.apply_room(delta("!r:x", vec![], vec![e1, e2.clone()]));
        store.queue().flush().await;
        let closed =
            persist.committed.lock().iter().any(
                |w| matches!(w, Write::GapFilled { event_id, .. } if *event_id == e2.event_id),
            );
        assert!(closed);
    }
}
