//! One v2 `/sync` response into the store.

use std::sync::Arc;

use bytes::Bytes;

use super::metrics::PollerMetrics;
use crate::event::{Event, Membership};
use crate::store::devices::DeviceState;
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

/// What a response left for the poller to do.
#[derive(Debug)]
pub struct Processed {
    pub next_batch: String,
    /// The response carried to-device messages or device-list changes. The homeserver
    /// deletes those once it is polled with `next_batch`, so they must be committed
    /// before it is (DESIGN invariant 2): storage is then the only copy.
    pub device_data: bool,
}

/// Applies one response for `user` and `device` and queues its durable writes. Its
/// writes are queued before this returns, so the caller's `since` comes after them.
/// Counts what it applies in `metrics`.
pub async fn process(
    store: &Store,
    user: &UserState,
    device: &DeviceState,
    body: &[u8],
    metrics: &PollerMetrics,
) -> Result<Processed, ProcessError> {
    let body = wire::clamp(body);
    let mut resp: SyncResponse<'_> =
        wire::parse_sync(&body).map_err(|e| ProcessError(e.to_string()))?;
    let queue = store.queue();
    let device_data = device_data(store, device, &resp, metrics).await;
    let rooms = resp.rooms.take().unwrap_or_default();
    account_data(store, user, None, &resp.account_data.events, metrics).await;
    // Credits are reserved room by room, not for the whole response: a big account's
    // initial sync must not take every credit and make all other pollers wait until
    // Postgres has committed it. Each room needs a row per event and a few more
    // (membership, unread, snapshot).
    for (room_id, joined) in rooms.join {
        let reservation = queue
            .reserve(
                joined.state.events.len()
                    + joined.timeline.events.len()
                    + joined.ephemeral.events.len()
                    + 3,
            )
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
        store.txn_ids.remember(&device.key, sent);
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
        ephemeral(
            store,
            user,
            &device.key,
            &room_id,
            &joined.ephemeral.events,
            metrics,
        );
        queue.release(reservation);
        let room = Some(&room_id);
        account_data(store, user, room, &joined.account_data.events, metrics).await;
    }
    // Every response marks the device as polled, rooms or not (see `TxnIds::settle`).
    store.txn_ids.remember(&device.key, Vec::new());
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
        let facts = wire::invite_facts(&state, &user.user_id);
        let ts = facts.ts.map_or(now, |ts| ts.min(now));
        store.set_invite(user, &room_id, Bytes::from(state), facts, ts);
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
    Ok(Processed {
        next_batch: resp.next_batch,
        device_data,
    })
}

/// Account data events, global (`room` `None`) or of a joined room: one write each at
/// most, reserved like any other.
async fn account_data(
    store: &Store,
    user: &UserState,
    room: Option<&RoomId>,
    events: &[sonic_rs::LazyValue<'_>],
    metrics: &PollerMetrics,
) {
    if events.is_empty() {
        return;
    }
    let queue = store.queue();
    let reservation = queue.reserve(events.len()).await;
    for raw in events {
        match wire::parse_account(raw.as_raw_str().as_bytes()) {
            Some(ev) => {
                metrics.payload("V2AccountData");
                store.set_account_data(user, room, ev);
            }
            None => tracing::debug!(room = ?room, "dropping malformed account data"),
        }
    }
    queue.release(reservation);
}

/// A joined room's `m.receipt` and `m.typing` EDUs.
fn ephemeral(
    store: &Store,
    user: &UserState,
    device: &DeviceKey,
    room_id: &RoomId,
    events: &[sonic_rs::LazyValue<'_>],
    metrics: &PollerMetrics,
) {
    for raw in events {
        let raw = raw.as_raw_str().as_bytes();
        if let Some(receipts) = wire::parse_receipts(raw) {
            metrics.payload("V2Receipt");
            store.set_receipts(user, room_id, receipts);
        } else if let Some(users) = wire::parse_typing(raw) {
            metrics.payload("V2Typing");
            store.set_typing(device, room_id, users);
        }
    }
}

/// The device's part of a response: key counts, device-list changes and to-device
/// messages, queued (with credits, like rooms) before the caller queues `since`.
/// Returns whether there were messages or device-list changes.
async fn device_data(
    store: &Store,
    device: &DeviceState,
    resp: &SyncResponse<'_>,
    metrics: &PollerMetrics,
) -> bool {
    let (changed, left) = resp
        .device_lists
        .as_ref()
        .map(wire::DeviceLists::users)
        .unwrap_or_default();
    let list_changes = changed.len() + left.len();
    let messages: Vec<_> = resp
        .to_device
        .iter()
        .flat_map(|t| &t.events)
        .filter_map(|raw| {
            let parsed = wire::parse_to_device(raw.as_raw_str().as_bytes());
            if parsed.is_none() {
                tracing::debug!(device = %device.key, "dropping a malformed to-device event");
            }
            parsed
        })
        .collect();
    let reservation = store
        .queue()
        .reserve(messages.len() + list_changes + 1)
        .await;
    store.set_device_keys(device, resp.otk_counts(), resp.fallback_key_types());
    if list_changes > 0 {
        metrics.payload("V2DeviceData");
        store.add_device_lists(device, changed, left);
    }
    let delivered = !messages.is_empty() || list_changes > 0;
    if !messages.is_empty() {
        metrics.payload("V2DeviceMessages");
        store.add_to_device(device, messages);
    }
    store.queue().release(reservation);
    delivered
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
    use crate::types::DeviceKey;

    fn device(store: &crate::store::Store) -> Arc<DeviceState> {
        store.device(&DeviceKey::new("@a:x", "DEV"))
    }

    const BODY: &[u8] = br#"{"next_batch":"s1","rooms":{"join":{"!r:x":{"state":{"events":[{"type":"m.room.create","state_key":"","event_id":"$c","sender":"@a:x","content":{}}]},"timeline":{"limited":true,"prev_batch":"p","events":[{"type":"m.room.member","state_key":"@a:x","event_id":"$j","sender":"@a:x","content":{"membership":"join"}},{"type":"m.room.message","event_id":"$m","sender":"@a:x","origin_server_ts":5,"content":{"body":"hi"}}]},"unread_notifications":{"notification_count":2}}},"invite":{"!i:x":{"invite_state":{"events":[{"type":"m.room.member","state_key":"@a:x","sender":"@b:x","content":{"membership":"invite"}}]}}},"leave":{"!l:x":{"timeline":{"events":[]}}}}}"#;

    #[tokio::test]
    async fn device_data_is_read_and_a_bad_device_list_entry_is_skipped() {
        let store = store();
        let user = store.user_or_insert(&"@a:x".into());
        let body = br#"{"next_batch":"s1","to_device":{"events":[{"type":"m.test","sender":"@b:x","content":{}},"not an event"]},"device_lists":{"changed":["@b:x",5,null],"left":[]},"org.matrix.msc2732.device_unused_fallback_key_types":[]}"#;
        let processed = process(
            &store,
            &user,
            &device(&store),
            body,
            &PollerMetrics::default(),
        )
        .await
        .unwrap();
        assert!(processed.device_data);
        let data = device(&store).read();
        assert_eq!(data.to_device.len(), 1, "the string is no event");
        assert_eq!(
            data.lists_new.keys().map(|u| &**u).collect::<Vec<_>>(),
            ["@b:x"]
        );
        assert_eq!(data.fallback_types.as_deref(), Some(&b"[]"[..]));
        assert!(data.otk_counts.is_none(), "absent, not empty");
    }

    #[tokio::test]
    async fn a_response_is_applied_to_rooms_and_memberships() {
        let store = store();
        let user = store.user_or_insert(&"@a:x".into());
        assert_eq!(
            process(
                &store,
                &user,
                &device(&store),
                BODY,
                &PollerMetrics::default()
            )
            .await
            .unwrap()
            .next_batch,
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

    #[tokio::test]
    async fn account_data_receipts_and_typing_are_kept_and_typing_has_one_source() {
        let store = store();
        let user = store.user_or_insert(&"@a:x".into());
        let body = br#"{"next_batch":"s1","account_data":{"events":[{"type":"m.direct","content":{"@b:x":["!r:x"]}}]},"rooms":{"join":{"!r:x":{"timeline":{"events":[{"type":"m.room.member","state_key":"@b:x","event_id":"$jb","sender":"@b:x","content":{"membership":"join"}},{"type":"m.room.member","state_key":"@a:x","event_id":"$j","sender":"@a:x","content":{"membership":"join"}}]},"account_data":{"events":[{"type":"m.tag","content":{"tags":{"u.x":{}}}}]},"ephemeral":{"events":[{"type":"m.typing","content":{"user_ids":["@b:x"]}},{"type":"m.receipt","content":{"$j":{"m.read":{"@b:x":{"ts":1}},"m.read.private":{"@a:x":{"ts":2},"@b:x":{"ts":3}}},"$j2":{"m.read":{"@stranger:x":{"ts":4}}}}}]}}}}}"#;
        process(
            &store,
            &user,
            &device(&store),
            body,
            &PollerMetrics::default(),
        )
        .await
        .unwrap();
        let data = user.read();
        assert!(data.is_dm("!r:x"));
        assert_eq!(data.account.tags("!r:x"), [Box::<str>::from("u.x")]);
        let room = store.ephemeral("!r:x").unwrap();
        assert_eq!(&*room.typing.users, [crate::types::UserId::from("@b:x")]);
        let seen = |viewer: &str| {
            let mut r: Vec<(String, bool)> = room
                .receipts
                .initial(["$j"], viewer)
                .iter()
                .map(|r| (r.user_id.to_string(), r.private))
                .collect();
            r.sort();
            r
        };
        assert_eq!(
            seen("@a:x"),
            [("@a:x".into(), true), ("@b:x".into(), false)],
            "another user's private receipt in a's response is not kept"
        );
        assert_eq!(seen("@c:x"), [("@b:x".into(), false)]);
        assert!(
            room.receipts.initial(["$j2"], "@c:x").is_empty(),
            "a receipt of someone not in the room is not kept"
        );

        // Another poller in the room reports no typing: it is not the room's source.
        let other = store.device(&DeviceKey::new("@c:x", "C"));
        let c = store.user_or_insert(&"@c:x".into());
        let no_typing = br#"{"next_batch":"s2","rooms":{"join":{"!r:x":{"ephemeral":{"events":[{"type":"m.typing","content":{"user_ids":[]}}]}}}}}"#;
        process(&store, &c, &other, no_typing, &PollerMetrics::default())
            .await
            .unwrap();
        assert_eq!(store.ephemeral("!r:x").unwrap().typing.users.len(), 1);
        // Once a's poller stops, the next poller to report typing is the source.
        store.poller_stopped(&device(&store).key);
        assert!(store.ephemeral("!r:x").unwrap().typing.users.is_empty());
        let typing = br#"{"next_batch":"s3","rooms":{"join":{"!r:x":{"ephemeral":{"events":[{"type":"m.typing","content":{"user_ids":["@c:x"]}}]}}}}}"#;
        process(&store, &c, &other, typing, &PollerMetrics::default())
            .await
            .unwrap();
        assert_eq!(store.ephemeral("!r:x").unwrap().typing.users.len(), 1);
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
                &device(&store),
                body.as_bytes(),
                &PollerMetrics::default()
            )
            .await
            .unwrap()
            .next_batch,
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
            process(
                &store,
                &user,
                &device(&store),
                &body,
                &PollerMetrics::default()
            )
            .await
            .unwrap()
            .next_batch,
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

    const DEVICE_BODY: &[u8] = br#"{"next_batch":"s2","to_device":{"events":[{"type":"m.room_key_request","sender":"@b:x","content":{"action":"request","request_id":"r","requesting_device_id":"D"}},{"type":"m.room.encrypted","sender":"@b:x","content":{"ciphertext":"x"}}]},"device_lists":{"changed":["@b:x"],"left":["@c:x"]},"device_one_time_keys_count":{"signed_curve25519":5},"device_unused_fallback_key_types":[]}"#;

    /// Random byte edits of valid responses: applied, or refused, never a panic.
    #[tokio::test]
    async fn mangled_responses_never_panic() {
        let store = store();
        let user = store.user_or_insert(&"@a:x".into());
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        for i in 0..6_000 {
            let mut body = if i % 2 == 0 { BODY } else { DEVICE_BODY }.to_vec();
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(0..body.len());
                body[at] = b"{}[]\",:0a\\"[rng.gen_range(0..10)];
            }
            let _ = process(
                &store,
                &user,
                &device(&store),
                &body,
                &PollerMetrics::default(),
            )
            .await;
        }
    }

    /// Redaction keeps a room's history visibility (every room version does): a room
    /// that shows members only what happened since they joined stays one.
    #[tokio::test]
    async fn a_redacted_history_visibility_still_hides_history() {
        let store = store();
        let user = store.user_or_insert(&"@a:x".into());
        let body = br#"{"next_batch":"s1","rooms":{"join":{"!r:x":{"state":{"events":[{"type":"m.room.create","state_key":"","event_id":"$c","sender":"@a:x","content":{"room_version":"10"}}]},"timeline":{"events":[{"type":"m.room.history_visibility","state_key":"","event_id":"$hv","sender":"@a:x","content":{"history_visibility":"joined"}},{"type":"m.room.member","state_key":"@a:x","event_id":"$j","sender":"@a:x","content":{"membership":"join"}},{"type":"m.room.redaction","redacts":"$hv","event_id":"$r","sender":"@a:x","content":{}}]}}}}}"#;
        process(
            &store,
            &user,
            &device(&store),
            body,
            &PollerMetrics::default(),
        )
        .await
        .unwrap();
        assert!(!store.room("!r:x").unwrap().shares_history());
    }
}
