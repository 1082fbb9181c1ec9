//! The room list of one user joined to 10,000 rooms: what a new connection's first
//! window costs, and what one live message costs from the store to the next response.
//!
//! - `new_connection_window_0_19`: a new connection asks for one list, range [0,19],
//!   `by_recency`, `timeline_limit` 1, two `required_state` entries: `msc3575::parse`,
//!   `Connection::step`, `msc3575::serialize`. A client's first request minus HTTP.
//! - `new_msc4186_connection_window_0_19`: the same request through the MSC4186
//!   dialect: `msc4186::parse`, `Connection::step` and `finish` (each range whole),
//!   `msc4186::serialize`. The list's order (which keeps rooms the user was kicked
//!   from) is built once beforehand, as a user's first request builds it.
//! - `live_event_moves_room_to_top`: a message in the room that is last of 10,000
//!   (`Store::apply_room`), then the next response of a connection holding [0,19]
//!   (`Connection::step`), which moves that room in with a DELETE/INSERT pair.
//! - `apply_one_event`: the `Store::apply_room` of that alone.
//!
//! `cargo bench --bench room_list`. The rooms go in through the real ingest path
//! (`ingest::v2::process` of one v2 body) with a [`Persist`] that discards writes, so
//! the numbers are the hot path only: no HTTP, no Postgres, no event parsing in the live
//! benches (the event is parsed in the untimed setup). The writer task runs on a tokio
//! runtime of its own and commits what `apply_room` queues while the benches run. Each
//! bench first checks once, outside the timing loop, that its result is what it claims,
//! so a broken bench fails instead of reporting a fast number.

use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use sonic_rs::{json, JsonContainerTrait, JsonValueTrait};

use slidesync::api::{msc3575, msc4186};
use slidesync::conn::connection::{Connection, View};
use slidesync::conn::request::{Dialect, Op, SyncRequest, SyncResponse};
use slidesync::ingest::metrics::PollerMetrics;
use slidesync::ingest::v2::process;
use slidesync::store::persist::{Persist, Write};
use slidesync::store::users::{UserMembership, UserState};
use slidesync::store::writer::WriteQueue;
use slidesync::store::{RoomDelta, Store};
use slidesync::types::{DeviceKey, UserId};
use slidesync::upstream::wire;

// The binary's allocator (see `src/main.rs`): the hot path allocates per event and per
// response, so glibc malloc here would measure a different program.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The same v2 builders the integration tests use.
#[path = "../tests/it/support/v2.rs"]
#[allow(dead_code)]
mod v2;

#[path = "support/discard.rs"]
mod discard;
use discard::Discard;

const ME: &str = "@bench:test";
const ROOMS: usize = 10_000;
const WINDOW: usize = 20;
const LIST: &str = "all";
/// Room `i`'s message is at `FIRST_TS + 10 * i`: distinct, so the recency order is fixed
/// (room 9999 first). Live messages come after all of them.
const FIRST_TS: u64 = 1_700_000_000_000;

struct Fixture {
    store: Store,
    user: Arc<UserState>,
    persist: Arc<Discard>,
    /// `origin_server_ts` of the next live message.
    next_ts: Cell<u64>,
    /// Runs the writer task, which commits what `apply_room` queues while the benches
    /// run; dropped last so the queue stays served while `store` lives.
    rt: tokio::runtime::Runtime,
}

fn room_id(i: usize) -> String {
    format!("!r{i:05}:test")
}

fn room_name(i: usize) -> String {
    format!("Room {i:05}")
}

/// One initial v2 response with every room: create, the user's join and a name as
/// state, one message as the timeline.
fn initial_sync_body() -> Vec<u8> {
    let ids: Vec<String> = (0..ROOMS).map(room_id).collect();
    let rooms = v2::rooms_join(
        ids.iter()
            .enumerate()
            .map(|(i, id)| {
                let ts = FIRST_TS + 10 * i as u64;
                (id.as_str(), v2::new_room(ME, Some(&room_name(i)), ts))
            })
            .collect(),
    );
    sonic_rs::to_vec(&json!({"next_batch": "s1", "rooms": rooms})).expect("serializable")
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let persist = Arc::new(Discard::default());
    // Credits for more than the initial response asks (about 7 rows a room), so its
    // reservation never waits for the writer.
    let (queue, _writer) = {
        let _in_rt = rt.enter();
        WriteQueue::spawn(Arc::clone(&persist) as Arc<dyn Persist>, 1 << 20)
    };
    let store = Store::new(queue, 1);
    let user = store.user_or_insert(&UserId::from(ME));
    let body = initial_sync_body();
    rt.block_on(async {
        process(
            &store,
            &user,
            &store.device(&slidesync::types::DeviceKey::new(ME, "BENCH")),
            &body,
            &PollerMetrics::default(),
        )
        .await
        .expect("v2 body applies");
        store.queue().flush().await;
    });

    {
        let data = user.read();
        assert_eq!(
            data.index.len(),
            ROOMS,
            "every room is in the recency index"
        );
        assert_eq!(data.rooms.len(), ROOMS);
        assert!(data
            .rooms
            .values()
            .all(|r| matches!(r.membership, UserMembership::Join { .. })));
    }
    let rows = persist.rows.load(Ordering::Relaxed);
    assert!(
        rows >= 5 * ROOMS,
        "the writer saw 4 events and a membership a room, got {rows} rows"
    );
    Fixture {
        store,
        user,
        persist,
        next_ts: Cell::new(FIRST_TS + 10 * ROOMS as u64),
        rt,
    }
}

fn request_body() -> Vec<u8> {
    sonic_rs::to_vec(&json!({"lists": {LIST: {
        "ranges": [[0, WINDOW - 1]],
        "sort": ["by_recency"],
        "timeline_limit": 1,
        "required_state": [["m.room.name", ""], ["m.room.member", "$ME"]]
    }}}))
    .expect("serializable")
}

/// One step of a connection over the user's current data, as `Conns::sync` does it.
fn step(conn: &mut Connection, req: Option<&SyncRequest>, fx: &Fixture) -> SyncResponse {
    let position = fx.store.position_now();
    let data = fx.user.read();
    let room = |id: &str| fx.store.room(id);
    let device = DeviceKey::new(ME, "DEV");
    let txn_id = |event: &str| fx.store.txn_ids.get(&device, event);
    let view = View {
        user_id: &fx.user.user_id,
        data: &data,
        room: &room,
        position,
        txn_id: &txn_id,
    };
    conn.step(req, &view)
}

/// What a client's first request costs apart from HTTP: parse, step, serialize.
fn new_connection(body: &[u8], fx: &Fixture) -> Vec<u8> {
    let req = msc3575::parse(body).expect("valid request");
    let mut resp = step(&mut Connection::default(), Some(&req), fx);
    resp.pos = "1".into();
    msc3575::serialize(&resp)
}

/// The same through the MSC4186 dialect.
fn new_simplified_connection(body: &[u8], fx: &Fixture) -> Vec<u8> {
    let req = msc4186::parse(body).expect("valid request").request;
    let mut conn = Connection::new(Dialect::Msc4186);
    let mut resp = step(&mut conn, Some(&req), fx);
    conn.finish(&mut resp);
    resp.pos = "1".into();
    msc4186::serialize(&resp)
}

fn top_rooms(fx: &Fixture, n: usize) -> Vec<String> {
    let data = fx.user.read();
    data.index.range(0, n - 1).map(|r| r.to_string()).collect()
}

/// One new message, already parsed, in the room that is last in the list now.
fn message_to_last_room(fx: &Fixture) -> (RoomDelta, Vec<u8>) {
    let last = {
        let data = fx.user.read();
        let last = data
            .index
            .range(data.index.len() - 1, data.index.len() - 1)
            .next()
            .cloned();
        last.expect("a last room")
    };
    let ts = fx.next_ts.get();
    fx.next_ts.set(ts + 1);
    let raw = sonic_rs::to_vec(&v2::message(ME, "live", ts)).expect("serializable");
    let event = wire::parse_event(&raw).expect("valid event");
    let delta = RoomDelta {
        room_id: last,
        state: Vec::new(),
        timeline: vec![event],
        prev_batch: Some(format!("p{ts}")),
        limited: false,
        stored: Default::default(),
        redacted: Vec::new(),
    };
    (delta, raw)
}

fn rank(fx: &Fixture, room: &str) -> Option<usize> {
    fx.user.read().index.rank(room)
}

fn check_new_connection(out: &[u8]) {
    let v: sonic_rs::Value = sonic_rs::from_slice(out).expect("response is JSON");
    let list = &v["lists"][LIST];
    assert_eq!(list["count"].as_u64(), Some(ROOMS as u64));
    let ops = list["ops"].as_array().expect("ops");
    assert_eq!(ops.len(), 1, "one SYNC op");
    assert_eq!(ops[0]["op"].as_str(), Some("SYNC"));
    let ids: Vec<&str> = ops[0]["room_ids"]
        .as_array()
        .expect("room_ids")
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    let expected: Vec<String> = (ROOMS - WINDOW..ROOMS).rev().map(room_id).collect();
    assert_eq!(ids, expected, "the 20 newest rooms, newest first");
    let rooms = v["rooms"].as_object().expect("rooms");
    assert_eq!(rooms.len(), WINDOW);
    for (i, id) in (ROOMS - WINDOW..ROOMS).rev().zip(&expected) {
        let room = &v["rooms"][id.as_str()];
        assert_eq!(room["name"].as_str(), Some(room_name(i).as_str()));
        assert_eq!(room["initial"].as_bool(), Some(true));
        assert_eq!(room["required_state"].as_array().map(|a| a.len()), Some(2));
        assert_eq!(room["timeline"].as_array().map(|a| a.len()), Some(1));
    }
}

/// The CPU model and count, printed with the numbers (`DESIGN.md`: numbers come with the
/// machine and the command).
fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {cpus} CPUs")
}

fn benches(c: &mut Criterion) {
    println!(
        "room_list: one user in {ROOMS} rooms, window of {WINDOW}; {}; `cargo bench --bench room_list`",
        machine()
    );
    let fx = fixture();
    let body = request_body();

    check_new_connection(&new_connection(&body, &fx));
    c.bench_function("new_connection_window_0_19", |b| {
        b.iter(|| new_connection(std::hint::black_box(&body), &fx))
    });

    let simplified = msc4186::parse(&body).expect("valid request").request;
    let orders = Connection::new(Dialect::Msc4186).orders(Some(&simplified));
    fx.store
        .use_orders(&fx.user, &orders)
        .expect("one order for the list");
    check_new_connection(&new_simplified_connection(&body, &fx));
    c.bench_function("new_msc4186_connection_window_0_19", |b| {
        b.iter(|| new_simplified_connection(std::hint::black_box(&body), &fx))
    });

    // A connection that already holds [0,19].
    let mut conn = Connection::default();
    let req = msc3575::parse(&body).expect("valid request");
    let first = step(&mut conn, Some(&req), &fx);
    assert!(
        matches!(&first.lists[LIST].ops[..], [Op::Sync { room_ids, .. }] if room_ids.len() == WINDOW)
    );
    {
        let (delta, raw) = message_to_last_room(&fx);
        let moved = delta.room_id.clone();
        let pushed_out = top_rooms(&fx, WINDOW)[WINDOW - 1].clone();
        fx.store.apply_room(delta);
        let resp = step(&mut conn, None, &fx);
        assert_eq!(
            resp.lists[LIST].ops,
            vec![
                Op::Delete { index: WINDOW - 1 },
                Op::Insert {
                    index: 0,
                    room_id: moved.clone()
                }
            ],
            "{pushed_out} leaves the window, {moved} enters it at the top"
        );
        assert_eq!(rank(&fx, &moved), Some(0));
        let room = &resp.rooms[&moved];
        assert_eq!(room.timeline.len(), 1);
        assert_eq!(
            &room.timeline[0][..],
            &raw[..],
            "the new message is in the response"
        );
    }
    c.bench_function("live_event_moves_room_to_top", |b| {
        b.iter_batched(
            || message_to_last_room(&fx).0,
            |delta| {
                fx.store.apply_room(delta);
                step(&mut conn, None, &fx)
            },
            BatchSize::PerIteration,
        )
    });

    {
        let (delta, _) = message_to_last_room(&fx);
        let moved = delta.room_id.clone();
        let version = fx.user.read().version();
        fx.rt.block_on(fx.store.queue().flush());
        let rows = fx.persist.rows.load(Ordering::Relaxed);
        fx.store.apply_room(delta);
        assert_eq!(rank(&fx, &moved), Some(0));
        assert!(fx.user.read().version() > version, "connections are woken");
        fx.rt.block_on(fx.store.queue().flush());
        assert_eq!(fx.persist.rows.load(Ordering::Relaxed), rows + 1);
        assert!(
            matches!(&*fx.persist.last.lock(), Some(Write::Event(e)) if e.room_id == moved && e.in_timeline),
            "the event is queued for storage"
        );
    }
    c.bench_function("apply_one_event", |b| {
        b.iter_batched(
            || message_to_last_room(&fx).0,
            |delta| fx.store.apply_room(delta),
            BatchSize::PerIteration,
        )
    });
}

criterion_group!(room_list, benches);
criterion_main!(room_list);
