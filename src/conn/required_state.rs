//! Which state events a room's `required_state` asks for.

use std::collections::HashSet;

use bytes::Bytes;

use crate::store::state::{RoomState, StateRef};
use crate::types::Position;

/// Resolves `[type, state_key]` pairs against the room's current state. `*` matches any
/// type or key; `$ME` is the reader. With `["*", "*"]`, the other entries narrow the
/// types they name (all state, but of members only the ones listed).
pub fn resolve(entries: &[(String, String)], state: &RoomState, me: &str) -> Vec<Bytes> {
    resolve_until(entries, state, me, Position::MAX)
}

/// [`resolve`], leaving out state set after `until`: what a user removed from the room
/// at `until` may see of it.
pub fn resolve_until<'s>(
    entries: &[(String, String)],
    state: &'s RoomState,
    me: &str,
    until: Position,
) -> Vec<Bytes> {
    let key = |k: &str| -> String {
        if k == "$ME" {
            me.to_owned()
        } else {
            k.to_owned()
        }
    };
    let mut seen: HashSet<&'s str> = HashSet::new();
    let mut out = Vec::new();
    let mut push = |s: StateRef<'s>, out: &mut Vec<Bytes>| {
        if s.position() <= until && seen.insert(s.event_id()) {
            out.push(Bytes::copy_from_slice(s.json()));
        }
    };
    let everything = entries.iter().any(|(t, k)| t == "*" && k == "*");
    if everything {
        let narrowed: Vec<(&str, String)> = entries
            .iter()
            .filter(|(t, _)| t != "*")
            .map(|(t, k)| (t.as_str(), key(k)))
            .collect();
        for s in state.all() {
            let rules: Vec<&(&str, String)> =
                narrowed.iter().filter(|(t, _)| *t == s.kind()).collect();
            if rules.is_empty() || rules.iter().any(|(_, k)| k == "*" || k == s.state_key()) {
                push(s, &mut out);
            }
        }
        return out;
    }
    for (t, k) in entries {
        let k = key(k);
        match (t.as_str(), k.as_str()) {
            ("*", k) => {
                for s in state.all().into_iter().filter(|s| s.state_key() == k) {
                    push(s, &mut out);
                }
            }
            (t, "*") => {
                for s in state.of_kind(t) {
                    push(s, &mut out);
                }
            }
            (t, k) => {
                if let Some(s) = state.get(t, k) {
                    push(s, &mut out);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::{Event, Membership};

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
}
