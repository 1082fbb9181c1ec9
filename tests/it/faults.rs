//! No loss and no stall under faults: a row Postgres refuses, Postgres unreachable, a
//! homeserver that fails, resets, hangs or goes down, and slidesync killed mid-ingest.
//! Each fault is real (a real bad row, a TCP fault proxy, SIGKILL of the shipped binary);
//! afterwards every event is checked through a client request, after a restart against
//! the real database, exactly once and in order.

use std::sync::Arc;
use std::time::Duration;

use slidesync::upstream::http::{HttpHomeserver, Target};
use sonic_rs::{json, Value};
use tokio::time::Instant;

use crate::support::binary::Binary;
use crate::support::chaos::Chaos;
use crate::support::db::{Backend, TestDb};
use crate::support::fake::{FakeHomeserver, Reply};
use crate::support::on_both_stores;
use crate::support::proxy::{self, pos, timeline_ids, Proxy};
use crate::support::synapse::{synapse, OwnSynapse};
use crate::support::v2::*;

const ALICE: &str = "@alice:test";
const TOKEN: &str = "alice_token";
const ROOM: &str = "!room:test";

fn fake() -> Arc<FakeHomeserver> {
    FakeHomeserver::with_devices(&[(TOKEN, ALICE, "ALICEDEV")])
}

/// One list with the room and as much of its timeline as a client may ask for: each
/// test delivers at most this many events.
fn request() -> Value {
    json!({"lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 50}}})
}

/// v2 `rooms` with the room new, the user joined, and one message; and that message's ID.
fn new_room_with_message() -> (Value, String) {
    let hello = message(ALICE, "hello", 1_000);
    let id = id_of(&hello);
    let state = vec![create(ALICE, 997), member(ALICE, "join", 998)];
    (rooms_join(vec![(ROOM, joined(state, vec![hello]))]), id)
}

/// v2 `rooms` with one message in the room.
fn one_message(body: &str, ts: u64) -> (Value, String) {
    let m = message(ALICE, body, ts);
    let id = id_of(&m);
    (rooms_join(vec![(ROOM, joined(vec![], vec![m]))]), id)
}

/// Long-polls from `pos` until the room's timeline has shown `event_id`, adding every
/// event ID the responses carry to `seen`.
async fn follow_until(proxy: &Proxy, pos: &mut String, seen: &mut Vec<String>, event_id: &str) {
    follow_room_until(proxy, TOKEN, ROOM, pos, seen, event_id).await;
}

async fn follow_room_until(
    proxy: &Proxy,
    token: &str,
    room: &str,
    pos: &mut String,
    seen: &mut Vec<String>,
    event_id: &str,
) {
    for _ in 0..50 {
        let resp = proxy.sync_ok(token, Some(pos), 5_000, &request()).await;
        *pos = proxy::pos(&resp);
        seen.extend(timeline_ids(&resp, room));
        if seen.iter().any(|id| id == event_id) {
            return;
        }
    }
    panic!("{event_id} never reached the client; it saw {seen:?}");
}

/// The room's timeline as a fresh connection to a proxy restarted on `db` (with a
/// homeserver that has nothing new) gets it: what the database kept.
async fn timeline_after_restart(db: &TestDb) -> Vec<String> {
    let hs = fake();
    hs.hold(TOKEN);
    let proxy = Proxy::start(&db.url, hs).await;
    let resp = proxy.sync_ok(TOKEN, None, 0, &request()).await;
    proxy.stop().await;
    timeline_ids(&resp, ROOM)
}

/// Waits (bounded) for a condition only the code under test can make true.
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..1_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

/// An event ID Postgres text cannot hold: the edge refuses that event, and everything
/// around it is served, committed and there after a restart. (A row storage refuses
/// anyway is split out of its batch: `store::postgres::a_refused_row_is_split_out_and_the_rest_commits`.)
#[tokio::test]
async fn an_event_postgres_could_not_store_is_refused_and_nothing_behind_it_stalls() {
    let db = TestDb::new().await;
    let hs = fake();
    let proxy = Proxy::start(&db.url, hs.clone()).await;
    let (first, hello) = new_room_with_message();
    // Text in Postgres cannot hold NUL; JSON can.
    let mut bad = message(ALICE, "bad", 1_001);
    bad["event_id"] = json!("$bad\u{0}id");
    let (good1, good2) = (message(ALICE, "one", 1_002), message(ALICE, "two", 1_003));
    hs.push_rooms(TOKEN, first);
    let before = proxy.sync_ok(TOKEN, None, 0, &request()).await;
    hs.push_rooms(
        TOKEN,
        rooms_join(vec![(
            ROOM,
            joined(vec![], vec![good1.clone(), bad, good2.clone()]),
        )]),
    );
    let (later, good3) = one_message("three", 1_004);
    let last = hs.push_rooms(TOKEN, later);
    hs.wait_for_call(TOKEN, "since the last batch", |c| {
        c.since.as_deref() == Some(&*last)
    })
    .await;
    // Served from memory all along.
    let mut pos = pos(&before);
    let mut seen = Vec::new();
    follow_until(&proxy, &mut pos, &mut seen, &good3).await;

    // Stopping drains the write queue: a queue stuck on a bad row never would.
    tokio::time::timeout(Duration::from_secs(30), proxy.stop())
        .await
        .expect("every write behind the refused row commits");

    // The `since` queued after the bad event was committed: the device resumes from it.
    let hs = fake();
    let proxy = Proxy::start(&db.url, hs.clone()).await;
    let calls = hs.wait_for_calls(TOKEN, 1).await;
    assert_eq!(calls[0].since.as_deref(), Some(&*last), "{calls:?}");
    proxy.stop().await;

    let want = [hello, id_of(&good1), id_of(&good2), good3];
    assert_eq!(timeline_after_restart(&db).await, want);
}

/// The outage: ten seconds with every connection to Postgres cut and every new
/// one refused, while a poller keeps delivering.
const PG_OUTAGE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_for_ten_seconds_loses_nothing_and_clients_are_served_meanwhile() {
    let db = TestDb::postgres().await;
    let (chaos, through_chaos) = Chaos::before_postgres(&db.url).await;
    let hs = fake();
    let proxy = Proxy::start(&through_chaos, hs.clone()).await;
    let (first, hello) = new_room_with_message();
    let mut want = vec![hello];
    hs.push_rooms(TOKEN, first);
    let first = proxy.sync_ok(TOKEN, None, 0, &request()).await;
    let mut pos = pos(&first);

    chaos.refuse();
    let outage = Instant::now();
    let mut seen = Vec::new();
    for i in 0..20 {
        let (rooms, id) = one_message(&format!("during the outage {i}"), 2_000 + i);
        hs.push_rooms(TOKEN, rooms);
        follow_until(&proxy, &mut pos, &mut seen, &id).await;
        want.push(id);
    }
    assert_eq!(seen, want[1..], "each message once, in order, from memory");
    until("the writer has tried Postgres and been refused", || {
        chaos.refused() > 0
    })
    .await;
    // The outage's length is the fault itself, not a wait for the code under test.
    tokio::time::sleep_until(outage + PG_OUTAGE).await;
    chaos.restore();

    let (rooms, id) = one_message("after the outage", 3_000);
    hs.push_rooms(TOKEN, rooms);
    follow_until(&proxy, &mut pos, &mut seen, &id).await;
    want.push(id);
    tokio::time::timeout(Duration::from_secs(60), proxy.stop())
        .await
        .expect("the writer catches up once Postgres is back");
    assert_eq!(timeline_after_restart(&db).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_homeserver_that_fails_resets_hangs_and_restarts_loses_no_event() {
    let db = TestDb::new().await;
    let hs = fake();
    let http = hs.serve_http().await;
    let chaos = Chaos::start(http.addr).await;
    let upstream = Arc::new(HttpHomeserver::new(
        Target::Url(format!("http://{}", chaos.addr).parse().unwrap()),
        Duration::from_secs(5),
    ));
    let mut settings = proxy::settings();
    // Short, so the hung homeserver below costs seconds, not the default five minutes.
    settings.poller.http_timeout = Duration::from_secs(2);
    let proxy = Proxy::start_with(&db.url, upstream, settings).await;

    // The log answers by `since`, as a homeserver does: a poll cut short is answered
    // again, and only slidesync can lose what it was given.
    let (first, hello) = new_room_with_message();
    let mut want = vec![hello];
    hs.append_log(TOKEN, first);
    let first = proxy.sync_ok(TOKEN, None, 0, &request()).await;
    let mut pos = pos(&first);
    let mut seen = Vec::new();
    let deliver = |n: u64, hs: &FakeHomeserver| {
        let (rooms, id) = one_message(&format!("message {n}"), 2_000 + n);
        hs.append_log(TOKEN, rooms);
        id
    };

    // 5xx: the poller backs off and asks again.
    hs.push(TOKEN, Reply::Status(502));
    hs.push(TOKEN, Reply::Status(503));
    hs.drained(TOKEN).await;
    let id = deliver(1, &hs);
    follow_until(&proxy, &mut pos, &mut seen, &id).await;
    want.push(id);

    // Connections reset while a long-poll is out.
    let polls = hs.calls_for(TOKEN).len();
    hs.hold(TOKEN);
    hs.wait_for_calls(TOKEN, polls + 1).await;
    chaos.cut();
    hs.release(TOKEN);
    let id = deliver(2, &hs);
    follow_until(&proxy, &mut pos, &mut seen, &id).await;
    want.push(id);

    // The homeserver hangs: no byte comes back on open or new connections. Only the
    // /sync deadline gets the poller out of its request; it then opens a new connection.
    let opened = chaos.accepted();
    chaos.stall();
    let id = deliver(3, &hs);
    until("the hung /sync timed out and the poller retried", || {
        chaos.accepted() > opened
    })
    .await;
    chaos.restore();
    follow_until(&proxy, &mut pos, &mut seen, &id).await;
    want.push(id);

    // The homeserver goes down (every connection refused) and comes back.
    chaos.refuse();
    let id = deliver(4, &hs);
    until("the poller found the homeserver down", || {
        chaos.refused() > 0
    })
    .await;
    chaos.restore();
    follow_until(&proxy, &mut pos, &mut seen, &id).await;
    want.push(id);

    assert_eq!(seen, want[1..], "each message once, in order");
    proxy.stop().await;
    assert_eq!(timeline_after_restart(&db).await, want);
}

// Durability across a kill is the store's: the same on either.
on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_binary_killed_mid_ingest_serves_every_delivered_event_once_after_a_restart
);

async fn a_binary_killed_mid_ingest_serves_every_delivered_event_once_after_a_restart(
    backend: Backend,
) {
    let db = TestDb::of(backend).await;
    let hs = fake();
    let http = hs.serve_http().await;
    let (first, hello) = new_room_with_message();
    let mut want = vec![hello];
    hs.append_log(TOKEN, first);
    let mut deliver = |n: u64| {
        let (rooms, id) = one_message(&format!("message {n}"), 2_000 + n);
        hs.append_log(TOKEN, rooms);
        want.push(id);
    };
    for n in 1..=24 {
        deliver(n);
    }

    let binary = Binary::start(&http.url(), &db.url).await;
    binary.sync(TOKEN, &request()).await;
    // Killed while the poller works through the log, with writes in flight.
    hs.wait_for_call(TOKEN, "a third of the way", |c| {
        c.since.as_deref() == Some("log_8")
    })
    .await;
    binary.kill();

    let binary = Binary::start(&http.url(), &db.url).await;
    for n in 25..=40 {
        deliver(n);
    }
    hs.wait_for_call(TOKEN, "past the end of the log", |c| {
        c.since.as_deref() == Some("log_41")
    })
    .await;
    let resp = binary.sync(TOKEN, &request()).await;
    binary.stop();
    assert_eq!(timeline_ids(&resp, ROOM), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_cut_off_and_back_loses_no_event() {
    let hs = synapse().await;
    let user = hs.register("faults").await;
    let room = hs
        .create_room(&user, json!({"name": "Faults", "preset": "private_chat"}))
        .await;
    hs.send_text(&user, &room, "before").await;
    // Synapse is shared by every e2e test of this process, so it is never stopped: the
    // fault proxy plays it going away and coming back.
    let synapse_addr = hs.base_url.trim_start_matches("http://").parse().unwrap();
    let chaos = Chaos::start(synapse_addr).await;
    let upstream = Arc::new(HttpHomeserver::new(
        Target::Url(format!("http://{}", chaos.addr).parse().unwrap()),
        Duration::from_secs(10),
    ));
    let db = TestDb::new().await;
    let proxy = Proxy::start_with(&db.url, upstream, proxy::settings()).await;
    let token = &user.access_token;
    let first = proxy.sync_ok(token, None, 0, &request()).await;
    let mut pos = pos(&first);
    let (mut sent, mut seen) = (Vec::new(), Vec::new());

    // Open connections reset, then Synapse down while people keep talking to it.
    for round in 0..2 {
        if round == 0 {
            chaos.cut();
        } else {
            chaos.refuse();
        }
        for i in 0..3 {
            sent.push(
                hs.send_text(&user, &room, &format!("round {round}, {i}"))
                    .await,
            );
        }
        if round == 1 {
            until("the poller found Synapse down", || chaos.refused() > 0).await;
            chaos.restore();
        }
        let last = sent.last().unwrap().clone();
        follow_room_until(&proxy, token, &room, &mut pos, &mut seen, &last).await;
    }
    assert_eq!(seen, sent, "each message once, in order");
    proxy.stop().await;

    let proxy = Proxy::start(
        &db.url,
        Arc::new(HttpHomeserver::new(
            Target::Url(hs.base_url.parse().unwrap()),
            Duration::from_secs(10),
        )),
    )
    .await;
    let after = proxy.sync_ok(token, None, 0, &request()).await;
    proxy.stop().await;
    assert!(
        timeline_ids(&after, &room).ends_with(&sent),
        "the restarted proxy serves them all: {:?}",
        timeline_ids(&after, &room)
    );
}

/// A real Synapse stopped and started again, on its own port and database, while a
/// poller long-polls it and people keep talking before and after: every message
/// arrives once, in order, and the poller resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synapse_restart_loses_no_event() {
    let mut own = OwnSynapse::start().await;
    let user = own.synapse.register("restart").await;
    let room = own
        .synapse
        .create_room(&user, json!({"name": "Restart", "preset": "private_chat"}))
        .await;
    let upstream = Arc::new(HttpHomeserver::new(
        Target::Url(own.synapse.base_url.parse().unwrap()),
        Duration::from_secs(10),
    ));
    let db = TestDb::new().await;
    let proxy = Proxy::start_with(&db.url, upstream, proxy::settings()).await;
    let token = &user.access_token;
    let first = proxy.sync_ok(token, None, 0, &request()).await;
    let mut pos = pos(&first);
    let mut seen = Vec::new();
    let mut sent = vec![own.synapse.send_text(&user, &room, "before").await];
    follow_room_until(&proxy, token, &room, &mut pos, &mut seen, &sent[0]).await;

    own.restart(Duration::from_secs(2)).await;
    for i in 0..3 {
        sent.push(
            own.synapse
                .send_text(&user, &room, &format!("after {i}"))
                .await,
        );
    }
    let last = sent.last().unwrap().clone();
    follow_room_until(&proxy, token, &room, &mut pos, &mut seen, &last).await;
    assert_eq!(seen, sent, "each message once, in order");
    proxy.stop().await;
}
