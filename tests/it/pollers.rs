//! The pollers as the homeserver sees them, and what clients get from them: request
//! shape, de-duplication across users, back-off, dead tokens, one poller per device, and
//! what survives a restart (DESIGN section 2 and invariants 2, 5, 6).

use std::sync::Arc;
use std::time::Duration;

use sonic_rs::{json, JsonValueTrait, Value};

use crate::support::db::{Backend, TestDb};
use crate::support::fake::{FakeHomeserver, Reply, SeenCall};
use crate::support::on_both_stores;
use crate::support::proxy::{pos, room_ids, scripted, synced_ids, timeline_ids, Proxy};
use crate::support::v2::*;

const ALICE: &str = "@alice:test";
const BOB: &str = "@bob:test";
const ROOM: &str = "!shared:test";

fn list_request(timeline_limit: u64) -> Value {
    json!({"lists": {"all": {
        "ranges": [[0, 19]],
        "timeline_limit": timeline_limit,
        "required_state": [["m.room.name", ""]]
    }}})
}

const DEVICES: [(&str, &str, &str); 2] = [
    ("alice_token", ALICE, "ALICEDEV"),
    ("bob_token", BOB, "BOBDEV"),
];

fn fake() -> Arc<FakeHomeserver> {
    FakeHomeserver::with_devices(&DEVICES)
}

async fn setup() -> (TestDb, Arc<FakeHomeserver>, Proxy) {
    scripted(&DEVICES).await
}

/// `room.timeline.limit` of a poll's filter.
fn timeline_limit(call: &SeenCall) -> u64 {
    let filter: Value = sonic_rs::from_str(&call.filter)
        .unwrap_or_else(|e| panic!("the filter is not JSON ({e}): {}", call.filter));
    filter["room"]["timeline"]["limit"]
        .as_u64()
        .unwrap_or_else(|| panic!("no room.timeline.limit in {}", call.filter))
}

/// Names of the rooms in a response's first SYNC op, in list order.
fn names_in_order(resp: &Value) -> Vec<String> {
    synced_ids(resp, "all")
        .iter()
        .map(|id| {
            resp["rooms"][id.as_str()]["name"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn the_first_poll_is_small_and_immediate_and_later_ones_long_poll_from_the_last_batch() {
    let (_db, hs, proxy) = setup().await;
    let first = hs.push_rooms(
        "alice_token",
        rooms_join(vec![("!a:test", new_room(ALICE, Some("A"), 1_000))]),
    );
    proxy
        .sync_ok("alice_token", None, 0, &list_request(1))
        .await;
    let second = hs.push_rooms(
        "alice_token",
        rooms_join(vec![(
            "!a:test",
            joined(vec![], vec![message(ALICE, "more", 2_000)]),
        )]),
    );
    let calls = hs
        .wait_for_call("alice_token", "since the second batch", |c| {
            c.since.as_deref() == Some(&second)
        })
        .await;

    let initial = &calls[0];
    assert_eq!(initial.since, None);
    assert_eq!(initial.timeout_ms, 0, "the first poll does not wait");
    assert_eq!(
        timeline_limit(initial),
        1,
        "the first poll asks for one event per room"
    );
    let filter: Value = sonic_rs::from_str(&initial.filter).unwrap();
    assert_eq!(
        filter["presence"]["not_types"],
        json!(["*"]),
        "presence is never fetched"
    );

    let later = &calls[1..];
    assert!(!later.is_empty());
    for call in later {
        assert_eq!(call.timeout_ms, 30_000, "{call:?}");
        assert_eq!(timeline_limit(call), 50, "{call:?}");
    }
    // Each poll carries the batch the previous one returned: the first batch until the
    // second arrives, then the second, never going back.
    let sinces: Vec<&str> = later.iter().map(|c| c.since.as_deref().unwrap()).collect();
    assert_eq!(sinces[0], first, "{sinces:?}");
    let switch = sinces.iter().position(|s| *s == second).unwrap();
    assert!(sinces[..switch].iter().all(|s| *s == first), "{sinces:?}");
    assert!(sinces[switch..].iter().all(|s| *s == second), "{sinces:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn an_event_delivered_by_two_pollers_is_stored_and_shown_once() {
    let (_db, hs, proxy) = setup().await;
    let m1 = message(BOB, "one", 1_010);
    let room = joined(
        vec![
            create(BOB, 1_000),
            member(BOB, "join", 1_001),
            member(ALICE, "join", 1_002),
        ],
        vec![m1.clone()],
    );
    hs.push_rooms("alice_token", rooms_join(vec![(ROOM, room.clone())]));
    hs.push_rooms("bob_token", rooms_join(vec![(ROOM, room)]));
    let alice = proxy
        .sync_ok("alice_token", None, 0, &list_request(10))
        .await;
    let bob = proxy.sync_ok("bob_token", None, 0, &list_request(10)).await;
    assert_eq!(timeline_ids(&alice, ROOM), [id_of(&m1)]);
    assert_eq!(timeline_ids(&bob, ROOM), [id_of(&m1)]);

    // Bob's poller is first with m2; Alice's brings m2 again, with m3.
    let (m2, m3) = (message(BOB, "two", 1_020), message(ALICE, "three", 1_030));
    let parked = proxy.spawn_sync("alice_token", Some(&pos(&alice)), 3_000, &json!({}));
    hs.push_rooms(
        "bob_token",
        rooms_join(vec![(ROOM, joined(vec![], vec![m2.clone()]))]),
    );
    let live = parked.await.unwrap().json();
    assert_eq!(timeline_ids(&live, ROOM), [id_of(&m2)]);
    let parked = proxy.spawn_sync("alice_token", Some(&pos(&live)), 3_000, &json!({}));
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(ROOM, joined(vec![], vec![m2.clone(), m3.clone()]))]),
    );
    let live = parked.await.unwrap().json();
    assert_eq!(
        timeline_ids(&live, ROOM),
        [id_of(&m3)],
        "m2 is not sent twice"
    );
    assert_eq!(live["rooms"][ROOM]["num_live"].as_u64(), Some(1));

    let want = [id_of(&m1), id_of(&m2), id_of(&m3)];
    let alice = proxy
        .sync_ok("alice_token", None, 0, &list_request(10))
        .await;
    assert_eq!(
        timeline_ids(&alice, ROOM),
        want,
        "the room's timeline holds each event once"
    );
    let bob = proxy.sync_ok("bob_token", None, 0, &list_request(10)).await;
    assert_eq!(timeline_ids(&bob, ROOM), want);
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_errors_are_retried_with_growing_backoff_until_the_poller_recovers() {
    let (_db, hs, proxy) = setup().await;
    for _ in 0..3 {
        hs.push("alice_token", Reply::Status(500));
    }
    let batch = hs.push_rooms(
        "alice_token",
        rooms_join(vec![("!a:test", new_room(ALICE, Some("A"), 1_000))]),
    );

    // The client's first request waits through the failures for the first good poll.
    let resp = proxy
        .sync_ok("alice_token", None, 0, &list_request(1))
        .await;
    assert_eq!(synced_ids(&resp, "all"), ["!a:test"]);

    // Three failures and the body: the poller took every scripted reply.
    hs.drained("alice_token").await;
    let calls = hs.wait_for_calls("alice_token", 5).await;
    for call in &calls[..4] {
        assert_eq!(
            call.since, None,
            "a failed poll does not advance since: {call:?}"
        );
        assert_eq!(call.timeout_ms, 0, "still the first poll: {call:?}");
    }
    assert_eq!(
        calls[4].since.as_deref(),
        Some(&*batch),
        "after recovery the poller moves on"
    );
    let gaps: Vec<Duration> = calls[..4].windows(2).map(|w| w[1].at - w[0].at).collect();
    // Test settings: 50 ms doubling per failure, with jitter in [half, full].
    let backoff = crate::support::proxy::settings().poller.backoff;
    for (i, gap) in gaps.iter().enumerate() {
        let least = backoff * (1 << i) / 2;
        assert!(
            *gap >= least,
            "retry {} came after {gap:?}, before its back-off {least:?}: {gaps:?}",
            i + 1
        );
    }
    assert!(gaps[2] > gaps[0], "the back-off grows: {gaps:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_token_the_homeserver_rejects_stops_its_poller_and_is_refused_afterwards() {
    let (db, hs, proxy) = setup().await;
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![("!a:test", new_room(ALICE, Some("A"), 1_000))]),
    );
    proxy
        .sync_ok("alice_token", None, 0, &list_request(1))
        .await;
    let before = hs.calls_for("alice_token").len();
    hs.revoke("alice_token");
    // The poller's next /sync gets the 401.
    hs.wait_for_calls("alice_token", before + 1).await;

    // Until the poller has acted on it, the proxy may still trust its cached session.
    let mut refused = None;
    for _ in 0..100 {
        let resp = proxy.sync("alice_token", None, 0, &list_request(1)).await;
        if resp.status != 200 {
            refused = Some(resp);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = refused.expect("the client is eventually refused");
    assert_eq!(refused.status, 401, "{}", refused.text());
    assert_eq!(refused.json()["errcode"].as_str(), Some("M_UNKNOWN_TOKEN"));
    let whoami = hs.whoami_calls();
    let again = proxy.sync("alice_token", None, 0, &list_request(1)).await;
    assert_eq!(again.status, 401, "{}", again.text());
    assert_eq!(
        hs.whoami_calls(),
        whoami,
        "the dead token is now refused from the cache"
    );

    // The poller stopped: no more /sync calls with the dead token. A short wait, longer
    // than the fake's idle long-poll, to see that nothing happens.
    let calls = hs.calls_for("alice_token").len();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        hs.calls_for("alice_token").len(),
        calls,
        "the poller keeps polling a dead token"
    );
    proxy.stop().await;

    // The token was forgotten for good: a restarted proxy does not resume polling it,
    // even where the homeserver would take it. Again a short wait to see nothing happen.
    let hs = fake();
    let proxy = Proxy::start(&db.url, hs.clone()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        hs.calls_for("alice_token").is_empty(),
        "a dead token was resumed"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_device_that_presents_a_new_token_keeps_its_poller_when_the_old_one_dies() {
    let (_db, hs, proxy) = setup().await;
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![("!a:test", new_room(ALICE, Some("A"), 1_000))]),
    );
    proxy
        .sync_ok("alice_token", None, 0, &list_request(1))
        .await;
    // Keep the poller's next request with the old token out until we say so (a call
    // counted before `hold` may not be held; the one after it is).
    hs.hold("alice_token");
    let polls = hs.calls_for("alice_token").len();
    hs.wait_for_calls("alice_token", polls + 1).await;

    // A refresh: the same device gets a new token and uses it while the poller's
    // request with the old one is still out; that request then comes back 401.
    hs.add_device("alice_refreshed", ALICE, "ALICEDEV");
    let resp = proxy
        .sync("alice_refreshed", None, 0, &list_request(1))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    hs.push("alice_token", Reply::Status(401));
    hs.release("alice_token");

    // Only the old token died: the poller goes on with the new one, without waiting for
    // the client to come back.
    let calls = hs
        .wait_for_call(
            "alice_refreshed",
            "the poller moved to the new token",
            |_| true,
        )
        .await;
    assert!(
        calls[0].since.is_some(),
        "it resumes, no new initial sync: {calls:?}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_token_rejected_on_its_first_poll_gets_unknown_token_instead_of_a_wait() {
    let (_db, hs, proxy) = setup().await;
    hs.push("alice_token", Reply::Status(401));
    let resp = tokio::time::timeout(
        Duration::from_secs(1),
        proxy.sync("alice_token", None, 0, &list_request(1)),
    )
    .await
    .expect("the request does not wait for a poller that stopped");
    assert_eq!(resp.status, 401, "{}", resp.text());
    assert_eq!(resp.json()["errcode"].as_str(), Some("M_UNKNOWN_TOKEN"));
    proxy.stop().await;
}

#[tokio::test]
async fn a_hung_homeserver_does_not_delay_what_can_be_answered_from_memory() {
    let (_db, hs, proxy) = setup().await;
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![
            ("!a:test", new_room(ALICE, Some("A"), 1_000)),
            ("!b:test", new_room(ALICE, Some("B"), 2_000)),
        ]),
    );
    let first = proxy
        .sync_ok("alice_token", None, 0, &list_request(1))
        .await;
    let polls = hs.calls_for("alice_token").len();
    hs.hold("alice_token");
    hs.wait_for_calls("alice_token", polls + 1).await;

    let quick = |what: &'static str| move |_| panic!("{what} waited for the homeserver");
    let narrowed = json!({"lists": {"all": {"ranges": [[0, 0]]}}});
    let resp = tokio::time::timeout(
        Duration::from_secs(1),
        proxy.sync_ok("alice_token", Some(&pos(&first)), 10_000, &narrowed),
    )
    .await
    .unwrap_or_else(quick("a range change"));
    assert_eq!(crate::support::proxy::ops(&resp, "all"), ["INVALIDATE 1-1"]);
    let fresh = tokio::time::timeout(
        Duration::from_secs(1),
        proxy.sync_ok("alice_token", None, 10_000, &list_request(1)),
    )
    .await
    .unwrap_or_else(quick("a new connection"));
    assert_eq!(synced_ids(&fresh, "all"), ["!b:test", "!a:test"]);
    proxy.stop().await;
}

#[tokio::test]
async fn concurrent_first_requests_of_a_device_start_exactly_one_poller() {
    let (_db, hs, proxy) = setup().await;
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![("!a:test", new_room(ALICE, Some("A"), 1_000))]),
    );
    // The homeserver is slow to answer, so every request arrives while the first poll
    // is still out.
    hs.hold("alice_token");
    let requests: Vec<_> = (0..16)
        .map(|_| proxy.spawn_sync("alice_token", None, 0, &list_request(1)))
        .collect();
    hs.wait_for_calls("alice_token", 1).await;
    // A short wait for the other requests to arrive and (wrongly) start pollers of
    // their own.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        requests.iter().all(|r| !r.is_finished()),
        "every request waits for the first poll"
    );
    hs.release("alice_token");
    for r in requests {
        let resp = r.await.unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(synced_ids(&resp.json(), "all"), ["!a:test"]);
    }
    let initial_polls = hs
        .calls_for("alice_token")
        .iter()
        .filter(|c| c.since.is_none())
        .count();
    assert_eq!(initial_polls, 1, "one initial sync for the device");
    assert_eq!(
        hs.max_concurrent_syncs("alice_token"),
        1,
        "polls of one device never overlap"
    );
    assert_eq!(hs.whoami_calls(), 1, "one /whoami for the new token");
    proxy.stop().await;
}

#[tokio::test]
async fn a_second_device_of_a_known_user_is_answered_before_its_own_first_poll() {
    let (_db, hs, proxy) = setup().await;
    hs.add_device("alice_phone", ALICE, "ALICEPHONE");
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![
            ("!a:test", new_room(ALICE, Some("A"), 1_000)),
            ("!b:test", new_room(ALICE, Some("B"), 2_000)),
        ]),
    );
    proxy
        .sync_ok("alice_token", None, 0, &list_request(1))
        .await;

    // The phone's first poll never comes back.
    hs.hold("alice_phone");
    let phone = tokio::time::timeout(
        Duration::from_secs(1),
        proxy.sync_ok("alice_phone", None, 0, &list_request(1)),
    )
    .await
    .expect("the phone is answered from memory, not after its poll");
    assert_eq!(synced_ids(&phone, "all"), ["!b:test", "!a:test"]);
    assert_eq!(phone["rooms"]["!b:test"]["name"].as_str(), Some("B"));
    let calls = hs.wait_for_calls("alice_phone", 1).await;
    assert_eq!(
        calls[0].since, None,
        "the phone has a poller of its own all the same"
    );
    proxy.stop().await;
}

// What a restart keeps is read back from storage: the same on either store.
on_both_stores!(
    a_restart_keeps_rooms_order_names_and_timelines_but_not_connections,
    a_stale_pos_is_refused_after_a_restart_before_a_new_connection_too,
    a_restarted_poller_resumes_from_the_last_next_batch,
);

async fn a_restart_keeps_rooms_order_names_and_timelines_but_not_connections(backend: Backend) {
    let db = TestDb::of(backend).await;
    let hs = fake();
    let proxy = Proxy::start(&db.url, hs.clone()).await;
    let (m1, rename, m2) = (
        message(ALICE, "one", 1_100),
        name(ALICE, "Renamed", 1_101),
        message(ALICE, "two", 1_102),
    );
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![
            (
                "!a:test",
                joined(
                    vec![create(ALICE, 1_000), member(ALICE, "join", 1_001)],
                    vec![m1.clone(), rename.clone(), m2.clone()],
                ),
            ),
            ("!b:test", new_room(ALICE, Some("B"), 2_000)),
            ("!c:test", new_room(ALICE, None, 3_000)),
        ]),
    );
    let before = proxy
        .sync_ok("alice_token", None, 0, &list_request(10))
        .await;
    let order = synced_ids(&before, "all");
    assert_eq!(order, ["!c:test", "!b:test", "!a:test"]);
    let names = names_in_order(&before);
    assert_eq!(names, ["Empty Room", "B", "Renamed"]);
    let timelines: Vec<Vec<String>> = order.iter().map(|r| timeline_ids(&before, r)).collect();
    assert_eq!(timelines[2], [id_of(&m1), id_of(&rename), id_of(&m2)]);
    let old_pos = pos(&before);
    proxy.stop().await;

    // The new homeserver has nothing new and does not even answer: what the client gets
    // comes from the database, and it does not wait for the resumed poller.
    let hs = fake();
    hs.hold("alice_token");
    let proxy = Proxy::start(&db.url, hs.clone()).await;
    let after = tokio::time::timeout(
        Duration::from_secs(1),
        proxy.sync_ok("alice_token", None, 0, &list_request(10)),
    )
    .await
    .expect("answered from the rebuilt state");
    assert_eq!(synced_ids(&after, "all"), order, "same rooms, same order");
    assert_eq!(names_in_order(&after), names, "same names");
    let timelines_after: Vec<Vec<String>> = order.iter().map(|r| timeline_ids(&after, r)).collect();
    assert_eq!(timelines_after, timelines, "same timelines");
    assert_eq!(room_ids(&after), ["!a:test", "!b:test", "!c:test"]);

    // The connection from before the restart is gone, whatever `pos` the new one has.
    let stale = proxy
        .sync("alice_token", Some(&old_pos), 0, &json!({}))
        .await;
    assert_eq!(stale.status, 400, "{}", stale.text());
    assert_eq!(stale.json()["errcode"].as_str(), Some("M_UNKNOWN_POS"));
    proxy.stop().await;
}

async fn a_stale_pos_is_refused_after_a_restart_before_a_new_connection_too(backend: Backend) {
    let db = TestDb::of(backend).await;
    let hs = fake();
    let proxy = Proxy::start(&db.url, hs.clone()).await;
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![("!a:test", new_room(ALICE, Some("A"), 1_000))]),
    );
    let before = proxy
        .sync_ok("alice_token", None, 0, &list_request(1))
        .await;
    proxy.stop().await;

    let proxy = Proxy::start(&db.url, fake()).await;
    let stale = proxy
        .sync("alice_token", Some(&pos(&before)), 0, &json!({}))
        .await;
    assert_eq!(stale.status, 400, "{}", stale.text());
    assert_eq!(stale.json()["errcode"].as_str(), Some("M_UNKNOWN_POS"));
    let fresh = proxy
        .sync_ok("alice_token", None, 0, &list_request(1))
        .await;
    assert_eq!(synced_ids(&fresh, "all"), ["!a:test"]);
    proxy.stop().await;
}

async fn a_restarted_poller_resumes_from_the_last_next_batch(backend: Backend) {
    let db = TestDb::of(backend).await;
    let hs = fake();
    let proxy = Proxy::start(&db.url, hs.clone()).await;
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![("!a:test", new_room(ALICE, Some("A"), 1_000))]),
    );
    proxy
        .sync_ok("alice_token", None, 0, &list_request(1))
        .await;
    let last = hs.push_rooms(
        "alice_token",
        rooms_join(vec![(
            "!a:test",
            joined(vec![], vec![message(ALICE, "later", 2_000)]),
        )]),
    );
    // The poll after `last` started, so `last` was processed and its `since` queued.
    hs.wait_for_call("alice_token", "since the last batch", |c| {
        c.since.as_deref() == Some(&last)
    })
    .await;
    proxy.stop().await;

    // No client request: the poller resumes on its own at startup.
    let hs = fake();
    let proxy = Proxy::start(&db.url, hs.clone()).await;
    let calls = hs.wait_for_calls("alice_token", 1).await;
    assert_eq!(calls[0].since.as_deref(), Some(&*last), "{calls:?}");
    assert_eq!(
        timeline_limit(&calls[0]),
        50,
        "a resumed poller is not an initial sync"
    );
    proxy.stop().await;
}
