//! The room list against a scripted homeserver: order, ops, live updates, names.

use std::sync::Arc;
use std::time::Duration;

use sonic_rs::{json, JsonContainerTrait, JsonValueMutTrait, JsonValueTrait};

use crate::support::db::TestDb;
use crate::support::fake::FakeHomeserver;
use crate::support::proxy::{ops, pos, scripted, synced_ids, timeline_ids, Proxy};
use crate::support::v2::*;

const ALICE: &str = "@alice:test";

fn list_request(end: u64, timeline_limit: u64) -> sonic_rs::Value {
    json!({"lists": {"all": {
        "ranges": [[0, end]],
        "sort": ["by_recency"],
        "timeline_limit": timeline_limit,
        "required_state": [["m.room.name", ""], ["m.room.member", "$ME"]]
    }}})
}

async fn setup() -> (TestDb, Arc<FakeHomeserver>, Proxy) {
    scripted(&[("alice_token", ALICE, "ALICEDEV")]).await
}

#[tokio::test]
async fn rooms_are_listed_newest_first_with_room_id_breaking_ties() {
    let (_db, hs, proxy) = setup().await;
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![
            ("!old:test", new_room(ALICE, Some("Old"), 1_000)),
            ("!new:test", new_room(ALICE, Some("New"), 3_000)),
            ("!tie_b:test", new_room(ALICE, None, 2_000)),
            ("!tie_a:test", new_room(ALICE, None, 2_000)),
        ]),
    );
    let resp = proxy
        .sync_ok("alice_token", None, 0, &list_request(9, 1))
        .await;
    assert_eq!(resp["lists"]["all"]["count"].as_u64(), Some(4));
    assert_eq!(
        synced_ids(&resp, "all"),
        ["!new:test", "!tie_a:test", "!tie_b:test", "!old:test"]
    );
    let new = &resp["rooms"]["!new:test"];
    assert_eq!(new["name"].as_str(), Some("New"));
    assert_eq!(new["initial"].as_bool(), Some(true));
    assert_eq!(new["timeline"].as_array().unwrap().len(), 1);
    assert_eq!(new["required_state"].as_array().unwrap().len(), 2);
    assert_eq!(new["joined_count"].as_u64(), Some(1));
    proxy.stop().await;
}

#[tokio::test]
async fn a_live_message_wakes_the_long_poll_and_moves_the_room_to_the_top() {
    let (_db, hs, proxy) = setup().await;
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![
            ("!a:test", new_room(ALICE, Some("A"), 3_000)),
            ("!b:test", new_room(ALICE, Some("B"), 2_000)),
            ("!c:test", new_room(ALICE, Some("C"), 1_000)),
        ]),
    );
    let first = proxy
        .sync_ok("alice_token", None, 0, &list_request(9, 5))
        .await;
    assert_eq!(synced_ids(&first, "all"), ["!a:test", "!b:test", "!c:test"]);
    let p = pos(&first);

    let parked = {
        let proxy_url = proxy.url.clone();
        let p = p.clone();
        tokio::spawn(async move {
            let client = crate::support::http::HttpClient::new();
            let url = format!(
                "{proxy_url}{}?timeout=20000&pos={p}",
                crate::support::proxy::MSC3575
            );
            client
                .request(
                    http::Method::POST,
                    &url,
                    Some("alice_token"),
                    Some(&json!({})),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !parked.is_finished(),
        "nothing happened yet: the request must wait"
    );
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(
            "!c:test",
            joined(vec![], vec![message(ALICE, "wake up", 4_000)]),
        )]),
    );
    let live = tokio::time::timeout(Duration::from_secs(5), parked)
        .await
        .expect("the parked request returns once the message arrives")
        .unwrap();
    assert_eq!(live.status, 200, "{}", live.text());
    let live = live.json();
    assert_eq!(ops(&live, "all"), ["DELETE 2", "INSERT 0 !c:test"]);
    let c = &live["rooms"]["!c:test"];
    assert_eq!(c["num_live"].as_u64(), Some(1));
    assert_eq!(
        c["timeline"][0]["content"]["body"].as_str(),
        Some("wake up")
    );
    assert!(c.get("initial").is_none(), "a live update is not initial");
    assert!(c.get("name").is_none(), "the name did not change");
    proxy.stop().await;
}

#[tokio::test]
async fn shrinking_a_range_invalidates_and_growing_it_syncs_only_the_new_part() {
    let (_db, hs, proxy) = setup().await;
    let rooms: Vec<(String, sonic_rs::Value)> = (0..6)
        .map(|i| {
            (
                format!("!r{i}:test"),
                new_room(ALICE, None, 10_000 - i * 100),
            )
        })
        .collect();
    hs.push_rooms(
        "alice_token",
        rooms_join(
            rooms
                .iter()
                .map(|(id, r)| (id.as_str(), r.clone()))
                .collect(),
        ),
    );
    let first = proxy
        .sync_ok("alice_token", None, 0, &list_request(3, 0))
        .await;
    assert_eq!(ops(&first, "all"), ["SYNC 0-3"]);
    let second = proxy
        .sync_ok("alice_token", Some(&pos(&first)), 0, &list_request(1, 0))
        .await;
    assert_eq!(ops(&second, "all"), ["INVALIDATE 2-3"]);
    let third = proxy
        .sync_ok("alice_token", Some(&pos(&second)), 0, &list_request(9, 0))
        .await;
    assert_eq!(
        ops(&third, "all"),
        ["SYNC 2-5"],
        "the range is clamped to the list"
    );
    assert_eq!(
        synced_ids(&third, "all"),
        ["!r2:test", "!r3:test", "!r4:test", "!r5:test"]
    );
    assert!(
        third["rooms"].get("!r0:test").is_none(),
        "rooms the client has are not resent"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn rooms_without_a_name_are_named_after_their_members() {
    let (_db, hs, proxy) = setup().await;
    let state = vec![
        create(ALICE, 1),
        member(ALICE, "join", 2),
        member("@bob:test", "join", 3),
        json!({"type": "m.room.member", "state_key": "@carol:test", "event_id": "$carol", "sender": "@carol:test",
               "origin_server_ts": 4, "content": {"membership": "join", "displayname": "Carol"}}),
    ];
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(
            "!dm:test",
            joined(state, vec![message("@bob:test", "hi", 10)]),
        )]),
    );
    let resp = proxy
        .sync_ok("alice_token", None, 0, &list_request(0, 1))
        .await;
    assert_eq!(
        resp["rooms"]["!dm:test"]["name"].as_str(),
        Some("@bob:test and Carol")
    );
    assert_eq!(resp["rooms"]["!dm:test"]["joined_count"].as_u64(), Some(3));
    proxy.stop().await;
}

#[tokio::test]
async fn txn_id_is_echoed_and_unread_counts_are_sent() {
    let (_db, hs, proxy) = setup().await;
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(
            "!r:test",
            joined_with_unread(
                vec![create(ALICE, 1), member(ALICE, "join", 2)],
                vec![message("@bob:test", "ping", 3)],
                4,
                1,
            ),
        )]),
    );
    let mut body = list_request(0, 1);
    body["txn_id"] = json!("t-1");
    let resp = proxy.sync_ok("alice_token", None, 0, &body).await;
    assert_eq!(resp["txn_id"].as_str(), Some("t-1"));
    assert_eq!(
        resp["rooms"]["!r:test"]["notification_count"].as_u64(),
        Some(4)
    );
    assert_eq!(
        resp["rooms"]["!r:test"]["highlight_count"].as_u64(),
        Some(1)
    );
    proxy.stop().await;
}

#[tokio::test]
async fn other_client_requests_pass_through_to_the_homeserver() {
    let (_db, _hs, proxy) = setup().await;
    let url = format!(
        "{}/_matrix/client/v3/rooms/!r:test/send/m.room.message/t1?ts=5",
        proxy.url
    );
    let resp = proxy
        .client
        .request(
            http::Method::PUT,
            &url,
            Some("alice_token"),
            Some(&json!({"body": "hi"})),
        )
        .await;
    assert_eq!(resp.status, 201, "the homeserver's status comes back");
    let echo = resp.json();
    assert_eq!(echo["method"].as_str(), Some("PUT"));
    assert_eq!(
        echo["path"].as_str(),
        Some("/_matrix/client/v3/rooms/!r:test/send/m.room.message/t1?ts=5")
    );
    assert_eq!(echo["authorization"].as_str(), Some("Bearer alice_token"));
    assert_eq!(echo["body"].as_str(), Some(r#"{"body":"hi"}"#));
    assert_eq!(
        echo["connection"].as_str(),
        Some(""),
        "hop-by-hop headers stay behind"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn versions_advertise_sliding_sync() {
    let (_db, _hs, proxy) = setup().await;
    let resp = proxy
        .client
        .request(
            http::Method::GET,
            &format!("{}/_matrix/client/versions", proxy.url),
            None,
            None,
        )
        .await;
    assert_eq!(resp.status, 200);
    let v = resp.json();
    assert_eq!(
        v["unstable_features"]["org.matrix.msc3575"].as_bool(),
        Some(true)
    );
    assert_eq!(v["versions"][0].as_str(), Some("v1.11"));
    proxy.stop().await;
}

#[tokio::test]
async fn a_newer_request_on_the_same_connection_releases_the_parked_one() {
    let (_db, hs, proxy) = setup().await;
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![("!a:test", new_room(ALICE, None, 1_000))]),
    );
    let first = proxy
        .sync_ok("alice_token", None, 0, &list_request(9, 1))
        .await;
    let p = pos(&first);
    let parked = {
        let url = format!(
            "{}{}?timeout=30000&pos={p}",
            proxy.url,
            crate::support::proxy::MSC3575
        );
        tokio::spawn(async move {
            crate::support::http::HttpClient::new()
                .request(
                    http::Method::POST,
                    &url,
                    Some("alice_token"),
                    Some(&json!({})),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let retry = tokio::time::timeout(
        Duration::from_secs(5),
        proxy.sync_ok("alice_token", Some(&p), 30_000, &json!({})),
    )
    .await
    .expect("the retry is not stuck behind the parked request");
    let parked = tokio::time::timeout(Duration::from_secs(5), parked)
        .await
        .expect("the parked request was released")
        .unwrap();
    assert_eq!(parked.status, 200);
    assert_eq!(
        pos(&parked.json()),
        pos(&retry),
        "the retry of an unacknowledged pos gets the same response"
    );
    proxy.stop().await;
}

/// A subscribed room is sent whether or not a window shows it, with the larger
/// `timeline_limit` and the union of `required_state` when a list shows it too; a
/// changed subscription sends it whole again; unsubscribing stops its updates.
#[tokio::test]
async fn room_subscriptions_are_sticky_merged_with_lists_and_can_be_dropped() {
    let (_db, hs, proxy) = setup().await;
    let mut messages = Vec::new();
    // Newer than anything `!old` will get, so `!old` never enters a one-room window.
    let mut rooms = vec![("!top:test", new_room(ALICE, Some("Top"), 20_000))];
    let mut old = new_room(ALICE, Some("Old"), 1_000);
    for i in 0..4 {
        let m = message(ALICE, &format!("m{i}"), 1_100 + i);
        messages.push(id_of(&m));
        old["timeline"]["events"].as_array_mut().unwrap().push(m);
    }
    rooms.push(("!old:test", old));
    hs.push_rooms("alice_token", rooms_join(rooms));

    // A one-room window shows `!top`; `!old` comes only through its subscription.
    let mut req = list_request(0, 1);
    req["room_subscriptions"] = json!({"!old:test": {
        "timeline_limit": 3,
        "required_state": [["m.room.create", ""]]
    }});
    let first = proxy.sync_ok("alice_token", None, 0, &req).await;
    assert_eq!(synced_ids(&first, "all"), ["!top:test"]);
    let old = &first["rooms"]["!old:test"];
    assert_eq!(old["initial"].as_bool(), Some(true));
    assert_eq!(old["timeline"].as_array().unwrap().len(), 3);
    let state_types: Vec<&str> = old["required_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(state_types, ["m.room.create"]);

    // Sticky: a live message reaches it with no subscription in the request.
    let live = message(ALICE, "live", 9_500);
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![("!old:test", joined(vec![], vec![live.clone()]))]),
    );
    let next = proxy
        .sync_ok("alice_token", Some(&pos(&first)), 3_000, &json!({}))
        .await;
    assert_eq!(timeline_ids(&next, "!old:test"), [id_of(&live)]);

    // Widening the window to show `!old` too: one room entry, the larger limit and
    // both lists' state.
    let mut wider = list_request(1, 1);
    wider["room_subscriptions"] = json!({"!old:test": {
        "timeline_limit": 2,
        "required_state": [["m.room.create", ""]]
    }});
    let changed = proxy
        .sync_ok("alice_token", Some(&pos(&next)), 0, &wider)
        .await;
    let old = &changed["rooms"]["!old:test"];
    assert_eq!(
        old["initial"].as_bool(),
        Some(true),
        "a changed subscription resends"
    );
    assert_eq!(old["timeline"].as_array().unwrap().len(), 2);
    let mut state_types: Vec<&str> = old["required_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    state_types.sort_unstable();
    assert_eq!(
        state_types,
        ["m.room.create", "m.room.member", "m.room.name"],
        "the union of the list's and the subscription's required_state"
    );

    // Back to the one-room window and unsubscribed: `!old` gets no more updates.
    let mut narrow = list_request(0, 1);
    narrow["unsubscribe_rooms"] = json!(["!old:test"]);
    let dropped = proxy
        .sync_ok("alice_token", Some(&pos(&changed)), 0, &narrow)
        .await;
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(
            "!old:test",
            joined(vec![], vec![message(ALICE, "unseen", 9_600)]),
        )]),
    );
    let after = proxy
        .sync_ok("alice_token", Some(&pos(&dropped)), 500, &json!({}))
        .await;
    assert!(after["rooms"].get("!old:test").is_none(), "{after:?}");
    proxy.stop().await;
}

fn sorted_request(sort: &[&str]) -> sonic_rs::Value {
    json!({"lists": {"all": {
        "ranges": [[0, 9]],
        "sort": sort,
        "timeline_limit": 0
    }}})
}

/// `by_name` sorts the canonical names (aliases among names, case ignored) and moves a
/// renamed room live; changing the sort re-syncs the list.
#[tokio::test]
async fn lists_sort_by_name_and_a_rename_moves_the_room() {
    let (_db, hs, proxy) = setup().await;
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![
            ("!b:test", new_room(ALICE, Some("beta"), 3_000)),
            ("!a:test", new_room(ALICE, Some("#Alpha:test"), 1_000)),
            ("!c:test", new_room(ALICE, Some("Gamma"), 2_000)),
        ]),
    );
    let first = proxy
        .sync_ok("alice_token", None, 0, &sorted_request(&["by_name"]))
        .await;
    assert_eq!(synced_ids(&first, "all"), ["!a:test", "!b:test", "!c:test"]);

    // "beta" becomes "zeta": alpha, gamma, zeta now. The one-pair diff moves gamma up.
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(
            "!b:test",
            joined(vec![], vec![name(ALICE, "zeta", 4_000)]),
        )]),
    );
    let moved = proxy
        .sync_ok("alice_token", Some(&pos(&first)), 3_000, &json!({}))
        .await;
    assert_eq!(ops(&moved, "all"), ["DELETE 2", "INSERT 1 !c:test"]);

    // Now by recency: the client's indexes mean something else, so all of it again.
    let resorted = proxy
        .sync_ok(
            "alice_token",
            Some(&pos(&moved)),
            0,
            &sorted_request(&["by_recency"]),
        )
        .await;
    assert_eq!(ops(&resorted, "all"), ["INVALIDATE 0-2", "SYNC 0-2"]);
    assert_eq!(
        synced_ids(&resorted, "all"),
        ["!b:test", "!c:test", "!a:test"],
        "newest first: the rename is the newest event"
    );
    proxy.stop().await;
}

/// Several sorts: notification level first, recency within a level, and a room that
/// gets a highlight moves to the top live.
#[tokio::test]
async fn notification_level_then_recency() {
    let (_db, hs, proxy) = setup().await;
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![
            ("!new:test", new_room(ALICE, Some("New"), 3_000)),
            ("!old:test", new_room(ALICE, Some("Old"), 1_000)),
            (
                "!unread:test",
                joined_with_unread(
                    vec![create(ALICE, 10), member(ALICE, "join", 11)],
                    vec![message(ALICE, "hi", 500)],
                    2,
                    0,
                ),
            ),
        ]),
    );
    let sort = ["by_notification_level", "by_recency"];
    let first = proxy
        .sync_ok("alice_token", None, 0, &sorted_request(&sort))
        .await;
    assert_eq!(
        synced_ids(&first, "all"),
        ["!unread:test", "!new:test", "!old:test"]
    );
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(
            "!old:test",
            joined_with_unread(vec![], vec![], 1, 1),
        )]),
    );
    let moved = proxy
        .sync_ok("alice_token", Some(&pos(&first)), 3_000, &json!({}))
        .await;
    assert_eq!(ops(&moved, "all"), ["DELETE 2", "INSERT 0 !old:test"]);
    proxy.stop().await;
}

fn encryption(sender: &str, ts: u64) -> sonic_rs::Value {
    json!({"type": "m.room.encryption", "state_key": "", "event_id": format!("$enc{ts}"),
           "sender": sender, "origin_server_ts": ts,
           "content": {"algorithm": "m.megolm.v1.aes-sha2"}})
}

/// Filters pick a list's rooms; a room that comes to match (it becomes encrypted)
/// enters the list live, and changing the filters re-syncs the list.
#[tokio::test]
async fn filters_pick_the_rooms_and_a_room_that_starts_matching_enters_live() {
    let (_db, hs, proxy) = setup().await;
    let mut secret = new_room(ALICE, Some("Secret"), 2_000);
    secret["state"]["events"]
        .as_array_mut()
        .unwrap()
        .push(encryption(ALICE, 1_998));
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![
            ("!secret:test", secret),
            ("!plain:test", new_room(ALICE, Some("Plain coffee"), 3_000)),
            ("!other:test", new_room(ALICE, Some("Other"), 1_000)),
        ]),
    );
    let encrypted = json!({"lists": {"enc": {
        "ranges": [[0, 9]],
        "timeline_limit": 0,
        "filters": {"is_encrypted": true}
    }}});
    let first = proxy.sync_ok("alice_token", None, 0, &encrypted).await;
    assert_eq!(first["lists"]["enc"]["count"].as_u64(), Some(1));
    assert_eq!(synced_ids(&first, "enc"), ["!secret:test"]);

    // `!other` becomes encrypted (and is now the newest room): it enters at the top.
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(
            "!other:test",
            joined(vec![], vec![encryption(ALICE, 4_000)]),
        )]),
    );
    let live = proxy
        .sync_ok("alice_token", Some(&pos(&first)), 3_000, &json!({}))
        .await;
    assert_eq!(live["lists"]["enc"]["count"].as_u64(), Some(2));
    assert_eq!(ops(&live, "enc"), ["DELETE 1", "INSERT 0 !other:test"]);

    // New filters: everything held is invalidated, the new matches synced.
    let by_name = json!({"lists": {"enc": {
        "ranges": [[0, 9]],
        "filters": {"room_name_like": "COFFEE"}
    }}});
    let refiltered = proxy
        .sync_ok("alice_token", Some(&pos(&live)), 0, &by_name)
        .await;
    assert_eq!(ops(&refiltered, "enc"), ["INVALIDATE 0-1", "SYNC 0-0"]);
    assert_eq!(synced_ids(&refiltered, "enc"), ["!plain:test"]);
    proxy.stop().await;
}

/// A message in `room` from Alice's poller, and the live response it wakes.
async fn live_message(
    hs: &FakeHomeserver,
    proxy: &Proxy,
    room: &str,
    since: &sonic_rs::Value,
) -> sonic_rs::Value {
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(
            room,
            joined(vec![], vec![message(ALICE, "up", 200_000)]),
        )]),
    );
    proxy
        .sync_ok("alice_token", Some(&pos(since)), 5_000, &json!({}))
        .await
}

/// `n` rooms, `!r0` newest: `!r{i}` is at index i.
fn numbered_rooms(hs: &FakeHomeserver, n: u64) {
    let rooms: Vec<(String, sonic_rs::Value)> = (0..n)
        .map(|i| {
            (
                format!("!r{i}:test"),
                new_room(ALICE, None, 100_000 - i * 100),
            )
        })
        .collect();
    hs.push_rooms(
        "alice_token",
        rooms_join(
            rooms
                .iter()
                .map(|(id, r)| (id.as_str(), r.clone()))
                .collect(),
        ),
    );
}

fn windows(ranges: sonic_rs::Value) -> sonic_rs::Value {
    json!({"lists": {"all": {"ranges": ranges, "timeline_limit": 1}}})
}

/// The Go proxy's multiple-window case: the room at 18 moves to the top; each window
/// loses one room and gains one, one DELETE/INSERT pair each, the furthest first.
#[tokio::test]
async fn a_move_across_three_windows_is_one_pair_per_window() {
    let (_db, hs, proxy) = setup().await;
    numbered_rooms(&hs, 20);
    let first = proxy
        .sync_ok(
            "alice_token",
            None,
            0,
            &windows(json!([[0, 2], [10, 12], [17, 19]])),
        )
        .await;
    assert_eq!(ops(&first, "all"), ["SYNC 0-2", "SYNC 10-12", "SYNC 17-19"]);
    let live = live_message(&hs, &proxy, "!r18:test", &first).await;
    assert_eq!(
        ops(&live, "all"),
        [
            "DELETE 18",
            "INSERT 17 !r16:test",
            "DELETE 12",
            "INSERT 10 !r9:test",
            "DELETE 2",
            "INSERT 0 !r18:test"
        ]
    );
    for entering in ["!r16:test", "!r9:test"] {
        assert_eq!(live["rooms"][entering]["initial"].as_bool(), Some(true));
    }
    let moved = &live["rooms"]["!r18:test"];
    assert!(
        moved.get("initial").is_none(),
        "the client had it: {moved:?}"
    );
    assert_eq!(moved["num_live"].as_u64(), Some(1));
    proxy.stop().await;
}

/// A room a live event brings into a window is new to the client: it comes whole,
/// and `num_live` says which of its events are the live ones.
#[tokio::test]
async fn a_room_entering_a_window_live_comes_whole_with_its_live_events_counted() {
    let (_db, hs, proxy) = setup().await;
    numbered_rooms(&hs, 3);
    let first = proxy
        .sync_ok(
            "alice_token",
            None,
            0,
            &json!({"lists": {"all": {"ranges": [[0, 1]], "timeline_limit": 3}}}),
        )
        .await;
    let live = live_message(&hs, &proxy, "!r2:test", &first).await;
    assert_eq!(ops(&live, "all"), ["DELETE 1", "INSERT 0 !r2:test"]);
    let room = &live["rooms"]["!r2:test"];
    assert_eq!(room["initial"].as_bool(), Some(true));
    let timeline = room["timeline"].as_array().unwrap();
    assert_eq!(timeline.len(), 2, "the first message and the live one");
    assert_eq!(timeline[1]["content"]["body"].as_str(), Some("up"));
    assert_eq!(room["num_live"].as_u64(), Some(1));
    proxy.stop().await;
}

#[tokio::test]
async fn shrinking_a_range_past_the_list_invalidates_only_what_the_client_holds() {
    let (_db, hs, proxy) = setup().await;
    numbered_rooms(&hs, 6);
    let first = proxy
        .sync_ok("alice_token", None, 0, &windows(json!([[0, 20]])))
        .await;
    assert_eq!(ops(&first, "all"), ["SYNC 0-5"], "clamped to the list");
    let shrunk = proxy
        .sync_ok(
            "alice_token",
            Some(&pos(&first)),
            0,
            &windows(json!([[2, 3]])),
        )
        .await;
    assert_eq!(ops(&shrunk, "all"), ["INVALIDATE 0-1", "INVALIDATE 4-5"]);
    proxy.stop().await;
}

#[tokio::test]
async fn a_list_left_out_of_a_request_keeps_its_windows_live() {
    let (_db, hs, proxy) = setup().await;
    numbered_rooms(&hs, 4);
    let first = proxy
        .sync_ok(
            "alice_token",
            None,
            0,
            &json!({"lists": {
                "top": {"ranges": [[0, 1]], "timeline_limit": 1},
                "all": {"ranges": [[0, 3]], "timeline_limit": 1}
            }}),
        )
        .await;
    let only_top = proxy
        .sync_ok(
            "alice_token",
            Some(&pos(&first)),
            0,
            &json!({"lists": {"top": {"ranges": [[0, 2]]}}}),
        )
        .await;
    assert_eq!(ops(&only_top, "top"), ["SYNC 2-2"]);
    assert!(ops(&only_top, "all").is_empty());
    assert_eq!(only_top["lists"]["all"]["count"].as_u64(), Some(4));
    let live = live_message(&hs, &proxy, "!r3:test", &only_top).await;
    assert_eq!(ops(&live, "all"), ["DELETE 3", "INSERT 0 !r3:test"]);
    assert_eq!(ops(&live, "top"), ["DELETE 2", "INSERT 0 !r3:test"]);
    proxy.stop().await;
}
