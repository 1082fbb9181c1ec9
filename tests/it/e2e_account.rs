//! Account data, DMs, tags, receipts and typing through slidesync in front of a real
//! Synapse, set the way clients set them: through the homeserver's client API.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use slidesync::upstream::http::{HttpHomeserver, Target};
use sonic_rs::{json, JsonContainerTrait, JsonValueTrait, Value};

use crate::support::db::TestDb;
use crate::support::http::encode;
use crate::support::proxy::{ops, pos, synced_ids, Proxy};
use crate::support::synapse::{synapse, Synapse, TestUser};

fn homeserver(synapse: &Synapse) -> Arc<HttpHomeserver> {
    Arc::new(HttpHomeserver::new(
        Target::Url(synapse.base_url.parse().unwrap()),
        Duration::from_secs(60),
    ))
}

/// Long-polls the connection until a response satisfies `done` (Synapse delivers what
/// a test did through its own /sync, a moment later); returns it.
async fn until(
    proxy: &Proxy,
    user: &TestUser,
    first: &Value,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let mut p = pos(first);
    for _ in 0..20 {
        let resp = proxy
            .sync_ok(&user.access_token, Some(&p), 10_000, &json!({}))
            .await;
        if done(&resp) {
            return resp;
        }
        p = pos(&resp);
    }
    panic!("{what} never arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_created_with_is_direct_and_a_tag_set_by_the_client_reach_the_filters() {
    let hs = synapse().await;
    let alice = hs.register("alice").await;
    let bob = hs.register("bob").await;
    let project = hs
        .create_room(&alice, json!({"name": "Project", "preset": "private_chat"}))
        .await;
    let db = TestDb::new().await;
    let proxy = Proxy::start(&db.url, homeserver(hs)).await;
    let body = json!({"lists": {
        "dms": {"ranges": [[0, 9]], "filters": {"is_dm": true}},
        "favourites": {"ranges": [[0, 9]], "filters": {"tags": ["m.favourite"]}},
    }});
    let first = proxy.sync_ok(&alice.access_token, None, 0, &body).await;
    assert_eq!(first["lists"]["dms"]["count"].as_u64(), Some(0));
    assert_eq!(first["lists"]["favourites"]["count"].as_u64(), Some(0));

    // Bob starts a DM with Alice, as Element does: the invite says is_direct.
    let dm = hs
        .create_room(
            &bob,
            json!({"is_direct": true, "invite": [alice.user_id], "preset": "trusted_private_chat"}),
        )
        .await;
    let invited = until(&proxy, &alice, &first, "the DM invite", |r| {
        ops(r, "dms").contains(&format!("INSERT 0 {dm}"))
    })
    .await;
    assert_eq!(invited["rooms"][dm.as_str()]["is_dm"].as_bool(), Some(true));

    // Alice marks a room as a favourite through the tags API (m.tag room account data).
    let path = format!(
        "/_matrix/client/v3/user/{}/rooms/{}/tags/m.favourite",
        encode(&alice.user_id),
        encode(&project)
    );
    hs.call(
        "tag",
        Method::PUT,
        &path,
        Some(&alice),
        Some(&json!({"order": 0.5})),
    )
    .await;
    let tagged = until(&proxy, &alice, &invited, "the tag", |r| {
        ops(r, "favourites").contains(&format!("INSERT 0 {project}"))
    })
    .await;
    assert_eq!(tagged["lists"]["favourites"]["count"].as_u64(), Some(1));

    // A new connection lists both from the start.
    let fresh = proxy
        .sync_ok(
            &alice.access_token,
            None,
            0,
            &json!({"conn_id": "again", "lists": body["lists"]}),
        )
        .await;
    assert_eq!(synced_ids(&fresh, "dms"), vec![dm]);
    assert_eq!(synced_ids(&fresh, "favourites"), vec![project]);
    proxy.stop().await;
}

fn with_extensions(lists: Value) -> Value {
    json!({
        "lists": lists,
        "extensions": {
            "account_data": {"enabled": true},
            "receipts": {"enabled": true},
            "typing": {"enabled": true},
        },
    })
}

/// Whether `resp` carries a receipt of `kind` by `user` on `event` in `room`.
fn has_receipt(resp: &Value, room: &str, event: &str, kind: &str, user: &str) -> bool {
    resp["extensions"]["receipts"]["rooms"][room]["content"][event][kind]
        .get(user)
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_typing_and_account_data_set_through_synapse_arrive_through_the_extensions() {
    let hs = synapse().await;
    let alice = hs.register("alice").await;
    let bob = hs.register("bob").await;
    let room = hs
        .create_room(
            &alice,
            json!({"name": "Reading room", "preset": "private_chat"}),
        )
        .await;
    hs.invite(&alice, &room, &bob.user_id).await;
    hs.join(&bob, &room).await;
    let message = hs.send_text(&bob, &room, "read me").await;

    let db = TestDb::new().await;
    let proxy = Proxy::start(&db.url, homeserver(hs)).await;
    let body = with_extensions(json!({"all": {"ranges": [[0, 9]], "timeline_limit": 5}}));
    let alice_first = proxy.sync_ok(&alice.access_token, None, 0, &body).await;
    let bob_first = proxy.sync_ok(&bob.access_token, None, 0, &body).await;

    // Alice reads Bob's message publicly and privately, and types.
    for kind in ["m.read", "m.read.private"] {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/receipt/{kind}/{}",
            encode(&room),
            encode(&message)
        );
        hs.call(
            "receipt",
            Method::POST,
            &path,
            Some(&alice),
            Some(&json!({})),
        )
        .await;
    }
    let typing = format!(
        "/_matrix/client/v3/rooms/{}/typing/{}",
        encode(&room),
        encode(&alice.user_id)
    );
    hs.call(
        "typing",
        Method::PUT,
        &typing,
        Some(&alice),
        Some(&json!({"typing": true, "timeout": 30000})),
    )
    .await;
    // And sets account data of her own, global and of the room.
    let global = format!(
        "/_matrix/client/v3/user/{}/account_data/org.example.global",
        encode(&alice.user_id)
    );
    hs.call(
        "account data",
        Method::PUT,
        &global,
        Some(&alice),
        Some(&json!({"n": 1})),
    )
    .await;
    let of_room = format!(
        "/_matrix/client/v3/user/{}/rooms/{}/account_data/org.example.room",
        encode(&alice.user_id),
        encode(&room)
    );
    hs.call(
        "room account data",
        Method::PUT,
        &of_room,
        Some(&alice),
        Some(&json!({"n": 2})),
    )
    .await;

    // Alice gets both her receipts, her account data.
    let mut seen = (false, false, false, false);
    let mut resp = alice_first;
    for _ in 0..20 {
        resp = proxy
            .sync_ok(&alice.access_token, Some(&pos(&resp)), 10_000, &json!({}))
            .await;
        seen.0 |= has_receipt(&resp, &room, &message, "m.read", &alice.user_id);
        seen.1 |= has_receipt(&resp, &room, &message, "m.read.private", &alice.user_id);
        seen.2 |= resp["extensions"]["account_data"]["global"]
            .as_array()
            .is_some_and(|g| {
                g.iter()
                    .any(|e| e["type"].as_str() == Some("org.example.global"))
            });
        seen.3 |= resp["extensions"]["account_data"]["rooms"][room.as_str()]
            .as_array()
            .is_some_and(|r| r.iter().any(|e| e["content"]["n"].as_u64() == Some(2)));
        if seen == (true, true, true, true) {
            break;
        }
    }
    assert_eq!(
        seen,
        (true, true, true, true),
        "Alice's receipts and account data"
    );

    // Bob sees her public receipt and her typing; never her private receipt nor her
    // account data.
    let mut bob_seen = (false, false);
    let mut resp = bob_first;
    for _ in 0..20 {
        resp = proxy
            .sync_ok(&bob.access_token, Some(&pos(&resp)), 10_000, &json!({}))
            .await;
        assert!(!has_receipt(
            &resp,
            &room,
            &message,
            "m.read.private",
            &alice.user_id
        ));
        let ad = &resp["extensions"]["account_data"];
        assert!(!ad.to_string().contains("org.example"), "{ad:?}");
        bob_seen.0 |= has_receipt(&resp, &room, &message, "m.read", &alice.user_id);
        bob_seen.1 |= resp["extensions"]["typing"]["rooms"][room.as_str()]["content"]["user_ids"]
            .as_array()
            .is_some_and(|u| u.iter().any(|u| u.as_str() == Some(alice.user_id.as_str())));
        if bob_seen == (true, true) {
            break;
        }
    }
    assert_eq!(
        bob_seen,
        (true, true),
        "Alice's public receipt and typing reach Bob"
    );
    proxy.stop().await;
}

/// The server part of a user ID: what `via` names.
fn server_of(user: &TestUser) -> String {
    user.user_id
        .split_once(':')
        .map(|(_, server)| server.to_owned())
        .expect("a user ID with a server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spaces_filter_and_ignored_users_against_synapse() {
    let hs = synapse().await;
    let alice = hs.register("alice").await;
    let bob = hs.register("bob").await;
    let carol = hs.register("carol").await;
    let space = json!({"name": "Space", "creation_content": {"type": "m.space"}});
    let alices_space = hs.create_room(&alice, space.clone()).await;
    let bobs_space = hs.create_room(&bob, space).await;
    let listed = hs
        .create_room(&alice, json!({"name": "Listed", "preset": "public_chat"}))
        .await;
    let secret = hs
        .create_room(
            &bob,
            json!({"name": "In Bob's space", "preset": "public_chat"}),
        )
        .await;
    hs.join(&alice, &secret).await;
    hs.join(&carol, &listed).await;
    hs.join(&bob, &listed).await;
    let via = json!({"via": [server_of(&alice)]});
    hs.send_state(&alice, &alices_space, "m.space.child", &listed, via.clone())
        .await;
    hs.send_state(&bob, &bobs_space, "m.space.child", &secret, via)
        .await;
    // Alice ignores Carol, who then writes in the listed room.
    let ignore = format!(
        "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
        encode(&alice.user_id)
    );
    hs.call(
        "ignore",
        Method::PUT,
        &ignore,
        Some(&alice),
        Some(&json!({"ignored_users": {carol.user_id.as_str(): {}}})),
    )
    .await;
    let spam = hs.send_text(&carol, &listed, "spam").await;

    let db = TestDb::new().await;
    let proxy = Proxy::start(&db.url, homeserver(hs)).await;
    // Bob's poller knows his space's children (Alice is not in his space), and
    // delivers Carol's message: Synapse leaves it out of Alice's own /sync, the proxy
    // must not show her Bob's copy.
    let bobs = proxy
        .sync_ok(
            &bob.access_token,
            None,
            0,
            &json!({"lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 1}}}),
        )
        .await;
    assert_eq!(
        bobs["rooms"][listed.as_str()]["timeline"][0]["event_id"].as_str(),
        Some(spam.as_str())
    );
    let body = json!({"lists": {"space": {
        "ranges": [[0, 9]],
        "timeline_limit": 10,
        "filters": {"spaces": [alices_space, bobs_space]},
    }}});
    let resp = proxy.sync_ok(&alice.access_token, None, 0, &body).await;
    assert_eq!(synced_ids(&resp, "space"), vec![listed.clone()], "{resp:?}");
    // The proxy holds Carol's message (Bob was shown it); Alice is not.
    let timeline = &resp["rooms"][listed.as_str()]["timeline"];
    assert!(
        timeline.as_array().is_none_or(|t| t
            .iter()
            .all(|e| e["event_id"].as_str() != Some(spam.as_str()))),
        "Carol's message is not in Alice's timeline: {timeline:?}"
    );
    proxy.stop().await;
}
