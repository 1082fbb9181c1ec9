//! Per-user room order by recency: a two-level sorted structure with ranks.
//!
//! Windows need both "the rooms at indexes 0..=19" and "which index is this room at" (for
//! `DELETE`/`INSERT` ops). A `BTreeSet` has no rank, so keys live in sorted chunks of at
//! most [`CHUNK`] entries: finding a key is a binary search over chunk bounds and inside
//! one chunk, a rank adds the lengths of the chunks before it, and a move touches two
//! chunks. For 10,000 rooms that is ~40 chunks: a move costs well under a microsecond
//! and never re-sorts the list.
//!
//! The index is part of a user's published data, which is replaced whole on every
//! change (see `store::users`): a clone must be cheap. Chunks are shared `Arc`s copied
//! only when written, and the stamps are a persistent map, so a clone costs one pointer
//! per chunk and a move copies at most two chunks.

use std::cmp::Reverse;
use std::sync::Arc;

use crate::types::RoomId;

const CHUNK: usize = 256;

/// Newest first; ties broken by room ID so the order is deterministic.
pub type RecencyKey = (Reverse<u64>, RoomId);

#[derive(Clone, Default, Debug)]
pub struct SortIndex {
    chunks: Vec<Arc<Vec<RecencyKey>>>,
    stamps: imbl::HashMap<RoomId, u64>,
}

impl SortIndex {
    pub fn len(&self) -> usize {
        self.stamps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stamps.is_empty()
    }

    pub fn contains(&self, room: &str) -> bool {
        self.stamps.contains_key(room)
    }

    pub fn stamp(&self, room: &str) -> Option<u64> {
        self.stamps.get(room).copied()
    }

    /// Adds the room or moves it to its place for `stamp`.
    pub fn upsert(&mut self, room: &RoomId, stamp: u64) {
        match self.stamps.insert(room.clone(), stamp) {
            Some(old) if old == stamp => return,
            Some(old) => self.remove_key(&(Reverse(old), room.clone())),
            None => {}
        }
        self.insert_key((Reverse(stamp), room.clone()));
    }

    pub fn remove(&mut self, room: &str) -> bool {
        match self.stamps.remove_with_key(room) {
            Some((id, stamp)) => {
                self.remove_key(&(Reverse(stamp), id));
                true
            }
            None => false,
        }
    }

    /// The index of the room in the order, if it is listed.
    pub fn rank(&self, room: &str) -> Option<usize> {
        let (id, stamp) = self.stamps.get_key_value(room)?;
        let key = (Reverse(*stamp), id.clone());
        let c = self.chunk_for(&key);
        let before: usize = self.chunks[..c].iter().map(|chunk| chunk.len()).sum();
        self.chunks[c].binary_search(&key).ok().map(|i| before + i)
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

    /// The chunk a key belongs in: the first whose last key is >= key, else the last one.
    fn chunk_for(&self, key: &RecencyKey) -> usize {
        let c = self
            .chunks
            .partition_point(|chunk| chunk.last().is_some_and(|last| last < key));
        c.min(self.chunks.len().saturating_sub(1))
    }

    fn insert_key(&mut self, key: RecencyKey) {
        if self.chunks.is_empty() {
            self.chunks.push(Arc::new(Vec::with_capacity(CHUNK)));
        }
        let c = self.chunk_for(&key);
        let chunk = Arc::make_mut(&mut self.chunks[c]);
        let i = chunk.binary_search(&key).unwrap_or_else(|i| i);
        chunk.insert(i, key);
        if chunk.len() > CHUNK {
            let tail = chunk.split_off(CHUNK / 2);
            self.chunks.insert(c + 1, Arc::new(tail));
        }
    }

    fn remove_key(&mut self, key: &RecencyKey) {
        if self.chunks.is_empty() {
            return;
        }
        let c = self.chunk_for(key);
        if let Ok(i) = self.chunks[c].binary_search(key) {
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

    #[test]
    fn newest_room_comes_first_with_room_id_tie_break() {
        let mut idx = SortIndex::default();
        idx.upsert(&id("!b"), 10);
        idx.upsert(&id("!a"), 10);
        idx.upsert(&id("!c"), 20);
        let order: Vec<_> = idx.iter().map(|r| r.to_string()).collect();
        assert_eq!(order, ["!c", "!a", "!b"]);
        assert_eq!(idx.rank("!b"), Some(2));
    }

    #[test]
    fn moving_a_room_changes_only_its_place() {
        let mut idx = SortIndex::default();
        for i in 0..2000u64 {
            idx.upsert(&id(&format!("!r{i:05}")), i);
        }
        assert_eq!(idx.rank("!r00000"), Some(1999));
        idx.upsert(&id("!r00000"), 5000);
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
                idx.upsert(&id(&room), step % 300);
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
        idx.upsert(&id("!a"), 1);
        assert_eq!(idx.range(5, 10).count(), 0);
        assert_eq!(idx.range(0, 10).count(), 1);
    }
}
