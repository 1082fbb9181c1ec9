//! The to-device and e2ee extensions against a scripted homeserver: delivery, order,
//! acknowledgement, wake-ups, privacy, cancellations, and what a restart keeps.

use std::time::Duration;

use sonic_rs::{json, JsonContainerTrait, JsonValueTrait, Value};

use crate::support::db::{Backend, TestDb};
use crate::support::fake::{FakeHomeserver, Reply};
use crate::support::on_both_stores;
use crate::support::proxy::{message_numbers, next_batch, pos, scripted, Proxy};
use crate::support::v2::*;

const ALICE: &str = "@alice:test";
const BOB: &str = "@bob:test";
const DEVICES: &[(&str, &str, &str)] = &[
    ("alice_token", ALICE, "ALICEDEV"),
    ("bob_token", BOB, "BOBDEV"),
];

fn to_device_request(since: Option<&str>, limit: Option<u64>) -> Value {
    let mut ext = json!({"enabled": true});
    if let Some(since) = since {
        ext["since"] = Value::from(since);
    }
    if let Some(limit) = limit {
        ext["limit"] = Value::from(limit);
    }
    json!({"extensions": {"to_device": ext}})
}

fn e2ee_request() -> Value {
    json!({"extensions": {"e2ee": {"enabled": true}}})
}

fn numbered(from: u64, to: u64) -> Vec<Value> {
    (from..to)
        .map(|n| to_device(BOB, "m.test", json!({"n": n})))
        .collect()
}

/// Delivers to-device events to `token`'s device in one v2 response.
fn send(hs: &FakeHomeserver, token: &str, events: Vec<Value>) {
    hs.push(
        token,
        Reply::Body(sync_body(json!({"to_device": {"events": events}}))),
    );
}

/// Waits until the device's poller has applied every response scripted so far: a marker
/// room pushed after them shows up in a room list (a poller applies its responses in
/// order). Starts the poller if it is not running.
async fn settle(hs: &FakeHomeserver, proxy: &Proxy, token: &str) {
    let marker = format!("!marker{}:test", rand::random::<u32>());
    let user = DEVICES
        .iter()
        .chain(&[("alice_phone", ALICE, "PHONE")])
        .find(|d| d.0 == token)
        .map_or(ALICE, |d| d.1);
    hs.push_rooms(
        token,
        rooms_join(vec![(marker.as_str(), new_room(user, None, 1_000))]),
    );
    let list = json!({"conn_id": "settle", "lists": {"all": {"ranges": [[0, 99]]}}});
    let mut p: Option<String> = None;
    for _ in 0..50 {
        let resp = proxy.sync_ok(token, p.as_deref(), 2_000, &list).await;
        if resp["rooms"].get(&marker).is_some() {
            return;
        }
        p = Some(pos(&resp));
    }
    panic!("the poller of {token} never applied its scripted responses");
}

/// Syncs (each time acknowledging what came before) until `n` messages arrived.
async fn receive(proxy: &Proxy, token: &str, n: usize) -> (Vec<u64>, String, String) {
    let mut got = Vec::new();
    let mut since: Option<String> = None;
    let mut p: Option<String> = None;
    for _ in 0..50 {
        let resp = proxy
            .sync_ok(
                token,
                p.as_deref(),
                2_000,
                &to_device_request(since.as_deref(), None),
            )
            .await;
        got.extend(message_numbers(&resp));
        since = Some(next_batch(&resp));
        p = Some(pos(&resp));
        if got.len() >= n {
            break;
        }
    }
    (got, since.unwrap_or_default(), p.unwrap_or_default())
}

#[tokio::test]
async fn to_device_messages_arrive_in_order_until_acknowledged() {
    let (_db, hs, proxy) = scripted(DEVICES).await;
    send(&hs, "alice_token", numbered(0, 3));
    let first = proxy
        .sync_ok("alice_token", None, 0, &to_device_request(None, None))
        .await;
    assert_eq!(message_numbers(&first), [0, 1, 2]);
    let batch = next_batch(&first);

    // The response was lost: the same `since` (none) gets the same messages again.
    let again = proxy
        .sync_ok(
            "alice_token",
            Some(&pos(&first)),
            0,
            &to_device_request(None, None),
        )
        .await;
    assert_eq!(
        message_numbers(&again),
        [0, 1, 2],
        "unacknowledged: sent again"
    );

    let acked = proxy
        .sync_ok(
            "alice_token",
            Some(&pos(&again)),
            0,
            &to_device_request(Some(&batch), None),
        )
        .await;
    assert!(message_numbers(&acked).is_empty(), "{acked:?}");
    assert_eq!(next_batch(&acked), batch, "nothing new: next_batch stays");

    send(&hs, "alice_token", numbered(3, 5));
    let (later, _, _) = receive(&proxy, "alice_token", 2).await;
    assert_eq!(later, [3, 4], "only the new ones, in order");
    proxy.stop().await;
}

/// A client's `since` from another database (or from before one was reset) names
/// positions this device was never handed: it acknowledges nothing it was not handed,
/// so the messages still come, as in the Go proxy. Once they were handed out, a `since`
/// at or past them acknowledges them.
#[tokio::test]
async fn a_since_from_elsewhere_acknowledges_only_what_was_handed_out() {
    let (_db, hs, proxy) = scripted(DEVICES).await;
    send(&hs, "alice_token", numbered(0, 2));
    let far = to_device_request(Some("9000000000"), None);
    let first = proxy.sync_ok("alice_token", None, 0, &far).await;
    assert_eq!(message_numbers(&first), [0, 1]);
    send(&hs, "alice_token", numbered(2, 3));
    let mut p = pos(&first);
    let mut later = Vec::new();
    for _ in 0..10 {
        let resp = proxy.sync_ok("alice_token", Some(&p), 5_000, &far).await;
        p = pos(&resp);
        later = message_numbers(&resp);
        if !later.is_empty() {
            break;
        }
    }
    assert_eq!(later, [2], "0 and 1 were acknowledged by a since past them");
    proxy.stop().await;
}

#[tokio::test]
async fn limit_defaults_to_a_hundred_and_the_rest_follows() {
    let (_db, hs, proxy) = scripted(DEVICES).await;
    send(&hs, "alice_token", numbered(0, 150));
    // Wait for the poller: the first request of a device waits for its first poll.
    let first = proxy
        .sync_ok("alice_token", None, 0, &to_device_request(None, None))
        .await;
    assert_eq!(message_numbers(&first), (0..100).collect::<Vec<_>>());
    let rest = proxy
        .sync_ok(
            "alice_token",
            Some(&pos(&first)),
            0,
            &to_device_request(Some(&next_batch(&first)), Some(20)),
        )
        .await;
    assert_eq!(message_numbers(&rest), (100..120).collect::<Vec<_>>());
    let huge = json!({"extensions": {"to_device": {
        "since": next_batch(&rest), "limit": u64::MAX,
    }}});
    let last = proxy
        .sync_ok("alice_token", Some(&pos(&rest)), 0, &huge)
        .await;
    assert_eq!(
        message_numbers(&last),
        (120..150).collect::<Vec<_>>(),
        "any limit is lowered to what a response may carry"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_new_to_device_message_wakes_a_parked_long_poll() {
    let (_db, hs, proxy) = scripted(DEVICES).await;
    let first = proxy
        .sync_ok("alice_token", None, 0, &to_device_request(None, None))
        .await;
    let parked = proxy.spawn_sync(
        "alice_token",
        Some(&pos(&first)),
        20_000,
        &to_device_request(Some(&next_batch(&first)), None),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!parked.is_finished(), "nothing to send yet");
    send(&hs, "alice_token", numbered(7, 8));
    let woken = tokio::time::timeout(Duration::from_secs(5), parked)
        .await
        .expect("the message wakes the parked request at once")
        .unwrap();
    assert_eq!(woken.status, 200, "{}", woken.text());
    assert_eq!(message_numbers(&woken.json()), [7]);
    proxy.stop().await;
}

#[tokio::test]
async fn one_users_token_never_sees_another_users_to_device_messages() {
    let (_db, hs, proxy) = scripted(DEVICES).await;
    send(&hs, "bob_token", numbered(0, 2));
    send(&hs, "alice_token", numbered(10, 11));
    let (bobs, _, _) = receive(&proxy, "bob_token", 2).await;
    assert_eq!(bobs, [0, 1]);
    let (alices, _, _) = receive(&proxy, "alice_token", 1).await;
    assert_eq!(alices, [10], "alice gets hers only");
    // Alice asking with Bob's positions acknowledges nothing of Bob's.
    let sneaky = proxy
        .sync_ok("alice_token", None, 0, &to_device_request(Some("1"), None))
        .await;
    assert!(message_numbers(&sneaky).iter().all(|n| *n >= 10));
    proxy.stop().await;
}

#[tokio::test]
async fn a_cancelled_key_request_is_dropped_unless_it_was_delivered() {
    let (_db, hs, proxy) = scripted(DEVICES).await;
    send(
        &hs,
        "alice_token",
        vec![
            key_request(BOB, "BOBDEV", "r1", "request"),
            to_device(BOB, "m.test", json!({"n": 1})),
        ],
    );
    send(
        &hs,
        "alice_token",
        vec![key_request(BOB, "BOBDEV", "r1", "request_cancellation")],
    );
    settle(&hs, &proxy, "alice_token").await;
    let first = proxy
        .sync_ok("alice_token", None, 0, &to_device_request(None, None))
        .await;
    let events = first["extensions"]["to_device"]["events"]
        .as_array()
        .unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["m.test"],
        "the request and its cancellation cancel out"
    );

    // A request already handed out stays, and its cancellation is delivered too.
    send(
        &hs,
        "alice_token",
        vec![key_request(BOB, "BOBDEV", "r2", "request")],
    );
    let mut p = pos(&first);
    let mut since = next_batch(&first);
    let mut seen = Vec::new();
    for _ in 0..20 {
        let resp = proxy
            .sync_ok(
                "alice_token",
                Some(&p),
                2_000,
                &to_device_request(Some(&since), None),
            )
            .await;
        p = pos(&resp);
        since = next_batch(&resp);
        for e in resp["extensions"]["to_device"]["events"]
            .as_array()
            .unwrap()
            .iter()
        {
            seen.push(e["content"]["action"].as_str().unwrap_or("").to_owned());
        }
        if seen.len() == 1 {
            send(
                &hs,
                "alice_token",
                vec![key_request(BOB, "BOBDEV", "r2", "request_cancellation")],
            );
        }
        if seen.len() >= 2 {
            break;
        }
    }
    assert_eq!(seen, ["request", "request_cancellation"]);
    proxy.stop().await;
}

#[tokio::test]
async fn e2ee_sends_key_counts_and_an_empty_fallback_list_is_a_value() {
    let (_db, hs, proxy) = scripted(DEVICES).await;
    hs.push(
        "alice_token",
        Reply::Body(sync_body(json!({
            "device_one_time_keys_count": {"signed_curve25519": 50},
            "device_unused_fallback_key_types": ["signed_curve25519"],
        }))),
    );
    // An initial request answers at once, whatever long-poll time it asks for.
    let first = tokio::time::timeout(
        Duration::from_secs(10),
        proxy.sync_ok("alice_token", None, 60_000, &e2ee_request()),
    )
    .await
    .expect("an initial request with extension data answers at once");
    let e2ee = &first["extensions"]["e2ee"];
    assert_eq!(
        e2ee["device_one_time_keys_count"]["signed_curve25519"].as_u64(),
        Some(50)
    );
    assert_eq!(
        e2ee["device_unused_fallback_key_types"][0].as_str(),
        Some("signed_curve25519")
    );
    assert!(e2ee.get("device_lists").is_none(), "no changes: left out");

    // The fallback key is used (Synapse also sends the unstable name): `[]`, not absent.
    let parked = proxy.spawn_sync("alice_token", Some(&pos(&first)), 20_000, &e2ee_request());
    tokio::time::sleep(Duration::from_millis(100)).await;
    hs.push(
        "alice_token",
        Reply::Body(sync_body(json!({
            "device_one_time_keys_count": {"signed_curve25519": 50},
            "org.matrix.msc2732.device_unused_fallback_key_types": [],
        }))),
    );
    let live = tokio::time::timeout(Duration::from_secs(5), parked)
        .await
        .expect("a key change wakes the long-poll")
        .unwrap()
        .json();
    let e2ee = &live["extensions"]["e2ee"];
    assert_eq!(
        e2ee["device_unused_fallback_key_types"]
            .as_array()
            .map(|a| a.len()),
        Some(0),
        "{live:?}"
    );
    assert!(
        e2ee.get("device_one_time_keys_count").is_none(),
        "the counts did not change: {live:?}"
    );

    // A new connection gets the current values again.
    let fresh = proxy.sync_ok("alice_token", None, 0, &e2ee_request()).await;
    let e2ee = &fresh["extensions"]["e2ee"];
    assert_eq!(
        e2ee["device_one_time_keys_count"]["signed_curve25519"].as_u64(),
        Some(50)
    );
    assert_eq!(
        e2ee["device_unused_fallback_key_types"]
            .as_array()
            .map(|a| a.len()),
        Some(0)
    );
    proxy.stop().await;
}

#[tokio::test]
async fn device_list_changes_are_delivered_once_and_the_last_batch_again_to_a_new_connection() {
    let (_db, hs, proxy) = scripted(DEVICES).await;
    let first = proxy.sync_ok("alice_token", None, 0, &e2ee_request()).await;
    hs.push(
        "alice_token",
        Reply::Body(sync_body(json!({
            "device_lists": {"changed": ["@carol:test", "@dan:test"], "left": ["@erin:test"]},
        }))),
    );
    hs.push(
        "alice_token",
        Reply::Body(sync_body(json!({
            "device_lists": {"changed": [], "left": ["@dan:test"]},
        }))),
    );
    settle(&hs, &proxy, "alice_token").await;
    let live = proxy
        .sync_ok("alice_token", Some(&pos(&first)), 5_000, &e2ee_request())
        .await;
    let lists = &live["extensions"]["e2ee"]["device_lists"];
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&lists["changed"]), ["@carol:test"]);
    assert_eq!(
        names(&lists["left"]),
        ["@dan:test", "@erin:test"],
        "a later left replaces an earlier change"
    );

    // The client may not have processed them before it lost the connection.
    let fresh = proxy.sync_ok("alice_token", None, 0, &e2ee_request()).await;
    assert_eq!(
        names(&fresh["extensions"]["e2ee"]["device_lists"]["changed"]),
        ["@carol:test"],
        "a new connection gets the last delivered batch again"
    );
    let after = proxy
        .sync_ok("alice_token", Some(&pos(&fresh)), 0, &e2ee_request())
        .await;
    assert!(
        after["extensions"]["e2ee"].get("device_lists").is_none(),
        "a later request acknowledges them: {after:?}"
    );
    let again = proxy.sync_ok("alice_token", None, 0, &e2ee_request()).await;
    assert!(
        again["extensions"]["e2ee"].get("device_lists").is_none(),
        "acknowledged: not sent again {again:?}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_second_device_of_a_polled_user_first_polls_without_rooms() {
    let (_db, hs, proxy) = scripted(&[
        ("alice_token", ALICE, "ALICEDEV"),
        ("alice_phone", ALICE, "PHONE"),
    ])
    .await;
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![("!r:test", new_room(ALICE, Some("R"), 1_000))]),
    );
    proxy.sync_ok("alice_token", None, 0, &json!({})).await;
    send(&hs, "alice_phone", numbered(0, 1));
    let (got, _, _) = receive(&proxy, "alice_phone", 1).await;
    assert_eq!(got, [0]);
    let calls = hs.calls_for("alice_phone");
    let filter: Value = sonic_rs::from_str(&calls[0].filter).unwrap();
    assert_eq!(
        filter["room"]["rooms"].as_array().map(|r| r.len()),
        Some(0),
        "the first poll asks for no rooms: {}",
        calls[0].filter
    );
    let first_device: Value = sonic_rs::from_str(&hs.calls_for("alice_token")[0].filter).unwrap();
    assert!(first_device["room"].get("rooms").is_none());
    proxy.stop().await;
}

#[tokio::test]
async fn extension_fields_beyond_their_limits_are_refused_by_name() {
    let (_db, _hs, proxy) = scripted(DEVICES).await;
    let many: Vec<String> = (0..101).map(|i| format!("l{i}")).collect();
    for (body, needle) in [
        (
            json!({"extensions": {"to_device": {"enabled": true, "since": "abc"}}}),
            "extensions.to_device.since",
        ),
        (
            json!({"extensions": {"e2ee": {"enabled": true, "lists": many}}}),
            "extensions.e2ee.lists",
        ),
    ] {
        let resp = proxy.sync("alice_token", None, 0, &body).await;
        assert_eq!(resp.status, 400, "{}", resp.text());
        assert!(resp.text().contains(needle), "{}", resp.text());
    }
    proxy.stop().await;
}

on_both_stores!(
    unacknowledged_messages_and_device_lists_survive_a_restart,
    messages_past_what_memory_holds_are_delivered_in_order
);

async fn unacknowledged_messages_and_device_lists_survive_a_restart(backend: Backend) {
    let db = TestDb::of(backend).await;
    let hs = FakeHomeserver::with_devices(DEVICES);
    let proxy = Proxy::start(&db.url, hs.clone()).await;
    hs.push(
        "alice_token",
        Reply::Body(sync_body(json!({
            "to_device": {"events": numbered(0, 3)},
            "device_lists": {"changed": ["@carol:test"]},
            "device_one_time_keys_count": {"signed_curve25519": 7},
        }))),
    );
    let first = proxy
        .sync_ok(
            "alice_token",
            None,
            0,
            &json!({"extensions": {
                "to_device": {"enabled": true, "limit": 1},
                "e2ee": {"enabled": true},
            }}),
        )
        .await;
    assert_eq!(message_numbers(&first), [0]);
    let first_batch = next_batch(&first);
    // The first is acknowledged; the others are handed out, not acknowledged.
    let second = proxy
        .sync_ok(
            "alice_token",
            Some(&pos(&first)),
            0,
            &json!({"extensions": {"to_device": {"since": first_batch, "limit": 100}}}),
        )
        .await;
    assert_eq!(message_numbers(&second), [1, 2]);
    proxy.stop().await;

    // A homeserver with nothing new: what is served comes from the database.
    let proxy = Proxy::start(&db.url, FakeHomeserver::with_devices(DEVICES)).await;
    let after = proxy
        .sync_ok(
            "alice_token",
            None,
            0,
            &json!({"extensions": {
                "to_device": {"enabled": true, "since": first_batch},
                "e2ee": {"enabled": true},
            }}),
        )
        .await;
    assert_eq!(
        message_numbers(&after),
        [1, 2],
        "what was not acknowledged is kept, in order"
    );
    assert!(
        next_batch(&after).parse::<u64>().unwrap() > first_batch.parse::<u64>().unwrap(),
        "positions go on from where they were"
    );
    let e2ee = &after["extensions"]["e2ee"];
    assert_eq!(
        e2ee["device_one_time_keys_count"]["signed_curve25519"].as_u64(),
        Some(7)
    );
    proxy.stop().await;
}

/// A client that does not acknowledge lets messages pile up past what memory holds; they
/// are stored and come back in order.
async fn messages_past_what_memory_holds_are_delivered_in_order(backend: Backend) {
    let db = TestDb::of(backend).await;
    let hs = FakeHomeserver::with_devices(DEVICES);
    let proxy = Proxy::start(&db.url, hs.clone()).await;
    let total = slidesync::store::devices::TO_DEVICE_IN_MEMORY as u64 + 300;
    for from in (0..total).step_by(100) {
        send(&hs, "alice_token", numbered(from, (from + 100).min(total)));
    }
    settle(&hs, &proxy, "alice_token").await;
    let mut got = Vec::new();
    let mut since: Option<String> = None;
    let mut p: Option<String> = None;
    for _ in 0..100 {
        let resp = proxy
            .sync_ok(
                "alice_token",
                p.as_deref(),
                2_000,
                &to_device_request(since.as_deref(), Some(1_000)),
            )
            .await;
        got.extend(message_numbers(&resp));
        since = Some(next_batch(&resp));
        p = Some(pos(&resp));
        if got.len() as u64 >= total {
            break;
        }
    }
    assert_eq!(got, (0..total).collect::<Vec<_>>());
    proxy.stop().await;
}

/// DESIGN invariant 2: the homeserver deletes a device's to-device messages once it is
/// polled with the `next_batch` that delivered them, so the poller must not poll with it
/// before they are committed. Postgres is cut off meanwhile: the message is served from
/// memory, and the poller waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_homeserver_is_not_polled_past_to_device_messages_before_they_are_committed() {
    let db = TestDb::postgres().await;
    let (chaos, through_chaos) = crate::support::chaos::Chaos::before_postgres(&db.url).await;
    let hs = FakeHomeserver::with_devices(DEVICES);
    let proxy = Proxy::start(&through_chaos, hs.clone()).await;
    let first = proxy
        .sync_ok("alice_token", None, 0, &to_device_request(None, None))
        .await;

    chaos.refuse();
    let body = sync_body(json!({"to_device": {"events": numbered(0, 1)}}));
    let batch = sonic_rs::from_str::<Value>(&body).unwrap()["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    hs.push("alice_token", Reply::Body(body));
    let served = proxy
        .sync_ok(
            "alice_token",
            Some(&pos(&first)),
            5_000,
            &to_device_request(Some(&next_batch(&first)), None),
        )
        .await;
    assert_eq!(
        message_numbers(&served),
        [0],
        "served from memory meanwhile"
    );
    for _ in 0..1_000 {
        if chaos.refused() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(chaos.refused() >= 2, "the writer tried Postgres again");
    assert!(
        hs.calls_for("alice_token")
            .iter()
            .all(|c| c.since.as_deref() != Some(&*batch)),
        "polled past uncommitted messages"
    );

    chaos.restore();
    hs.wait_for_call("alice_token", "once the messages are committed", |c| {
        c.since.as_deref() == Some(&*batch)
    })
    .await;
    proxy.stop().await;
}
