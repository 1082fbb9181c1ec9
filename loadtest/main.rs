//! Load generator: a synthetic homeserver, slidesync in-process on a fresh Postgres
//! database, and concurrent sliding sync clients over HTTP. Prints a report.
//!
//! `cargo run --release --example loadtest -- [--users N] [--rooms R] [--clients C]
//! [--seconds S] [--rate M]`

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use slidesync::app::{App, Settings};
use slidesync::config::BindAddr;
use slidesync::ops::listen;
use slidesync::store::pg::PgStore;
use slidesync::store::tokens::TokenCipher;
use slidesync::upstream::{full, Body, Homeserver, SyncCall, UpstreamError, WhoAmI};
use sonic_rs::{json, JsonContainerTrait, JsonValueTrait, Value};
use sqlx::{Connection, PgConnection};
use tokio::sync::Notify;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SYNC_PATH: &str = "/_matrix/client/unstable/org.matrix.msc3575/sync";

struct Options {
    users: usize,
    rooms: usize,
    clients: usize,
    seconds: u64,
    rate: u64,
}

fn options() -> Options {
    let mut o = Options {
        users: 8,
        rooms: 1000,
        clients: 8,
        seconds: 10,
        rate: 200,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).and_then(|v| v.parse::<u64>().ok());
        let Some(value) = value else {
            panic!(
                "usage: loadtest [--users N] [--rooms R] [--clients C] [--seconds S] [--rate M]"
            );
        };
        match pair[0].as_str() {
            "--users" => o.users = value as usize,
            "--rooms" => o.rooms = value as usize,
            "--clients" => o.clients = value as usize,
            "--seconds" => o.seconds = value,
            "--rate" => o.rate = value,
            other => panic!("unknown option {other}"),
        }
    }
    o.clients = o.clients.min(o.users).max(1);
    o
}

fn room_id(user: usize, room: usize) -> String {
    format!("!r{room}-u{user}:load")
}

fn user_id(user: usize) -> String {
    format!("@user{user}:load")
}

/// A homeserver that makes up users with `rooms` rooms each and delivers the messages
/// the generator injects.
struct Synthetic {
    rooms: usize,
    injected: Mutex<HashMap<usize, Vec<(usize, String)>>>,
    pushed: Notify,
    next_event: AtomicU64,
}

impl Synthetic {
    fn event_id(&self) -> String {
        format!("$e{}", self.next_event.fetch_add(1, Ordering::Relaxed))
    }

    fn initial(&self, user: usize) -> String {
        let me = user_id(user);
        let mut join = json!({});
        for r in 0..self.rooms {
            let ts = 1_600_000_000_000u64 + (r as u64) * 1000;
            let state = vec![
                json!({"type": "m.room.create", "state_key": "", "event_id": self.event_id(), "sender": me, "origin_server_ts": ts, "content": {"room_version": "10"}}),
                json!({"type": "m.room.member", "state_key": me, "event_id": self.event_id(), "sender": me, "origin_server_ts": ts, "content": {"membership": "join"}}),
                json!({"type": "m.room.name", "state_key": "", "event_id": self.event_id(), "sender": me, "origin_server_ts": ts, "content": {"name": format!("Room {r}")}}),
            ];
            let timeline = vec![
                json!({"type": "m.room.message", "event_id": self.event_id(), "sender": me, "origin_server_ts": ts + 1, "content": {"msgtype": "m.text", "body": "hello"}}),
            ];
            join[room_id(user, r).as_str()] = json!({"state": {"events": state}, "timeline": {"events": timeline, "limited": true, "prev_batch": "p0"}});
        }
        json!({"next_batch": "b0", "rooms": {"join": join}}).to_string()
    }

    fn inject(&self, user: usize, room: usize, injected_at: u64) {
        let ev = json!({"type": "m.room.message", "event_id": self.event_id(), "sender": user_id(user),
            "origin_server_ts": 1_700_000_000_000u64 + injected_at / 1000, "content": {"msgtype": "m.text", "body": "load", "inj": injected_at}});
        self.injected
            .lock()
            .entry(user)
            .or_default()
            .push((room, ev.to_string()));
        self.pushed.notify_waiters();
    }
}

#[async_trait]
impl Homeserver for Synthetic {
    async fn whoami(&self, token: &str) -> Result<WhoAmI, UpstreamError> {
        let user: usize = token
            .strip_prefix("tok-")
            .and_then(|n| n.parse().ok())
            .ok_or(UpstreamError::Unauthorized)?;
        Ok(WhoAmI {
            user_id: user_id(user),
            device_id: format!("DEV{user}"),
        })
    }

    async fn sync(&self, call: SyncCall<'_>) -> Result<Bytes, UpstreamError> {
        let user: usize = call
            .token
            .strip_prefix("tok-")
            .and_then(|n| n.parse().ok())
            .ok_or(UpstreamError::Unauthorized)?;
        if call.since.is_none() {
            return Ok(Bytes::from(self.initial(user)));
        }
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(call.timeout_ms.min(1000));
        loop {
            let pushed = self.pushed.notified();
            tokio::pin!(pushed);
            pushed.as_mut().enable();
            let events = self.injected.lock().remove(&user).unwrap_or_default();
            if !events.is_empty() {
                let mut by_room: HashMap<usize, Vec<String>> = HashMap::new();
                for (room, ev) in events {
                    by_room.entry(room).or_default().push(ev);
                }
                let mut body = String::from(r#"{"next_batch":"b1","rooms":{"join":{"#);
                for (i, (room, evs)) in by_room.iter().enumerate() {
                    if i > 0 {
                        body.push(',');
                    }
                    body.push_str(&format!(
                        r#""{}":{{"timeline":{{"events":[{}]}}}}"#,
                        room_id(user, *room),
                        evs.join(",")
                    ));
                }
                body.push_str("}}}");
                return Ok(Bytes::from(body));
            }
            tokio::select! {
                _ = pushed => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(Bytes::from_static(br#"{"next_batch":"b1"}"#)),
            }
        }
    }

    async fn versions(&self) -> Result<Bytes, UpstreamError> {
        Ok(Bytes::from_static(br#"{"versions":["v1.11"]}"#))
    }

    async fn forward(&self, _: Request<Body>) -> Result<http::Response<Body>, UpstreamError> {
        Ok(http::Response::builder()
            .status(404)
            .body(full("{}"))
            .unwrap())
    }
}

/// Latencies of one kind of request.
#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn report(&mut self, what: &str, wall: Option<Duration>) {
        self.0.sort_unstable();
        let n = self.0.len();
        if n == 0 {
            println!("  {what}: no samples");
            return;
        }
        let at = |q: f64| self.0[((n as f64 * q) as usize).min(n - 1)];
        let rate = wall.map_or(String::new(), |w| {
            format!(", {:.0}/s", n as f64 / w.as_secs_f64())
        });
        println!(
            "  {what}: n={n}{rate}, p50 {:.2?}, p90 {:.2?}, p99 {:.2?}, max {:.2?}",
            at(0.5),
            at(0.9),
            at(0.99),
            self.0[n - 1]
        );
    }
}

struct Clients {
    http: Client<HttpConnector, Full<Bytes>>,
    base: String,
    errors: AtomicUsize,
}

impl Clients {
    async fn sync(
        &self,
        user: usize,
        pos: Option<&str>,
        timeout_ms: u64,
        body: &Value,
    ) -> (Duration, Value, usize) {
        let mut url = format!("{}{SYNC_PATH}?timeout={timeout_ms}", self.base);
        if let Some(pos) = pos {
            url.push_str("&pos=");
            url.push_str(pos);
        }
        let req = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header("authorization", format!("Bearer tok-{user}"))
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let started = Instant::now();
        let resp = self.http.request(req).await.expect("the proxy answers");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("a body").to_bytes();
        let took = started.elapsed();
        if status != 200 {
            self.errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("error {status}: {}", String::from_utf8_lossy(&bytes));
            return (took, Value::new(), bytes.len());
        }
        (
            took,
            sonic_rs::from_slice(&bytes).expect("JSON"),
            bytes.len(),
        )
    }
}

fn window(end: usize) -> Value {
    json!({"lists": {"all": {"ranges": [[0, end]], "sort": ["by_recency"], "timeline_limit": 1,
        "required_state": [["m.room.name", ""], ["m.room.member", "$ME"]]}}})
}

fn synced(resp: &Value) -> usize {
    resp["lists"]["all"]["ops"]
        .as_array()
        .and_then(|ops| ops.iter().find(|op| op["op"].as_str() == Some("SYNC")))
        .and_then(|op| op["room_ids"].as_array().map(|ids| ids.len()))
        .unwrap_or(0)
}

fn pos(resp: &Value) -> String {
    resp["pos"].as_str().unwrap_or_default().to_owned()
}

fn rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS"))
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_else(|| "unknown".into())
}

fn cpu() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{model}, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

#[tokio::main]
async fn main() {
    let o = options();
    println!("slidesync load test: `cargo run --release --example loadtest -- --users {} --rooms {} --clients {} --seconds {} --rate {}`", o.users, o.rooms, o.clients, o.seconds, o.rate);
    println!("machine: {}", cpu());

    let server = std::env::var("SLIDESYNC_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let db = format!("slidesync_load_{}", std::process::id());
    let mut admin = PgConnection::connect(&format!("{server}/postgres"))
        .await
        .expect("Postgres answers");
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await
        .expect("create database");

    let upstream = Arc::new(Synthetic {
        rooms: o.rooms,
        injected: Mutex::new(HashMap::new()),
        pushed: Notify::new(),
        next_event: AtomicU64::new(1),
    });
    let persist = Arc::new(
        PgStore::connect(&format!("{server}/{db}"), 8)
            .await
            .expect("store"),
    );
    let app = App::start(
        persist,
        upstream.clone(),
        TokenCipher::new("load"),
        Settings::default(),
    )
    .await
    .expect("app starts");
    let listener = listen::bind(&BindAddr::Tcp("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(listen::serve(listener, None, app.handler(), async {
        let _ = stopped.await;
    }));
    let clients = Arc::new(Clients {
        http: Client::builder(TokioExecutor::new()).build_http(),
        base,
        errors: AtomicUsize::new(0),
    });

    println!("\n[initial window] one list [0,19], timeline_limit 1, 2 required_state entries");
    let mut first = Samples::default();
    for u in 0..o.users {
        let (took, resp, _) = clients.sync(u, None, 0, &window(19)).await;
        assert_eq!(synced(&resp), 20.min(o.rooms), "a full first window");
        first.0.push(took);
    }
    first.report(
        &format!(
            "first request of each user, including its first /sync of {} rooms",
            o.rooms
        ),
        None,
    );
    let mut warm = Samples::default();
    for i in 0..500 {
        let (took, resp, _) = clients.sync(i % o.users, None, 0, &window(19)).await;
        assert_eq!(synced(&resp), 20.min(o.rooms));
        warm.0.push(took);
    }
    warm.report("new connection, warm (Synapse native: ~56 ms)", None);

    println!(
        "\n[no-change requests] {} clients, pos + timeout=0, {} s",
        o.clients, o.seconds
    );
    let until = Instant::now() + Duration::from_secs(o.seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..o.clients)
        .map(|c| {
            let clients = Arc::clone(&clients);
            tokio::spawn(async move {
                let (_, resp, _) = clients.sync(c, None, 0, &window(19)).await;
                let mut p = pos(&resp);
                let mut samples = Vec::new();
                while Instant::now() < until {
                    let (took, resp, _) = clients.sync(c, Some(&p), 0, &json!({})).await;
                    p = pos(&resp);
                    samples.push(took);
                }
                samples
            })
        })
        .collect();
    let mut nochange = Samples::default();
    for t in tasks {
        nochange.0.extend(t.await.unwrap());
    }
    nochange.report(
        "requests (Synapse native: ~110/s with 8 clients)",
        Some(started.elapsed()),
    );

    println!("\n[big list] one new connection asking for [0,999]");
    let (took, resp, size) = clients.sync(0, None, 0, &window(999)).await;
    println!(
        "  {} rooms in {took:.2?}, {} KiB (Synapse native: ~7 s)",
        synced(&resp),
        size / 1024
    );

    println!("\n[live delivery] {} clients long-polling; {} messages/s into random rooms of their users, {} s", o.clients, o.rate, o.seconds);
    let t0 = Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pollers: Vec<_> = (0..o.clients)
        .map(|c| {
            let clients = Arc::clone(&clients);
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let (_, resp, _) = clients.sync(c, None, 0, &window(19)).await;
                let mut p = pos(&resp);
                let mut delays = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    let (_, resp, _) = clients.sync(c, Some(&p), 2000, &json!({})).await;
                    let now = t0.elapsed().as_nanos() as u64;
                    p = pos(&resp);
                    if let Some(rooms) = resp["rooms"].as_object() {
                        for (_, room) in rooms.iter() {
                            for ev in room["timeline"].as_array().into_iter().flatten() {
                                if let Some(at) = ev["content"]["inj"].as_u64() {
                                    delays.push(Duration::from_nanos(now.saturating_sub(at)));
                                }
                            }
                        }
                    }
                }
                delays
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut injected = 0u64;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / o.rate.max(1) as f64));
    let live_until = Instant::now() + Duration::from_secs(o.seconds);
    while Instant::now() < live_until {
        tick.tick().await;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let user = (seed % o.clients as u64) as usize;
        let room = ((seed >> 20) % o.rooms as u64) as usize;
        upstream.inject(user, room, t0.elapsed().as_nanos() as u64);
        injected += 1;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    done.store(true, Ordering::Relaxed);
    let mut live = Samples::default();
    for p in pollers {
        live.0.extend(p.await.unwrap());
    }
    println!("  injected {injected}, seen by a client {}", live.0.len());
    live.report("delivery delay, injection to client", None);

    println!("\n[process] RSS after load: {}", rss());
    println!("errors: {}", clients.errors.load(Ordering::Relaxed));

    let _ = stop.send(());
    let _ = server_task.await;
    app.shutdown().await;
    sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("drop database");
}
