//! What account data does to the room list: `m.direct` and invites' `is_direct` behind
//! `is_dm`, `m.tag` behind `tags`/`not_tags`, `m.space.child` behind `spaces`, and
//! `m.ignored_user_list` in timelines; each applied live and kept across a restart.

use std::sync::Arc;

use sonic_rs::{json, JsonValueMutTrait, JsonValueTrait, Value};

use crate::support::db::{Backend, TestDb};
use crate::support::fake::FakeHomeserver;
use crate::support::on_both_stores;
use crate::support::proxy::{ops, pos, scripted, synced_ids, timeline_ids, Proxy};
use crate::support::v2::*;

const ALICE: &str = "@alice:test";
const BOB: &str = "@bob:test";
const CAROL: &str = "@carol:test";

async fn setup() -> (TestDb, Arc<FakeHomeserver>, Proxy) {
    scripted(&[
        ("alice_token", ALICE, "ALICEDEV"),
        ("bob_token", BOB, "BOBDEV"),
    ])
    .await
}

/// Two lists over the same rooms, split by `filters` and its opposite.
fn split_lists(yes: Value, no: Value) -> Value {
    json!({"lists": {
        "yes": {"ranges": [[0, 9]], "timeline_limit": 1, "filters": yes},
        "no": {"ranges": [[0, 9]], "timeline_limit": 1, "filters": no},
    }})
}

/// Waits for the next response of a connection that has something.
async fn next(proxy: &Proxy, token: &str, p: &str) -> Value {
    proxy.sync_ok(token, Some(p), 5_000, &json!({})).await
}

/// Whether the list's ops include `op` (as [`ops`] writes it): the room moved where
/// the test says, whatever other ops the window needed.
fn has_op(resp: &Value, list: &str, op: &str) -> bool {
    ops(resp, list).iter().any(|o| o == op)
}

fn count(resp: &Value, list: &str) -> u64 {
    resp["lists"][list]["count"].as_u64().expect("count")
}

fn two_rooms() -> Value {
    rooms_join(vec![
        ("!a:test", new_room(ALICE, Some("A"), 1_000)),
        ("!b:test", new_room(ALICE, Some("B"), 2_000)),
    ])
}

#[tokio::test]
async fn a_room_listed_in_m_direct_moves_into_the_dm_list_live_and_back_out() {
    let (_db, hs, proxy) = setup().await;
    hs.push_rooms("alice_token", two_rooms());
    let body = split_lists(json!({"is_dm": true}), json!({"is_dm": false}));
    let first = proxy.sync_ok("alice_token", None, 0, &body).await;
    assert_eq!(count(&first, "yes"), 0);
    assert_eq!(synced_ids(&first, "no"), ["!b:test", "!a:test"]);
    assert!(first["rooms"]["!a:test"].get("is_dm").is_none());

    hs.push_sync(
        "alice_token",
        json!({"account_data": {"events": [direct(&[(BOB, &["!a:test"])])]}}),
    );
    let live = next(&proxy, "alice_token", &pos(&first)).await;
    assert!(has_op(&live, "yes", "INSERT 0 !a:test"), "{live:?}");
    assert!(has_op(&live, "no", "DELETE 1"), "{live:?}");
    assert_eq!((count(&live, "yes"), count(&live, "no")), (1, 1));
    assert_eq!(live["rooms"]["!a:test"]["is_dm"].as_bool(), Some(true));

    // A new connection sees the flag with the room's initial data.
    let fresh = proxy
        .sync_ok("alice_token", None, 0, &json!({"conn_id": "other", "lists": {"yes": {"ranges": [[0, 9]], "filters": {"is_dm": true}}}}))
        .await;
    assert_eq!(synced_ids(&fresh, "yes"), ["!a:test"]);
    assert_eq!(fresh["rooms"]["!a:test"]["is_dm"].as_bool(), Some(true));

    hs.push_sync(
        "alice_token",
        json!({"account_data": {"events": [direct(&[])]}}),
    );
    let back = next(&proxy, "alice_token", &pos(&live)).await;
    assert_eq!(ops(&back, "yes"), ["DELETE 0"]);
    assert!(has_op(&back, "no", "INSERT 1 !a:test"), "{back:?}");
    assert_eq!((count(&back, "yes"), count(&back, "no")), (0, 2));
    assert_eq!(back["rooms"]["!a:test"]["is_dm"].as_bool(), Some(false));
    proxy.stop().await;
}

#[tokio::test]
async fn an_invite_whose_member_event_says_is_direct_is_a_dm() {
    let (_db, hs, proxy) = setup().await;
    hs.push_rooms("alice_token", two_rooms());
    let body = split_lists(json!({"is_dm": true}), json!({"is_dm": false}));
    let first = proxy.sync_ok("alice_token", None, 0, &body).await;
    hs.push_rooms(
        "alice_token",
        rooms_invite(
            "!dm:test",
            vec![
                stripped("m.room.create", "", BOB, json!({"creator": BOB})),
                stripped(
                    "m.room.member",
                    ALICE,
                    BOB,
                    json!({"membership": "invite", "is_direct": true}),
                ),
            ],
        ),
    );
    let live = next(&proxy, "alice_token", &pos(&first)).await;
    assert!(has_op(&live, "yes", "INSERT 0 !dm:test"), "{live:?}");
    assert_eq!(count(&live, "no"), 2, "the other rooms stay where they are");
    assert_eq!(live["rooms"]["!dm:test"]["is_dm"].as_bool(), Some(true));
    proxy.stop().await;
}

#[tokio::test]
async fn tagging_a_room_moves_it_between_lists_by_tags_and_not_tags() {
    let (_db, hs, proxy) = setup().await;
    hs.push_rooms("alice_token", two_rooms());
    let body = split_lists(
        json!({"tags": ["m.favourite", "u.other"]}),
        json!({"not_tags": ["m.favourite"]}),
    );
    let first = proxy.sync_ok("alice_token", None, 0, &body).await;
    assert_eq!(count(&first, "yes"), 0);
    assert_eq!(count(&first, "no"), 2);

    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(
            "!a:test",
            room_account(vec![tags(&["m.favourite"])]),
        )]),
    );
    let live = next(&proxy, "alice_token", &pos(&first)).await;
    assert!(has_op(&live, "yes", "INSERT 0 !a:test"), "{live:?}");
    assert!(has_op(&live, "no", "DELETE 1"), "{live:?}");
    assert_eq!((count(&live, "yes"), count(&live, "no")), (1, 1));

    // An m.tag without the tag untags it.
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![("!a:test", room_account(vec![tags(&["u.work"])]))]),
    );
    let untagged = next(&proxy, "alice_token", &pos(&live)).await;
    assert_eq!(ops(&untagged, "yes"), ["DELETE 0"]);
    assert_eq!(count(&untagged, "no"), 2);
    proxy.stop().await;
}

/// A space of Bob's that lists `!a:test`, delivered by Bob's poller; returns it as
/// delivered.
async fn bobs_space(hs: &FakeHomeserver, proxy: &Proxy, id: &str) -> Value {
    let space = new_space(BOB, 500, &["!a:test"]);
    hs.push_rooms("bob_token", rooms_join(vec![(id, space.clone())]));
    proxy
        .sync_ok("bob_token", None, 0, &json!({"lists": {}}))
        .await;
    space
}

/// Bob's space lists a room Alice is in; Alice is not in Bob's space. Naming it in
/// `spaces` must not tell Alice what it holds.
#[tokio::test]
async fn the_spaces_filter_shows_children_of_joined_spaces_only() {
    let (_db, hs, proxy) = setup().await;
    bobs_space(&hs, &proxy, "!bobs:test").await;
    let mine = new_space(ALICE, 600, &["!b:test"]);
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![
            ("!a:test", new_room(ALICE, Some("A"), 1_000)),
            ("!b:test", new_room(ALICE, Some("B"), 2_000)),
            ("!c:test", new_room(ALICE, Some("C"), 3_000)),
            ("!mine:test", mine),
        ]),
    );
    let body = json!({"lists": {"space": {
        "ranges": [[0, 9]],
        "filters": {"spaces": ["!mine:test", "!bobs:test"]}
    }}});
    let first = proxy.sync_ok("alice_token", None, 0, &body).await;
    assert_eq!(synced_ids(&first, "space"), ["!b:test"]);

    // A child added to Alice's space enters the list live; one with no `via` leaves.
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(
            "!mine:test",
            joined(
                vec![],
                vec![
                    space_child(ALICE, "!c:test", &["test"], 4_000),
                    space_child(ALICE, "!b:test", &[], 4_001),
                ],
            ),
        )]),
    );
    let live = next(&proxy, "alice_token", &pos(&first)).await;
    assert!(has_op(&live, "space", "INSERT 0 !c:test"), "{live:?}");
    assert_eq!(count(&live, "space"), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn joining_a_space_brings_its_children_into_a_list_filtered_by_it() {
    let (_db, hs, proxy) = setup().await;
    let bobs = bobs_space(&hs, &proxy, "!space:test").await;
    hs.push_rooms("alice_token", two_rooms());
    let body =
        json!({"lists": {"space": {"ranges": [[0, 9]], "filters": {"spaces": ["!space:test"]}}}});
    let first = proxy.sync_ok("alice_token", None, 0, &body).await;
    assert_eq!(count(&first, "space"), 0);

    let mut joined_space = bobs;
    joined_space["timeline"]["events"] = json!([member(ALICE, "join", 5_000)]);
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![("!space:test", joined_space)]),
    );
    let live = next(&proxy, "alice_token", &pos(&first)).await;
    assert!(has_op(&live, "space", "INSERT 0 !a:test"), "{live:?}");
    assert_eq!(count(&live, "space"), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn messages_of_ignored_users_are_dropped_from_that_users_timelines() {
    let (_db, hs, proxy) = setup().await;
    let (hello, spam, rename) = (
        message(BOB, "hello", 1_002),
        message(CAROL, "spam", 1_003),
        name(CAROL, "Carol's room", 1_004),
    );
    let room = joined(
        vec![
            create(BOB, 1_000),
            member(BOB, "join", 1_001),
            member(ALICE, "join", 1_001),
            member(CAROL, "join", 1_001),
        ],
        vec![hello.clone(), spam.clone(), rename.clone()],
    );
    let body = json!({"lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 10}}});
    // Bob ignores nobody: he sees every message.
    hs.push_rooms("bob_token", rooms_join(vec![("!r:test", room.clone())]));
    let bob = proxy.sync_ok("bob_token", None, 0, &body).await;
    assert!(timeline_ids(&bob, "!r:test").contains(&id_of(&spam)));

    hs.push_sync(
        "alice_token",
        json!({
            "rooms": rooms_join(vec![("!r:test", room)]),
            "account_data": {"events": [account("m.ignored_user_list", json!({"ignored_users": {CAROL: {}}}))]},
        }),
    );
    let first = proxy.sync_ok("alice_token", None, 0, &body).await;
    assert_eq!(
        timeline_ids(&first, "!r:test"),
        [id_of(&hello), id_of(&rename)],
        "Carol's message is gone, her state change is not"
    );

    let (more_spam, reply) = (message(CAROL, "more", 2_000), message(BOB, "hi", 2_001));
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(
            "!r:test",
            joined(vec![], vec![more_spam.clone(), reply.clone()]),
        )]),
    );
    let live = next(&proxy, "alice_token", &pos(&first)).await;
    assert_eq!(timeline_ids(&live, "!r:test"), [id_of(&reply)]);
    proxy.stop().await;
}

on_both_stores!(dms_tags_and_ignored_users_survive_a_restart);

async fn dms_tags_and_ignored_users_survive_a_restart(backend: Backend) {
    let db = TestDb::of(backend).await;
    let hs = FakeHomeserver::with_devices(&[("alice_token", ALICE, "ALICEDEV")]);
    let proxy = Proxy::start(&db.url, hs.clone()).await;
    let mut rooms = two_rooms();
    rooms["join"]["!b:test"]["account_data"] = json!({"events": [tags(&["m.favourite"])]});
    rooms["join"]["!b:test"]["timeline"]["events"]
        .as_array_mut()
        .unwrap()
        .push(message(CAROL, "ignored", 2_001));
    hs.push_sync(
        "alice_token",
        json!({
            "rooms": rooms,
            "account_data": {"events": [
                direct(&[(BOB, &["!a:test"])]),
                account("m.ignored_user_list", json!({"ignored_users": {CAROL: {}}})),
            ]},
        }),
    );
    let body = json!({"lists": {
        "dms": {"ranges": [[0, 9]], "filters": {"is_dm": true}},
        "favourites": {"ranges": [[0, 9]], "filters": {"tags": ["m.favourite"]}, "timeline_limit": 5},
    }});
    let before = proxy.sync_ok("alice_token", None, 0, &body).await;
    assert_eq!(synced_ids(&before, "dms"), ["!a:test"]);
    assert_eq!(synced_ids(&before, "favourites"), ["!b:test"]);
    let timeline = timeline_ids(&before, "!b:test");
    assert_eq!(timeline.len(), 1, "Carol's message is not shown");
    proxy.stop().await;

    let hs = FakeHomeserver::with_devices(&[("alice_token", ALICE, "ALICEDEV")]);
    hs.hold("alice_token");
    let proxy = Proxy::start(&db.url, hs).await;
    let after = proxy.sync_ok("alice_token", None, 0, &body).await;
    assert_eq!(synced_ids(&after, "dms"), ["!a:test"]);
    assert_eq!(after["rooms"]["!a:test"]["is_dm"].as_bool(), Some(true));
    assert_eq!(synced_ids(&after, "favourites"), ["!b:test"]);
    assert_eq!(timeline_ids(&after, "!b:test"), timeline);
    proxy.stop().await;
}
