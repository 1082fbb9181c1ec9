//! Readers while a writer folds: how long `Store::room` and a state lookup take on one
//! thread while another applies member changes to a room of 10,000 state events, each
//! fold rewriting its whole state archive.
//!
//! `cargo bench --bench readers` prints the readers' latency percentiles, alone and
//! during the writes, next to the writer's slowest apply (a fold). Readers load the
//! room's snapshot pointer and never take the writer's lock, so their worst case stays
//! far below the fold's time: with the map's shard lock as the room's write lock, every
//! reader of that shard waited for the whole fold.
//!
//! Run as a test (`cargo test --all-targets`) it does a short run and checks only that
//! the folds happened and readers never saw a version go back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slidesync::event::{Event, Membership};
use slidesync::store::persist::Persist;
use slidesync::store::writer::WriteQueue;
use slidesync::store::{RoomDelta, Store};

#[path = "support/discard.rs"]
mod discard;
use discard::Discard;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROOM: &str = "!big:bench";
const STATE: usize = 10_000;

fn member(i: usize) -> Event {
    let user = format!("@u{i}:bench");
    Event {
        event_id: format!("$m{i}").into(),
        kind: "m.room.member".into(),
        state_key: Some(user.as_str().into()),
        sender: user.as_str().into(),
        origin_server_ts: 1_700_000_000_000 + i as u64,
        membership: Some(Membership::Join),
        text: None,
        detail: None,
        prev_batch: None,
        gap_before: false,
        filled_order: None,
        position: 0,
        json: Bytes::from(format!(
            r#"{{"event_id":"$m{i}","type":"m.room.member","state_key":"{user}","sender":"{user}","content":{{"membership":"join"}}}}"#
        )),
    }
}

fn delta(state: Vec<Event>, timeline: Vec<Event>) -> RoomDelta {
    RoomDelta {
        room_id: ROOM.into(),
        state,
        timeline,
        prev_batch: None,
        limited: false,
        stored: Default::default(),
        redacted: Vec::new(),
    }
}

/// Nanoseconds, sorted.
struct Latencies(Vec<u64>);

impl Latencies {
    fn at(&self, q: f64) -> Duration {
        let i = ((self.0.len() as f64 - 1.0) * q) as usize;
        Duration::from_nanos(self.0[i])
    }

    fn line(&self, what: &str) -> String {
        format!(
            "{what:<28} n={:<9} p50={:>9.2?} p99={:>9.2?} p99.9={:>9.2?} max={:>9.2?}",
            self.0.len(),
            self.at(0.5),
            self.at(0.99),
            self.at(0.999),
            self.at(1.0),
        )
    }
}

/// Reads the room until `stop`, checking that versions never go back.
fn read_until(store: &Store, stop: &AtomicBool) -> Latencies {
    let mut out = Vec::new();
    let mut last = 0;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let room = store.room(ROOM).expect("the room exists");
        let found = room.state.get("m.room.member", "@u0:bench").is_some();
        out.push(started.elapsed().as_nanos() as u64);
        assert!(found);
        assert!(
            room.meta.latest_position >= last,
            "a reader saw an older version"
        );
        last = room.meta.latest_position;
    }
    out.sort_unstable();
    Latencies(out)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test` runs benches without it.
    let quick = !std::env::args().any(|a| a == "--bench");
    let writes = if quick { 3_000 } else { 30_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let persist = Arc::new(Discard::default());
    let (queue, _writer) = {
        let _in_rt = rt.enter();
        WriteQueue::spawn(Arc::clone(&persist) as Arc<dyn Persist>, 1 << 20)
    };
    let store = Arc::new(Store::new(queue, 1));
    store.apply_room(delta((0..STATE).map(member).collect(), Vec::new()));
    assert_eq!(store.room(ROOM).unwrap().meta.joined_count as usize, STATE);

    let stop = Arc::new(AtomicBool::new(false));
    let idle = {
        let (store, flag) = (Arc::clone(&store), Arc::clone(&stop));
        let reader = std::thread::spawn(move || read_until(&store, &flag));
        std::thread::sleep(Duration::from_millis(if quick { 50 } else { 1000 }));
        stop.store(true, Ordering::Relaxed);
        reader.join().expect("reader")
    };

    stop.store(false, Ordering::Relaxed);
    let reader = {
        let (store, flag) = (Arc::clone(&store), Arc::clone(&stop));
        std::thread::spawn(move || read_until(&store, &flag))
    };
    let mut applies = Vec::with_capacity(writes);
    let mut folds = 0;
    let mut base = store.room(ROOM).unwrap().state.base_position();
    for i in STATE..STATE + writes {
        let started = Instant::now();
        store.apply_room(delta(Vec::new(), vec![member(i)]));
        applies.push(started.elapsed().as_nanos() as u64);
        let now = store.room(ROOM).unwrap().state.base_position();
        if now != base {
            folds += 1;
            base = now;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let busy = reader.join().expect("reader");
    applies.sort_unstable();
    let applies = Latencies(applies);

    assert!(folds > 0, "the writes folded the state archive");
    let members = store.room(ROOM).unwrap().meta.joined_count as usize;
    assert_eq!(members, STATE + writes);
    println!("readers of a room with {STATE} state events; {writes} member changes, {folds} folds");
    println!("{}", idle.line("read, no writer"));
    println!("{}", busy.line("read, writer folding"));
    println!("{}", applies.line("apply (slowest: a fold)"));
}
