//! Restart time on each store: how long `Store::load` takes to rebuild the hot state of
//! one user in 100,000 rooms from Postgres and from the embedded SQLite file.
//!
//! `cargo bench --bench restart` fills a fresh database per store through the real
//! ingest path (`ingest::v2::process` of one v2 body: create, join and name as state, one
//! message as the timeline, per room) and the real write-behind, then times three
//! rebuilds from it, as a restarted proxy does them. Postgres is the test server
//! (`SLIDESYNC_TEST_PG`, else `postgres://postgres@127.0.0.1:5432`); the SQLite file is
//! in the system's temporary directory. Each rebuild is checked to hold every room, so a
//! broken load fails instead of reporting a fast number. Under `cargo test` it runs once
//! with 1,000 rooms, as a check.
//!
//! Measured on 2 shared cores under other builds (load average about 6), release build:
//! Postgres 15 rebuilt in 14.4, 13.1 and 11.7 s, the SQLite file in 11.7, 11.0 and 10.3 s
//! (filling took 52 s and 72 s). The embedded store restarts at least as fast.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sonic_rs::json;

use slidesync::ingest::metrics::PollerMetrics;
use slidesync::ingest::v2::process;
use slidesync::store::writer::WriteQueue;
use slidesync::store::Store;
use slidesync::types::{DeviceKey, UserId};
use slidesync::upstream::wire;

// The binary's allocator (see `src/main.rs`): startup allocates per room and per event.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../tests/it/support/v2.rs"]
#[allow(dead_code)]
mod v2;

#[path = "../tests/it/support/db.rs"]
// Shared with the integration tests, which use the parts this bench does not.
#[allow(dead_code)]
mod db;
use db::{Backend, TestDb};

const ME: &str = "@bench:test";
const ROOMS: usize = 100_000;
const REBUILDS: usize = 3;
/// Credits for the write-behind: enough that filling never waits on a credit return
/// more than the store's own commit speed makes it.
const QUEUE: usize = 1 << 20;

fn body(rooms: usize) -> Vec<u8> {
    let ids: Vec<String> = (0..rooms).map(|i| format!("!r{i:06}:test")).collect();
    let names: Vec<String> = (0..rooms).map(|i| format!("Room {i:06}")).collect();
    let joined = v2::rooms_join(
        ids.iter()
            .zip(&names)
            .enumerate()
            .map(|(i, (id, name))| {
                let ts = 1_700_000_000_000 + 10 * i as u64;
                (id.as_str(), v2::new_room(ME, Some(name), ts))
            })
            .collect(),
    );
    sonic_rs::to_vec(&json!({"next_batch": "s1", "rooms": joined})).expect("serializable")
}

/// Fills the database and returns how long that took, then the rebuild times.
async fn measure(backend: Backend, rooms: usize, rebuilds: usize) -> (Duration, Vec<Duration>) {
    let db = TestDb::of(backend).await;
    let persist = db.open().await;
    let started = Instant::now();
    {
        let (queue, writer) = WriteQueue::spawn(Arc::clone(&persist), QUEUE);
        let store = Store::new(queue, 1);
        let user = store.user_or_insert(&UserId::from(ME));
        process(
            &store,
            &user,
            &DeviceKey::new(ME, "DEV"),
            &body(rooms),
            &PollerMetrics::default(),
        )
        .await
        .expect("v2 body applies");
        store.queue().flush().await;
        drop(store);
        writer.await.expect("the writer ends");
    }
    let filled = started.elapsed();

    let mut times = Vec::with_capacity(rebuilds);
    for _ in 0..rebuilds {
        let (queue, _writer) = WriteQueue::spawn(Arc::clone(&persist), QUEUE);
        let started = Instant::now();
        let store = Store::load(&*persist, queue, &wire::DECODER)
            .await
            .expect("the store loads");
        times.push(started.elapsed());
        assert_eq!(store.room_count(), rooms, "every room is rebuilt");
    }
    (filled, times)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test` runs benches without it.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (rooms, rebuilds) = if quick { (1_000, 1) } else { (ROOMS, REBUILDS) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!("restart of one user in {rooms} rooms (4 events and a membership a room)");
    for (name, backend) in [("postgres", Backend::Postgres), ("sqlite", Backend::Sqlite)] {
        let (filled, times) = rt.block_on(measure(backend, rooms, rebuilds));
        let shown: Vec<String> = times
            .iter()
            .map(|t| format!("{:.2} s", t.as_secs_f64()))
            .collect();
        println!(
            "  {name:<8} filled in {:.1} s; rebuilds: {}",
            filled.as_secs_f64(),
            shown.join(", ")
        );
    }
}
