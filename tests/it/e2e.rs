//! slidesync in front of a real Synapse: what a client sees when people use the
//! homeserver normally.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use slidesync::upstream::http::{HttpHomeserver, Target};
use sonic_rs::{json, JsonContainerTrait, JsonValueTrait, Value};

use crate::support::binary::Binary;
use crate::support::db::TestDb;
use crate::support::http::HttpClient;
use crate::support::proxy::{ops, pos, synced_ids, Proxy, MSC3575};
use crate::support::synapse::{synapse, Synapse, TestUser};

fn homeserver(synapse: &Synapse) -> Arc<HttpHomeserver> {
    Arc::new(HttpHomeserver::new(
        Target::Url(synapse.base_url.parse().unwrap()),
        Duration::from_secs(60),
    ))
}

/// The request shape matrix-js-sdk's room list sends.
fn room_list(end: u64) -> Value {
    json!({"lists": {"all": {
        "ranges": [[0, end]],
        "sort": ["by_recency"],
        "timeline_limit": 3,
        "required_state": [["m.room.name", ""], ["m.room.create", ""], ["m.room.member", "$ME"]]
    }}})
}

async fn room_with_message(hs: &Synapse, user: &TestUser, name: &str) -> String {
    let room = hs
        .create_room(user, json!({"name": name, "preset": "private_chat"}))
        .await;
    hs.send_text(user, &room, &format!("first message in {name}"))
        .await;
    room
}

fn names(resp: &Value) -> Vec<String> {
    synced_ids(resp, "all")
        .iter()
        .map(|id| {
            resp["rooms"][id.as_str()]["name"]
                .as_str()
                .unwrap_or("?")
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_list_live_updates_and_restart_against_synapse() {
    let hs = synapse().await;
    let alice = hs.register("alice").await;
    let bob = hs.register("bob").await;
    let garden = room_with_message(hs, &alice, "Garden").await;
    let kitchen = room_with_message(hs, &alice, "Kitchen").await;
    let attic = room_with_message(hs, &alice, "Attic").await;
    hs.invite(&alice, &garden, &bob.user_id).await;
    hs.join(&bob, &garden).await;

    let db = TestDb::new().await;
    let proxy = Proxy::start(&db.url, homeserver(hs)).await;

    // Newest activity first: Garden has bob's join, then Attic, then Kitchen.
    let first = proxy
        .sync_ok(&alice.access_token, None, 0, &room_list(9))
        .await;
    assert_eq!(
        first["lists"]["all"]["count"].as_u64(),
        Some(3),
        "{first:?}"
    );
    assert_eq!(names(&first), ["Garden", "Attic", "Kitchen"]);
    let attic_room = &first["rooms"][attic.as_str()];
    assert_eq!(attic_room["initial"].as_bool(), Some(true));
    let timeline = attic_room["timeline"].as_array().expect("timeline");
    assert!(
        timeline
            .iter()
            .any(|e| e["content"]["body"].as_str() == Some("first message in Attic")),
        "{attic_room:?}"
    );
    let state = attic_room["required_state"]
        .as_array()
        .expect("required_state");
    assert!(state
        .iter()
        .any(|e| e["type"].as_str() == Some("m.room.create")));
    assert!(state
        .iter()
        .any(|e| e["type"].as_str() == Some("m.room.member")
            && e["state_key"].as_str() == Some(alice.user_id.as_str())));

    // A message in the last room, sent through the homeserver by someone else's client,
    // reaches a parked long-poll and moves that room to the top.
    let p = pos(&first);
    let parked = {
        let url = format!("{}{MSC3575}?timeout=30000&pos={p}", proxy.url);
        let token = alice.access_token.clone();
        tokio::spawn(async move {
            HttpClient::new()
                .request(Method::POST, &url, Some(&token), Some(&json!({})))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!parked.is_finished(), "nothing new yet: the request waits");
    hs.send_text(&alice, &kitchen, "dinner is ready").await;
    let live = tokio::time::timeout(Duration::from_secs(20), parked)
        .await
        .expect("the long-poll returns when the message arrives")
        .unwrap();
    assert_eq!(live.status, 200, "{}", live.text());
    let live = live.json();
    assert_eq!(
        ops(&live, "all"),
        ["DELETE 2".to_owned(), format!("INSERT 0 {kitchen}")]
    );
    let kitchen_update = &live["rooms"][kitchen.as_str()];
    assert_eq!(
        kitchen_update["timeline"][0]["content"]["body"].as_str(),
        Some("dinner is ready")
    );
    assert_eq!(kitchen_update["num_live"].as_u64(), Some(1));

    // Restart: the new process answers from what it stored, before its pollers have
    // caught up, and the old connection is gone.
    proxy.stop().await;
    let proxy = Proxy::start(&db.url, homeserver(hs)).await;
    let stale = proxy
        .sync(&alice.access_token, Some(&pos(&live)), 0, &json!({}))
        .await;
    assert_eq!(stale.status, 400);
    assert_eq!(stale.json()["errcode"].as_str(), Some("M_UNKNOWN_POS"));
    let again = proxy
        .sync_ok(&alice.access_token, None, 0, &room_list(9))
        .await;
    assert_eq!(names(&again), ["Kitchen", "Garden", "Attic"]);
    let attic_again = &again["rooms"][attic.as_str()];
    assert!(
        attic_again["prev_batch"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "clients can still paginate back after a restart: {attic_again:?}"
    );
    assert_eq!(attic_again["limited"].as_bool(), Some(true));

    // Bob sees only the room he is in.
    let bobs = proxy
        .sync_ok(&bob.access_token, None, 0, &room_list(9))
        .await;
    assert_eq!(synced_ids(&bobs, "all"), vec![garden.clone()]);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_a_room_removes_it_and_ends_its_stream() {
    let hs = synapse().await;
    let alice = hs.register("alice").await;
    let bob = hs.register("bob").await;
    let room = room_with_message(hs, &alice, "Book club").await;
    hs.invite(&alice, &room, &bob.user_id).await;
    hs.join(&bob, &room).await;

    let db = TestDb::new().await;
    let proxy = Proxy::start(&db.url, homeserver(hs)).await;
    let first = proxy
        .sync_ok(&bob.access_token, None, 0, &room_list(9))
        .await;
    assert_eq!(synced_ids(&first, "all"), vec![room.clone()]);

    hs.leave(&bob, &room).await;
    let mut p = pos(&first);
    let mut leave = None;
    for _ in 0..10 {
        let resp = proxy
            .sync_ok(&bob.access_token, Some(&p), 10_000, &json!({}))
            .await;
        p = pos(&resp);
        if !ops(&resp, "all").is_empty() {
            leave = Some(resp);
            break;
        }
    }
    let leave = leave.expect("the leave arrives");
    assert_eq!(ops(&leave, "all"), ["DELETE 0"]);
    assert_eq!(leave["lists"]["all"]["count"].as_u64(), Some(0));
    let last = &leave["rooms"][room.as_str()]["timeline"];
    let last_event = last
        .as_array()
        .and_then(|t| t.last())
        .expect("the leave event");
    assert_eq!(last_event["type"].as_str(), Some("m.room.member"));
    assert_eq!(last_event["content"]["membership"].as_str(), Some("leave"));

    // Alice keeps talking; bob hears nothing more of the room.
    hs.send_text(&alice, &room, "after bob left").await;
    let after = proxy
        .sync_ok(&bob.access_token, Some(&p), 1_500, &json!({}))
        .await;
    assert!(after["rooms"].get(room.as_str()).is_none(), "{after:?}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_synapse_does_not_know_is_refused() {
    let hs = synapse().await;
    let db = TestDb::new().await;
    let proxy = Proxy::start(&db.url, homeserver(hs)).await;
    let resp = proxy
        .sync("syt_not_a_real_token", None, 0, &room_list(9))
        .await;
    assert_eq!(resp.status, 401);
    assert_eq!(resp.json()["errcode"].as_str(), Some("M_UNKNOWN_TOKEN"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_synapse_rooms_and_keeps_them_across_a_restart() {
    let hs = synapse().await;
    let carol = hs.register("carol").await;
    room_with_message(hs, &carol, "Workshop").await;
    room_with_message(hs, &carol, "Porch").await;
    let db = TestDb::new().await;

    let proxy = Binary::start(&hs.base_url, &db.url).await;
    let first = proxy.sync(&carol.access_token, &room_list(9)).await;
    assert_eq!(names(&first), ["Porch", "Workshop"]);
    proxy.stop();

    let proxy = Binary::start(&hs.base_url, &db.url).await;
    let again = proxy.sync(&carol.access_token, &room_list(9)).await;
    assert_eq!(names(&again), ["Porch", "Workshop"]);
    proxy.stop();
}

/// The README's quick start: the binary with nothing but `SYNCV3_SERVER`, on the embedded
/// store in `./slidesync-data` and a generated secret, restarted once. The secret is made
/// once, readable by its owner only, and the restart serves the stored rooms with the
/// stored token (it decrypts under the same secret).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_with_only_a_homeserver_url_keeps_rooms_and_tokens_across_a_restart() {
    use std::os::unix::fs::PermissionsExt;

    let hs = synapse().await;
    let erin = hs.register("erin").await;
    room_with_message(hs, &erin, "Attic").await;
    room_with_message(hs, &erin, "Cellar").await;
    let dir = TestDb::sqlite();
    let work = std::path::PathBuf::from(dir.url.trim_start_matches("sqlite://"));
    let work = work.parent().unwrap();
    std::fs::create_dir_all(work).unwrap();

    let proxy = Binary::start_with_only_the_server(&hs.base_url, work).await;
    let first = proxy.sync(&erin.access_token, &room_list(9)).await;
    assert_eq!(names(&first), ["Cellar", "Attic"]);
    proxy.stop();
    let data = work.join("slidesync-data");
    assert!(data.join("slidesync.db").is_file());
    let secret = std::fs::read_to_string(data.join("slidesync.secret")).unwrap();
    let mode = std::fs::metadata(data.join("slidesync.secret"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let proxy = Binary::start_with_only_the_server(&hs.base_url, work).await;
    let again = proxy.sync(&erin.access_token, &room_list(9)).await;
    assert_eq!(names(&again), ["Cellar", "Attic"]);
    proxy.stop();
    assert_eq!(
        std::fs::read_to_string(data.join("slidesync.secret")).unwrap(),
        secret,
        "the same secret on the next start"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_can_use_the_proxy_as_its_homeserver_url() {
    let hs = synapse().await;
    let dana = hs.register("dana").await;
    let db = TestDb::new().await;
    let proxy = Proxy::start(&db.url, homeserver(hs)).await;
    let client = HttpClient::new();
    let created = client
        .request(
            Method::POST,
            &format!("{}/_matrix/client/v3/createRoom", proxy.url),
            Some(&dana.access_token),
            Some(&json!({"name": "Through the proxy"})),
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.text());
    let room = created.json()["room_id"].as_str().unwrap().to_owned();
    let sent = client
        .request(
            Method::PUT,
            &format!(
                "{}/_matrix/client/v3/rooms/{}/send/m.room.message/txn1",
                proxy.url,
                crate::support::http::encode(&room)
            ),
            Some(&dana.access_token),
            Some(&json!({"msgtype": "m.text", "body": "sent via slidesync"})),
        )
        .await;
    assert_eq!(sent.status, 200, "{}", sent.text());
    let resp = proxy
        .sync_ok(&dana.access_token, None, 0, &room_list(0))
        .await;
    assert_eq!(names(&resp), ["Through the proxy"]);
    let timeline = resp["rooms"][room.as_str()]["timeline"].as_array().unwrap();
    assert_eq!(
        timeline.last().unwrap()["content"]["body"].as_str(),
        Some("sent via slidesync")
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unnamed_room_is_named_after_the_other_member_and_invites_show_only_invite_state() {
    let hs = synapse().await;
    let erin = hs.register("erin").await;
    let frank = hs.register("frank").await;
    let db = TestDb::new().await;
    let proxy = Proxy::start(&db.url, homeserver(hs)).await;
    let first = proxy
        .sync_ok(&frank.access_token, None, 0, &room_list(9))
        .await;
    assert_eq!(first["lists"]["all"]["count"].as_u64(), Some(0));

    let dm = hs
        .create_room(&erin, json!({"preset": "private_chat", "is_direct": true}))
        .await;
    hs.send_text(&erin, &dm, "are you there?").await;
    hs.invite(&erin, &dm, &frank.user_id).await;
    let mut p = pos(&first);
    let mut invited = None;
    for _ in 0..10 {
        let resp = proxy
            .sync_ok(&frank.access_token, Some(&p), 10_000, &json!({}))
            .await;
        p = pos(&resp);
        if resp["rooms"].get(dm.as_str()).is_some() {
            invited = Some(resp);
            break;
        }
    }
    let invited = invited.expect("the invite arrives");
    let invite = &invited["rooms"][dm.as_str()];
    assert!(
        invite["invite_state"]
            .as_array()
            .is_some_and(|s| !s.is_empty()),
        "{invite:?}"
    );
    assert!(
        invite.get("timeline").is_none(),
        "an invitee sees no messages: {invite:?}"
    );
    assert!(invite.get("required_state").is_none(), "{invite:?}");

    hs.join(&frank, &dm).await;
    let mut joined = None;
    for _ in 0..10 {
        let resp = proxy
            .sync_ok(&frank.access_token, Some(&p), 10_000, &json!({}))
            .await;
        p = pos(&resp);
        if resp["rooms"][dm.as_str()].get("name").is_some() {
            joined = Some(resp);
            break;
        }
    }
    let joined = joined.expect("the join arrives");
    let room = &joined["rooms"][dm.as_str()];
    assert_eq!(
        room["initial"].as_bool(),
        Some(true),
        "joining sends the room whole"
    );
    let erin_localpart = erin
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap();
    assert_eq!(
        room["name"].as_str(),
        Some(erin_localpart),
        "Synapse's default display name"
    );
    assert_eq!(room["joined_count"].as_u64(), Some(2));
    proxy.stop().await;
}

/// What a client reading Synapse's own `/sync` room summary would call the room: the
/// spec's name calculation over `m.heroes`, the hero's member events and the counts.
fn name_from_synapse_summary(room: &Value) -> (String, Vec<String>) {
    let summary = &room["summary"];
    let heroes: Vec<String> = summary["m.heroes"]
        .as_array()
        .map(|h| h.iter().map(|u| u.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    let members = summary["m.joined_member_count"].as_u64().unwrap_or(0)
        + summary["m.invited_member_count"].as_u64().unwrap_or(0);
    let events = room["state"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(room["timeline"]["events"].as_array().into_iter().flatten());
    let mut displaynames = std::collections::HashMap::new();
    for e in events {
        if e["type"].as_str() == Some("m.room.member") {
            let user = e["state_key"].as_str().unwrap().to_owned();
            let name = e["content"]["displayname"].as_str().map(str::to_owned);
            displaynames.insert(user, name);
        }
    }
    let label = |u: &String| {
        displaynames
            .get(u)
            .cloned()
            .flatten()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| u.clone())
    };
    let labels: Vec<String> = heroes.iter().map(label).collect();
    let names: Vec<String> = labels
        .iter()
        .zip(&heroes)
        .map(|(l, u)| {
            if labels.iter().filter(|o| *o == l).count() > 1 {
                format!("{l} ({u})")
            } else {
                l.clone()
            }
        })
        .collect();
    let others = members.saturating_sub(1) as usize;
    let listed = match names.as_slice() {
        [] => return ("Empty Room".to_owned(), heroes),
        [one] if others <= 1 => one.clone(),
        all if all.len() >= others => format!(
            "{} and {}",
            all[..all.len() - 1].join(", "),
            all[all.len() - 1]
        ),
        some => {
            let shown = &some[..some.len().min(5)];
            format!("{} and {} others", shown.join(", "), others - shown.len())
        }
    };
    let name = if others == 0 {
        format!("Empty Room (was {listed})")
    } else {
        listed
    };
    (name, heroes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_names_and_heroes_match_what_synapse_summaries_imply() {
    let hs = synapse().await;
    let alice = hs.register("alice").await;
    let bob = hs.register("bob").await;
    let carol = hs.register("carol").await;
    let dave = hs.register("dave").await;
    let public = json!({"preset": "public_chat"});
    // Bob alone with Alice; then Bob, and two members who both call themselves Sam.
    let pair = hs.create_room(&alice, public.clone()).await;
    let group = hs.create_room(&alice, public.clone()).await;
    let emptied = hs.create_room(&alice, public).await;
    for room in [&pair, &group, &emptied] {
        hs.join(&bob, room).await;
    }
    for user in [&carol, &dave] {
        hs.join(user, &group).await;
        hs.send_state(
            user,
            &group,
            "m.room.member",
            &user.user_id,
            json!({"membership": "join", "displayname": "Sam"}),
        )
        .await;
    }
    hs.leave(&bob, &emptied).await;
    hs.send_text(&alice, &pair, "hi").await;

    // Synapse's summary is computed for lazy-loading clients.
    let filter = r#"{"room":{"state":{"lazy_load_members":true}}}"#;
    let url = format!(
        "{}/_matrix/client/v3/sync?timeout=0&filter={}",
        hs.base_url,
        crate::support::http::encode(filter)
    );
    let v2 = HttpClient::new()
        .request(Method::GET, &url, Some(&alice.access_token), None)
        .await
        .json();

    let db = TestDb::new().await;
    let proxy = Proxy::start(&db.url, homeserver(hs)).await;
    let body = json!({"lists": {"all": {"ranges": [[0, 9]], "include_heroes": true}}});
    let rooms = [&pair, &group, &emptied];
    let mut resp = Value::new();
    for _ in 0..50 {
        resp = proxy.sync_ok(&alice.access_token, None, 0, &body).await;
        if resp["lists"]["all"]["count"].as_u64() == Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for room in rooms {
        let (want, heroes) = name_from_synapse_summary(&v2["rooms"]["join"][room.as_str()]);
        let got = &resp["rooms"][room.as_str()];
        assert_eq!(got["name"].as_str(), Some(want.as_str()), "{room}: {got:?}");
        let got_heroes: Vec<String> = got["heroes"]
            .as_array()
            .map(|h| {
                h.iter()
                    .map(|h| h["user_id"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(got_heroes, heroes, "{room}");
    }
    let group_name = resp["rooms"][group.as_str()]["name"].as_str().unwrap();
    assert!(group_name.contains("Sam (@"), "disambiguated: {group_name}");
    assert!(
        resp["rooms"][emptied.as_str()]["name"]
            .as_str()
            .unwrap()
            .starts_with("Empty Room (was "),
        "{resp:?}"
    );
    proxy.stop().await;
}

/// A room with 30 messages before Alice's device first polls: its first `/sync` holds
/// one of them, and a client asking for 20 gets the newest 20 in order, the rest fetched
/// from Synapse's `/messages`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_from_before_the_first_poll_is_fetched_from_synapse() {
    let hs = synapse().await;
    let alice = hs.register("alice").await;
    let bob = hs.register("bob").await;
    let room = hs
        .create_room(&bob, json!({"name": "History", "preset": "private_chat"}))
        .await;
    hs.invite(&bob, &room, &alice.user_id).await;
    hs.join(&alice, &room).await;
    for i in 1..=30 {
        hs.send_text(&bob, &room, &format!("m{i}")).await;
    }
    let db = TestDb::new().await;
    let proxy = Proxy::start(&db.url, homeserver(hs)).await;
    let req = json!({"lists": {"all": {"ranges": [[0, 0]], "timeline_limit": 20}}});
    let resp = proxy.sync_ok(&alice.access_token, None, 0, &req).await;
    let bodies: Vec<&str> = resp["rooms"][room.as_str()]["timeline"]
        .as_array()
        .expect("a timeline")
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    let expected: Vec<String> = (11..=30).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, expected, "{resp:?}");
    assert_eq!(
        resp["rooms"][room.as_str()]["limited"].as_bool(),
        Some(true)
    );
    // Another connection is served from what was kept.
    let again = proxy.sync_ok(&alice.access_token, None, 0, &req).await;
    assert_eq!(
        again["rooms"][room.as_str()]["timeline"],
        resp["rooms"][room.as_str()]["timeline"]
    );
    proxy.stop().await;
}

/// Alice sends from her phone: the phone's connections see the message's transaction ID
/// (its local echo is matched by it), her laptop's never do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_sending_device_gets_the_transaction_id_from_synapse() {
    let hs = synapse().await;
    let laptop = hs.register("alice").await;
    let phone = hs
        .login(&laptop, crate::support::synapse::TEST_PASSWORD)
        .await;
    let room = hs
        .create_room(&laptop, json!({"name": "Echo", "preset": "private_chat"}))
        .await;
    let db = TestDb::new().await;
    let proxy = Proxy::start(&db.url, homeserver(hs)).await;
    let req = json!({"lists": {"all": {"ranges": [[0, 0]], "timeline_limit": 5}}});
    let on_laptop = proxy.sync_ok(&laptop.access_token, None, 0, &req).await;
    proxy.sync_ok(&phone.access_token, None, 0, &req).await;

    let sent = hs
        .send_text_as(&phone, &room, "from the phone", "phone-txn-1")
        .await;
    let txn_on = |resp: &Value| -> Option<Option<String>> {
        resp["rooms"][room.as_str()]["timeline"]
            .as_array()?
            .iter()
            .find(|e| e["event_id"].as_str() == Some(sent.as_str()))
            .map(|e| e["unsigned"]["transaction_id"].as_str().map(str::to_owned))
    };
    // Both pollers deliver the message, in either order; once the phone's has, a new
    // connection of the phone serves it with the ID.
    let mut phone_txn = None;
    for _ in 0..100 {
        let resp = proxy.sync_ok(&phone.access_token, None, 0, &req).await;
        if let Some(Some(txn)) = txn_on(&resp) {
            phone_txn = Some(txn);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(phone_txn.as_deref(), Some("phone-txn-1"));
    let live = proxy
        .sync_ok(
            &laptop.access_token,
            Some(&pos(&on_laptop)),
            10_000,
            &json!({}),
        )
        .await;
    let fresh = proxy.sync_ok(&laptop.access_token, None, 0, &req).await;
    for resp in [live, fresh] {
        if let Some(txn) = txn_on(&resp) {
            assert_eq!(txn, None, "the laptop did not send it: {resp:?}");
        }
    }
    proxy.stop().await;
}

/// Waits, through `proxy`, for Bob's connection at `p` to get a response `done` accepts.
async fn until(
    proxy: &Proxy,
    token: &str,
    p: &mut String,
    body: &Value,
    done: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..20 {
        let resp = proxy.sync_ok(token, Some(p), 10_000, body).await;
        *p = pos(&resp);
        if done(&resp) {
            return resp;
        }
    }
    panic!("never got the awaited response");
}

/// A redacted room name stops naming the room, and an upgraded room gives way to its
/// successor once the user joins it, with `include_old_rooms` still reaching it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redacted_name_and_an_upgraded_room_against_synapse() {
    let hs = synapse().await;
    let alice = hs.register("alice").await;
    let bob = hs.register("bob").await;
    let room = hs
        .create_room(
            &alice,
            json!({"preset": "public_chat", "name": "Secret name"}),
        )
        .await;
    hs.join(&bob, &room).await;
    hs.send_text(&alice, &room, "hello").await;

    let db = TestDb::new().await;
    let proxy = Proxy::start(&db.url, homeserver(hs)).await;
    let body = json!({"lists": {"all": {
        "ranges": [[0, 9]], "timeline_limit": 5,
        "required_state": [["m.room.name", ""], ["m.room.create", ""]],
        "include_old_rooms": {"timeline_limit": 1, "required_state": [["m.room.tombstone", ""]]},
    }}});
    let first = proxy.sync_ok(&bob.access_token, None, 0, &body).await;
    assert_eq!(
        first["rooms"][room.as_str()]["name"].as_str(),
        Some("Secret name"),
        "{first:?}"
    );

    // Alice redacts the name event.
    let name_event = hs
        .call(
            "read the name event",
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.name/",
                crate::support::http::encode(&room)
            ),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(name_event["name"].as_str(), Some("Secret name"));
    let state = hs
        .call(
            "read the state",
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/state",
                crate::support::http::encode(&room)
            ),
            Some(&alice),
            None,
        )
        .await;
    let name_id = state
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"].as_str() == Some("m.room.name"))
        .and_then(|e| e["event_id"].as_str())
        .unwrap()
        .to_owned();
    hs.call(
        "redact the name",
        Method::PUT,
        &format!(
            "/_matrix/client/v3/rooms/{}/redact/{}/r1",
            crate::support::http::encode(&room),
            crate::support::http::encode(&name_id)
        ),
        Some(&alice),
        Some(&json!({"reason": "oops"})),
    )
    .await;
    let mut p = pos(&first);
    let renamed = until(&proxy, &bob.access_token, &mut p, &json!({}), |r| {
        r["rooms"][room.as_str()]["name"]
            .as_str()
            .is_some_and(|n| n != "Secret name")
    })
    .await;
    let name = renamed["rooms"][room.as_str()]["name"].as_str().unwrap();
    assert!(!name.contains("Secret"), "{name}");

    // Alice names it again (Synapse cannot upgrade a room whose name is redacted),
    // upgrades it, and Bob follows the tombstone.
    hs.set_room_name(&alice, &room, "Book club").await;
    let upgraded = hs
        .call(
            "upgrade the room",
            Method::POST,
            &format!(
                "/_matrix/client/v3/rooms/{}/upgrade",
                crate::support::http::encode(&room)
            ),
            Some(&alice),
            Some(&json!({"new_version": "10"})),
        )
        .await;
    let successor = upgraded["replacement_room"].as_str().unwrap().to_owned();
    hs.join(&bob, &successor).await;
    let moved = until(&proxy, &bob.access_token, &mut p, &json!({}), |r| {
        r["lists"]["all"]["count"].as_u64() == Some(1)
            && r["rooms"].get(successor.as_str()).is_some()
    })
    .await;
    // The old room is out of the list, and sent beside its successor as an old room.
    let fresh = proxy.sync_ok(&bob.access_token, None, 0, &body).await;
    assert_eq!(synced_ids(&fresh, "all"), [successor.as_str()], "{moved:?}");
    let old = &fresh["rooms"][room.as_str()];
    let tombstone = old["required_state"]
        .as_array()
        .expect("the old room's state")
        .iter()
        .find(|e| e["type"].as_str() == Some("m.room.tombstone"))
        .expect("its tombstone");
    assert_eq!(
        tombstone["content"]["replacement_room"].as_str(),
        Some(successor.as_str())
    );
    proxy.stop().await;
}
