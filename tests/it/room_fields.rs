//! Room fields through the proxy against a scripted homeserver: names, heroes, avatars,
//! invites, `timestamp` and `bump_event_types`, upgraded rooms.

use std::sync::Arc;

use sonic_rs::{json, JsonContainerTrait, JsonValueTrait, Value};

use crate::support::db::TestDb;
use crate::support::fake::FakeHomeserver;
use crate::support::proxy::{ops, pos, scripted, synced_ids, Proxy};
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

fn list(extra: Value) -> Value {
    let mut list = json!({"ranges": [[0, 19]], "timeline_limit": 1});
    if let Some(fields) = extra.as_object() {
        for (k, v) in fields.iter() {
            list[k] = v.clone();
        }
    }
    json!({"lists": {"all": list}})
}

fn member_named(user: &str, membership: &str, name: &str, avatar: Option<&str>, ts: u64) -> Value {
    let mut ev = member(user, membership, ts);
    ev["content"]["displayname"] = json!(name);
    if let Some(url) = avatar {
        ev["content"]["avatar_url"] = json!(url);
    }
    ev
}

fn state_event(kind: &str, sender: &str, content: Value, ts: u64) -> Value {
    let mut ev = name(sender, "", ts);
    ev["type"] = json!(kind);
    ev["content"] = content;
    ev
}

fn heroes(room: &Value) -> Vec<(String, Option<String>, Option<String>)> {
    room["heroes"]
        .as_array()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h["user_id"].as_str().unwrap().to_owned(),
                        h["displayname"].as_str().map(str::to_owned),
                        h["avatar_url"].as_str().map(str::to_owned),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Those who left are named by their leave events, which carry no display name.
#[tokio::test]
async fn names_come_from_heroes_disambiguated_and_empty_rooms_recall_who_left() {
    let (_db, hs, proxy) = setup().await;
    let state = vec![
        create(ALICE, 1),
        member_named(ALICE, "join", "Alice", None, 2),
        member_named("@sam1:test", "join", "Sam", Some("mxc://test/s1"), 3),
        member_named("@sam2:test", "join", "Sam", None, 4),
        member_named("@kim:test", "invite", "Kim", None, 5),
    ];
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(
            "!r:test",
            joined(state, vec![message(ALICE, "hi", 10)]),
        )]),
    );
    let body = list(json!({"include_heroes": true}));
    let first = proxy.sync_ok("alice_token", None, 0, &body).await;
    let room = &first["rooms"]["!r:test"];
    assert_eq!(
        room["name"].as_str(),
        Some("Sam (@sam1:test), Sam (@sam2:test) and Kim")
    );
    assert_eq!(
        heroes(room),
        [
            (
                "@sam1:test".to_owned(),
                Some("Sam".to_owned()),
                Some("mxc://test/s1".to_owned())
            ),
            ("@sam2:test".to_owned(), Some("Sam".to_owned()), None),
            ("@kim:test".to_owned(), Some("Kim".to_owned()), None),
        ],
        "the reader is not among the heroes: {room:?}"
    );
    assert_eq!(room["invited_count"].as_u64(), Some(1));

    let parked = proxy.spawn_sync("alice_token", Some(&pos(&first)), 5_000, &json!({}));
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(
            "!r:test",
            joined(
                vec![],
                vec![
                    member("@sam1:test", "leave", 11),
                    member("@sam2:test", "leave", 12),
                    member("@kim:test", "leave", 13),
                ],
            ),
        )]),
    );
    let live = parked.await.unwrap().json();
    let room = &live["rooms"]["!r:test"];
    assert_eq!(
        room["name"].as_str(),
        Some("Empty Room (was @sam1:test, @sam2:test and @kim:test)"),
        "{live:?}"
    );

    // Heroes only for lists that ask for them.
    let named = proxy
        .sync_ok(
            "alice_token",
            None,
            0,
            &json!({"conn_id": "other", "lists": {"all": {"ranges": [[0, 0]], "include_heroes": false}}}),
        )
        .await;
    assert!(named["rooms"]["!r:test"].get("heroes").is_none());
    proxy.stop().await;
}

#[tokio::test]
async fn the_avatar_is_null_then_a_url_and_absent_while_unchanged() {
    let (_db, hs, proxy) = setup().await;
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![("!r:test", new_room(ALICE, Some("Room"), 1_000))]),
    );
    let first = proxy
        .sync_ok("alice_token", None, 0, &list(json!({})))
        .await;
    let room = &first["rooms"]["!r:test"];
    assert!(
        room["avatar"].is_null() && room.get("avatar").is_some(),
        "{room:?}"
    );

    let avatar = state_event(
        "m.room.avatar",
        ALICE,
        json!({"url": "mxc://test/pic"}),
        2_000,
    );
    let parked = proxy.spawn_sync("alice_token", Some(&pos(&first)), 5_000, &json!({}));
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![("!r:test", joined(vec![], vec![avatar]))]),
    );
    let live = parked.await.unwrap().json();
    assert_eq!(
        live["rooms"]["!r:test"]["avatar"].as_str(),
        Some("mxc://test/pic")
    );

    let parked = proxy.spawn_sync("alice_token", Some(&pos(&live)), 5_000, &json!({}));
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(
            "!r:test",
            joined(vec![], vec![message(ALICE, "hi", 3_000)]),
        )]),
    );
    let live = parked.await.unwrap().json();
    let room = &live["rooms"]["!r:test"];
    assert!(room.get("avatar").is_none(), "unchanged: {room:?}");
    proxy.stop().await;
}

/// An invitee's room list knows the invite only by its stripped state: filters match
/// what the inviter shared, the name comes from it, and the counts are fixed so they
/// tell nothing of the room. Invites are ordered by when they were sent.
#[tokio::test]
async fn invites_are_named_filtered_and_ordered_by_their_stripped_state() {
    let (_db, hs, proxy) = setup().await;
    // Bob's room is really called "Secret", holds three members and is unencrypted.
    hs.push_rooms(
        "bob_token",
        rooms_join(vec![(
            "!party:test",
            joined(
                vec![
                    create(BOB, 1),
                    member(BOB, "join", 2),
                    member("@carol:test", "join", 3),
                    member("@dan:test", "join", 4),
                    name(BOB, "Secret", 5),
                ],
                vec![message(BOB, "hi", 6)],
            ),
        )]),
    );
    proxy.sync_ok("bob_token", None, 0, &list(json!({}))).await;
    let invite = |room: &str, ts: u64, room_name: Option<&str>, encrypted: bool| {
        let mut state = vec![
            stripped(
                "m.room.create",
                "",
                BOB,
                json!({"type": "org.example.party"}),
            ),
            stripped(
                "m.room.member",
                BOB,
                BOB,
                json!({"membership": "join", "displayname": "Bob", "avatar_url": "mxc://test/bob"}),
            ),
            json!({"type": "m.room.member", "state_key": ALICE, "sender": BOB, "origin_server_ts": ts,
                   "content": {"membership": "invite", "is_direct": room_name.is_none()}}),
        ];
        if let Some(n) = room_name {
            state.push(stripped("m.room.name", "", BOB, json!({"name": n})));
        }
        if encrypted {
            state.push(stripped(
                "m.room.encryption",
                "",
                BOB,
                json!({"algorithm": "m.megolm.v1.aes-sha2"}),
            ));
        }
        rooms_invite(room, state)
    };
    hs.push_rooms(
        "alice_token",
        invite("!party:test", 5_000, Some("Party"), true),
    );
    hs.push_rooms("alice_token", invite("!dm:test", 6_000, None, false));
    let resp = proxy
        .sync_ok(
            "alice_token",
            None,
            0,
            &json!({"lists": {
                "all": {"ranges": [[0, 9]], "include_heroes": true},
                "encrypted_parties": {"ranges": [[0, 9]], "filters": {
                    "is_encrypted": true, "room_name_like": "part",
                    "room_types": ["org.example.party"]}},
                "secret": {"ranges": [[0, 9]], "filters": {"room_name_like": "secret"}}
            }}),
        )
        .await;
    assert_eq!(
        synced_ids(&resp, "all"),
        ["!dm:test", "!party:test"],
        "newest invite first"
    );
    assert_eq!(synced_ids(&resp, "encrypted_parties"), ["!party:test"]);
    assert_eq!(resp["lists"]["secret"]["count"].as_u64(), Some(0));
    let party = &resp["rooms"]["!party:test"];
    assert_eq!(party["name"].as_str(), Some("Party"));
    assert_eq!(party["joined_count"].as_u64(), Some(1));
    assert_eq!(party["invited_count"].as_u64(), Some(1));
    assert!(party["avatar"].is_null());
    let dm = &resp["rooms"]["!dm:test"];
    assert_eq!(dm["name"].as_str(), Some("Bob"));
    assert_eq!(
        dm["avatar"].as_str(),
        Some("mxc://test/bob"),
        "a DM shows the other member"
    );
    assert_eq!(heroes(dm)[0].0, BOB);
    assert_eq!(dm["timestamp"].as_u64(), Some(6_000));
    proxy.stop().await;
}

fn with_topic(ts: u64) -> Value {
    state_event("m.room.topic", ALICE, json!({"topic": "t"}), ts)
}

/// A list that bumps only on messages keeps a room where it is when its topic changes,
/// and a room is never placed by what happened before the user joined it.
#[tokio::test]
async fn bump_event_types_choose_what_moves_a_room() {
    let (_db, hs, proxy) = setup().await;
    let joined_early = |ts: u64| {
        joined(
            vec![create(ALICE, 1), member(ALICE, "join", 2)],
            vec![message(ALICE, "hello", ts)],
        )
    };
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![
            ("!a:test", joined_early(3_500)),
            ("!b:test", joined_early(2_000)),
            // Busy before Alice joined, quiet since: placed by her join.
            (
                "!late:test",
                joined(
                    vec![create(BOB, 1), member(BOB, "join", 2)],
                    vec![
                        message(BOB, "before you came", 3_000),
                        member(ALICE, "join", 4_000),
                    ],
                ),
            ),
        ]),
    );
    let body = list(json!({"bump_event_types": ["m.room.message"]}));
    let first = proxy.sync_ok("alice_token", None, 0, &body).await;
    assert_eq!(
        synced_ids(&first, "all"),
        ["!late:test", "!a:test", "!b:test"]
    );
    assert_eq!(
        first["rooms"]["!late:test"]["timestamp"].as_u64(),
        Some(4_000)
    );
    assert_eq!(first["rooms"]["!a:test"]["timestamp"].as_u64(), Some(3_500));

    let parked = proxy.spawn_sync("alice_token", Some(&pos(&first)), 5_000, &json!({}));
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![("!b:test", joined(vec![], vec![with_topic(5_000)]))]),
    );
    let live = parked.await.unwrap().json();
    assert!(
        ops(&live, "all").is_empty(),
        "a topic change does not bump: {live:?}"
    );
    let b = &live["rooms"]["!b:test"];
    assert_eq!(b["timeline"].as_array().map(|t| t.len()), Some(1));
    assert!(b.get("timestamp").is_none(), "the bump time did not change");

    let parked = proxy.spawn_sync("alice_token", Some(&pos(&live)), 5_000, &json!({}));
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(
            "!b:test",
            joined(vec![], vec![message(ALICE, "now", 6_000)]),
        )]),
    );
    let live = parked.await.unwrap().json();
    assert_eq!(ops(&live, "all"), ["DELETE 2", "INSERT 0 !b:test"]);
    assert_eq!(live["rooms"]["!b:test"]["timestamp"].as_u64(), Some(6_000));

    // A list without bump types moves on any event.
    let other = proxy
        .sync_ok(
            "alice_token",
            None,
            0,
            &json!({"conn_id": "all", "lists": {"all": {"ranges": [[0, 9]]}}}),
        )
        .await;
    let parked = proxy.spawn_sync(
        "alice_token",
        Some(&pos(&other)),
        5_000,
        &json!({"conn_id": "all"}),
    );
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![("!a:test", joined(vec![], vec![with_topic(7_000)]))]),
    );
    let live = parked.await.unwrap().json();
    assert_eq!(ops(&live, "all"), ["DELETE 2", "INSERT 0 !a:test"]);
    proxy.stop().await;
}

fn upgraded_room(old: &str, ts: u64) -> Value {
    let mut create = create(ALICE, ts);
    create["content"]["predecessor"] = json!({"room_id": old, "event_id": "$tomb"});
    joined(
        vec![create, member(ALICE, "join", ts + 1)],
        vec![message(ALICE, "new home", ts + 2)],
    )
}

/// Once the user joins the room an old one was upgraded to, the old one leaves the
/// list, until the user leaves the new one; `include_old_rooms` (of a list or a
/// subscription) still sends it, with its own parameters.
#[tokio::test]
async fn an_upgraded_room_gives_way_to_its_successor_and_old_rooms_can_be_included() {
    let (_db, hs, proxy) = setup().await;
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![
            ("!old:test", new_room(ALICE, Some("Old"), 1_000)),
            ("!other:test", new_room(ALICE, Some("Other"), 500)),
        ]),
    );
    let first = proxy
        .sync_ok("alice_token", None, 0, &list(json!({})))
        .await;
    assert_eq!(synced_ids(&first, "all"), ["!old:test", "!other:test"]);

    let tombstone = state_event(
        "m.room.tombstone",
        ALICE,
        json!({"body": "moved", "replacement_room": "!new:test"}),
        2_000,
    );
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![
            ("!old:test", joined(vec![], vec![tombstone])),
            ("!new:test", upgraded_room("!old:test", 3_000)),
        ]),
    );
    // The poller applies both rooms in the background: ask until the list settles.
    let mut fresh = Value::new();
    for _ in 0..100 {
        fresh = proxy
            .sync_ok("alice_token", None, 0, &list(json!({})))
            .await;
        if synced_ids(&fresh, "all") == ["!new:test", "!other:test"] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        synced_ids(&fresh, "all"),
        ["!new:test", "!other:test"],
        "the old room left the list"
    );
    assert!(fresh["rooms"].get("!old:test").is_none());

    let with_old = proxy
        .sync_ok(
            "alice_token",
            None,
            0,
            &list(json!({"include_old_rooms": {"timeline_limit": 1, "required_state": [["m.room.tombstone", ""]]}})),
        )
        .await;
    assert_eq!(synced_ids(&with_old, "all"), ["!new:test", "!other:test"]);
    let old = &with_old["rooms"]["!old:test"];
    assert_eq!(old["initial"].as_bool(), Some(true), "{with_old:?}");
    assert_eq!(
        old["required_state"][0]["type"].as_str(),
        Some("m.room.tombstone")
    );

    // A subscription to the new room brings the old one along too.
    let subscribed = proxy
        .sync_ok(
            "alice_token",
            None,
            0,
            &json!({"room_subscriptions": {"!new:test": {
                "timeline_limit": 1,
                "include_old_rooms": {"timeline_limit": 0, "required_state": [["m.room.create", ""]]}
            }}}),
        )
        .await;
    for room in ["!old:test", "!new:test"] {
        assert_eq!(
            subscribed["rooms"][room]["initial"].as_bool(),
            Some(true),
            "{subscribed:?}"
        );
    }

    // Leaving the new room puts the old one back in the list.
    hs.push_rooms(
        "alice_token",
        rooms_leave("!new:test", vec![member(ALICE, "leave", 4_000)]),
    );
    for _ in 0..100 {
        fresh = proxy
            .sync_ok("alice_token", None, 0, &list(json!({})))
            .await;
        if synced_ids(&fresh, "all") == ["!old:test", "!other:test"] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(synced_ids(&fresh, "all"), ["!old:test", "!other:test"]);
    proxy.stop().await;
}
