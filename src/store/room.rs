//! One room: an immutable [`RoomSnapshot`] readers share through an `Arc`, and the
//! writer-only bookkeeping beside it in [`RoomSlot`].

use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use imbl::Vector;

use super::event::{Event, Membership};
use super::state::RoomState;
use crate::types::{Position, RoomId, UserId};

/// Timeline events kept per room: enough for the largest `timeline_limit` we serve.
pub const TIMELINE_RING: usize = 64;
/// Members remembered for naming rooms without a name (5 shown, one may be the reader).
pub const MAX_HEROES: usize = 6;
/// Event IDs remembered per room to drop the copies other pollers deliver.
const SEEN_IDS: usize = 4096;

#[derive(Clone, Debug, PartialEq)]
pub struct Hero {
    pub user_id: Box<str>,
    pub displayname: Option<Box<str>>,
}

/// What the room list needs about a room, kept up to date incrementally.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoomMeta {
    pub name: Option<Box<str>>,
    pub canonical_alias: Option<Box<str>>,
    pub avatar: Option<Box<str>>,
    pub joined_count: u32,
    pub invited_count: u32,
    /// Earliest members (joined or invited), at most `MAX_HEROES + 1` so one can be the
    /// reader.
    pub heroes: Vec<Hero>,
    pub encrypted: bool,
    pub room_type: Option<Box<str>>,
    pub tombstone: Option<Box<str>>,
    /// `origin_server_ts` of the newest timeline event: the recency sort key.
    pub latest_ts: u64,
    /// The highest position in the timeline: readers that sent up to here sent it all.
    /// (Usually the newest event's; a filled gap adds older events with newer positions.)
    pub latest_position: Position,
}

/// An immutable version of a room. Writers build the next one and swap the `Arc`.
#[derive(Clone)]
pub struct RoomSnapshot {
    pub room_id: RoomId,
    pub state: RoomState,
    pub meta: RoomMeta,
    /// Newest timeline events, oldest first, at most [`TIMELINE_RING`].
    pub timeline: Vector<Arc<Event>>,
    /// Position of the newest event pushed out of `timeline` (0: none yet).
    pub evicted: Position,
}

impl RoomSnapshot {
    pub fn new(room_id: RoomId) -> Self {
        Self {
            room_id,
            state: RoomState::default(),
            meta: RoomMeta::default(),
            timeline: Vector::new(),
            evicted: 0,
        }
    }

    pub fn membership_of(&self, user: &str) -> Option<Membership> {
        self.state
            .get("m.room.member", user)
            .and_then(|s| s.membership())
    }

    /// Timeline events after `position`, newest `limit` of them, oldest first, and
    /// whether events after `position` are missing before them: left out for the limit,
    /// pushed out of the ring, or never sent by the homeserver (a gappy sync).
    pub fn timeline_after(&self, position: Position, limit: usize) -> (Vec<Arc<Event>>, bool) {
        let visible: Vec<&Arc<Event>> = self
            .timeline
            .iter()
            .filter(|e| e.position > position)
            .collect();
        let skip = visible.len().saturating_sub(limit);
        let out: Vec<Arc<Event>> = visible[skip..].iter().map(|e| Arc::clone(e)).collect();
        let gap = skip > 0 || self.evicted > position || out.iter().any(|e| e.gap_before);
        (out, gap)
    }

    /// Sets a state event and keeps the summary in step with it.
    pub(super) fn set_state(&mut self, ev: Arc<Event>) {
        let key = ev.state_key.as_deref().unwrap_or("");
        let text = ev.text.clone().filter(|t| !t.is_empty());
        match &*ev.kind {
            "m.room.name" => self.meta.name = text,
            "m.room.canonical_alias" => self.meta.canonical_alias = text,
            "m.room.avatar" => self.meta.avatar = text,
            "m.room.create" => self.meta.room_type = text,
            "m.room.tombstone" => self.meta.tombstone = text,
            "m.room.encryption" => self.meta.encrypted = true,
            "m.room.member" => {
                let before = self.membership_of(key);
                self.count_member(before, -1);
                self.count_member(ev.membership, 1);
                let user: Box<str> = key.into();
                let is_member = ev.membership.is_some_and(Membership::is_member);
                let displayname = ev.text.clone();
                self.state.set(ev);
                self.update_heroes(user, is_member, displayname);
                return;
            }
            _ => {}
        }
        self.state.set(ev);
    }

    fn count_member(&mut self, m: Option<Membership>, delta: i64) {
        let slot = match m {
            Some(Membership::Join) => &mut self.meta.joined_count,
            Some(Membership::Invite) => &mut self.meta.invited_count,
            _ => return,
        };
        *slot = (*slot as i64 + delta).max(0) as u32;
    }

    fn update_heroes(&mut self, user: Box<str>, is_member: bool, displayname: Option<Box<str>>) {
        let found = self.meta.heroes.iter().position(|h| h.user_id == user);
        match (found, is_member) {
            (Some(i), true) => self.meta.heroes[i].displayname = displayname,
            (Some(i), false) => {
                self.meta.heroes.remove(i);
                let members = (self.meta.joined_count + self.meta.invited_count) as usize;
                if members > self.meta.heroes.len() {
                    self.recompute_heroes();
                }
            }
            (None, true) if self.meta.heroes.len() <= MAX_HEROES => {
                self.meta.heroes.push(Hero {
                    user_id: user,
                    displayname,
                });
            }
            _ => {}
        }
    }

    /// Rare (a hero left a room with more members): one pass over the members.
    fn recompute_heroes(&mut self) {
        let mut members: Vec<_> = self
            .state
            .of_kind("m.room.member")
            .into_iter()
            .filter(|m| m.membership().is_some_and(Membership::is_member))
            .map(|m| (m.position(), m.state_key(), m.text()))
            .collect();
        members.sort_unstable_by_key(|m| m.0);
        self.meta.heroes = members
            .into_iter()
            .take(MAX_HEROES + 1)
            .map(|(_, user, name)| Hero {
                user_id: user.into(),
                displayname: name.map(Into::into),
            })
            .collect();
    }

    /// Rebuilds the summary from state, for a room loaded at startup.
    pub(super) fn recompute_meta(&mut self) {
        let latest_ts = self.meta.latest_ts;
        let latest_position = self.meta.latest_position;
        self.meta = RoomMeta {
            latest_ts,
            latest_position,
            ..RoomMeta::default()
        };
        let text = |kind: &str| {
            self.state
                .get(kind, "")
                .and_then(|s| s.text())
                .filter(|t| !t.is_empty())
                .map(Into::into)
        };
        self.meta.name = text("m.room.name");
        self.meta.canonical_alias = text("m.room.canonical_alias");
        self.meta.avatar = text("m.room.avatar");
        self.meta.room_type = text("m.room.create");
        self.meta.tombstone = text("m.room.tombstone");
        self.meta.encrypted = self.state.get("m.room.encryption", "").is_some();
        for m in self.state.of_kind("m.room.member") {
            match m.membership() {
                Some(Membership::Join) => self.meta.joined_count += 1,
                Some(Membership::Invite) => self.meta.invited_count += 1,
                _ => {}
            }
        }
        self.recompute_heroes();
    }

    pub(super) fn push_timeline(&mut self, ev: Arc<Event>) {
        self.meta.latest_ts = self.meta.latest_ts.max(ev.origin_server_ts);
        self.meta.latest_position = self.meta.latest_position.max(ev.position);
        self.timeline.push_back(ev);
        self.trim_timeline();
    }

    /// Drops the oldest events past [`TIMELINE_RING`], remembering how far they reached.
    pub(super) fn trim_timeline(&mut self) {
        while self.timeline.len() > TIMELINE_RING {
            if let Some(old) = self.timeline.pop_front() {
                // Filled gaps put newer positions before older ones: keep the highest.
                self.evicted = self.evicted.max(old.position);
            }
        }
    }
}

/// Event IDs recently applied to a room, bounded. Hashes, not strings: a collision only
/// drops a duplicate check, never serves wrong data, and it keeps 4096 IDs in 64 KiB.
#[derive(Default)]
pub struct SeenIds {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl SeenIds {
    fn hash(id: &str) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        h.finish()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(&Self::hash(id))
    }

    /// Returns false if the ID was already there.
    pub fn insert(&mut self, id: &str) -> bool {
        let h = Self::hash(id);
        if !self.set.insert(h) {
            return false;
        }
        self.order.push_back(h);
        if self.order.len() > SEEN_IDS {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// A room's entry in the store's map. The map's shard lock is the room's write lock: it
/// is held only while the next snapshot is built from the previous one (O(events in the
/// chunk × log state)), never across I/O.
pub struct RoomSlot {
    pub snapshot: Arc<RoomSnapshot>,
    pub seen: SeenIds,
    /// Users of this proxy who are joined or invited: who to wake when the room changes.
    pub locals: HashSet<UserId>,
}

impl RoomSlot {
    pub fn new(room_id: RoomId) -> Self {
        Self {
            snapshot: Arc::new(RoomSnapshot::new(room_id)),
            seen: SeenIds::default(),
            locals: HashSet::new(),
        }
    }
}
