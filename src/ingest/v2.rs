//! One v2 `/sync` response into the store.

use std::sync::Arc;

use bytes::Bytes;

use super::metrics::PollerMetrics;
use crate::event::{Event, Membership};
use crate::store::txn_ids::Delivered;
use crate::store::users::UserState;
use crate::store::{RoomDelta, Store};
use crate::types::{now_ms, DeviceKey, RoomId};
use crate::upstream::wire::{self, SyncResponse};

/// A response we could not use at all (not the v2 shape).
#[derive(Debug, thiserror::Error)]
#[error("unreadable /sync response: {0}")]
pub struct ProcessError(String);

fn parse_events(events: &[sonic_rs::LazyValue<'_>], room: &str) -> Vec<Event> {
    parse_sent_events(events, room, "", &mut Vec::new())
}

/// [`parse_events`], gathering the events `user` sent into `sent`, with the transaction
/// ID of those this device sent.
fn parse_sent_events(
    events: &[sonic_rs::LazyValue<'_>],
    room: &str,
    user: &str,
    sent: &mut Vec<Delivered>,
) -> Vec<Event> {
    events
        .iter()
        .filter_map(
            |raw| match wire::parse_sent_event(raw.as_raw_str().as_bytes()) {
                Ok((ev, txn)) => {
                    if &*ev.sender == user {
                        sent.push((ev.event_id.clone(), txn));
                    }
                    Some(ev)
                }
                Err(e) => {
                    tracing::debug!(room, error = %e, "dropping malformed event");
                    None
                }
            },
        )
        .collect()
}

/// Applies one response for `device` of `user` and queues its durable writes. Returns
/// `next_batch`. Its writes are queued before this returns, so the caller's `since` comes
/// after them. Counts what it applies in `metrics`.
pub async fn process(
    store: &Store,
    user: &UserState,
    device: &DeviceKey,
    body: &[u8],
    metrics: &PollerMetrics,
) -> Result<String, ProcessError> {
    let body = wire::clamp(body);
    let resp: SyncResponse<'_> =
        wire::parse_sync(&body).map_err(|e| ProcessError(e.to_string()))?;
    let rooms = resp.rooms.unwrap_or_default();
    let queue = store.queue();
    // Credits are reserved room by room, not for the whole response: a big account's
    // initial sync must not take every credit and make all other pollers wait until
    // Postgres has committed it. Each room needs a row per event and a few more
    // (membership, unread, snapshot).
    for (room_id, joined) in rooms.join {
        let reservation = queue
            .reserve(joined.state.events.len() + joined.timeline.events.len() + 3)
            .await;
        let room_id: RoomId = room_id.into();
        let mut sent = Vec::new();
        let mut delta = RoomDelta {
            room_id: room_id.clone(),
            state: parse_events(&joined.state.events, &room_id),
            timeline: parse_sent_events(
                &joined.timeline.events,
                &room_id,
                &user.user_id,
                &mut sent,
            ),
            prev_batch: joined.timeline.prev_batch,
            limited: joined.timeline.limited,
            stored: Default::default(),
            redacted: Vec::new(),
        };
        observe_room(metrics, &delta);
        delta.stored = store.stored_copies(&delta).await;
        delta.redacted = redactions(store, &delta);
        // Before the events are applied: a connection of this device woken by them
        // finds the transaction IDs already there.
        store.txn_ids.remember(device, sent);
        store.apply_room(delta);
        store.confirm_join(user, &room_id);
        if let Some(unread) = joined.unread_notifications {
            metrics.payload("V2UnreadCounts");
            store.set_unread(
                user,
                &room_id,
                unread.notification_count.unwrap_or(0),
                unread.highlight_count.unwrap_or(0),
            );
        }
        queue.release(reservation);
    }
    for (room_id, invited) in rooms.invite {
        let reservation = queue.reserve(1).await;
        let room_id: RoomId = room_id.into();
        let mut state = Vec::with_capacity(2 + invited.invite_state.events.len() * 256);
        state.push(b'[');
        for (i, ev) in invited.invite_state.events.iter().enumerate() {
            if i > 0 {
                state.push(b',');
            }
            state.extend_from_slice(ev.as_raw_str().as_bytes());
        }
        state.push(b']');
        // Any server can date an invite in the future; it must not pin the room on top.
        let now = now_ms();
        let ts = wire::invite_ts(&state, &user.user_id).map_or(now, |ts| ts.min(now));
        store.set_invite(user, &room_id, Bytes::from(state), ts);
        metrics.payload("V2InviteRoom");
        queue.release(reservation);
    }
    for (room_id, left) in rooms.leave {
        let reservation = queue
            .reserve(left.state.events.len() + left.timeline.events.len() + 2)
            .await;
        let room_id: RoomId = room_id.into();
        let timeline = parse_events(&left.timeline.events, &room_id);
        let leave_id = timeline
            .iter()
            .rev()
            .find(|e| {
                e.state_key.as_deref() == Some(&*user.user_id)
                    && matches!(e.membership, Some(Membership::Leave | Membership::Ban))
            })
            .map(|e| e.event_id.clone());
        let mut delta = RoomDelta {
            room_id: room_id.clone(),
            state: parse_events(&left.state.events, &room_id),
            timeline,
            prev_batch: left.timeline.prev_batch,
            limited: left.timeline.limited,
            stored: Default::default(),
            redacted: Vec::new(),
        };
        delta.stored = store.stored_copies(&delta).await;
        delta.redacted = redactions(store, &delta);
        store.apply_room(delta);
        let leave_event = leave_id.and_then(|id| find_timeline_event(store, &room_id, &id));
        store.set_left(user, &room_id, leave_event);
        metrics.payload("V2LeaveRoom");
        queue.release(reservation);
    }
    Ok(resp.next_batch)
}

/// The Go proxy's per-room poller metrics: its `V2Initialise` carried a state block and
/// its `V2Accumulate` a timeline.
fn observe_room(metrics: &PollerMetrics, delta: &RoomDelta) {
    let limited = if delta.limited {
        "limited"
    } else {
        "unlimited"
    };
    metrics
        .timeline_size
        .get_or_create(&[("limited", limited)])
        .observe(delta.timeline.len() as f64);
    if delta.limited && !delta.state.is_empty() {
        metrics.gappy_state_size.observe(delta.state.len() as f64);
    }
    if !delta.state.is_empty() {
        metrics.payload("V2Initialise");
    }
    if !delta.timeline.is_empty() {
        metrics.payload("V2Accumulate");
    }
}

/// The redacted form of each event the delta's redactions target, where the delta or the
/// store holds it (see `RoomSnapshot::redaction_target`), under the room's version.
fn redactions(store: &Store, delta: &RoomDelta) -> Vec<(Box<str>, Bytes)> {
    let mut targets = delta
        .timeline
        .iter()
        .filter(|e| &*e.kind == "m.room.redaction")
        .filter_map(|e| e.text.as_deref().map(|target| (target, e)))
        .peekable();
    if targets.peek().is_none() {
        return Vec::new();
    }
    let room = store.room(&delta.room_id);
    let in_delta = |id: &str| {
        delta
            .state
            .iter()
            .chain(&delta.timeline)
            .find(|e| &*e.event_id == id)
            .map(|e| e.json.clone())
    };
    let create = room
        .as_ref()
        .and_then(|r| {
            r.state
                .get("m.room.create", "")
                .map(|c| Bytes::copy_from_slice(c.json()))
        })
        .or_else(|| {
            let ev = delta.state.iter().chain(&delta.timeline);
            ev.filter(|e| &*e.kind == "m.room.create")
                .map(|e| e.json.clone())
                .next()
        });
    let version = create.map_or_else(|| "1".to_owned(), |c| wire::room_version(&c));
    let mut out = Vec::new();
    for (target, redaction) in targets {
        let held = room
            .as_ref()
            .and_then(|r| r.redaction_target(target))
            .map(|e| e.json.clone());
        let Some(json) = held.or_else(|| in_delta(target)) else {
            continue;
        };
        if let Some(redacted) = wire::redact(&json, &version, &redaction.json) {
            out.push((target.into(), redacted));
        }
    }
    out
}

fn find_timeline_event(store: &Store, room_id: &str, event_id: &str) -> Option<Arc<Event>> {
    let room = store.room(room_id)?;
    room.timeline
        .iter()
        .rev()
        .find(|e| &*e.event_id == event_id)
        .cloned()
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::store::testing::store;

    fn device() -> DeviceKey {
        DeviceKey::new("@a:x", "DEV")
    }

    const BODY: &[u8] = br#"{"next_batch":"s1","rooms":{"join":{"!r:x":{"state":{"events":[{"type":"m.room.create","state_key":"","event_id":"$c","sender":"@a:x","content":{}}]},"timeline":{"limited":true,"prev_batch":"p","events":[{"type":"m.room.member","state_key":"@a:x","event_id":"$j","sender":"@a:x","content":{"membership":"join"}},{"type":"m.room.message","event_id":"$m","sender":"@a:x","origin_server_ts":5,"content":{"body":"hi"}}]},"unread_notifications":{"notification_count":2}}},"invite":{"!i:x":{"invite_state":{"events":[{"type":"m.room.member","state_key":"@a:x","sender":"@b:x","content":{"membership":"invite"}}]}}},"leave":{"!l:x":{"timeline":{"events":[]}}}}}"#;

    #[tokio::test]
    async fn a_response_is_applied_to_rooms_and_memberships() {
        let store = store();
        let user = store.user_or_insert(&"@a:x".into());
        assert_eq!(
            process(&store, &user, &device(), BODY, &PollerMetrics::default())
                .await
                .unwrap(),
            "s1"
        );
        let room = store.room("!r:x").unwrap();
        assert_eq!(room.timeline.len(), 2);
        assert!(
            room.timeline[0].gap_before,
            "a limited timeline starts after a gap"
        );
        assert_eq!(room.timeline[0].prev_batch.as_deref(), Some("p"));
        let data = user.read();
        assert!(matches!(
            data.membership("!r:x"),
            Some(crate::store::users::UserMembership::Join { .. })
        ));
        assert!(matches!(
            data.membership("!i:x"),
            Some(crate::store::users::UserMembership::Invite { .. })
        ));
        assert_eq!(data.rooms["!r:x"].notification_count, 2);
    }

    /// Any federated server can send an event that nests 30,000 levels deep.
    #[tokio::test]
    async fn a_deeply_nested_event_is_stored_clamped_instead_of_crashing() {
        let store = store();
        let user = store.user_or_insert(&"@a:x".into());
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let body = format!(
            r#"{{"next_batch":"s1","rooms":{{"join":{{"!r:x":{{"timeline":{{"events":[{{"type":"m.room.message","event_id":"$deep","sender":"@b:x","content":{{"body":"hi","x":{deep}}}}}]}}}}}}}}}}"#
        );
        assert_eq!(
            process(
                &store,
                &user,
                &device(),
                body.as_bytes(),
                &PollerMetrics::default()
            )
            .await
            .unwrap(),
            "s1"
        );
        let room = store.room("!r:x").unwrap();
        let stored: sonic_rs::Value = sonic_rs::from_slice(&room.timeline[0].json).unwrap();
        use sonic_rs::JsonValueTrait;
        assert_eq!(stored["content"]["body"].as_str(), Some("hi"));
    }

    /// Any server in a room can put bytes that are not UTF-8 into an event; the fuzzer
    /// found that sonic-rs then builds a `&str` of them while skipping the event (a
    /// debug assertion, undefined behaviour in release) and refuses the whole body at
    /// its end, so the poller would retry that response forever.
    #[tokio::test]
    async fn invalid_utf8_in_an_event_is_replaced_instead_of_refusing_the_response() {
        let store = store();
        let user = store.user_or_insert(&"@a:x".into());
        let body = [
            &br#"{"next_batch":"s1","rooms":{"join":{"!r:x":{"timeline":{"events":[{"type":"m.room.message","event_id":"$m","sender":"@b:x","content":{"body":"a"#[..],
            b"\xc0\x9e",
            br#"b"}}]}}}}}"#,
        ]
        .concat();
        assert_eq!(
            process(&store, &user, &device(), &body, &PollerMetrics::default())
                .await
                .unwrap(),
            "s1"
        );
        let room = store.room("!r:x").unwrap();
        let stored: sonic_rs::Value = sonic_rs::from_slice(&room.timeline[0].json).unwrap();
        use sonic_rs::JsonValueTrait;
        assert_eq!(
            stored["content"]["body"].as_str(),
            Some("a\u{fffd}\u{fffd}b")
        );
    }

    /// Random byte edits of a valid response: applied, or refused, never a panic.
    #[tokio::test]
    async fn mangled_responses_never_panic() {
        let store = store();
        let user = store.user_or_insert(&"@a:x".into());
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        for _ in 0..3_000 {
            let mut body = BODY.to_vec();
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(0..body.len());
                body[at] = b"{}[]\",:0a\\"[rng.gen_range(0..10)];
            }
            let _ = process(&store, &user, &device(), &body, &PollerMetrics::default()).await;
        }
    }
}
