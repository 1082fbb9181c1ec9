//! Per-user room orders: a two-level sorted structure with ranks, one per sort a list
//! uses.
//!
//! Windows need both "the rooms at indexes 0..=19" and "which index is this room at" (for
//! `DELETE`/`INSERT` ops). A `BTreeSet` has no rank, so keys live in sorted chunks of at
//! most [`CHUNK`] entries: finding a key is a binary search over chunk bounds and inside
//! one chunk, a rank adds the lengths of the chunks before it, and a move touches two
//! chunks. For 10,000 rooms that is ~40 chunks: a move costs well under a microsecond
//! and never re-sorts the list.
//!
//! An index is part of a user's published data, which is replaced whole on every
//! change (see `store::users`): a clone must be cheap. Chunks are shared `Arc`s copied
//! only when written, and the keys are a persistent map, so a clone costs one pointer
//! per chunk and a move copies at most two chunks.

use std::cmp::Reverse;
use std::sync::Arc;

use super::filter::Filters;
use crate::types::RoomId;

const CHUNK: usize = 256;

/// One sort a list asks for (MSC3575 `sort`); a list's sorts apply in order, and the
/// room ID breaks the remaining ties so the order is deterministic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SortBy {
    /// Newest first.
    Recency,
    /// By the canonicalised display name, A first.
    Name,
    /// Highlighted, then notified and encrypted, then notified, then the rest.
    NotificationLevel,
    /// More notifications first (the Go proxy's deprecated `by_notification_count`).
    NotificationCount,
    /// More highlights first (the Go proxy's deprecated `by_highlight_count`).
    HighlightCount,
}

/// A list's sorts.
pub type SortSpec = Arc<[SortBy]>;

pub fn by_recency() -> SortSpec {
    Arc::new([SortBy::Recency])
}

/// A list's `bump_event_types`, sorted and without repeats; absent when every event
/// bumps.
pub type BumpTypes = Arc<[Box<str>]>;

/// Which rooms a list shows and in what order: its filters, its sorts and the events
/// that count as activity for recency; the key of an index. Every user keeps the
/// unfiltered recency order; any other is kept while lists use it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ListOrder {
    pub sort: SortSpec,
    pub filters: Arc<Filters>,
    pub bump: Option<BumpTypes>,
    /// Rooms the user was kicked or banned from stay in the order (MSC4186, as
    /// Synapse lists them); otherwise only joined and invited rooms are in it.
    pub keep_removed: bool,
}

impl Default for ListOrder {
    fn default() -> Self {
        Self {
            sort: by_recency(),
            filters: Arc::default(),
            bump: None,
            keep_removed: false,
        }
    }
}

impl ListOrder {
    /// The order every user keeps anyway.
    pub fn is_recency(&self) -> bool {
        *self.sort == [SortBy::Recency]
            && self.filters.is_empty()
            && self.bump.is_none()
            && !self.keep_removed
    }

    /// Whether placing a room needs more than its recency stamp: its name, encryption,
    /// type, or its newest events by type.
    pub fn needs_room(&self) -> bool {
        needs_room(&self.sort) || !self.filters.is_empty() || self.bump.is_some()
    }
}

/// What a room's place in an order is made of, for one user.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SortInputs {
    /// Recency: the newest event's timestamp, or the invite's.
    pub stamp: u64,
    /// The display name as this user sees it.
    pub name: String,
    pub encrypted: bool,
    pub notification_count: u64,
    pub highlight_count: u64,
}

/// One component of a key, compared in the order the spec lists them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    Desc(Reverse<u64>),
    Asc(u8),
    Name(Box<str>),
}

/// A room's key in one order: smaller comes first. An `Arc`: keys sit in the index's
/// chunks, which a change copies when the published version shares them, and a copy
/// must cost a reference count per entry, not an allocation.
pub type OrderKey = Arc<[Part]>;

/// The key of a room with `inputs` under `spec`.
pub fn order_key(spec: &[SortBy], inputs: &SortInputs) -> OrderKey {
    spec.iter()
        .map(|by| match by {
            SortBy::Recency => Part::Desc(Reverse(inputs.stamp)),
            SortBy::Name => Part::Name(canonical_name(&inputs.name)),
            SortBy::NotificationLevel => Part::Asc(if inputs.highlight_count > 0 {
                0
            } else if inputs.notification_count > 0 && inputs.encrypted {
                1
            } else if inputs.notification_count > 0 {
                2
            } else {
                3
            }),
            SortBy::NotificationCount => Part::Desc(Reverse(inputs.notification_count)),
            SortBy::HighlightCount => Part::Desc(Reverse(inputs.highlight_count)),
        })
        .collect()
}

/// Whether keys under `spec` depend on anything but the recency stamp.
fn needs_room(spec: &[SortBy]) -> bool {
    spec.iter().any(|by| *by != SortBy::Recency)
}

/// MSC3575 `by_name`: leading and trailing `#!():_@` removed (so aliases sort among
/// names), lower-cased by Unicode.
pub fn canonical_name(name: &str) -> Box<str> {
    name.trim_matches(|c| "#!():_@".contains(c))
        .to_lowercase()
        .into_boxed_str()
}

type Entry = (OrderKey, RoomId);

#[derive(Clone, Default, Debug)]
pub struct SortIndex {
    chunks: Vec<Arc<Vec<Entry>>>,
    keys: imbl::HashMap<RoomId, OrderKey>,
}

impl SortIndex {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn contains(&self, room: &str) -> bool {
        self.keys.contains_key(room)
    }

    /// Adds the room or moves it to its place for `key`.
    pub fn upsert(&mut self, room: &RoomId, key: OrderKey) {
        match self.keys.insert(room.clone(), key.clone()) {
            Some(old) if old == key => return,
            Some(old) => self.remove_entry(&(old, room.clone())),
            None => {}
        }
        self.insert_entry((key, room.clone()));
    }

    pub fn remove(&mut self, room: &str) -> bool {
        match self.keys.remove_with_key(room) {
            Some((id, key)) => {
                self.remove_entry(&(key, id));
                true
            }
            None => false,
        }
    }

    /// The index of the room in the order, if it is listed.
    pub fn rank(&self, room: &str) -> Option<usize> {
        let (id, key) = self.keys.get_key_value(room)?;
        let entry = (key.clone(), id.clone());
        let c = self.chunk_for(&entry);
        let before: usize = self.chunks[..c].iter().map(|chunk| chunk.len()).sum();
        self.chunks[c]
            .binary_search(&entry)
            .ok()
            .map(|i| before + i)
    }

    /// The rooms at indexes `start..=end` (clamped to the list).
    pub fn range(&self, start: usize, end: usize) -> impl Iterator<Item = &RoomId> + '_ {
        let mut skip = start;
        let mut first = 0;
        while first < self.chunks.len() && self.chunks[first].len() <= skip {
            skip -= self.chunks[first].len();
            first += 1;
        }
        let take = end.saturating_sub(start).saturating_add(1);
        self.chunks[first.min(self.chunks.len())..]
            .iter()
            .flat_map(|chunk| chunk.iter())
            .skip(skip)
            .take(take)
            .map(|(_, id)| id)
    }

    /// All rooms, in order.
    pub fn iter(&self) -> impl Iterator<Item = &RoomId> + '_ {
        self.chunks
            .iter()
            .flat_map(|chunk| chunk.iter())
            .map(|(_, id)| id)
    }

    /// The chunk an entry belongs in: the first whose last entry is >= it, else the last.
    fn chunk_for(&self, entry: &Entry) -> usize {
        let c = self
            .chunks
            .partition_point(|chunk| chunk.last().is_some_and(|last| last < entry));
        c.min(self.chunks.len().saturating_sub(1))
    }

    fn insert_entry(&mut self, entry: Entry) {
        if self.chunks.is_empty() {
            self.chunks.push(Arc::new(Vec::with_capacity(CHUNK)));
        }
        let c = self.chunk_for(&entry);
        let chunk = Arc::make_mut(&mut self.chunks[c]);
        let i = chunk.binary_search(&entry).unwrap_or_else(|i| i);
        chunk.insert(i, entry);
        if chunk.len() > CHUNK {
            let tail = chunk.split_off(CHUNK / 2);
            self.chunks.insert(c + 1, Arc::new(tail));
        }
    }

    fn remove_entry(&mut self, entry: &Entry) {
        if self.chunks.is_empty() {
            return;
        }
        let c = self.chunk_for(entry);
        if let Ok(i) = self.chunks[c].binary_search(entry) {
            Arc::make_mut(&mut self.chunks[c]).remove(i);
            if self.chunks[c].is_empty() && self.chunks.len() > 1 {
                self.chunks.remove(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn id(s: &str) -> RoomId {
        s.into()
    }

    fn recent(stamp: u64) -> OrderKey {
        order_key(
            &[SortBy::Recency],
            &SortInputs {
                stamp,
                ..SortInputs::default()
            },
        )
    }

    #[test]
    fn newest_room_comes_first_with_room_id_tie_break() {
        let mut idx = SortIndex::default();
        idx.upsert(&id("!b"), recent(10));
        idx.upsert(&id("!a"), recent(10));
        idx.upsert(&id("!c"), recent(20));
        let order: Vec<_> = idx.iter().map(|r| r.to_string()).collect();
        assert_eq!(order, ["!c", "!a", "!b"]);
        assert_eq!(idx.rank("!b"), Some(2));
    }

    #[test]
    fn moving_a_room_changes_only_its_place() {
        let mut idx = SortIndex::default();
        for i in 0..2000u64 {
            idx.upsert(&id(&format!("!r{i:05}")), recent(i));
        }
        assert_eq!(idx.rank("!r00000"), Some(1999));
        idx.upsert(&id("!r00000"), recent(5000));
        assert_eq!(idx.rank("!r00000"), Some(0));
        assert_eq!(idx.rank("!r01999"), Some(1));
        assert_eq!(idx.len(), 2000);
        let window: Vec<_> = idx.range(0, 2).map(|r| r.to_string()).collect();
        assert_eq!(window, ["!r00000", "!r01999", "!r01998"]);
    }

    #[test]
    fn ranks_match_a_full_sort_after_random_moves() {
        let mut idx = SortIndex::default();
        let mut model: HashMap<String, u64> = HashMap::new();
        let mut seed = 7u64;
        for step in 0..5000u64 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let room = format!("!r{}", (seed >> 33) % 700);
            if (seed >> 20) % 7 == 0 {
                idx.remove(&room);
                model.remove(&room);
            } else {
                idx.upsert(&id(&room), recent(step % 300));
                model.insert(room, step % 300);
            }
        }
        let mut expected: Vec<_> = model
            .iter()
            .map(|(r, s)| (Reverse(*s), r.clone()))
            .collect();
        expected.sort();
        let got: Vec<_> = idx.iter().map(|r| r.to_string()).collect();
        let want: Vec<_> = expected.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(got, want);
        for (i, r) in want.iter().enumerate() {
            assert_eq!(idx.rank(r), Some(i));
        }
        let mid: Vec<_> = idx.range(100, 109).map(|r| r.to_string()).collect();
        assert_eq!(mid, want[100..110]);
    }

    #[test]
    fn range_past_the_end_is_empty() {
        let mut idx = SortIndex::default();
        idx.upsert(&id("!a"), recent(1));
        assert_eq!(idx.range(5, 10).count(), 0);
        assert_eq!(idx.range(0, 10).count(), 1);
    }

    #[test]
    fn sorts_apply_in_order_with_the_room_id_last() {
        let inputs = |stamp, name: &str, encrypted, notes, highlights| SortInputs {
            stamp,
            name: name.into(),
            encrypted,
            notification_count: notes,
            highlight_count: highlights,
        };
        let rooms = [
            ("!quiet", inputs(50, "Zeta", false, 0, 0)),
            ("!plain", inputs(10, "alpha", false, 3, 0)),
            ("!secret", inputs(20, "#Beta:x", true, 1, 0)),
            ("!ping", inputs(5, "(gamma)", false, 9, 2)),
            ("!twin", inputs(50, "zeta", false, 0, 0)),
        ];
        let order = |spec: &[SortBy]| {
            let mut idx = SortIndex::default();
            for (room, i) in &rooms {
                idx.upsert(&id(room), order_key(spec, i));
            }
            idx.iter().map(|r| r.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(
            order(&[SortBy::NotificationLevel, SortBy::Recency]),
            ["!ping", "!secret", "!plain", "!quiet", "!twin"]
        );
        assert_eq!(
            order(&[SortBy::Name]),
            ["!plain", "!secret", "!ping", "!quiet", "!twin"],
            "canonical names: alpha, beta:x, gamma, zeta, zeta; then room IDs"
        );
        assert_eq!(
            order(&[SortBy::NotificationCount]),
            ["!ping", "!plain", "!secret", "!quiet", "!twin"]
        );
        assert_eq!(order(&[SortBy::HighlightCount])[0], "!ping");
    }
}
