//! Timelines and state against a scripted homeserver: live state in `required_state`,
//! `$LAZY` members, transaction IDs, `prev_batch`, history fetched from `/messages`,
//! retries at one `pos`, and `slow_get_all_rooms`.

use std::sync::Arc;

use sonic_rs::{json, JsonContainerTrait, JsonValueTrait, Value};

use crate::support::db::TestDb;
use crate::support::fake::FakeHomeserver;
use crate::support::proxy::{ops, pos, scripted, synced_ids, timeline_ids, Proxy};
use crate::support::v2::*;

const ALICE: &str = "@alice:test";
const BOB: &str = "@bob:test";
const CAROL: &str = "@carol:test";
const ROOM: &str = "!room:test";

async fn setup() -> (TestDb, Arc<FakeHomeserver>, Proxy) {
    scripted(&[
        ("alice_token", ALICE, "ALICEDEV"),
        ("phone_token", ALICE, "PHONE"),
    ])
    .await
}

fn one_list(timeline_limit: u64, required_state: Value) -> Value {
    json!({"lists": {"all": {
        "ranges": [[0, 9]],
        "timeline_limit": timeline_limit,
        "required_state": required_state
    }}})
}

/// The `type|state_key` of each `required_state` event of a room, sorted.
fn state_keys(resp: &Value, room: &str) -> Vec<String> {
    let mut keys: Vec<String> = resp["rooms"][room]["required_state"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| {
                    format!(
                        "{}|{}",
                        e["type"].as_str().unwrap_or(""),
                        e["state_key"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    keys
}

/// A long-poll that must bring something.
async fn next(proxy: &Proxy, token: &str, pos: &str) -> Value {
    let resp = proxy.sync_ok(token, Some(pos), 10_000, &json!({})).await;
    assert!(
        resp["rooms"].as_object().is_some_and(|r| !r.is_empty()),
        "the long-poll ended without news: {resp:?}"
    );
    resp
}

async fn metrics(proxy: &Proxy) -> String {
    let url = format!("{}/metrics", proxy.ops_url);
    proxy
        .client
        .request(http::Method::GET, &url, None, None)
        .await
        .text()
}

fn with_txn_id(mut event: Value, txn: &str) -> Value {
    event["unsigned"] = json!({"transaction_id": txn});
    event
}

#[tokio::test]
async fn live_state_changes_arrive_in_required_state_when_selected() {
    let (_db, hs, proxy) = setup().await;
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(ROOM, new_room(ALICE, Some("Old"), 1_000))]),
    );
    let req = one_list(5, json!([["m.room.name", ""]]));
    let first = proxy.sync_ok("alice_token", None, 0, &req).await;
    assert_eq!(state_keys(&first, ROOM), ["m.room.name|"]);

    let rename = name(ALICE, "New", 2_000);
    let topic = json!({"type": "m.room.topic", "state_key": "", "event_id": "$topic", "sender": ALICE,
                       "origin_server_ts": 2_001, "content": {"topic": "t"}});
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(ROOM, joined(vec![], vec![rename.clone(), topic]))]),
    );
    let live = next(&proxy, "alice_token", &pos(&first)).await;
    let room = &live["rooms"][ROOM];
    assert_eq!(room["timeline"].as_array().unwrap().len(), 2);
    assert_eq!(
        state_keys(&live, ROOM),
        ["m.room.name|"],
        "the topic was not asked for"
    );
    assert_eq!(room["required_state"][0]["event_id"], rename["event_id"]);
    assert_eq!(room["name"].as_str(), Some("New"));
    proxy.stop().await;
}

#[tokio::test]
async fn lazy_members_are_the_senders_each_sent_once_per_connection() {
    let (_db, hs, proxy) = setup().await;
    let state = vec![
        create(ALICE, 1),
        member(ALICE, "join", 2),
        member(BOB, "join", 3),
        member(CAROL, "join", 4),
    ];
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(ROOM, joined(state, vec![message(BOB, "hi", 10)]))]),
    );
    let req = one_list(
        1,
        json!([["m.room.create", ""], ["m.room.member", "$LAZY"]]),
    );
    let first = proxy.sync_ok("alice_token", None, 0, &req).await;
    assert_eq!(
        state_keys(&first, ROOM),
        ["m.room.create|", &format!("m.room.member|{BOB}")],
        "only the timeline's sender"
    );

    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(
            ROOM,
            joined(vec![], vec![message(BOB, "again", 20)]),
        )]),
    );
    let live = next(&proxy, "alice_token", &pos(&first)).await;
    assert!(
        state_keys(&live, ROOM).is_empty(),
        "bob was sent already: {live:?}"
    );

    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(
            ROOM,
            joined(vec![], vec![message(CAROL, "me too", 30)]),
        )]),
    );
    let live = next(&proxy, "alice_token", &pos(&live)).await;
    assert_eq!(state_keys(&live, ROOM), [format!("m.room.member|{CAROL}")]);

    // All state narrowed by $LAZY: every other type, and of members only the lazy ones.
    let all = one_list(1, json!([["*", "*"], ["m.room.member", "$LAZY"]]));
    let fresh = proxy.sync_ok("alice_token", None, 0, &all).await;
    assert_eq!(
        state_keys(&fresh, ROOM),
        ["m.room.create|", &format!("m.room.member|{CAROL}")]
    );
    proxy.stop().await;
}

#[tokio::test]
async fn only_the_sending_device_sees_its_transaction_id() {
    let (_db, hs, proxy) = setup().await;
    let room = new_room(ALICE, None, 1_000);
    hs.push_rooms("alice_token", rooms_join(vec![(ROOM, room.clone())]));
    hs.push_rooms("phone_token", rooms_join(vec![(ROOM, room)]));
    let req = one_list(5, json!([]));
    let laptop = proxy.sync_ok("alice_token", None, 0, &req).await;
    let phone = proxy.sync_ok("phone_token", None, 0, &req).await;

    // The laptop's poller delivers the phone's message first, without a transaction ID
    // (a homeserver gives it only to the sending device); the phone's poller then
    // delivers the same event with it.
    let sent = message(ALICE, "from my phone", 2_000);
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(ROOM, joined(vec![], vec![sent.clone()]))]),
    );
    let on_laptop = next(&proxy, "alice_token", &pos(&laptop)).await;
    assert_eq!(timeline_ids(&on_laptop, ROOM), [id_of(&sent)]);
    assert!(on_laptop["rooms"][ROOM]["timeline"][0]["unsigned"]
        .get("transaction_id")
        .is_none());
    hs.push_rooms(
        "phone_token",
        rooms_join(vec![(
            ROOM,
            joined(vec![], vec![with_txn_id(sent.clone(), "txn1")]),
        )]),
    );
    // A later message on the phone's poller: once it arrives, the one before it was
    // processed.
    let marker = message(BOB, "marker", 3_000);
    hs.push_rooms(
        "phone_token",
        rooms_join(vec![(ROOM, joined(vec![], vec![marker.clone()]))]),
    );
    let mut at = pos(&phone);
    let mut seen = Vec::new();
    while !seen.contains(&id_of(&marker)) {
        let live = next(&proxy, "phone_token", &at).await;
        seen.extend(timeline_ids(&live, ROOM));
        at = pos(&live);
    }

    let phone_again = proxy.sync_ok("phone_token", None, 0, &req).await;
    let timeline = phone_again["rooms"][ROOM]["timeline"].as_array().unwrap();
    let own = timeline
        .iter()
        .find(|e| e["event_id"] == sent["event_id"])
        .expect("the phone's message");
    assert_eq!(own["unsigned"]["transaction_id"].as_str(), Some("txn1"));
    let laptop_again = proxy.sync_ok("alice_token", None, 0, &req).await;
    for e in laptop_again["rooms"][ROOM]["timeline"]
        .as_array()
        .unwrap()
        .iter()
    {
        assert!(e["unsigned"].get("transaction_id").is_none(), "{e:?}");
    }
    proxy.stop().await;
}

/// Another poller delivers the phone's message first: the phone's parked request waits
/// for the phone's own poller, so the message reaches it with its transaction ID.
#[tokio::test]
async fn a_live_message_waits_for_the_sending_devices_transaction_id() {
    let (_db, hs, proxy) = setup().await;
    let room = new_room(ALICE, None, 1_000);
    hs.push_rooms("alice_token", rooms_join(vec![(ROOM, room.clone())]));
    hs.push_rooms("phone_token", rooms_join(vec![(ROOM, room)]));
    let req = one_list(5, json!([]));
    proxy.sync_ok("alice_token", None, 0, &req).await;
    let phone = proxy.sync_ok("phone_token", None, 0, &req).await;
    let parked = {
        let url = format!(
            "{}{}?timeout=10000&pos={}",
            proxy.url,
            crate::support::proxy::MSC3575,
            pos(&phone)
        );
        tokio::spawn(async move {
            crate::support::http::HttpClient::new()
                .request(
                    http::Method::POST,
                    &url,
                    Some("phone_token"),
                    Some(&json!({})),
                )
                .await
        })
    };
    let sent = message(ALICE, "sent from the phone", 2_000);
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(ROOM, joined(vec![], vec![sent.clone()]))]),
    );
    hs.drained("alice_token").await;
    hs.push_rooms(
        "phone_token",
        rooms_join(vec![(
            ROOM,
            joined(vec![], vec![with_txn_id(sent.clone(), "txn2")]),
        )]),
    );
    let live = parked.await.unwrap().json();
    let first = &live["rooms"][ROOM]["timeline"][0];
    assert_eq!(first["event_id"], sent["event_id"], "{live:?}");
    assert_eq!(first["unsigned"]["transaction_id"].as_str(), Some("txn2"));
    proxy.stop().await;
}

#[tokio::test]
async fn prev_batch_never_points_after_the_first_event_returned() {
    let (_db, hs, proxy) = setup().await;
    let (a, b, c) = (
        message(BOB, "a", 10),
        message(BOB, "b", 11),
        message(BOB, "c", 12),
    );
    let mut first = joined(
        vec![create(ALICE, 1), member(ALICE, "join", 2)],
        vec![a, b, c.clone()],
    );
    first["timeline"]["limited"] = json!(true);
    first["timeline"]["prev_batch"] = json!("before_a");
    hs.push_rooms("alice_token", rooms_join(vec![(ROOM, first)]));
    let start = proxy
        .sync_ok("alice_token", None, 0, &one_list(1, json!([])))
        .await;
    let d = message(BOB, "d", 13);
    let mut second = joined(vec![], vec![d.clone()]);
    second["timeline"]["prev_batch"] = json!("before_d");
    hs.push_rooms("alice_token", rooms_join(vec![(ROOM, second)]));
    next(&proxy, "alice_token", &pos(&start)).await;

    let resp = proxy
        .sync_ok("alice_token", None, 0, &one_list(2, json!([])))
        .await;
    assert_eq!(timeline_ids(&resp, ROOM), [id_of(&c), id_of(&d)]);
    assert_eq!(resp["rooms"][ROOM]["prev_batch"].as_str(), Some("before_a"));
    let resp = proxy
        .sync_ok("alice_token", None, 0, &one_list(1, json!([])))
        .await;
    assert_eq!(resp["rooms"][ROOM]["prev_batch"].as_str(), Some("before_d"));
    proxy.stop().await;
}

/// Alice's first poll holds one message of a room with thirty; the rest are fetched
/// once from `/messages` with her token and kept.
#[tokio::test]
async fn history_from_before_the_first_poll_is_fetched_once_and_kept() {
    let (_db, hs, proxy) = setup().await;
    let messages: Vec<Value> = (1..=30)
        .map(|i| message(BOB, &format!("m{i}"), 100 + i))
        .collect();
    let join = member(ALICE, "join", 50);
    let state = vec![create(BOB, 1), member(BOB, "join", 2), join.clone()];
    let mut first = joined(state, vec![messages[29].clone()]);
    first["timeline"]["limited"] = json!(true);
    first["timeline"]["prev_batch"] = json!("before_m30");
    hs.push_rooms("alice_token", rooms_join(vec![(ROOM, first)]));
    let mut older: Vec<Value> = messages[..29].iter().rev().cloned().collect();
    older.push(join.clone());
    older.push(member(BOB, "join", 2));
    hs.script_messages(ROOM, "before_m30", older, Some("far_back"));

    let resp = proxy
        .sync_ok("alice_token", None, 0, &one_list(20, json!([])))
        .await;
    let expected: Vec<String> = messages[10..].iter().map(id_of).collect();
    assert_eq!(timeline_ids(&resp, ROOM), expected);
    assert_eq!(resp["rooms"][ROOM]["limited"].as_bool(), Some(true));
    let calls = hs.messages_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        calls[0],
        ("alice_token".into(), ROOM.into(), "before_m30".into(), 19)
    );
    let prev_batch = resp["rooms"][ROOM]["prev_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(
        prev_batch, "before_m30",
        "the token before the first event returned"
    );

    // Kept: another connection gets them without a fetch, and a longer timeline
    // fetches only what lies before them.
    let again = proxy
        .sync_ok("alice_token", None, 0, &one_list(20, json!([])))
        .await;
    assert_eq!(timeline_ids(&again, ROOM), expected);
    assert_eq!(hs.messages_calls().len(), 1);
    let metrics = metrics(&proxy).await;
    assert!(
        metrics.contains("slidesync_history_fetches_total{result=\"filled\"} 1"),
        "{metrics}"
    );

    // Further back the page reaches Alice's join: what lies before it stays out.
    let mut rest: Vec<Value> = messages[..10].iter().rev().cloned().collect();
    rest.push(join);
    rest.push(member(BOB, "join", 2));
    hs.script_messages(ROOM, &prev_batch, rest, Some("further"));
    let longer = proxy
        .sync_ok("alice_token", None, 0, &one_list(40, json!([])))
        .await;
    let all: Vec<String> = messages.iter().map(id_of).collect();
    assert_eq!(
        timeline_ids(&longer, ROOM),
        all,
        "nothing from before the join"
    );
    // The page went on past the join: a page of just the ten kept says where they
    // start, so the client pages back from exactly there.
    let calls = hs.messages_calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!((calls[1].2.as_str(), calls[1].3), (prev_batch.as_str(), 20));
    assert_eq!((calls[2].2.as_str(), calls[2].3), (prev_batch.as_str(), 10));
    assert_eq!(
        longer["rooms"][ROOM]["prev_batch"].as_str(),
        Some(format!("{prev_batch}_cut").as_str())
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_failed_history_fetch_serves_what_is_held_and_is_not_repeated() {
    let (_db, hs, proxy) = setup().await;
    let last = message(BOB, "last", 100);
    let mut first = joined(
        vec![create(BOB, 1), member(ALICE, "join", 2)],
        vec![last.clone()],
    );
    first["timeline"]["limited"] = json!(true);
    first["timeline"]["prev_batch"] = json!("unscripted");
    hs.push_rooms("alice_token", rooms_join(vec![(ROOM, first)]));
    let resp = proxy
        .sync_ok("alice_token", None, 0, &one_list(10, json!([])))
        .await;
    assert_eq!(timeline_ids(&resp, ROOM), [id_of(&last)]);
    proxy
        .sync_ok("alice_token", None, 0, &one_list(10, json!([])))
        .await;
    assert_eq!(
        hs.messages_calls().len(),
        1,
        "one fetch per gap, failed or not"
    );
    let metrics = metrics(&proxy).await;
    assert!(
        metrics.contains("slidesync_history_fetches_total{result=\"failed\"} 1"),
        "{metrics}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn history_shown_starts_at_the_latest_join() {
    let (_db, hs, proxy) = setup().await;
    let before = message(BOB, "before alice left", 10);
    let leave = member(ALICE, "leave", 11);
    let secret = message(BOB, "while alice was away", 12);
    let rejoin = member(ALICE, "join", 13);
    let after = message(BOB, "after the rejoin", 14);
    let timeline = vec![before, leave, secret, rejoin.clone(), after.clone()];
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(
            ROOM,
            joined(vec![create(BOB, 1), member(ALICE, "join", 2)], timeline),
        )]),
    );
    let resp = proxy
        .sync_ok("alice_token", None, 0, &one_list(10, json!([])))
        .await;
    assert_eq!(timeline_ids(&resp, ROOM), [id_of(&rejoin), id_of(&after)]);
    assert!(resp["rooms"][ROOM].get("limited").is_none());
    proxy.stop().await;
}

/// Go's rule: a retry of the last `pos` with the same body gets the same response; with
/// a different body, the unacknowledged response first, then the new body's.
#[tokio::test]
async fn retries_at_one_pos_follow_the_go_buffering_rule() {
    let (_db, hs, proxy) = setup().await;
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(ROOM, new_room(ALICE, Some("R"), 1_000))]),
    );
    let first = proxy
        .sync_ok("alice_token", None, 0, &one_list(1, json!([])))
        .await;
    let p0 = pos(&first);
    let a_body = json!({"txn_id": "a", "lists": {"all": {"ranges": [[0, 0]]}}});
    let a = proxy.sync("alice_token", Some(&p0), 0, &a_body).await;
    assert_eq!(a.status, 200);
    let a_again = proxy.sync("alice_token", Some(&p0), 0, &a_body).await;
    assert_eq!(
        a_again.body, a.body,
        "a retransmit gets the identical response"
    );

    let b_body = json!({"txn_id": "b", "lists": {"all": {"ranges": [[0, 0]], "required_state": [["m.room.name", ""]]}}});
    let got = proxy.sync_ok("alice_token", Some(&p0), 0, &b_body).await;
    assert_eq!(
        got["txn_id"].as_str(),
        Some("a"),
        "the unacknowledged one first"
    );
    assert_eq!(pos(&got), pos(&a.json()));
    let then = proxy
        .sync_ok("alice_token", Some(&pos(&got)), 0, &b_body)
        .await;
    assert_eq!(then["txn_id"].as_str(), Some("b"));
    assert_eq!(
        state_keys(&then, ROOM),
        ["m.room.name|"],
        "b's changes were applied"
    );
    let after = proxy
        .sync("alice_token", Some(&pos(&then)), 0, &json!({}))
        .await;
    assert_eq!(after.status, 200);
    let stale = proxy.sync("alice_token", Some(&p0), 0, &json!({})).await;
    assert_eq!(stale.status, 400);
    assert_eq!(stale.json()["errcode"].as_str(), Some("M_UNKNOWN_POS"));
    proxy.stop().await;
}

#[tokio::test]
async fn slow_get_all_rooms_syncs_every_room_and_moves_send_no_ops() {
    let (_db, hs, proxy) = setup().await;
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![
            ("!a:test", new_room(ALICE, Some("A"), 3_000)),
            ("!b:test", new_room(ALICE, Some("B"), 2_000)),
            ("!c:test", new_room(ALICE, Some("C"), 1_000)),
        ]),
    );
    let req = json!({"lists": {"all": {"ranges": [[0, 0]], "slow_get_all_rooms": true, "timeline_limit": 1}}});
    let first = proxy.sync_ok("alice_token", None, 0, &req).await;
    assert_eq!(synced_ids(&first, "all"), ["!a:test", "!b:test", "!c:test"]);
    assert_eq!(ops(&first, "all"), ["SYNC 0-2"]);
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(
            "!c:test",
            joined(vec![], vec![message(ALICE, "up", 4_000)]),
        )]),
    );
    let live = next(&proxy, "alice_token", &pos(&first)).await;
    assert!(ops(&live, "all").is_empty(), "{live:?}");
    assert_eq!(live["rooms"]["!c:test"]["num_live"].as_u64(), Some(1));
    proxy.stop().await;
}

#[tokio::test]
async fn a_redaction_applies_in_place_and_a_redacted_name_stops_naming_the_room() {
    let (_db, hs, proxy) = setup().await;
    let secret = message(BOB, "the secret", 1_001);
    let state = vec![
        create(ALICE, 1),
        member(ALICE, "join", 2),
        name(ALICE, "Secret plan", 3),
    ];
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(ROOM, joined(state, vec![secret.clone()]))]),
    );
    let req = one_list(5, json!([["m.room.name", ""]]));
    let first = proxy.sync_ok("alice_token", None, 0, &req).await;
    assert_eq!(first["rooms"][ROOM]["name"].as_str(), Some("Secret plan"));

    let name_id = first["rooms"][ROOM]["required_state"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let redact = |id: &str, n: u64| {
        json!({"type": "m.room.redaction", "event_id": format!("$redaction{n}"), "sender": ALICE,
               "origin_server_ts": 2_000 + n, "redacts": id, "content": {}})
    };
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(
            ROOM,
            joined(
                vec![],
                vec![redact(&id_of(&secret), 1), redact(&name_id, 2)],
            ),
        )]),
    );
    let live = next(&proxy, "alice_token", &pos(&first)).await;
    let room = &live["rooms"][ROOM];
    assert_eq!(room["timeline"].as_array().unwrap().len(), 2);
    assert_ne!(room["name"].as_str(), Some("Secret plan"), "{room:?}");
    assert!(
        room["name"].as_str().is_some(),
        "the name changed: {room:?}"
    );

    let fresh = proxy.sync_ok("alice_token", None, 0, &req).await;
    let room = &fresh["rooms"][ROOM];
    let timeline = room["timeline"].as_array().unwrap();
    let redacted = timeline
        .iter()
        .find(|e| e["event_id"] == secret["event_id"])
        .expect("the redacted message");
    assert!(redacted["content"].as_object().unwrap().is_empty());
    assert_eq!(
        redacted["unsigned"]["redacted_because"]["event_id"].as_str(),
        Some("$redaction1")
    );
    let name_event = &room["required_state"][0];
    assert!(name_event["content"].as_object().unwrap().is_empty());
    assert_ne!(room["name"].as_str(), Some("Secret plan"));
    proxy.stop().await;
}

/// History fetched for one connection is not news for another showing the room: it
/// would append old messages after the newest.
#[tokio::test]
async fn fetched_history_is_not_sent_live_to_other_connections() {
    let (_db, hs, proxy) = setup().await;
    let old = message(BOB, "old", 100);
    let newest = message(BOB, "newest", 101);
    let mut first = joined(
        vec![create(BOB, 1), member(ALICE, "join", 2)],
        vec![newest.clone()],
    );
    first["timeline"]["limited"] = json!(true);
    first["timeline"]["prev_batch"] = json!("before_newest");
    hs.push_rooms("alice_token", rooms_join(vec![(ROOM, first)]));
    hs.script_messages(ROOM, "before_newest", vec![old.clone()], None);
    let mut list_conn = one_list(1, json!([]));
    list_conn["conn_id"] = json!("list");
    let shown = proxy.sync_ok("alice_token", None, 0, &list_conn).await;
    assert_eq!(timeline_ids(&shown, ROOM), [id_of(&newest)]);
    assert!(hs.messages_calls().is_empty(), "one event was asked for");

    let mut room_conn = one_list(10, json!([]));
    room_conn["conn_id"] = json!("room");
    let opened = proxy.sync_ok("alice_token", None, 0, &room_conn).await;
    assert_eq!(timeline_ids(&opened, ROOM), [id_of(&old), id_of(&newest)]);

    let later = message(BOB, "later", 102);
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(ROOM, joined(vec![], vec![later.clone()]))]),
    );
    let live = proxy
        .sync_ok(
            "alice_token",
            Some(&pos(&shown)),
            10_000,
            &json!({"conn_id": "list"}),
        )
        .await;
    assert_eq!(timeline_ids(&live, ROOM), [id_of(&later)]);
    proxy.stop().await;
}

#[tokio::test]
async fn changing_required_state_resends_state_alone_and_timeline_limit_the_timeline() {
    let (_db, hs, proxy) = setup().await;
    let messages: Vec<Value> = (1..=5)
        .map(|i| message(BOB, &format!("m{i}"), 100 + i))
        .collect();
    let state = vec![
        create(ALICE, 1),
        member(ALICE, "join", 2),
        name(ALICE, "R", 3),
    ];
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(ROOM, joined(state, messages.clone()))]),
    );
    let first = proxy
        .sync_ok(
            "alice_token",
            None,
            0,
            &one_list(2, json!([["m.room.create", ""]])),
        )
        .await;
    assert_eq!(timeline_ids(&first, ROOM).len(), 2);

    let state_only = json!({"lists": {"all": {"required_state": [["m.room.name", ""]]}}});
    let resp = proxy
        .sync_ok("alice_token", Some(&pos(&first)), 0, &state_only)
        .await;
    let room = &resp["rooms"][ROOM];
    assert_eq!(state_keys(&resp, ROOM), ["m.room.name|"]);
    assert!(room.get("timeline").is_none(), "{room:?}");
    assert!(room.get("initial").is_none());
    assert!(ops(&resp, "all").is_empty());

    let longer = json!({"lists": {"all": {"timeline_limit": 4}}});
    let resp = proxy
        .sync_ok("alice_token", Some(&pos(&resp)), 0, &longer)
        .await;
    let expected: Vec<String> = messages[1..].iter().map(id_of).collect();
    assert_eq!(timeline_ids(&resp, ROOM), expected);
    assert_eq!(resp["rooms"][ROOM]["initial"].as_bool(), Some(true));
    assert!(ops(&resp, "all").is_empty(), "the window did not move");
    proxy.stop().await;
}
