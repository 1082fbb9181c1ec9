//! One room: an immutable [`RoomSnapshot`] readers load through an atomic pointer, and
//! the writer-only bookkeeping beside it in [`RoomWriter`], behind the room's own lock.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use arc_swap::ArcSwap;
use imbl::Vector;
use parking_lot::Mutex;

use super::ephemeral::RoomEphemeral;
use super::state::RoomState;
use crate::event::{Event, Membership, TimelineOrder};
use crate::types::{Position, RoomId, UserId};

/// Timeline events kept per room: enough for the largest `timeline_limit` we serve.
pub const TIMELINE_RING: usize = 64;
/// Members remembered for naming rooms without a name (5 shown, one may be the reader).
pub const MAX_HEROES: usize = 6;
/// Event IDs remembered per room to drop the copies other pollers deliver.
pub const SEEN_IDS: usize = 4096;
/// State a redaction is applied to besides the events in the timeline ring: the events
/// behind a room's fields. Finding any other state event by its ID would mean a walk over
/// all of the room's state (members included) for every redaction.
const REDACTABLE_STATE: [&str; 4] = [
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.canonical_alias",
];

/// Former members remembered for naming a room everyone else left ("Empty Room (was
/// ...)"): as many as heroes.
pub const MAX_FORMER: usize = MAX_HEROES + 1;
/// Event types whose newest timeline event a room remembers, for lists that bump only
/// on some types. Any member can send events of any type, so this is bounded: past it
/// the type seen longest ago is forgotten, and a list bumping only on that type then
/// places the room as of the user's join.
pub const BUMP_TYPES: usize = 32;

/// A member a room is named after.
pub use crate::event::Member as Hero;

/// Where a room's newest event of one type sits: its position and timestamp.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    pub position: Position,
    pub ts: u64,
}

/// The newest timeline event of each type (at most [`BUMP_TYPES`] types), for
/// `bump_event_types` and `bump_stamp`. Shared between snapshots: a new event copies
/// the few entries, and cloning a snapshot copies none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatestByType(Arc<Vec<(Arc<str>, Stamp)>>);

impl LatestByType {
    fn record(&mut self, kind: &str, stamp: Stamp) {
        if self
            .0
            .iter()
            .any(|(k, s)| &**k == kind && s.position >= stamp.position)
        {
            return;
        }
        let types = Arc::make_mut(&mut self.0);
        if let Some(entry) = types.iter_mut().find(|(k, _)| &**k == kind) {
            entry.1 = stamp;
            return;
        }
        if types.len() >= BUMP_TYPES {
            let oldest = types
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, s))| s.position)
                .map(|(i, _)| i);
            if let Some(i) = oldest {
                types.swap_remove(i);
            }
        }
        types.push((kind.into(), stamp));
    }

    /// The newest event of any of `types`.
    pub fn newest_of<'a>(&self, types: impl IntoIterator<Item = &'a str>) -> Option<Stamp> {
        types
            .into_iter()
            .filter_map(|t| self.0.iter().find(|(k, _)| &**k == t).map(|(_, s)| *s))
            .max_by_key(|s| s.position)
    }
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
    /// Members who left or were banned, most recent last, at most [`MAX_FORMER`]: a
    /// room everyone else left is named after them.
    pub former: Vec<Hero>,
    /// The room this one replaced (`m.room.create` `predecessor`).
    pub predecessor: Option<Box<str>>,
    pub encrypted: bool,
    pub room_type: Option<Box<str>>,
    pub tombstone: Option<Box<str>>,
    /// `origin_server_ts` of the newest timeline event: the recency sort key.
    pub latest_ts: u64,
    /// The newest timeline event of each type: recency for lists with
    /// `bump_event_types`.
    pub latest_by_type: LatestByType,
    /// The highest position in the timeline: readers that sent up to here sent it all.
    /// (Usually the newest event's; a filled gap adds older events with newer positions.)
    pub latest_position: Position,
}

impl RoomMeta {
    /// Whether the room's name and avatar (as any reader sees them), encryption,
    /// tombstone and type are the same: what the room orders, filters and a client's
    /// room fields depend on besides the timeline.
    pub fn looks_like(&self, other: &RoomMeta) -> bool {
        self.name == other.name
            && self.canonical_alias == other.canonical_alias
            && self.avatar == other.avatar
            && self.heroes == other.heroes
            && self.former == other.former
            && self.joined_count == other.joined_count
            && self.invited_count == other.invited_count
            && self.encrypted == other.encrypted
            && self.tombstone == other.tombstone
            && self.room_type == other.room_type
    }
}

/// History a reader lacks before a room's known timeline: the homeserver left it out
/// (a device's first poll asks for one event per room), and `anchor`, the first event
/// the reader may see, starts a gap whose `prev_batch` is `from`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryGap {
    pub room_id: RoomId,
    pub anchor: Box<str>,
    pub from: Box<str>,
    /// How many events the reader asked for beyond what is held.
    pub want: usize,
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

    /// Whether a member may see the room's history from before they joined
    /// (`m.room.history_visibility` `shared` or `world_readable`, `shared` when unset, as
    /// the spec defaults). Where not, history filled in before a known event (from
    /// another member's poller or a history fetch) may predate a reader's join, which
    /// positions cannot tell, so it is shown to nobody.
    pub fn shares_history(&self) -> bool {
        !matches!(
            self.state
                .get("m.room.history_visibility", "")
                .and_then(|s| s.text()),
            Some("joined" | "invited")
        )
    }

    pub fn membership_of(&self, user: &str) -> Option<Membership> {
        self.state
            .get("m.room.member", user)
            .and_then(|s| s.membership())
    }

    /// Timeline events after `position` and before `until`, and at or after `from` in
    /// the timeline's order (the reader's join: an event filled into a gap before it
    /// has a later position but is history the reader may not see); the newest `limit`
    /// of them, oldest first, and whether events in between are missing before them:
    /// left out for the limit, pushed out of the ring, or never sent by the homeserver
    /// (a gappy sync).
    pub fn timeline_between(
        &self,
        position: Position,
        until: Position,
        from: TimelineOrder,
        limit: usize,
    ) -> (Vec<Arc<Event>>, bool) {
        let visible: Vec<&Arc<Event>> = self
            .timeline
            .iter()
            .filter(|e| e.position > position && e.position < until)
            .filter(|e| e.timeline_order() >= from)
            .collect();
        let skip = visible.len().saturating_sub(limit);
        let out: Vec<Arc<Event>> = visible[skip..].iter().map(|e| Arc::clone(e)).collect();
        let gap = skip > 0 || self.evicted > position || out.iter().any(|e| e.gap_before);
        (out, gap)
    }

    /// The event a redaction may apply to: in the timeline ring, or the current state
    /// behind the room's name, avatar, topic or alias.
    pub fn redaction_target(&self, event_id: &str) -> Option<Arc<Event>> {
        if let Some(e) = self.timeline.iter().find(|e| &*e.event_id == event_id) {
            return Some(Arc::clone(e));
        }
        REDACTABLE_STATE
            .iter()
            .filter_map(|kind| self.state.get(kind, ""))
            .find(|s| s.event_id() == event_id)
            .map(|s| Arc::new(s.to_event()))
    }

    /// The `prev_batch` to hand a reader whose timeline starts at `first`: the newest
    /// token at or before it, never one after it (paginating from a later token would
    /// give the reader events it has again).
    pub fn prev_batch_at(&self, first: &Event) -> Option<&str> {
        let first = first.timeline_order();
        self.timeline
            .iter()
            .take_while(|e| e.timeline_order() <= first)
            .filter_map(|e| e.prev_batch.as_deref())
            .last()
    }

    /// The gap before `timeline`, the newest events a reader joined at `since` may see,
    /// when it holds fewer than `limit` and history before it is missing; `None` when
    /// what is held reaches the reader's join or the room's start.
    pub fn history_gap(
        &self,
        timeline: &[Arc<Event>],
        since: Position,
        limit: usize,
    ) -> Option<HistoryGap> {
        let first = timeline.first()?;
        // Filled events go in front of `first`, and the ring drops the events before the
        // reader's join first: `limit` is at most the ring's size, so they all stay.
        let want = limit.min(TIMELINE_RING).saturating_sub(timeline.len());
        if want == 0 || !first.gap_before || first.timeline_order() <= (since, 0) {
            return None;
        }
        Some(HistoryGap {
            room_id: self.room_id.clone(),
            anchor: first.event_id.clone(),
            from: first.prev_batch.clone()?,
            want,
        })
    }

    /// Where `user`'s view of the room ends: the position of their leave, ban (or
    /// later invite or knock) as the room's state has it, or `Position::MAX` while they
    /// are joined. The room's snapshot can be newer than the user's data a reader holds,
    /// and nothing after a leave is the user's to see.
    pub fn visible_until(&self, user: &str) -> Position {
        match self.state.get("m.room.member", user) {
            Some(m) if m.membership() != Some(Membership::Join) => m.position(),
            _ => Position::MAX,
        }
    }

    /// Sets a state event and keeps the summary in step with it.
    pub(super) fn set_state(&mut self, ev: Arc<Event>) {
        let key = ev.state_key.as_deref().unwrap_or("");
        let text = ev.text.clone().filter(|t| !t.is_empty());
        match &*ev.kind {
            "m.room.name" => self.meta.name = text,
            "m.room.canonical_alias" => self.meta.canonical_alias = text,
            "m.room.avatar" => self.meta.avatar = text,
            "m.room.create" => {
                self.meta.room_type = text;
                self.meta.predecessor = ev.detail.clone();
            }
            "m.room.tombstone" => self.meta.tombstone = text,
            "m.room.encryption" => self.meta.encrypted = true,
            "m.room.member" => {
                let before = self.membership_of(key);
                self.count_member(before, -1);
                self.count_member(ev.membership, 1);
                let user: Box<str> = key.into();
                let is_member = ev.membership.is_some_and(Membership::is_member);
                // Named by their current member event, a leave too, as the spec's
                // name calculation (and a client reading Synapse's summary) does.
                let hero = Hero {
                    user_id: user,
                    displayname: ev.text.clone(),
                    avatar_url: ev.detail.clone(),
                };
                let gone = matches!(ev.membership, Some(Membership::Leave | Membership::Ban));
                let key = (ev.origin_server_ts, ev.position);
                self.state.set(ev);
                self.update_former(&hero, gone);
                self.update_heroes(hero, key, is_member);
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

    /// One who left or was banned is a former member, the latest last (as Synapse's
    /// summary counts them: a ban of someone who never joined too); one who comes back
    /// is not.
    fn update_former(&mut self, hero: &Hero, gone: bool) {
        self.meta.former.retain(|h| h.user_id != hero.user_id);
        if gone {
            if self.meta.former.len() >= MAX_FORMER {
                self.meta.former.remove(0);
            }
            self.meta.former.push(hero.clone());
        }
    }

    /// Heroes are the earliest members by their member event's timestamp (then
    /// position), as Synapse orders its summary's by stream: a state block lists members
    /// in no particular order. A hero's later member event (a new display name) keeps
    /// its place, which costs no pass over the members.
    fn update_heroes(&mut self, hero: Hero, key: (u64, Position), is_member: bool) {
        let found = self
            .meta
            .heroes
            .iter()
            .position(|h| h.user_id == hero.user_id);
        match (found, is_member) {
            (Some(i), true) => self.meta.heroes[i] = hero,
            (Some(i), false) => {
                self.meta.heroes.remove(i);
                let members = (self.meta.joined_count + self.meta.invited_count) as usize;
                if members > self.meta.heroes.len() {
                    self.recompute_heroes();
                }
            }
            (None, true) => {
                let at = self
                    .meta
                    .heroes
                    .iter()
                    .position(|h| self.member_key(&h.user_id) > key)
                    .unwrap_or(self.meta.heroes.len());
                if at <= MAX_HEROES {
                    self.meta.heroes.insert(at, hero);
                    self.meta.heroes.truncate(MAX_HEROES + 1);
                }
            }
            (None, false) => {}
        }
    }

    /// A member's place among heroes: their member event's timestamp and position.
    fn member_key(&self, user: &str) -> (u64, Position) {
        self.state
            .get("m.room.member", user)
            .map_or((0, 0), |m| (m.origin_server_ts(), m.position()))
    }

    /// Rare (a hero left a room with more members): one pass over the members.
    fn recompute_heroes(&mut self) {
        self.meta.heroes = self.members_by_position(true, MAX_HEROES + 1, false);
    }

    /// Members (`member`) or former members, earliest or (`latest`) most recent
    /// member event first (by timestamp, then position), at most `max`.
    fn members_by_position(&self, member: bool, max: usize, latest: bool) -> Vec<Hero> {
        let mut members: Vec<_> = self
            .state
            .of_kind("m.room.member")
            .into_iter()
            .filter(|m| {
                m.membership()
                    .is_some_and(|m| m.is_member() == member && m != Membership::Knock)
            })
            .collect();
        if latest {
            members
                .sort_unstable_by_key(|m| std::cmp::Reverse((m.origin_server_ts(), m.position())));
        } else {
            members.sort_unstable_by_key(|m| (m.origin_server_ts(), m.position()));
        }
        members
            .into_iter()
            .take(max)
            .map(|m| Hero {
                user_id: m.state_key().into(),
                displayname: m.text().map(Into::into),
                avatar_url: m.detail().map(Into::into),
            })
            .collect()
    }

    /// Rebuilds the summary from state, for a room loaded at startup.
    pub(super) fn recompute_meta(&mut self) {
        self.meta = RoomMeta {
            latest_ts: self.meta.latest_ts,
            latest_position: self.meta.latest_position,
            latest_by_type: std::mem::take(&mut self.meta.latest_by_type),
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
        self.meta.predecessor = self
            .state
            .get("m.room.create", "")
            .and_then(|s| s.detail())
            .map(Into::into);
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
        let mut former = self.members_by_position(false, MAX_FORMER, true);
        former.reverse();
        self.meta.former = former;
    }

    pub(super) fn push_timeline(&mut self, ev: Arc<Event>) {
        self.meta.latest_ts = self.meta.latest_ts.max(ev.origin_server_ts);
        // An event filled into a gap (read back at startup) is older than its position.
        if ev.filled_order.is_none() {
            self.meta.latest_by_type.record(
                &ev.kind,
                Stamp {
                    position: ev.position,
                    ts: ev.origin_server_ts,
                },
            );
        }
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

/// Event IDs a room has applied, to drop the copies other pollers deliver.
///
/// Hashes, not strings, keyed per process so no one can aim at a collision (which would
/// drop a new event as a copy): 4096 IDs in about 100 KiB. Bounded: past [`SEEN_IDS`] the
/// oldest are forgotten, but only once their writes are committed, since an ID on its
/// way to storage could otherwise be found neither here nor there. `complete` says
/// whether every event the room ever applied is still here; when not, an ID missing here
/// is asked of storage before it counts as new (see `Store::stored_copies`).
pub struct SeenIds {
    keys: RandomState,
    set: HashSet<u64>,
    /// Oldest first: (hash, number of its write in the queue, [`PENDING`] until queued).
    order: VecDeque<(u64, u64)>,
    complete: bool,
}

/// The queue number of an ID whose write is not queued yet.
const PENDING: u64 = u64::MAX;

impl Default for SeenIds {
    fn default() -> Self {
        Self {
            keys: RandomState::new(),
            set: HashSet::new(),
            order: VecDeque::new(),
            complete: true,
        }
    }
}

impl SeenIds {
    fn hash(&self, id: &str) -> u64 {
        self.keys.hash_one(id)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(&self.hash(id))
    }

    /// Whether an ID missing here is surely new.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// For a room loaded at startup with only its newest IDs.
    pub fn mark_incomplete(&mut self) {
        self.complete = false;
    }

    /// Returns false if the ID was already there.
    pub fn insert(&mut self, id: &str) -> bool {
        let h = self.hash(id);
        if !self.set.insert(h) {
            return false;
        }
        self.order.push_back((h, PENDING));
        true
    }

    /// The writes of the IDs inserted since the last call are queued, up to number
    /// `queued`; forgets the oldest IDs past the bound whose writes are `committed`.
    pub fn settle(&mut self, queued: u64, committed: u64) {
        for entry in self.order.iter_mut().rev() {
            if entry.1 != PENDING {
                break;
            }
            entry.1 = queued;
        }
        while self.order.len() > SEEN_IDS {
            match self.order.front() {
                Some(&(h, queued)) if queued <= committed => {
                    self.order.pop_front();
                    self.set.remove(&h);
                    self.complete = false;
                }
                _ => break,
            }
        }
    }
}

/// A room in the store's map.
///
/// Readers load `snapshot`: an atomic pointer, so a reader never waits, not even for a
/// writer folding a 50,000-event state archive. Writers of this room take `writer` first
/// (a `parking_lot::Mutex`: held while the next snapshot is built, never across I/O or
/// `.await`), so they apply in order; they build the next snapshot beside the published
/// one and publish it with one swap. Writers of other rooms never wait on it: there is
/// no lock shared between rooms.
pub struct Room {
    pub snapshot: ArcSwap<RoomSnapshot>,
    /// Receipts and typing, published like `snapshot` and written under `writer` too.
    pub ephemeral: ArcSwap<RoomEphemeral>,
    pub writer: Mutex<RoomWriter>,
}

/// What only the room's writers need.
#[derive(Default)]
pub struct RoomWriter {
    pub seen: SeenIds,
    /// Users of this proxy who are joined or invited: who to wake when the room changes.
    pub locals: HashSet<UserId>,
}

impl Room {
    pub fn new(room_id: RoomId) -> Self {
        Self::from_snapshot(RoomSnapshot::new(room_id), RoomWriter::default())
    }

    pub fn from_snapshot(snapshot: RoomSnapshot, writer: RoomWriter) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            ephemeral: ArcSwap::from_pointee(RoomEphemeral::default()),
            writer: Mutex::new(writer),
        }
    }
}
