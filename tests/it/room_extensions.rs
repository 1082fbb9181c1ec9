//! The room-bound extensions against a scripted homeserver: account data (MSC3959),
//! receipts (MSC3960) and typing (MSC3961), scoped to lists and rooms, live, private
//! to their owner where they must be, and kept across a restart where they are stored.

use std::sync::Arc;

use sonic_rs::{json, JsonContainerTrait, JsonValueTrait, Value};

use crate::support::db::{Backend, TestDb};
use crate::support::fake::FakeHomeserver;
use crate::support::on_both_stores;
use crate::support::proxy::{pos, scripted, Proxy};
use crate::support::v2::*;

const ALICE: &str = "@alice:test";
const BOB: &str = "@bob:test";

async fn setup() -> (TestDb, Arc<FakeHomeserver>, Proxy) {
    scripted(&[
        ("alice_token", ALICE, "ALICEDEV"),
        ("bob_token", BOB, "BOBDEV"),
    ])
    .await
}

/// One list of `[0, end]` and the three extensions, each scoped as `scope` says.
fn request(end: u64, scope: Value) -> Value {
    let mut ext = json!({});
    for name in ["account_data", "receipts", "typing"] {
        let mut one = scope.clone();
        one["enabled"] = json!(true);
        ext[name] = one;
    }
    json!({
        "lists": {"all": {"ranges": [[0, end]], "timeline_limit": 5}},
        "extensions": ext,
    })
}

async fn next(proxy: &Proxy, token: &str, p: &str) -> Value {
    proxy.sync_ok(token, Some(p), 5_000, &json!({})).await
}

/// The room IDs an extension's `rooms` object holds, sorted.
fn ext_rooms(resp: &Value, ext: &str) -> Vec<String> {
    let mut rooms: Vec<String> = resp["extensions"][ext]["rooms"]
        .as_object()
        .map(|o| o.iter().map(|(k, _)| k.to_owned()).collect())
        .unwrap_or_default();
    rooms.sort();
    rooms
}

/// A room's receipts as (event, type, user) triples, sorted.
fn receipts_of(resp: &Value, room: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let edu = &resp["extensions"]["receipts"]["rooms"][room];
    if let Some(content) = edu["content"].as_object() {
        assert_eq!(edu["type"].as_str(), Some("m.receipt"));
        for (event, kinds) in content.iter() {
            for (kind, users) in kinds.as_object().unwrap().iter() {
                for (user, _) in users.as_object().unwrap().iter() {
                    out.push((event.to_owned(), kind.to_owned(), user.to_owned()));
                }
            }
        }
    }
    out.sort();
    out
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn types_of(events: &Value) -> Vec<String> {
    let mut types: Vec<String> = events
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["type"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    types.sort();
    types
}

/// Alice and Bob in one room, Alice alone in another; a message in each.
fn shared_and_own(hello: &Value) -> (Value, Value) {
    let shared = joined(
        vec![
            create(BOB, 1_000),
            member(BOB, "join", 1_001),
            member(ALICE, "join", 1_002),
        ],
        vec![hello.clone()],
    );
    (shared, new_room(ALICE, Some("Own"), 500))
}

#[tokio::test]
async fn account_data_comes_whole_at_first_then_as_it_changes_and_only_for_rooms_in_scope() {
    let (_db, hs, proxy) = setup().await;
    let mut newer = new_room(ALICE, Some("Newer"), 3_000);
    newer["account_data"] =
        json!({"events": [tags(&["u.a"]), account("m.fully_read", json!({"event_id": "$x"}))]});
    let mut older = new_room(ALICE, Some("Older"), 2_000);
    older["account_data"] = json!({"events": [tags(&["u.b"])]});
    hs.push_sync(
        "alice_token",
        json!({
            "rooms": rooms_join(vec![("!newer:test", newer), ("!older:test", older)]),
            "account_data": {"events": [account("m.push_rules", json!({"global": {}})), direct(&[])]},
        }),
    );
    // Only the newest room is in the window.
    let first = proxy
        .sync_ok("alice_token", None, 0, &request(0, json!({})))
        .await;
    let ad = &first["extensions"]["account_data"];
    assert_eq!(types_of(&ad["global"]), ["m.direct", "m.push_rules"]);
    assert_eq!(ext_rooms(&first, "account_data"), ["!newer:test"]);
    assert_eq!(
        types_of(&ad["rooms"]["!newer:test"]),
        ["m.fully_read", "m.tag"]
    );

    // A change comes alone; the room account data of a room out of scope does not come.
    hs.push_sync(
        "alice_token",
        json!({
            "rooms": rooms_join(vec![("!older:test", room_account(vec![tags(&["u.c"])]))]),
            "account_data": {"events": [account("m.push_rules", json!({"global": {"x": 1}}))]},
        }),
    );
    let live = next(&proxy, "alice_token", &pos(&first)).await;
    let ad = &live["extensions"]["account_data"];
    assert_eq!(types_of(&ad["global"]), ["m.push_rules"]);
    assert_eq!(ad["global"][0]["content"]["global"]["x"].as_u64(), Some(1));
    assert!(ext_rooms(&live, "account_data").is_empty(), "{live:?}");

    // Widening the window brings the other room, with all of its account data.
    let wider = proxy
        .sync_ok(
            "alice_token",
            Some(&pos(&live)),
            0,
            &json!({"lists": {"all": {"ranges": [[0, 1]]}}}),
        )
        .await;
    assert_eq!(ext_rooms(&wider, "account_data"), ["!older:test"]);
    let tags = &wider["extensions"]["account_data"]["rooms"]["!older:test"][0];
    assert!(tags["content"]["tags"].get("u.c").is_some());
    assert!(types_of(&wider["extensions"]["account_data"]["global"]).is_empty());
    proxy.stop().await;
}

#[tokio::test]
async fn extensions_named_for_other_lists_or_rooms_cover_only_those() {
    let (_db, hs, proxy) = setup().await;
    let hello = message(BOB, "hello", 2_000);
    let (shared, own) = shared_and_own(&hello);
    let mut own = own;
    own["account_data"] = json!({"events": [tags(&["u.own"])]});
    own["ephemeral"] = json!({"events": [typing(&[ALICE])]});
    let mut shared = shared;
    shared["ephemeral"] = json!({"events": [typing(&[BOB])]});
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![("!shared:test", shared), ("!own:test", own)]),
    );
    // Scoped to a list the connection does not have, plus one named room.
    let first = proxy
        .sync_ok(
            "alice_token",
            None,
            0,
            &request(9, json!({"lists": ["other"], "rooms": ["!own:test"]})),
        )
        .await;
    assert_eq!(ext_rooms(&first, "account_data"), ["!own:test"]);
    assert_eq!(ext_rooms(&first, "typing"), ["!own:test"]);
    let typing = &first["extensions"]["typing"]["rooms"]["!own:test"];
    assert_eq!(typing["type"].as_str(), Some("m.typing"));
    assert_eq!(typing["content"]["user_ids"][0].as_str(), Some(ALICE));
    proxy.stop().await;
}

#[tokio::test]
async fn receipts_cover_the_timeline_and_the_users_own_and_private_ones_stay_private() {
    let (_db, hs, proxy) = setup().await;
    let (old, hello) = (message(BOB, "old", 1_500), message(BOB, "hello", 2_000));
    let shared = joined(
        vec![
            create(BOB, 1_000),
            member(BOB, "join", 1_001),
            member(ALICE, "join", 1_002),
        ],
        vec![old.clone(), hello.clone()],
    );
    let (old_id, hello_id) = (id_of(&old), id_of(&hello));
    // What Bob's poller sees: his own private receipt, Alice's public one.
    let mut bobs = shared.clone();
    bobs["ephemeral"] = json!({"events": [receipts(&[
        (&hello_id, "m.read.private", BOB, None),
        (&hello_id, "m.read", ALICE, None),
    ])]});
    hs.push_rooms("bob_token", rooms_join(vec![("!shared:test", bobs)]));
    // What Alice's poller sees: her private receipt on an older event, a threaded one.
    let mut alices = shared;
    alices["ephemeral"] = json!({"events": [receipts(&[
        (&old_id, "m.read.private", ALICE, None),
        (&hello_id, "m.read", ALICE, Some("$thread")),
        (&hello_id, "m.read", ALICE, None),
    ])]});
    hs.push_rooms("alice_token", rooms_join(vec![("!shared:test", alices)]));

    let scope = json!({});
    let mut body = request(9, scope.clone());
    body["lists"]["all"]["timeline_limit"] = json!(1);
    let alice = proxy.sync_ok("alice_token", None, 0, &body).await;
    // The timeline holds only `hello`; her own receipt on `old` comes too, as her own.
    assert_eq!(
        receipts_of(&alice, "!shared:test"),
        sorted(vec![
            (old_id.clone(), "m.read.private".into(), ALICE.into()),
            (hello_id.clone(), "m.read".into(), ALICE.into()),
        ]),
        "{alice:?}"
    );
    // Her unthreaded receipt wins over the threaded one on the same event.
    let mine = &alice["extensions"]["receipts"]["rooms"]["!shared:test"]["content"]
        [hello_id.as_str()]["m.read"][ALICE];
    assert!(mine.get("thread_id").is_none(), "{mine:?}");

    let bob = proxy.sync_ok("bob_token", None, 0, &body).await;
    assert_eq!(
        receipts_of(&bob, "!shared:test"),
        [
            (hello_id.clone(), "m.read".into(), ALICE.into()),
            (hello_id.clone(), "m.read.private".into(), BOB.into()),
        ],
        "Bob sees Alice's public receipt and his own private one, not hers"
    );

    // Live: a new public receipt reaches both, a private one only its owner.
    let reply = message(ALICE, "reply", 3_000);
    let reply_id = id_of(&reply);
    let mut live_room = joined(vec![], vec![reply.clone()]);
    live_room["ephemeral"] = json!({"events": [receipts(&[
        (&reply_id, "m.read", ALICE, None),
        (&reply_id, "m.read.private", BOB, None),
    ])]});
    hs.push_rooms("bob_token", rooms_join(vec![("!shared:test", live_room)]));
    let bob_live = next(&proxy, "bob_token", &pos(&bob)).await;
    let mut bob_live = bob_live;
    if receipts_of(&bob_live, "!shared:test").is_empty() {
        bob_live = next(&proxy, "bob_token", &pos(&bob_live)).await;
    }
    assert_eq!(
        receipts_of(&bob_live, "!shared:test"),
        [
            (reply_id.clone(), "m.read".into(), ALICE.into()),
            (reply_id.clone(), "m.read.private".into(), BOB.into()),
        ]
    );
    let mut alice_live = next(&proxy, "alice_token", &pos(&alice)).await;
    if receipts_of(&alice_live, "!shared:test").is_empty() {
        alice_live = next(&proxy, "alice_token", &pos(&alice_live)).await;
    }
    assert_eq!(
        receipts_of(&alice_live, "!shared:test"),
        [(reply_id.clone(), "m.read".into(), ALICE.into())],
        "Bob's private receipt never reaches Alice"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn typing_changes_arrive_live_and_one_users_account_data_never_reaches_another() {
    let (_db, hs, proxy) = setup().await;
    let hello = message(BOB, "hello", 2_000);
    let (shared, _) = shared_and_own(&hello);
    let mut bobs = shared.clone();
    bobs["account_data"] = json!({"events": [tags(&["u.bobs-secret"])]});
    hs.push_sync(
        "bob_token",
        json!({
            "rooms": rooms_join(vec![("!shared:test", bobs)]),
            "account_data": {"events": [account("u.bob.private", json!({"secret": 1}))]},
        }),
    );
    proxy
        .sync_ok("bob_token", None, 0, &request(9, json!({})))
        .await;
    hs.push_rooms("alice_token", rooms_join(vec![("!shared:test", shared)]));
    let first = proxy
        .sync_ok("alice_token", None, 0, &request(9, json!({})))
        .await;
    assert!(
        first["extensions"]["account_data"]["global"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{first:?}"
    );
    assert!(ext_rooms(&first, "account_data").is_empty());
    assert!(ext_rooms(&first, "typing").is_empty(), "nobody types");

    hs.push_rooms(
        "alice_token",
        rooms_join(vec![("!shared:test", ephemeral(vec![typing(&[BOB])]))]),
    );
    let typing_now = next(&proxy, "alice_token", &pos(&first)).await;
    let users = &typing_now["extensions"]["typing"]["rooms"]["!shared:test"]["content"]["user_ids"];
    assert_eq!(users[0].as_str(), Some(BOB), "{typing_now:?}");
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![("!shared:test", ephemeral(vec![typing(&[])]))]),
    );
    let stopped = next(&proxy, "alice_token", &pos(&typing_now)).await;
    let users = &stopped["extensions"]["typing"]["rooms"]["!shared:test"]["content"]["user_ids"];
    assert_eq!(users.as_array().map(|a| a.len()), Some(0), "{stopped:?}");
    proxy.stop().await;
}

on_both_stores!(receipts_and_account_data_are_served_after_a_restart);

async fn receipts_and_account_data_are_served_after_a_restart(backend: Backend) {
    let db = TestDb::of(backend).await;
    let hs = FakeHomeserver::with_devices(&[("alice_token", ALICE, "ALICEDEV")]);
    let proxy = Proxy::start(&db.url, hs.clone()).await;
    let hello = message(BOB, "hello", 2_000);
    let (mut shared, _) = shared_and_own(&hello);
    shared["ephemeral"] = json!({"events": [receipts(&[(&id_of(&hello), "m.read", BOB, None)])]});
    shared["account_data"] = json!({"events": [tags(&["u.kept"])]});
    hs.push_sync(
        "alice_token",
        json!({
            "rooms": rooms_join(vec![("!shared:test", shared)]),
            "account_data": {"events": [account("m.push_rules", json!({"global": {}}))]},
        }),
    );
    let before = proxy
        .sync_ok("alice_token", None, 0, &request(9, json!({})))
        .await;
    assert_eq!(receipts_of(&before, "!shared:test").len(), 1);
    proxy.stop().await;

    let hs = FakeHomeserver::with_devices(&[("alice_token", ALICE, "ALICEDEV")]);
    hs.hold("alice_token");
    let proxy = Proxy::start(&db.url, hs).await;
    let after = proxy
        .sync_ok("alice_token", None, 0, &request(9, json!({})))
        .await;
    assert_eq!(
        receipts_of(&after, "!shared:test"),
        receipts_of(&before, "!shared:test")
    );
    let ad = &after["extensions"]["account_data"];
    assert_eq!(types_of(&ad["global"]), ["m.push_rules"]);
    assert_eq!(types_of(&ad["rooms"]["!shared:test"]), ["m.tag"]);
    proxy.stop().await;
}

/// Someone who types before saying anything: with `$LAZY` their member event comes
/// along, once, so the client can show who is typing.
#[tokio::test]
async fn typing_users_are_loaded_lazily_once() {
    let (_db, hs, proxy) = setup().await;
    const CAROL: &str = "@carol:test";
    let hello = message(BOB, "hello", 2_000);
    let room = joined(
        vec![
            create(BOB, 1_000),
            member(BOB, "join", 1_001),
            member(ALICE, "join", 1_002),
            member(CAROL, "join", 1_003),
        ],
        vec![hello],
    );
    hs.push_rooms("alice_token", rooms_join(vec![("!shared:test", room)]));
    let mut req = request(9, json!({}));
    req["lists"]["all"]["required_state"] = json!([["m.room.member", "$LAZY"]]);
    let first = proxy.sync_ok("alice_token", None, 0, &req).await;
    let members = |resp: &Value| -> Vec<String> {
        resp["rooms"]["!shared:test"]["required_state"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(members(&first), [BOB], "the timeline's sender only");

    hs.push_rooms(
        "alice_token",
        rooms_join(vec![("!shared:test", ephemeral(vec![typing(&[CAROL])]))]),
    );
    let typing_now = next(&proxy, "alice_token", &pos(&first)).await;
    assert_eq!(members(&typing_now), [CAROL], "{typing_now:?}");
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(
            "!shared:test",
            ephemeral(vec![typing(&[CAROL, BOB])]),
        )]),
    );
    let again = next(&proxy, "alice_token", &pos(&typing_now)).await;
    assert!(members(&again).is_empty(), "each member once: {again:?}");
    proxy.stop().await;
}
