//! Who may see what (DESIGN invariants 1 and 3): room data only while joined or invited,
//! invitees only the invite state, one token one user, and the token checks themselves.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use sonic_rs::{json, JsonContainerTrait, JsonValueTrait, Value};

use crate::support::db::TestDb;
use crate::support::fake::FakeHomeserver;
use crate::support::proxy::{
    ops, pos, room_ids, scripted, synced_ids, timeline_ids, Proxy, MSC3575,
};
use crate::support::v2::*;

const ALICE: &str = "@alice:test";
const BOB: &str = "@bob:test";
const ROOM: &str = "!shared:test";

fn list_request(timeline_limit: u64) -> Value {
    json!({"lists": {"all": {
        "ranges": [[0, 19]],
        "timeline_limit": timeline_limit,
        "required_state": [["m.room.name", ""], ["m.room.member", "$ME"], ["*", "*"]]
    }}})
}

async fn setup() -> (TestDb, Arc<FakeHomeserver>, Proxy) {
    scripted(&[
        ("alice_token", ALICE, "ALICEDEV"),
        ("bob_token", BOB, "BOBDEV"),
    ])
    .await
}

/// The shared room as both users' first polls deliver it: same events, same IDs.
fn shared_room() -> Value {
    joined(
        vec![
            create(BOB, 1_000),
            member(BOB, "join", 1_001),
            name(BOB, "Shared", 1_002),
            member(ALICE, "join", 1_003),
        ],
        vec![message(BOB, "welcome", 1_004)],
    )
}

/// Alice in the shared room and a room of her own; Bob only in the shared room. Both
/// have a connection; returns their `pos`.
async fn alice_and_bob_in_the_shared_room(hs: &FakeHomeserver, proxy: &Proxy) -> (String, String) {
    let shared = shared_room();
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![
            (ROOM, shared.clone()),
            ("!own:test", new_room(ALICE, Some("Own"), 500)),
        ]),
    );
    hs.push_rooms("bob_token", rooms_join(vec![(ROOM, shared)]));
    let alice = proxy
        .sync_ok("alice_token", None, 0, &list_request(5))
        .await;
    assert_eq!(synced_ids(&alice, "all"), [ROOM, "!own:test"]);
    let bob = proxy.sync_ok("bob_token", None, 0, &list_request(5)).await;
    assert_eq!(synced_ids(&bob, "all"), [ROOM]);
    (pos(&alice), pos(&bob))
}

/// Waits for Bob's connection to receive a message with this body: proof that the proxy
/// has applied what Bob's poller delivered. Returns Bob's next `pos`.
async fn bob_sees(proxy: &Proxy, bob_pos: &str, body: &str) -> String {
    let mut p = bob_pos.to_owned();
    for _ in 0..20 {
        let resp = proxy
            .sync_ok("bob_token", Some(&p), 2_000, &json!({}))
            .await;
        p = pos(&resp);
        let seen = resp["rooms"][ROOM]["timeline"].as_array().is_some_and(|t| {
            t.iter()
                .any(|e| e["content"]["body"].as_str() == Some(body))
        });
        if seen {
            return p;
        }
    }
    panic!("Bob never saw {body:?}");
}

#[tokio::test]
async fn a_user_who_leaves_gets_the_leave_event_then_nothing_more_about_the_room() {
    let (_db, hs, proxy) = setup().await;
    let (alice_pos, bob_pos) = alice_and_bob_in_the_shared_room(&hs, &proxy).await;

    let parked = proxy.spawn_sync("alice_token", Some(&alice_pos), 5_000, &json!({}));
    let leave = member(ALICE, "leave", 2_000);
    // Bob's poller sees Alice go, and so does her own (under `leave`).
    hs.push_rooms(
        "bob_token",
        rooms_join(vec![(ROOM, joined(vec![], vec![leave.clone()]))]),
    );
    hs.push_rooms("alice_token", rooms_leave(ROOM, vec![leave.clone()]));
    let last = tokio::time::timeout(Duration::from_secs(3), parked)
        .await
        .expect("the leave wakes Alice's long-poll")
        .unwrap();
    assert_eq!(last.status, 200, "{}", last.text());
    let last = last.json();
    assert_eq!(
        ops(&last, "all"),
        ["DELETE 0"],
        "the room leaves Alice's list"
    );
    assert_eq!(last["lists"]["all"]["count"].as_u64(), Some(1));
    assert_eq!(
        timeline_ids(&last, ROOM),
        [id_of(&leave)],
        "the final update is the leave event"
    );
    let room = &last["rooms"][ROOM];
    assert!(
        room.get("name").is_none(),
        "no name in the final update: {room:?}"
    );
    assert!(
        room.get("required_state").is_none(),
        "no state in the final update: {room:?}"
    );
    assert!(room.get("initial").is_none());

    // Bob's poller keeps delivering messages in the room Alice left.
    let parked = proxy.spawn_sync("alice_token", Some(&pos(&last)), 600, &json!({}));
    hs.push_rooms(
        "bob_token",
        rooms_join(vec![(
            ROOM,
            joined(
                vec![name(BOB, "After Alice", 3_000)],
                vec![message(BOB, "now that she is gone", 3_001)],
            ),
        )]),
    );
    bob_sees(&proxy, &bob_pos, "now that she is gone").await;
    // The parked request runs out its 600 ms timeout: nothing for Alice woke it.
    let after = parked.await.unwrap();
    assert_eq!(after.status, 200, "{}", after.text());
    let after = after.json();
    assert!(
        after["rooms"].get(ROOM).is_none(),
        "nothing more about the room: {after:?}"
    );
    assert!(ops(&after, "all").is_empty(), "{after:?}");

    // Nor on a new connection.
    let fresh = proxy
        .sync_ok("alice_token", None, 0, &list_request(10))
        .await;
    assert_eq!(synced_ids(&fresh, "all"), ["!own:test"]);
    assert_eq!(room_ids(&fresh), ["!own:test"]);
    proxy.stop().await;
}

#[tokio::test]
async fn messages_sent_just_before_a_leave_arrive_with_the_leave_event() {
    let (_db, hs, proxy) = setup().await;
    let (alice_pos, _) = alice_and_bob_in_the_shared_room(&hs, &proxy).await;

    // Bob writes, then kicks Alice; Bob's poller gets both in one response. Alice was
    // joined when the message was sent: it is hers to see.
    let parked = proxy.spawn_sync("alice_token", Some(&alice_pos), 5_000, &json!({}));
    let before = message(BOB, "last words for alice", 2_000);
    let kick = member_by(BOB, ALICE, "leave", 2_001);
    hs.push_rooms(
        "bob_token",
        rooms_join(vec![(
            ROOM,
            joined(vec![], vec![before.clone(), kick.clone()]),
        )]),
    );
    let last = tokio::time::timeout(Duration::from_secs(3), parked)
        .await
        .expect("the kick wakes Alice's long-poll")
        .unwrap()
        .json();
    assert_eq!(ops(&last, "all"), ["DELETE 0"]);
    assert_eq!(timeline_ids(&last, ROOM), [id_of(&before), id_of(&kick)]);
    proxy.stop().await;
}

#[tokio::test]
async fn a_ban_of_a_user_who_never_joined_is_not_shown_to_them() {
    let (_db, hs, proxy) = setup().await;
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![("!own:test", new_room(ALICE, Some("Own"), 500))]),
    );
    hs.push_rooms(
        "bob_token",
        rooms_join(vec![("!bobs:test", new_room(BOB, Some("Bob's"), 600))]),
    );
    let alice = proxy
        .sync_ok("alice_token", None, 0, &list_request(5))
        .await;
    let bob = proxy.sync_ok("bob_token", None, 0, &list_request(5)).await;

    let parked = proxy.spawn_sync("alice_token", Some(&pos(&alice)), 600, &json!({}));
    let ban = member_by(BOB, ALICE, "ban", 1_000);
    hs.push_rooms(
        "bob_token",
        rooms_join(vec![(
            "!bobs:test",
            joined(vec![], vec![ban, message(BOB, "she is banned", 1_001)]),
        )]),
    );
    let mut bob_pos = pos(&bob);
    loop {
        let resp = proxy
            .sync_ok("bob_token", Some(&bob_pos), 2_000, &json!({}))
            .await;
        bob_pos = pos(&resp);
        if timeline_ids(&resp, "!bobs:test").len() == 2 {
            break;
        }
    }
    // Alice's long-poll runs out its timeout: the ban did not concern her.
    let live = parked.await.unwrap().json();
    assert!(room_ids(&live).is_empty(), "{live:?}");
    assert!(ops(&live, "all").is_empty(), "{live:?}");
    assert_eq!(live["lists"]["all"]["count"].as_u64(), Some(1));

    let fresh = proxy
        .sync_ok("alice_token", None, 0, &list_request(5))
        .await;
    assert_eq!(synced_ids(&fresh, "all"), ["!own:test"]);
    assert_eq!(room_ids(&fresh), ["!own:test"]);
    proxy.stop().await;
}

#[tokio::test]
async fn an_invited_user_sees_only_the_invite_state() {
    let (_db, hs, proxy) = setup().await;
    let invite = member_by(BOB, ALICE, "invite", 1_010);
    hs.push_rooms(
        "bob_token",
        rooms_join(vec![(
            ROOM,
            joined(
                vec![
                    create(BOB, 1_000),
                    member(BOB, "join", 1_001),
                    name(BOB, "Secret Plans", 1_002),
                ],
                vec![message(BOB, "members only", 1_005), invite.clone()],
            ),
        )]),
    );
    let bob = proxy.sync_ok("bob_token", None, 0, &list_request(5)).await;
    assert_eq!(
        bob["rooms"][ROOM]["name"].as_str(),
        Some("Secret Plans"),
        "the proxy knows the room"
    );

    // Alice's poller has the invite with what the inviter chose to share: no name.
    let invite_state = vec![
        stripped("m.room.join_rules", "", BOB, json!({"join_rule": "invite"})),
        json!({"type": "m.room.member", "state_key": ALICE, "sender": BOB, "origin_server_ts": 1_010,
               "content": {"membership": "invite"}}),
    ];
    hs.push_rooms("alice_token", rooms_invite(ROOM, invite_state.clone()));
    let alice = proxy
        .sync_ok("alice_token", None, 0, &list_request(10))
        .await;
    assert_eq!(synced_ids(&alice, "all"), [ROOM]);
    let room = &alice["rooms"][ROOM];
    assert_eq!(
        room["invite_state"],
        sonic_rs::to_value(&invite_state).unwrap(),
        "the invite state, as delivered"
    );
    let keys: Vec<&str> = room.as_object().unwrap().iter().map(|(k, _)| k).collect();
    for leak in ["timeline", "required_state", "prev_batch", "num_live"] {
        assert!(!keys.contains(&leak), "an invitee got {leak}: {room:?}");
    }
    assert_eq!(
        room["name"].as_str(),
        Some("Empty Room"),
        "named from what the invite shares, which names nobody"
    );
    // The Go proxy's fixed counts: the inviter and the invitee, whatever the room holds.
    assert_eq!(room["joined_count"].as_u64(), Some(1));
    assert_eq!(room["invited_count"].as_u64(), Some(1));

    // Bob's poller keeps delivering the room's life; Alice, still only invited, hears
    // none of it.
    let parked = proxy.spawn_sync("alice_token", Some(&pos(&alice)), 600, &json!({}));
    hs.push_rooms(
        "bob_token",
        rooms_join(vec![(
            ROOM,
            joined(
                vec![],
                vec![
                    name(BOB, "Even More Secret", 2_000),
                    message(BOB, "still members only", 2_001),
                ],
            ),
        )]),
    );
    bob_sees(&proxy, &pos(&bob), "still members only").await;
    let live = parked.await.unwrap().json();
    assert!(
        live["rooms"].get(ROOM).is_none(),
        "an invitee got live room data: {live:?}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_user_never_sees_the_rooms_of_another_user() {
    let (_db, hs, proxy) = setup().await;
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![
            ("!a1:test", new_room(ALICE, Some("Alice 1"), 1_000)),
            ("!a2:test", new_room(ALICE, Some("Alice 2"), 2_000)),
        ]),
    );
    hs.push_rooms(
        "bob_token",
        rooms_join(vec![
            ("!b1:test", new_room(BOB, Some("Bob 1"), 1_500)),
            ("!b2:test", new_room(BOB, Some("Bob 2"), 2_500)),
        ]),
    );
    let alice = proxy
        .sync_ok("alice_token", None, 0, &list_request(5))
        .await;
    let bob = proxy.sync_ok("bob_token", None, 0, &list_request(5)).await;
    assert_eq!(synced_ids(&alice, "all"), ["!a2:test", "!a1:test"]);
    assert_eq!(room_ids(&alice), ["!a1:test", "!a2:test"]);
    assert_eq!(alice["lists"]["all"]["count"].as_u64(), Some(2));
    assert_eq!(synced_ids(&bob, "all"), ["!b2:test", "!b1:test"]);
    assert_eq!(room_ids(&bob), ["!b1:test", "!b2:test"]);

    // Bob's live traffic does not reach Alice either.
    let parked = proxy.spawn_sync("alice_token", Some(&pos(&alice)), 600, &json!({}));
    hs.push_rooms(
        "bob_token",
        rooms_join(vec![(
            "!b1:test",
            joined(vec![], vec![message(BOB, "bob only", 3_000)]),
        )]),
    );
    let bob = proxy
        .sync_ok("bob_token", Some(&pos(&bob)), 2_000, &json!({}))
        .await;
    assert_eq!(ops(&bob, "all"), ["DELETE 1", "INSERT 0 !b1:test"]);
    let live = parked.await.unwrap().json();
    assert!(room_ids(&live).is_empty(), "{live:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn requests_without_a_token_or_with_an_unknown_one_are_refused() {
    let (_db, hs, proxy) = setup().await;

    let none = proxy.raw(Method::POST, MSC3575, None, "{}").await;
    assert_eq!(none.status, 401);
    assert_eq!(none.json()["errcode"].as_str(), Some("M_MISSING_TOKEN"));
    assert_eq!(
        hs.whoami_calls(),
        0,
        "no token, nothing to ask the homeserver"
    );

    let bad = proxy.sync("not_a_token", None, 0, &json!({})).await;
    assert_eq!(bad.status, 401, "{}", bad.text());
    assert_eq!(bad.json()["errcode"].as_str(), Some("M_UNKNOWN_TOKEN"));
    assert_eq!(hs.whoami_calls(), 1);
    let again = proxy.sync("not_a_token", None, 0, &json!({})).await;
    assert_eq!(again.status, 401);
    assert_eq!(again.json()["errcode"].as_str(), Some("M_UNKNOWN_TOKEN"));
    assert_eq!(
        hs.whoami_calls(),
        1,
        "a rejected token is remembered, not asked about again"
    );
    assert!(
        hs.calls_for("not_a_token").is_empty(),
        "no poller for a rejected token"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn the_token_may_come_in_the_query_string_and_is_checked_once() {
    let (_db, hs, proxy) = setup().await;
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![("!own:test", new_room(ALICE, Some("Own"), 500))]),
    );
    let query = proxy
        .raw(
            Method::POST,
            &format!("{MSC3575}?timeout=0&access_token=alice_token"),
            None,
            list_request(1).to_string(),
        )
        .await;
    assert_eq!(query.status, 200, "{}", query.text());
    assert_eq!(synced_ids(&query.json(), "all"), ["!own:test"]);
    assert_eq!(hs.whoami_calls(), 1);

    let header = proxy
        .sync_ok("alice_token", None, 0, &list_request(1))
        .await;
    assert_eq!(synced_ids(&header, "all"), ["!own:test"]);
    assert_eq!(
        hs.whoami_calls(),
        1,
        "a known token is not checked with the homeserver per request"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_pos_is_only_good_for_the_connection_that_gave_it() {
    let (_db, hs, proxy) = setup().await;
    let (alice_pos, _) = alice_and_bob_in_the_shared_room(&hs, &proxy).await;
    // Bob, with a connection of his own, presents Alice's pos.
    let stolen = proxy
        .sync("bob_token", Some(&alice_pos), 0, &list_request(5))
        .await;
    assert_eq!(stolen.status, 400, "{}", stolen.text());
    assert_eq!(stolen.json()["errcode"].as_str(), Some("M_UNKNOWN_POS"));
    proxy.stop().await;
}

#[tokio::test]
async fn after_a_restart_left_rooms_stay_gone_and_invites_stay_invites() {
    let db = TestDb::new().await;
    let hs = Arc::new(FakeHomeserver::default());
    hs.add_device("alice_token", ALICE, "ALICEDEV");
    let proxy = Proxy::start(&db.url, hs.clone()).await;
    let invite_state = vec![
        json!({"type": "m.room.member", "state_key": ALICE, "sender": BOB,
                                   "origin_server_ts": 1_500, "content": {"membership": "invite"}}),
    ];
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![
            (ROOM, shared_room()),
            ("!own:test", new_room(ALICE, Some("Own"), 500)),
        ]),
    );
    proxy
        .sync_ok("alice_token", None, 0, &list_request(5))
        .await;
    hs.push_rooms(
        "alice_token",
        rooms_leave(ROOM, vec![member(ALICE, "leave", 2_000)]),
    );
    let last = hs.push_rooms(
        "alice_token",
        rooms_invite("!invited:test", invite_state.clone()),
    );
    // The poll after the last batch started: both were applied.
    hs.wait_for_call("alice_token", "after the invite", |c| {
        c.since.as_deref() == Some(&last)
    })
    .await;
    let before = proxy
        .sync_ok("alice_token", None, 0, &list_request(5))
        .await;
    assert_eq!(synced_ids(&before, "all"), ["!invited:test", "!own:test"]);
    proxy.stop().await;

    let hs = Arc::new(FakeHomeserver::default());
    hs.add_device("alice_token", ALICE, "ALICEDEV");
    let proxy = Proxy::start(&db.url, hs.clone()).await;
    let after = proxy
        .sync_ok("alice_token", None, 0, &list_request(5))
        .await;
    assert_eq!(synced_ids(&after, "all"), ["!invited:test", "!own:test"]);
    assert_eq!(
        room_ids(&after),
        ["!invited:test", "!own:test"],
        "the left room is not back"
    );
    let invited = &after["rooms"]["!invited:test"];
    assert_eq!(
        invited["invite_state"],
        sonic_rs::to_value(&invite_state).unwrap()
    );
    assert!(invited.get("timeline").is_none(), "{invited:?}");
    assert_eq!(
        invited["name"].as_str(),
        Some("Empty Room"),
        "named from the stripped state read back, not from the room"
    );
    proxy.stop().await;
}

/// A subscription names a room by ID: it shows nothing of a room the user is not in,
/// and a room the user leaves gets its farewell and then nothing more.
#[tokio::test]
async fn a_subscription_shows_only_rooms_the_user_is_in() {
    let (_db, hs, proxy) = setup().await;
    let (_alice_pos, bob_pos) = alice_and_bob_in_the_shared_room(&hs, &proxy).await;
    let subscribe = |room: &str| {
        json!({"room_subscriptions": {room: {
            "timeline_limit": 5,
            "required_state": [["*", "*"]]
        }}})
    };
    // Bob is not in Alice's own room.
    let resp = proxy
        .sync_ok("bob_token", Some(&bob_pos), 0, &subscribe("!own:test"))
        .await;
    assert!(resp["rooms"].get("!own:test").is_none(), "{resp:?}");
    let bob_pos = pos(&resp);
    // Nor does a message there reach him later.
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![(
            "!own:test",
            joined(vec![], vec![message(ALICE, "private", 2_000)]),
        )]),
    );
    let resp = proxy
        .sync_ok("bob_token", Some(&bob_pos), 500, &json!({}))
        .await;
    assert!(resp["rooms"].get("!own:test").is_none(), "{resp:?}");

    // Alice subscribes to the shared room, with no list at all, and then leaves it.
    let alice = proxy
        .sync_ok("alice_token", None, 0, &subscribe(ROOM))
        .await;
    assert_eq!(alice["rooms"][ROOM]["initial"].as_bool(), Some(true));
    let parked = proxy.spawn_sync("alice_token", Some(&pos(&alice)), 5_000, &json!({}));
    let leave = member(ALICE, "leave", 3_000);
    hs.push_rooms(
        "bob_token",
        rooms_join(vec![(ROOM, joined(vec![], vec![leave.clone()]))]),
    );
    hs.push_rooms("alice_token", rooms_leave(ROOM, vec![leave.clone()]));
    let last = tokio::time::timeout(Duration::from_secs(3), parked)
        .await
        .expect("the leave wakes Alice's long-poll")
        .unwrap()
        .json();
    assert_eq!(timeline_ids(&last, ROOM), [id_of(&leave)]);
    assert!(last["rooms"][ROOM].get("required_state").is_none());

    let parked = proxy.spawn_sync("alice_token", Some(&pos(&last)), 600, &json!({}));
    hs.push_rooms(
        "bob_token",
        rooms_join(vec![(
            ROOM,
            joined(vec![], vec![message(BOB, "after she left", 3_001)]),
        )]),
    );
    let after = parked.await.unwrap().json();
    assert!(after["rooms"].get(ROOM).is_none(), "{after:?}");
    proxy.stop().await;
}

/// Alice's view of one room through its whole membership story, each step live on one
/// connection: invited, rejected, invited again, joined, kicked, joined again, banned.
/// Each change reaches the list at once; a room she leaves ends with the event that
/// made her leave, and nothing of the room comes between her leaving and rejoining.
#[tokio::test]
async fn invite_reject_join_kick_rejoin_and_ban_are_each_shown_live() {
    let (_db, hs, proxy) = setup().await;
    let base = vec![
        create(BOB, 900),
        member(BOB, "join", 901),
        name(BOB, "Shared", 902),
    ];
    hs.push_rooms(
        "bob_token",
        rooms_join(vec![(
            ROOM,
            joined(base.clone(), vec![message(BOB, "hi", 903)]),
        )]),
    );
    let bob = proxy.sync_ok("bob_token", None, 0, &list_request(5)).await;
    let bob_pos = pos(&bob);
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![("!own:test", new_room(ALICE, Some("Own"), 500))]),
    );
    let first = proxy
        .sync_ok("alice_token", None, 0, &list_request(5))
        .await;
    let mut p = pos(&first);
    let next = |p: String, rooms: Value| {
        hs.push_rooms("alice_token", rooms);
        let proxy = &proxy;
        async move {
            proxy
                .sync_ok("alice_token", Some(&p), 5_000, &json!({}))
                .await
        }
    };
    let invite = |ts: u64| {
        rooms_invite(
            ROOM,
            vec![
                json!({"type": "m.room.member", "state_key": ALICE, "sender": BOB,
                        "origin_server_ts": ts, "content": {"membership": "invite"}}),
            ],
        )
    };

    let invited = next(p.clone(), invite(1_000)).await;
    assert_eq!(ops(&invited, "all"), ["DELETE 1", "INSERT 0 !shared:test"]);
    assert!(invited["rooms"][ROOM]["invite_state"].is_array());
    p = pos(&invited);

    let rejected = next(
        p.clone(),
        rooms_leave(ROOM, vec![member(ALICE, "leave", 1_100)]),
    )
    .await;
    assert_eq!(ops(&rejected, "all"), ["DELETE 0"]);
    assert!(
        rejected["rooms"].get(ROOM).is_none(),
        "an invitee is told nothing of the room on rejecting: {rejected:?}"
    );
    p = pos(&rejected);

    let invited = next(p.clone(), invite(1_200)).await;
    assert_eq!(ops(&invited, "all"), ["DELETE 1", "INSERT 0 !shared:test"]);
    p = pos(&invited);

    let join = member(ALICE, "join", 1_300);
    let joined_resp = next(
        p.clone(),
        rooms_join(vec![(
            ROOM,
            joined(base, vec![join.clone(), message(BOB, "welcome", 1_301)]),
        )]),
    )
    .await;
    let room = &joined_resp["rooms"][ROOM];
    assert_eq!(room["initial"].as_bool(), Some(true), "{joined_resp:?}");
    assert_eq!(room["name"].as_str(), Some("Shared"));
    assert!(room.get("invite_state").is_none());
    assert_eq!(timeline_ids(&joined_resp, ROOM)[0], id_of(&join));
    p = pos(&joined_resp);

    let kick = member_by(BOB, ALICE, "leave", 1_400);
    let kicked = next(p.clone(), rooms_leave(ROOM, vec![kick.clone()])).await;
    assert_eq!(ops(&kicked, "all"), ["DELETE 0"]);
    assert_eq!(timeline_ids(&kicked, ROOM), [id_of(&kick)]);
    assert!(kicked["rooms"][ROOM].get("name").is_none());
    p = pos(&kicked);

    // Bob's poller keeps the room going while Alice is out: none of it is hers.
    hs.push_rooms(
        "bob_token",
        rooms_join(vec![(
            ROOM,
            joined(vec![], vec![message(BOB, "while you were out", 1_450)]),
        )]),
    );
    let bob_pos = bob_sees(&proxy, &bob_pos, "while you were out").await;
    let rejoin = member(ALICE, "join", 1_500);
    let rejoined = next(
        p.clone(),
        rooms_join(vec![(
            ROOM,
            joined(
                vec![],
                vec![rejoin.clone(), message(BOB, "welcome back", 1_501)],
            ),
        )]),
    )
    .await;
    assert_eq!(ops(&rejoined, "all"), ["DELETE 1", "INSERT 0 !shared:test"]);
    assert_eq!(rejoined["rooms"][ROOM]["initial"].as_bool(), Some(true));
    let timeline = timeline_ids(&rejoined, ROOM);
    assert_eq!(timeline[0], id_of(&rejoin), "history starts at the rejoin");
    assert_eq!(
        timeline.len(),
        2,
        "nothing from while she was out: {rejoined:?}"
    );
    p = pos(&rejoined);

    let ban = member_by(BOB, ALICE, "ban", 1_600);
    let banned = next(p.clone(), rooms_leave(ROOM, vec![ban.clone()])).await;
    assert_eq!(ops(&banned, "all"), ["DELETE 0"]);
    assert_eq!(timeline_ids(&banned, ROOM), [id_of(&ban)]);
    p = pos(&banned);

    hs.push_rooms(
        "bob_token",
        rooms_join(vec![(
            ROOM,
            joined(vec![], vec![message(BOB, "gone", 1_700)]),
        )]),
    );
    bob_sees(&proxy, &bob_pos, "gone").await;
    let after = proxy
        .sync_ok("alice_token", Some(&p), 100, &json!({}))
        .await;
    assert!(after["rooms"].get(ROOM).is_none(), "{after:?}");
    proxy.stop().await;
}

/// Where a room shows members only what happened since they joined, history another
/// member's poller fills in before a known event is shown to nobody: nothing tells
/// whether it predates the join of a member whose join came in a state block. Where
/// history is shared, it is shown.
#[tokio::test]
async fn history_filled_in_by_another_member_follows_the_rooms_history_visibility() {
    for (visibility, shown) in [("joined", false), ("shared", true)] {
        let (_db, hs, proxy) = setup().await;
        let room_id = format!("!{visibility}:test");
        let state = vec![
            create(ALICE, 1_000),
            json!({"type": "m.room.history_visibility", "state_key": "", "sender": ALICE,
                   "event_id": format!("$hv_{visibility}"), "origin_server_ts": 1_001,
                   "content": {"history_visibility": visibility}}),
            member(ALICE, "join", 1_002),
            member(BOB, "join", 1_500),
        ];
        let newest = message(ALICE, "after bob joined", 2_000);
        // Bob's first poll: his join in the state block, then one event after a gap.
        let mut bobs = joined(state.clone(), vec![newest.clone()]);
        bobs["timeline"]["limited"] = json!(true);
        hs.push_rooms("bob_token", rooms_join(vec![(room_id.as_str(), bobs)]));
        proxy.sync_ok("bob_token", None, 0, &list_request(1)).await;
        // Alice's poller brings the events before it, from before Bob joined.
        let before = message(ALICE, "before bob joined", 1_100);
        let mut alices = joined(state, vec![before, newest]);
        alices["timeline"]["limited"] = json!(true);
        hs.push_rooms("alice_token", rooms_join(vec![(room_id.as_str(), alices)]));
        proxy
            .sync_ok("alice_token", None, 0, &list_request(1))
            .await;

        let resp = proxy.sync_ok("bob_token", None, 0, &list_request(10)).await;
        let bodies: Vec<&str> = resp["rooms"][room_id.as_str()]["timeline"]
            .as_array()
            .expect("a timeline")
            .iter()
            .filter_map(|e| e["content"]["body"].as_str())
            .collect();
        assert_eq!(
            bodies.contains(&"before bob joined"),
            shown,
            "{visibility}: {bodies:?}"
        );
        assert!(bodies.contains(&"after bob joined"), "{bodies:?}");
        if !shown {
            // Sharing history later does not show what was never kept.
            let shared = json!({"type": "m.room.history_visibility", "state_key": "",
                "sender": ALICE, "event_id": "$hv_now_shared", "origin_server_ts": 2_100,
                "content": {"history_visibility": "shared"}});
            hs.push_rooms(
                "bob_token",
                rooms_join(vec![(room_id.as_str(), joined(vec![], vec![shared]))]),
            );
            let mut later = Vec::new();
            for _ in 0..20 {
                let resp = proxy.sync_ok("bob_token", None, 0, &list_request(10)).await;
                later = resp["rooms"][room_id.as_str()]["timeline"]
                    .as_array()
                    .expect("a timeline")
                    .iter()
                    .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
                    .collect();
                if later.iter().any(|id| id == "$hv_now_shared") {
                    break;
                }
            }
            assert!(later.iter().any(|id| id == "$hv_now_shared"), "{later:?}");
            let resp = proxy.sync_ok("bob_token", None, 0, &list_request(10)).await;
            let text = resp["rooms"][room_id.as_str()].to_string();
            assert!(!text.contains("before bob joined"), "{text}");
        }
        proxy.stop().await;
    }
}
