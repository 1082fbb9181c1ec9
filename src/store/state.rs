//! A room's current state: an rkyv-archived base plus a persistent overlay of changes.
//!
//! Readers get `&` access to the archive in place (no deserialization) and to the
//! overlay through an `Arc`'d persistent map, so a reader never blocks a writer. A
//! change costs O(log n): it goes into the overlay (structurally shared, so the next
//! version shares all but one path with the previous). When the overlay grows past a
//! fraction of the base, [`RoomState::fold`] writes a new archive: O(n), but only every
//! n/4 changes, so a member join in a 50k-member room stays cheap on average.

use std::sync::Arc;

use bytes::Bytes;
use imbl::OrdMap;
use rkyv::rancor::Error as RkyvError;
use rkyv::util::AlignedVec;

use crate::event::{Event, Membership};
use crate::types::Position;

/// One state event in the archive.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
pub struct StateEntry {
    pub kind: String,
    pub state_key: String,
    pub event_id: String,
    pub position: u64,
    pub origin_server_ts: u64,
    pub sender: String,
    /// [`Membership`] as u8 for member events, 0 otherwise.
    pub membership: u8,
    pub text: Option<String>,
    /// [`Event::detail`].
    pub detail: Option<String>,
    pub json: Vec<u8>,
}

/// Entries sorted by (kind, state_key).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Default)]
pub struct StateArchive {
    pub entries: Vec<StateEntry>,
}

/// Validated archive bytes.
pub struct StateBase {
    bytes: AlignedVec,
}

impl StateBase {
    pub fn empty() -> Self {
        Self::build(StateArchive::default())
    }

    fn build(archive: StateArchive) -> Self {
        let mut bytes = rkyv::to_bytes::<RkyvError>(&archive).expect("serializing to memory");
        // The serializer grows its buffer by doubling; a room keeps this for long.
        bytes.shrink_to_fit();
        Self { bytes }
    }

    /// Bytes read back from storage: validated once here, then read without checks.
    pub fn from_stored(stored: &[u8]) -> Result<Self, String> {
        let mut bytes = AlignedVec::with_capacity(stored.len());
        bytes.extend_from_slice(stored);
        rkyv::access::<ArchivedStateArchive, RkyvError>(&bytes).map_err(|e| e.to_string())?;
        Ok(Self { bytes })
    }

    pub fn archived(&self) -> &ArchivedStateArchive {
        // SAFETY: `bytes` was produced by `rkyv::to_bytes` for this type or validated
        // with `rkyv::access` in `from_stored`, and is never mutated afterwards.
        unsafe { rkyv::access_unchecked::<ArchivedStateArchive>(&self.bytes) }
    }

    pub fn len(&self) -> usize {
        self.archived().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> Bytes {
        Bytes::copy_from_slice(&self.bytes)
    }

    /// The archive's size in memory.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    fn find(&self, kind: &str, key: &str) -> Option<&ArchivedStateEntry> {
        let entries = &self.archived().entries;
        entries
            .binary_search_by(|e| (e.kind.as_str(), e.state_key.as_str()).cmp(&(kind, key)))
            .ok()
            .map(|i| &entries[i])
    }

    fn of_kind(&self, kind: &str) -> &[ArchivedStateEntry] {
        let entries = self.archived().entries.as_slice();
        let start = entries.partition_point(|e| e.kind.as_str() < kind);
        let end = entries.partition_point(|e| e.kind.as_str() <= kind);
        &entries[start..end]
    }
}

/// A state event read from either half.
#[derive(Clone, Copy)]
pub enum StateRef<'a> {
    Base(&'a ArchivedStateEntry),
    Overlay(&'a Event),
}

impl<'a> StateRef<'a> {
    pub fn json(&self) -> &'a [u8] {
        match self {
            StateRef::Base(e) => e.json.as_slice(),
            StateRef::Overlay(e) => &e.json,
        }
    }
    pub fn kind(&self) -> &'a str {
        match self {
            StateRef::Base(e) => e.kind.as_str(),
            StateRef::Overlay(e) => &e.kind,
        }
    }
    pub fn state_key(&self) -> &'a str {
        match self {
            StateRef::Base(e) => e.state_key.as_str(),
            StateRef::Overlay(e) => e.state_key.as_deref().unwrap_or(""),
        }
    }
    pub fn event_id(&self) -> &'a str {
        match self {
            StateRef::Base(e) => e.event_id.as_str(),
            StateRef::Overlay(e) => &e.event_id,
        }
    }
    pub fn position(&self) -> Position {
        match self {
            StateRef::Base(e) => e.position.to_native(),
            StateRef::Overlay(e) => e.position,
        }
    }
    pub fn membership(&self) -> Option<Membership> {
        match self {
            StateRef::Base(e) => Membership::from_u8(e.membership),
            StateRef::Overlay(e) => e.membership,
        }
    }
    pub fn text(&self) -> Option<&'a str> {
        match self {
            StateRef::Base(e) => e.text.as_ref().map(|t| t.as_str()),
            StateRef::Overlay(e) => e.text.as_deref(),
        }
    }
    pub fn detail(&self) -> Option<&'a str> {
        match self {
            StateRef::Base(e) => e.detail.as_ref().map(|t| t.as_str()),
            StateRef::Overlay(e) => e.detail.as_deref(),
        }
    }
    pub fn origin_server_ts(&self) -> u64 {
        match self {
            StateRef::Base(e) => e.origin_server_ts.to_native(),
            StateRef::Overlay(e) => e.origin_server_ts,
        }
    }

    /// The event itself, for a writer that replaces it (a redaction).
    pub fn to_event(self) -> Event {
        match self {
            StateRef::Overlay(e) => e.clone(),
            StateRef::Base(e) => Event {
                event_id: e.event_id.as_str().into(),
                kind: e.kind.as_str().into(),
                state_key: Some(e.state_key.as_str().into()),
                sender: e.sender.as_str().into(),
                origin_server_ts: e.origin_server_ts.to_native(),
                membership: Membership::from_u8(e.membership),
                text: e.text.as_ref().map(|t| t.as_str().into()),
                detail: e.detail.as_ref().map(|t| t.as_str().into()),
                prev_batch: None,
                gap_before: false,
                position: e.position.to_native(),
                filled_order: None,
                json: Bytes::copy_from_slice(e.json.as_slice()),
            },
        }
    }

    fn to_entry(self) -> StateEntry {
        match self {
            StateRef::Base(e) => StateEntry {
                kind: e.kind.to_string(),
                state_key: e.state_key.to_string(),
                event_id: e.event_id.to_string(),
                position: e.position.to_native(),
                origin_server_ts: e.origin_server_ts.to_native(),
                sender: e.sender.to_string(),
                membership: e.membership,
                text: e.text.as_ref().map(|t| t.to_string()),
                detail: e.detail.as_ref().map(|t| t.to_string()),
                json: e.json.to_vec(),
            },
            StateRef::Overlay(e) => StateEntry {
                kind: e.kind.to_string(),
                state_key: e.state_key.as_deref().unwrap_or("").to_owned(),
                event_id: e.event_id.to_string(),
                position: e.position,
                origin_server_ts: e.origin_server_ts,
                sender: e.sender.to_string(),
                membership: e.membership.map_or(0, |m| m as u8),
                text: e.text.as_deref().map(str::to_owned),
                detail: e.detail.as_deref().map(str::to_owned),
                json: e.json.to_vec(),
            },
        }
    }
}

type Overlay = OrdMap<Box<str>, OrdMap<Box<str>, Arc<Event>>>;

#[derive(Clone)]
pub struct RoomState {
    base: Arc<StateBase>,
    overlay: Overlay,
    overlay_len: usize,
    /// The position up to which `base` is complete.
    base_position: Position,
}

impl Default for RoomState {
    fn default() -> Self {
        // Every new room starts from the same empty archive instead of building its own.
        static EMPTY: std::sync::OnceLock<Arc<StateBase>> = std::sync::OnceLock::new();
        Self {
            base: Arc::clone(EMPTY.get_or_init(|| Arc::new(StateBase::empty()))),
            overlay: OrdMap::new(),
            overlay_len: 0,
            base_position: 0,
        }
    }
}

impl RoomState {
    pub fn from_base(base: StateBase, position: Position) -> Self {
        Self {
            base: Arc::new(base),
            overlay: OrdMap::new(),
            overlay_len: 0,
            base_position: position,
        }
    }

    pub fn get(&self, kind: &str, key: &str) -> Option<StateRef<'_>> {
        if let Some(ev) = self.overlay.get(kind).and_then(|m| m.get(key)) {
            return Some(StateRef::Overlay(ev));
        }
        self.base.find(kind, key).map(StateRef::Base)
    }

    /// Every state event of one type.
    pub fn of_kind(&self, kind: &str) -> Vec<StateRef<'_>> {
        let over = self.overlay.get(kind);
        let mut out: Vec<StateRef<'_>> = self
            .base
            .of_kind(kind)
            .iter()
            .filter(|e| over.is_none_or(|m| !m.contains_key(e.state_key.as_str())))
            .map(StateRef::Base)
            .collect();
        if let Some(m) = over {
            out.extend(m.values().map(|e| StateRef::Overlay(e)));
        }
        out
    }

    /// Every state event.
    pub fn all(&self) -> Vec<StateRef<'_>> {
        let mut out: Vec<StateRef<'_>> = self
            .base
            .archived()
            .entries
            .iter()
            .filter(|e| {
                self.overlay
                    .get(e.kind.as_str())
                    .is_none_or(|m| !m.contains_key(e.state_key.as_str()))
            })
            .map(StateRef::Base)
            .collect();
        out.extend(
            self.overlay
                .values()
                .flat_map(|m| m.values())
                .map(|e| StateRef::Overlay(e)),
        );
        out
    }

    pub fn len(&self) -> usize {
        // Overlay entries that replace a base key are counted twice; this is a size hint
        // for the fold threshold, not an exact count.
        self.base.len() + self.overlay_len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn set(&mut self, ev: Arc<Event>) {
        let kind = ev.kind.clone();
        let key: Box<str> = ev.state_key.as_deref().unwrap_or("").into();
        let mut inner = self.overlay.get(&*kind).cloned().unwrap_or_default();
        if inner.insert(key, ev).is_none() {
            self.overlay_len += 1;
        }
        self.overlay.insert(kind, inner);
    }

    /// Whether the overlay has grown enough that a new base pays for itself, or the room
    /// is new: its first state goes straight into an archive, because a small persistent
    /// map costs several KiB of tree nodes while the archive costs its bytes.
    pub fn wants_fold(&self) -> bool {
        let first = self.base.is_empty() && self.overlay_len > 0;
        first || self.overlay_len > 64.max(self.base.len() / 4)
    }

    /// Writes base and overlay into a new archive valid as of `position`.
    pub fn fold(&mut self, position: Position) {
        let mut entries: Vec<StateEntry> = self.all().into_iter().map(StateRef::to_entry).collect();
        entries.sort_by(|a, b| (&a.kind, &a.state_key).cmp(&(&b.kind, &b.state_key)));
        self.base = Arc::new(StateBase::build(StateArchive { entries }));
        self.overlay = OrdMap::new();
        self.overlay_len = 0;
        self.base_position = position;
    }

    pub fn base(&self) -> &StateBase {
        &self.base
    }

    pub fn base_position(&self) -> Position {
        self.base_position
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: &str, key: &str, id: &str, pos: u64) -> Arc<Event> {
        Arc::new(Event {
            event_id: id.into(),
            kind: kind.into(),
            state_key: Some(key.into()),
            sender: "@a:x".into(),
            origin_server_ts: pos,
            membership: (kind == "m.room.member").then_some(Membership::Join),
            text: None,
            detail: None,
            prev_batch: None,
            gap_before: false,
            filled_order: None,
            position: pos,
            json: Bytes::from(format!("{{\"event_id\":\"{id}\"}}")),
        })
    }

    #[test]
    fn overlay_shadows_base_and_survives_a_fold() {
        let mut s = RoomState::default();
        s.set(ev("m.room.name", "", "$1", 1));
        s.set(ev("m.room.member", "@a:x", "$2", 2));
        s.fold(2);
        assert_eq!(s.base().len(), 2);
        s.set(ev("m.room.name", "", "$3", 3));
        assert_eq!(s.get("m.room.name", "").unwrap().event_id(), "$3");
        assert_eq!(s.all().len(), 2, "the replaced base entry is hidden");
        s.fold(3);
        assert_eq!(s.get("m.room.name", "").unwrap().event_id(), "$3");
        assert_eq!(
            s.get("m.room.member", "@a:x").unwrap().membership(),
            Some(Membership::Join)
        );
    }

    #[test]
    fn stored_bytes_round_trip_and_garbage_is_refused() {
        let mut s = RoomState::default();
        s.set(ev("m.room.create", "", "$c", 1));
        s.fold(1);
        let loaded = StateBase::from_stored(&s.base().bytes()).unwrap();
        assert_eq!(
            loaded.find("m.room.create", "").unwrap().event_id.as_str(),
            "$c"
        );
        assert!(StateBase::from_stored(b"not an archive at all, clearly").is_err());
    }

    #[test]
    fn of_kind_merges_both_halves() {
        let mut s = RoomState::default();
        for i in 0..5 {
            s.set(ev(
                "m.room.member",
                &format!("@u{i}:x"),
                &format!("$m{i}"),
                i,
            ));
        }
        s.fold(5);
        s.set(ev("m.room.member", "@u1:x", "$new", 6));
        s.set(ev("m.room.member", "@u9:x", "$m9", 7));
        let members = s.of_kind("m.room.member");
        assert_eq!(members.len(), 6);
        assert!(members.iter().any(|m| m.event_id() == "$new"));
        assert!(!members.iter().any(|m| m.event_id() == "$m1"));
    }
}
