//! MSC4186 through slidesync in front of a real Synapse, compared with Synapse's own
//! MSC4186 endpoint, and everything else a client does through the same URL.
//!
//! The requests are the ones matrix-rust-sdk's room list service sends
//! (`crates/matrix-sdk-ui/src/room_list_service/`): connection `room-list`, one list
//! `all_rooms` of `[0, 19]` growing by 100, its `required_state` set, `timeline_limit`
//! 1, and room subscriptions of 20 events for the rooms on screen.
//!
//! Fields that legitimately differ between the two servers, and are not compared:
//! - `pos`, `prev_batch` and `bump_stamp` values: each server's own tokens and stream
//!   positions (only the order `bump_stamp` gives is compared).
//! - `notification_count` / `highlight_count`: Synapse sends 0 always, slidesync the
//!   homeserver's counts.
//! - `m.room.member` state: `$LAZY` members are another part of the engine; the user's
//!   own (`$ME`) membership is compared.
//! - An invite's `name` (Synapse reads it from the stripped state, slidesync sends
//!   `invite_state` alone) and `extensions`.
//! - On an expanded timeline, slidesync sends the room's fields and state again;
//!   Synapse sends only the timeline.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use slidesync::app::Settings;
use slidesync::upstream::http::{HttpHomeserver, Target};
use sonic_rs::{json, JsonContainerTrait, JsonValueMutTrait, JsonValueTrait, Value};

use crate::support::db::{Backend, TestDb};
use crate::support::fake::FakeHomeserver;
use crate::support::http::{encode, HttpClient};
use crate::support::proxy::{pos, settings, timeline_ids, Proxy};
use crate::support::synapse::{synapse, Synapse, TestUser};
use crate::support::v2::{id_of, member_by, new_room, rooms_join, rooms_leave};

fn homeserver(synapse: &Synapse) -> Arc<HttpHomeserver> {
    Arc::new(HttpHomeserver::new(
        Target::Url(synapse.base_url.parse().unwrap()),
        Duration::from_secs(60),
    ))
}

/// matrix-rust-sdk's `DEFAULT_REQUIRED_STATE` for the room list.
const ROOM_LIST_STATE: [(&str, &str); 17] = [
    ("m.room.name", ""),
    ("m.room.encryption", ""),
    ("m.room.member", "$LAZY"),
    ("m.room.member", "$ME"),
    ("m.room.topic", ""),
    ("m.room.avatar", ""),
    ("m.room.canonical_alias", ""),
    ("m.room.power_levels", ""),
    ("org.matrix.msc3401.call.member", "*"),
    ("m.room.join_rules", ""),
    ("m.room.tombstone", ""),
    ("m.room.create", ""),
    ("m.room.history_visibility", ""),
    ("io.element.functional_members", ""),
    ("m.space.parent", "*"),
    ("m.space.child", "*"),
    ("org.matrix.msc3672.beacon_info", "*"),
];

/// The room list service's request: `all_rooms` up to `end`, and a subscription of 20
/// events (plus the pinned events) for each room in `on_screen`.
fn room_list_request(end: u64, on_screen: &[&str]) -> Value {
    let state: Vec<[&str; 2]> = ROOM_LIST_STATE.iter().map(|(t, k)| [*t, *k]).collect();
    let mut sub_state = state.clone();
    sub_state.push(["m.room.pinned_events", ""]);
    let mut subscriptions = json!({});
    for room in on_screen {
        subscriptions[*room] = json!({"required_state": sub_state, "timeline_limit": 20});
    }
    json!({
        "conn_id": "room-list",
        "lists": {"all_rooms": {
            "ranges": [[0, end]],
            "required_state": state,
            "timeline_limit": 1,
            "filters": {},
        }},
        "room_subscriptions": subscriptions,
        "extensions": {
            "account_data": {"enabled": true},
            "receipts": {"enabled": true, "rooms": ["*"]},
            "typing": {"enabled": true},
        },
    })
}

/// What must match between the two servers for one room of a response.
#[derive(Debug, PartialEq)]
struct RoomView {
    invite: bool,
    name: Option<String>,
    initial: bool,
    expanded: bool,
    timeline: Vec<String>,
    limited: Option<bool>,
    num_live: Option<u64>,
    joined_count: Option<u64>,
    invited_count: Option<u64>,
    /// Non-member `required_state` as (type, state_key).
    state: BTreeSet<(String, String)>,
    /// The user's own member event in `required_state`.
    own_membership: Option<String>,
    has_bump_stamp: bool,
}

fn room_view(resp: &Value, room_id: &str, user_id: &str, full: bool) -> RoomView {
    let room = &resp["rooms"][room_id];
    let invite = room["invite_state"].is_array();
    let state = room["required_state"].as_array();
    let events = state.iter().flat_map(|s| s.iter());
    let text = |v: &Value| v.as_str().map(str::to_owned);
    RoomView {
        invite,
        name: (!invite && full).then(|| text(&room["name"])).flatten(),
        initial: room["initial"].as_bool().unwrap_or(false),
        expanded: room["unstable_expanded_timeline"]
            .as_bool()
            .unwrap_or(false),
        timeline: timeline_ids(resp, room_id),
        limited: room["limited"].as_bool(),
        num_live: room["num_live"].as_u64(),
        joined_count: room["joined_count"].as_u64().filter(|_| full),
        invited_count: room["invited_count"].as_u64().filter(|_| full),
        state: events
            .clone()
            .filter(|e| e["type"].as_str() != Some("m.room.member"))
            .map(|e| (text(&e["type"]).unwrap(), text(&e["state_key"]).unwrap()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|_| full)
            .collect(),
        own_membership: events
            .filter(|e| e["type"].as_str() == Some("m.room.member"))
            .find(|e| e["state_key"].as_str() == Some(user_id))
            .and_then(|e| text(&e["content"]["membership"]))
            .filter(|_| full),
        has_bump_stamp: room["bump_stamp"].is_u64(),
    }
}

/// Each `SYNC` window of `all_rooms`: the list's count and the window's rooms. As a
/// set: when a range covers the whole list Synapse leaves it unsorted (clients order
/// rooms by `bump_stamp`); slidesync's order is checked on its own.
type Windows = Vec<(u64, BTreeSet<String>)>;

/// A response reduced to what must match: its windows, and each room's view. `full`
/// compares the room fields that only come whole.
fn response_view(resp: &Value, user_id: &str, full: bool) -> (Windows, BTreeMap<String, RoomView>) {
    let list = &resp["lists"]["all_rooms"];
    let ops = list["ops"].as_array().expect("Synapse's SYNC ops");
    let windows = ops
        .iter()
        .map(|op| {
            assert_eq!(op["op"].as_str(), Some("SYNC"), "{resp:?}");
            let ids = op["room_ids"].as_array().unwrap();
            let ids = ids.iter().map(|r| r.as_str().unwrap().to_owned()).collect();
            (list["count"].as_u64().unwrap(), ids)
        })
        .collect();
    let rooms = resp["rooms"]
        .as_object()
        .expect("rooms")
        .iter()
        .map(|(id, _)| (id.to_owned(), room_view(resp, id, user_id, full)))
        .collect();
    (windows, rooms)
}

/// The rooms of a response, highest `bump_stamp` first.
fn by_bump_stamp(resp: &Value) -> Vec<String> {
    let mut rooms: Vec<(u64, String)> = resp["rooms"]
        .as_object()
        .expect("rooms")
        .iter()
        .map(|(id, room)| {
            (
                room["bump_stamp"].as_u64().expect("bump_stamp"),
                id.to_owned(),
            )
        })
        .collect();
    rooms.sort_unstable_by(|a, b| b.cmp(a));
    rooms.into_iter().map(|(_, id)| id).collect()
}

/// Room IDs of `all_rooms`' first window, in the order sent.
fn window(resp: &Value) -> Vec<String> {
    resp["lists"]["all_rooms"]["ops"][0]["room_ids"]
        .as_array()
        .expect("a SYNC op")
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect()
}

/// Sends `request` to both servers, each at its own `pos` from `at` (ours, theirs),
/// without long-polling, and asserts the answers match in what comes incrementally.
/// Returns both answers and our rooms' views.
async fn exchange(
    proxy: &str,
    native: &str,
    user: &TestUser,
    at: (&Value, &Value),
    request: &Value,
) -> (Value, Value, BTreeMap<String, RoomView>) {
    let token = user.access_token.as_str();
    let ours = Proxy::simplified_at(proxy, token, Some(&pos(at.0)), 0, request).await;
    let theirs = Proxy::simplified_at(native, token, Some(&pos(at.1)), 0, request).await;
    assert_eq!(ours.status, 200, "{}", ours.text());
    assert_eq!(theirs.status, 200, "{}", theirs.text());
    let (ours, theirs) = (ours.json(), theirs.json());
    let (our_lists, our_rooms) = response_view(&ours, &user.user_id, false);
    let (their_lists, their_rooms) = response_view(&theirs, &user.user_id, false);
    assert_eq!(our_lists, their_lists);
    assert_eq!(our_rooms, their_rooms);
    (ours, theirs, our_rooms)
}

async fn named_room(hs: &Synapse, user: &TestUser, name: &str) -> String {
    hs.create_room(user, json!({"name": name, "preset": "private_chat"}))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_list_service_through_slidesync_matches_synapse() {
    let hs = synapse().await;
    let alice = hs.register("alice").await;
    let bob = hs.register("bob").await;
    let db = TestDb::new().await;
    let proxy = Proxy::start(&db.url, homeserver(hs)).await;
    let native = hs.base_url.as_str();
    let token = alice.access_token.as_str();

    // The account is live from the start (the proxy polls it while it changes), as
    // for a client that keeps running.
    let catch_up = json!({"conn_id": "catch-up", "lists": {"all_rooms": {
        "ranges": [[0, 99]], "timeline_limit": 1, "required_state": [],
    }}});
    let first = Proxy::simplified_at(&proxy.url, token, None, 0, &catch_up).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let mut catch_up_pos = pos(&first.json());

    let left = named_room(hs, &alice, "Left room").await;
    hs.send_text(&alice, &left, "before leaving").await;
    hs.leave(&alice, &left).await;

    let kicked = named_room(hs, &bob, "Kicked room").await;
    hs.invite(&bob, &kicked, &alice.user_id).await;
    hs.join(&alice, &kicked).await;
    hs.send_text(&bob, &kicked, "welcome").await;
    hs.send_text(&alice, &kicked, "thanks").await;
    hs.kick(&bob, &kicked, &alice.user_id).await;

    let mut rooms = Vec::new();
    for i in 1..=4 {
        let room = named_room(hs, &alice, &format!("Room {i}")).await;
        hs.send_text(&alice, &room, &format!("hello {i}")).await;
        rooms.push(room);
    }
    // A room with more history than a subscription asks for.
    for i in 0..22 {
        hs.send_text(&alice, &rooms[1], &format!("chatter {i}"))
            .await;
    }
    let invite = named_room(hs, &bob, "Invite room").await;
    hs.invite(&bob, &invite, &alice.user_id).await;
    hs.send_text(&alice, &rooms[0], "latest").await;
    hs.send_text(&bob, &kicked, "said after the kick").await;
    let barrier = hs.send_text(&alice, &rooms[2], "really the latest").await;

    // Until the proxy has ingested the last event the user can see.
    let mut caught_up = false;
    for _ in 0..20 {
        let resp =
            Proxy::simplified_at(&proxy.url, token, Some(&catch_up_pos), 10_000, &catch_up).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let resp = resp.json();
        catch_up_pos = pos(&resp);
        if timeline_ids(&resp, &rooms[2]).contains(&barrier) {
            caught_up = true;
            break;
        }
    }
    assert!(caught_up, "the proxy never saw {barrier}");

    // 1. The first request: `all_rooms` at [0, 19], no long-poll.
    let request = room_list_request(19, &[]);
    let ours = Proxy::simplified_at(&proxy.url, token, None, 0, &request).await;
    let theirs = Proxy::simplified_at(native, token, None, 0, &request).await;
    assert_eq!(ours.status, 200, "{}", ours.text());
    assert_eq!(theirs.status, 200, "{}", theirs.text());
    let (ours, theirs) = (ours.json(), theirs.json());
    // Newest activity first; the kicked room where the kick put it.
    let expected_order = vec![
        rooms[2].clone(),
        rooms[0].clone(),
        invite.clone(),
        rooms[1].clone(),
        rooms[3].clone(),
        kicked.clone(),
    ];
    let (our_lists, our_rooms) = response_view(&ours, &alice.user_id, true);
    let (their_lists, their_rooms) = response_view(&theirs, &alice.user_id, true);
    let expected_set: BTreeSet<String> = expected_order.iter().cloned().collect();
    assert_eq!(their_lists, [(6, expected_set)], "{theirs:?}");
    assert_eq!(our_lists, their_lists);
    assert_eq!(
        our_rooms.keys().collect::<Vec<_>>(),
        their_rooms.keys().collect::<Vec<_>>()
    );
    for (room, theirs) in &their_rooms {
        assert_eq!(&our_rooms[room], theirs, "{room}");
    }
    assert!(!our_rooms.contains_key(&left), "a room left by the user");
    let kicked_view = &our_rooms[&kicked];
    assert_eq!(kicked_view.name.as_deref(), Some("Kicked room"));
    assert_eq!(kicked_view.own_membership.as_deref(), Some("leave"));
    assert!(our_rooms[&invite].invite);
    assert_eq!(
        window(&ours),
        expected_order,
        "slidesync sends the window in order"
    );
    assert_eq!(by_bump_stamp(&ours), expected_order);
    assert_eq!(by_bump_stamp(&theirs), expected_order);

    // 2. The list grows to [0, 99]: nothing new to send on either.
    let request = room_list_request(99, &[]);
    let (ours, theirs, our_rooms) =
        exchange(&proxy.url, native, &alice, (&ours, &theirs), &request).await;
    assert!(our_rooms.is_empty(), "{ours:?}");

    // 3. A room on screen gets a subscription of 20 events: its timeline is expanded.
    let request = room_list_request(99, &[&rooms[1]]);
    let (ours, theirs, our_rooms) =
        exchange(&proxy.url, native, &alice, (&ours, &theirs), &request).await;
    let expanded = &our_rooms[&rooms[1]];
    assert!(expanded.expanded && !expanded.initial, "{expanded:?}");
    assert_eq!(expanded.timeline.len(), 20);

    // 4. A new message moves its room to the top, live, on both.
    let news = hs.send_text(&alice, &rooms[3], "news").await;
    let theirs = Proxy::simplified_at(native, token, Some(&pos(&theirs)), 10_000, &request)
        .await
        .json();
    let mut ours_pos = pos(&ours);
    let mut ours = None;
    for _ in 0..10 {
        let resp = Proxy::simplified_at(&proxy.url, token, Some(&ours_pos), 10_000, &request)
            .await
            .json();
        ours_pos = pos(&resp);
        if timeline_ids(&resp, &rooms[3]).contains(&news) {
            ours = Some(resp);
            break;
        }
    }
    let ours = ours.expect("the message reaches the proxy");
    let (our_lists, our_rooms) = response_view(&ours, &alice.user_id, false);
    let (their_lists, their_rooms) = response_view(&theirs, &alice.user_id, false);
    assert_eq!(our_lists, their_lists);
    assert_eq!(window(&ours)[0], rooms[3]);
    assert_eq!(our_rooms[&rooms[3]], their_rooms[&rooms[3]]);
    assert_eq!(our_rooms[&rooms[3]].num_live, Some(1));
    assert!(!our_rooms.contains_key(&kicked), "nothing after the kick");
    proxy.stop().await;
}

/// An HTTP request with any body and content type, through the proxy.
async fn send_bytes(
    method: Method,
    url: &str,
    token: &str,
    content_type: &str,
    body: Bytes,
) -> (http::StatusCode, http::HeaderMap, Bytes) {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body))
        .unwrap();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(Duration::from_secs(60), client.request(req))
        .await
        .expect("an answer in time")
        .expect("the proxy answers");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("a whole body").to_bytes();
    (parts.status, parts.headers, body)
}

/// Logs in through the proxy at `proxy_url`: the answer's `well_known` names `expected`.
/// The proxy's `/.well-known/matrix/client` is the homeserver's, with `expected` as the
/// sliding sync proxy. Returns the login answer.
async fn discovery_points_at(
    hs: &Synapse,
    proxy_url: &str,
    expected: &str,
    login: &Value,
) -> Value {
    let client = HttpClient::new();
    let resp = client
        .request(
            Method::POST,
            &format!("{proxy_url}/_matrix/client/v3/login"),
            None,
            Some(login),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let answer = resp.json();
    assert_eq!(
        answer["well_known"]["m.homeserver"]["base_url"].as_str(),
        Some(expected),
        "{answer:?}"
    );
    let well_known = client
        .request(
            Method::GET,
            &format!("{proxy_url}/.well-known/matrix/client"),
            None,
            None,
        )
        .await;
    assert_eq!(well_known.status, 200, "{}", well_known.text());
    let mut well_known = well_known.json();
    assert_eq!(
        well_known["org.matrix.msc3575.proxy"]["url"].as_str(),
        Some(expected)
    );
    let own = client
        .request(
            Method::GET,
            &format!("{}/.well-known/matrix/client", hs.base_url),
            None,
            None,
        )
        .await
        .json();
    assert!(own["m.homeserver"]["base_url"].is_str(), "{own:?}");
    if let Some(obj) = well_known.as_object_mut() {
        obj.remove(&"org.matrix.msc3575.proxy");
    }
    assert_eq!(well_known, own, "the rest is the homeserver's");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_url_serves_login_messages_media_and_discovery() {
    let hs = synapse().await;
    let alice = hs.register("alice").await;
    let db = TestDb::new().await;
    let proxy = Proxy::start(&db.url, homeserver(hs)).await;
    let client = HttpClient::new();

    // Login through the proxy: the answer points the client back at the proxy; the
    // well-known names it as the sliding sync proxy.
    let login = json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": alice.user_id},
        "password": crate::support::synapse::TEST_PASSWORD,
    });
    let answer = discovery_points_at(hs, &proxy.url, &proxy.url, &login).await;
    let token = answer["access_token"].as_str().unwrap().to_owned();

    // A message sent through the proxy.
    let room = named_room(hs, &alice, "Through the proxy").await;
    let resp = client
        .request(
            Method::PUT,
            &format!(
                "{}/_matrix/client/v3/rooms/{}/send/m.room.message/one-url-1",
                proxy.url,
                encode(&room)
            ),
            Some(&token),
            Some(&json!({"msgtype": "m.text", "body": "via slidesync"})),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp.json()["event_id"].as_str().is_some());

    // Media of several MiB, past the 1 MiB a sync request body may have, both ways.
    let media: Bytes = (0..6 * 1024 * 1024 + 123)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect::<Vec<u8>>()
        .into();
    let (status, _, body) = send_bytes(
        Method::POST,
        &format!("{}/_matrix/media/v3/upload?filename=big.bin", proxy.url),
        &token,
        "application/octet-stream",
        media.clone(),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let uploaded: Value = sonic_rs::from_slice(&body).unwrap();
    let mxc = uploaded["content_uri"].as_str().unwrap();
    let media_id = mxc.trim_start_matches("mxc://");
    let (status, headers, body) = send_bytes(
        Method::GET,
        &format!("{}/_matrix/client/v1/media/download/{media_id}", proxy.url),
        &token,
        "application/json",
        Bytes::new(),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body.len(), media.len());
    assert!(body == media, "the download is the upload, byte for byte");
    assert_eq!(
        headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(&b"application/octet-stream"[..])
    );

    // The homeserver's versions, with sliding sync advertised.
    let versions = client
        .request(
            Method::GET,
            &format!("{}/_matrix/client/versions", proxy.url),
            None,
            None,
        )
        .await
        .json();
    for feature in ["org.matrix.simplified_msc3575", "org.matrix.msc3575"] {
        assert_eq!(
            versions["unstable_features"][feature].as_bool(),
            Some(true),
            "{versions:?}"
        );
    }
    proxy.stop().await;

    // With SYNCV3_PUBLIC_URL, that URL, whatever Host the client used.
    let public = Settings {
        public_url: Some("https://chat.example.org".into()),
        ..settings()
    };
    let proxy = Proxy::start_with(&db.url, homeserver(hs), public).await;
    discovery_points_at(hs, &proxy.url, "https://chat.example.org", &login).await;
    proxy.stop().await;
}

// Who removed the user is read back from storage: the same on either store.
crate::support::on_both_stores!(a_kicked_room_stays_listed_after_a_restart);

async fn a_kicked_room_stays_listed_after_a_restart(backend: Backend) {
    const ALICE: &str = "@alice:test";
    let devices = [("alice_token", ALICE, "ALICEDEV")];
    let db = TestDb::of(backend).await;
    let hs = FakeHomeserver::with_devices(&devices);
    let proxy = Proxy::start(&db.url, hs.clone()).await;
    let list = json!({"lists": {"all_rooms": {
        "ranges": [[0, 9]], "timeline_limit": 3, "required_state": [["m.room.name", ""]],
    }}});
    hs.push_rooms(
        "alice_token",
        rooms_join(vec![
            ("!kept:test", new_room(ALICE, Some("Kept"), 1_000)),
            ("!kicked:test", new_room(ALICE, Some("Kicked"), 2_000)),
        ]),
    );
    let first = Proxy::simplified_at(&proxy.url, "alice_token", None, 0, &list).await;
    assert_eq!(first.status, 200, "{}", first.text());
    // As Synapse sends it: with the membership it replaced.
    let mut kick = member_by("@mod:test", ALICE, "leave", 3_000);
    kick["unsigned"] = json!({"prev_content": {"membership": "join"}});
    hs.push_rooms(
        "alice_token",
        rooms_leave("!kicked:test", vec![kick.clone()]),
    );
    let mut at = pos(&first.json());
    let mut seen = false;
    for _ in 0..20 {
        let resp = Proxy::simplified_at(&proxy.url, "alice_token", Some(&at), 10_000, &list)
            .await
            .json();
        at = pos(&resp);
        if timeline_ids(&resp, "!kicked:test") == [id_of(&kick)] {
            seen = true;
            break;
        }
    }
    assert!(seen, "the kick reaches the list");
    proxy.stop().await;

    let hs = FakeHomeserver::with_devices(&devices);
    hs.hold("alice_token");
    let proxy = Proxy::start(&db.url, hs.clone()).await;
    let after = Proxy::simplified_at(&proxy.url, "alice_token", None, 0, &list)
        .await
        .json();
    assert_eq!(
        after["lists"]["all_rooms"]["count"].as_u64(),
        Some(2),
        "{after:?}"
    );
    let kicked = &after["rooms"]["!kicked:test"];
    assert_eq!(kicked["name"].as_str(), Some("Kicked"), "{after:?}");
    assert_eq!(
        timeline_ids(&after, "!kicked:test").last(),
        Some(&id_of(&kick)),
        "{after:?}"
    );
    hs.release("alice_token");
    proxy.stop().await;
}

/// A homeserver that serves no well-known of its own (the scripted one answers every
/// pass-through with a 201 echo): slidesync is the homeserver too.
#[tokio::test]
async fn a_well_known_without_a_homeserver_names_slidesync() {
    let (_db, _hs, proxy) = crate::support::proxy::scripted(&[]).await;
    let resp = HttpClient::new()
        .request(
            Method::GET,
            &format!("{}/.well-known/matrix/client", proxy.url),
            None,
            None,
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let well_known = resp.json();
    assert_eq!(
        well_known["m.homeserver"]["base_url"].as_str(),
        Some(proxy.url.as_str())
    );
    assert_eq!(
        well_known["org.matrix.msc3575.proxy"]["url"].as_str(),
        Some(proxy.url.as_str())
    );
    proxy.stop().await;
}

/// What Element X reads beside the room list comes through the MSC4186 endpoint from
/// the same engine: a DM's flag and heroes, `$LAZY` members, and the extensions.
#[tokio::test]
async fn room_fields_lazy_members_and_extensions_come_through_msc4186() {
    const ALICE: &str = "@alice:test";
    const BOB: &str = "@bob:test";
    let (_db, hs, proxy) =
        crate::support::proxy::scripted(&[("alice_token", ALICE, "ALICEDEV")]).await;
    let dm = crate::support::v2::joined(
        vec![
            crate::support::v2::create(BOB, 1_000),
            crate::support::v2::member(BOB, "join", 1_001),
            crate::support::v2::member(ALICE, "join", 1_002),
        ],
        vec![crate::support::v2::message(BOB, "hi", 1_003)],
    );
    hs.push_sync(
        "alice_token",
        json!({
            "rooms": rooms_join(vec![("!dm:test", dm)]),
            "account_data": {"events": [{"type": "m.direct", "content": {BOB: ["!dm:test"]}}]},
            "to_device": {"events": [{"type": "m.room_key", "sender": BOB, "content": {"k": 1}}]},
            "device_one_time_keys_count": {"signed_curve25519": 50},
        }),
    );
    let body = json!({
        "lists": {"all_rooms": {
            "ranges": [[0, 9]], "timeline_limit": 1,
            "required_state": [["m.room.member", "$LAZY"]],
        }},
        "extensions": {
            "to_device": {"enabled": true},
            "e2ee": {"enabled": true},
            "account_data": {"enabled": true},
        },
    });
    let resp = Proxy::simplified_at(&proxy.url, "alice_token", None, 0, &body).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let resp = resp.json();
    let room = &resp["rooms"]["!dm:test"];
    assert_eq!(room["is_dm"].as_bool(), Some(true), "{resp:?}");
    assert!(
        room["name"].is_null(),
        "MSC4186 names no unnamed room: {resp:?}"
    );
    assert_eq!(room["heroes"][0]["user_id"].as_str(), Some(BOB), "{resp:?}");
    let members: Vec<&str> = room["required_state"]
        .as_array()
        .expect("required_state")
        .iter()
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert_eq!(members, [BOB], "the timeline's sender, lazily");
    let ext = &resp["extensions"];
    assert_eq!(
        ext["to_device"]["events"][0]["type"].as_str(),
        Some("m.room_key"),
        "{ext:?}"
    );
    assert!(ext["to_device"]["next_batch"].as_str().is_some(), "{ext:?}");
    assert_eq!(
        ext["e2ee"]["device_one_time_keys_count"]["signed_curve25519"].as_u64(),
        Some(50),
        "{ext:?}"
    );
    let global = ext["account_data"]["global"].as_array().expect("global");
    assert!(
        global
            .iter()
            .any(|e| e["type"].as_str() == Some("m.direct")),
        "{ext:?}"
    );
    proxy.stop().await;
}
