//! Which state events a room's `required_state` asks for.

use std::collections::HashSet;

use bytes::Bytes;

use crate::store::state::{RoomState, StateRef};
use crate::types::Position;

/// The member type, the only one `$LAZY` applies to.
const MEMBER: &str = "m.room.member";

/// A room's `required_state` entries, for one reader.
///
/// `[type, key]` exact, `*` for any type or key, `$ME` for the reader, and
/// `[m.room.member, $LAZY]` for the members whose events the client is shown (the
/// timeline's senders, see [`Lazy`]). With `["*", "*"]` the other entries narrow the
/// types they name, as in the Go proxy: all state, but of members only those listed.
pub struct Selection<'a> {
    entries: &'a [(String, String)],
    me: &'a str,
    everything: bool,
}

impl<'a> Selection<'a> {
    pub fn new(entries: &'a [(String, String)], me: &'a str) -> Self {
        Self {
            entries,
            me,
            everything: entries.iter().any(|(t, k)| t == "*" && k == "*"),
        }
    }

    /// Whether any entry asks for members lazily.
    pub fn wants_lazy(&self) -> bool {
        self.entries
            .iter()
            .any(|(t, k)| t == MEMBER && k == "$LAZY")
    }

    fn key_matches(&self, rule: &str, kind: &str, key: &str, lazy: &dyn Fn(&str) -> bool) -> bool {
        match rule {
            "*" => true,
            "$ME" => key == self.me,
            "$LAZY" if kind == MEMBER => lazy(key),
            rule => rule == key,
        }
    }

    /// Whether the state event `(kind, key)` is selected; `lazy` says whether a member
    /// is one the client is to get lazily.
    pub fn includes(&self, kind: &str, key: &str, lazy: &dyn Fn(&str) -> bool) -> bool {
        if self.everything {
            let mut named = self
                .entries
                .iter()
                .filter(|(t, _)| t != "*" && t == kind)
                .peekable();
            // No entry names this type: all state includes it.
            return named.peek().is_none()
                || named.any(|(_, k)| self.key_matches(k, kind, key, lazy));
        }
        self.entries
            .iter()
            .any(|(t, k)| (t == "*" || t == kind) && self.key_matches(k, kind, key, lazy))
    }

    /// Resolves the selection against the room's current state. `lazy_members`: the
    /// members `$LAZY` stands for in this answer.
    pub fn resolve(&self, state: &RoomState, lazy_members: &[&str]) -> Vec<Bytes> {
        self.resolve_until(state, lazy_members, Position::MAX)
    }

    /// [`Selection::resolve`], leaving out state set after `until`: what a user removed
    /// from the room at `until` may see of it.
    pub fn resolve_until(
        &self,
        state: &RoomState,
        lazy_members: &[&str],
        until: Position,
    ) -> Vec<Bytes> {
        let lazy = |user: &str| lazy_members.contains(&user);
        let mut seen: HashSet<&str> = HashSet::new();
        let mut out = Vec::new();
        fn push<'s>(
            s: StateRef<'s>,
            until: Position,
            out: &mut Vec<Bytes>,
            seen: &mut HashSet<&'s str>,
        ) {
            if s.position() <= until && seen.insert(s.event_id()) {
                out.push(Bytes::copy_from_slice(s.json()));
            }
        }
        if self.everything {
            for s in state.all() {
                if self.includes(s.kind(), s.state_key(), &lazy) {
                    push(s, until, &mut out, &mut seen);
                }
            }
            return out;
        }
        // Entry by entry, so an exact entry costs one lookup, not a walk over the state.
        for (t, k) in self.entries {
            match (t.as_str(), k.as_str()) {
                (MEMBER, "$LAZY") => {
                    for user in lazy_members {
                        if let Some(s) = state.get(MEMBER, user) {
                            push(s, until, &mut out, &mut seen);
                        }
                    }
                }
                ("*", k) => {
                    let k = if k == "$ME" { self.me } else { k };
                    for s in state.all().into_iter().filter(|s| s.state_key() == k) {
                        push(s, until, &mut out, &mut seen);
                    }
                }
                (t, "*") => {
                    for s in state.of_kind(t) {
                        push(s, until, &mut out, &mut seen);
                    }
                }
                (t, k) => {
                    let k = if k == "$ME" { self.me } else { k };
                    if let Some(s) = state.get(t, k) {
                        push(s, until, &mut out, &mut seen);
                    }
                }
            }
        }
        out
    }
}

/// Members already sent lazily on one connection, for one room: each goes out once.
/// Bounded: past [`Lazy::MAX`] members the memory starts over, so a busy room costs at
/// most that much per connection, and a member may then be sent a second time (which
/// a client takes as a no-op).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Lazy {
    sent: HashSet<Box<str>>,
}

impl Lazy {
    pub const MAX: usize = 256;

    pub fn contains(&self, user: &str) -> bool {
        self.sent.contains(user)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.sent.iter().map(|u| &**u)
    }

    /// Remembers `user`; false if it was sent before.
    pub fn insert(&mut self, user: &str) -> bool {
        if self.sent.contains(user) {
            return false;
        }
        if self.sent.len() >= Self::MAX {
            self.sent.clear();
        }
        self.sent.insert(user.into())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::{Event, Membership};

    fn resolve(entries: &[(String, String)], state: &RoomState, me: &str) -> Vec<Bytes> {
        Selection::new(entries, me).resolve(state, &[])
    }

    fn state() -> RoomState {
        let mut s = RoomState::default();
        for (kind, key) in [
            ("m.room.create", ""),
            ("m.room.name", ""),
            ("m.room.member", "@me:x"),
            ("m.room.member", "@other:x"),
        ] {
            s.set(Arc::new(Event {
                event_id: format!("${kind}{key}").into(),
                kind: kind.into(),
                state_key: Some(key.into()),
                sender: "@me:x".into(),
                origin_server_ts: 0,
                membership: (kind == "m.room.member").then_some(Membership::Join),
                text: None,
                detail: None,
                prev_batch: None,
                gap_before: false,
                filled_order: None,
                position: 1,
                json: Bytes::from(format!("\"{kind}|{key}\"")),
            }));
        }
        s
    }

    fn names(v: Vec<Bytes>) -> Vec<String> {
        let mut v: Vec<String> = v
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        v.sort();
        v
    }

    fn req(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn exact_entries_and_me_pick_single_events() {
        let got = resolve(
            &req(&[("m.room.name", ""), ("m.room.member", "$ME")]),
            &state(),
            "@me:x",
        );
        assert_eq!(names(got), ["\"m.room.member|@me:x\"", "\"m.room.name|\""]);
    }

    #[test]
    fn star_key_returns_every_event_of_the_type() {
        let got = resolve(&req(&[("m.room.member", "*")]), &state(), "@me:x");
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn all_state_narrowed_by_named_types() {
        let got = resolve(
            &req(&[("*", "*"), ("m.room.member", "$ME")]),
            &state(),
            "@me:x",
        );
        assert_eq!(
            names(got),
            [
                "\"m.room.create|\"",
                "\"m.room.member|@me:x\"",
                "\"m.room.name|\""
            ]
        );
    }

    #[test]
    fn missing_state_is_simply_absent() {
        assert!(resolve(&req(&[("m.room.topic", "")]), &state(), "@me:x").is_empty());
    }

    #[test]
    fn lazy_members_are_the_ones_named_for_this_answer() {
        let entries = req(&[("m.room.name", ""), ("m.room.member", "$LAZY")]);
        let selection = Selection::new(&entries, "@me:x");
        assert!(selection.wants_lazy());
        assert_eq!(
            names(selection.resolve(&state(), &["@other:x", "@gone:x"])),
            ["\"m.room.member|@other:x\"", "\"m.room.name|\""]
        );
        assert_eq!(
            names(selection.resolve(&state(), &[])),
            ["\"m.room.name|\""]
        );
    }

    #[test]
    fn all_state_with_lazy_members_holds_only_the_lazy_members() {
        let entries = req(&[("*", "*"), ("m.room.member", "$LAZY")]);
        let selection = Selection::new(&entries, "@me:x");
        assert_eq!(
            names(selection.resolve(&state(), &["@other:x"])),
            [
                "\"m.room.create|\"",
                "\"m.room.member|@other:x\"",
                "\"m.room.name|\""
            ]
        );
        let lazy = |u: &str| u == "@other:x";
        assert!(selection.includes("m.room.topic", "", &lazy));
        assert!(!selection.includes("m.room.member", "@me:x", &lazy));
    }

    #[test]
    fn lazy_memory_is_bounded_and_starts_over() {
        let mut lazy = Lazy::default();
        assert!(lazy.insert("@a:x"));
        assert!(!lazy.insert("@a:x"));
        for i in 0..Lazy::MAX {
            lazy.insert(&format!("@u{i}:x"));
        }
        assert!(lazy.sent.len() <= Lazy::MAX);
        assert!(
            !lazy.contains("@a:x"),
            "forgotten once the memory filled up"
        );
    }
}
