//! What an operator runs beside the proxy: Prometheus metrics with the Go proxy's names
//! on their own listener, the profiling listener, JSON logs, and a clean SIGTERM.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use pprof::protos::Message;
use slidesync::config::BindAddr;
use slidesync::ops::{listen, pprof as profiling};
use slidesync::store::persist::Persist;
use slidesync::store::pg::PgStore;
use sonic_rs::{json, JsonValueTrait, Value};

use crate::support::binary::{free_port, Binary};
use crate::support::chaos::Chaos;
use crate::support::db::TestDb;
use crate::support::fake::FakeHomeserver;
use crate::support::http::HttpClient;
use crate::support::proxy::{self, scripted, Proxy};
use crate::support::v2::*;

const ALICE: &str = "@alice:test";
const TOKEN: &str = "alice_token";
const ROOM: &str = "!room:test";

fn request() -> Value {
    json!({"lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 5}}})
}

/// Every metric family of the Go proxy, with its type (go-proxy.md 5.3).
const GO_FAMILIES: [(&str, &str); 16] = [
    ("sliding_sync_poller_num_pollers", "gauge"),
    ("sliding_sync_poller_process_duration_secs", "histogram"),
    ("sliding_sync_poller_timeline_size", "histogram"),
    ("sliding_sync_poller_gappy_state_size", "histogram"),
    ("sliding_sync_poller_total_num_polls", "counter"),
    ("sliding_sync_poller_num_outstanding_sync_v2_reqs", "gauge"),
    ("sliding_sync_poller_num_payloads", "counter"),
    ("sliding_sync_api_num_payloads", "counter"),
    ("sliding_sync_api_setup_duration_secs", "histogram"),
    ("sliding_sync_api_process_duration_secs", "histogram"),
    ("sliding_sync_api_slow_requests", "counter"),
    ("sliding_sync_api_destroyed_conns", "counter"),
    ("sliding_sync_api_expiry_conn_timed_out", "counter"),
    ("sliding_sync_api_expiry_conn_buffer_full", "counter"),
    ("sliding_sync_api_num_active_conns", "gauge"),
    (
        "sliding_sync_api_num_devices_pending_ensure_polling",
        "gauge",
    ),
];

/// A scrape: family name → type, and sample (name with labels) → value.
struct Scrape {
    types: HashMap<String, String>,
    samples: HashMap<String, f64>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut types = HashMap::new();
        let mut samples = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                types.insert(name.to_owned(), kind.to_owned());
            } else if !line.starts_with('#') && !line.is_empty() {
                let (series, value) = line.rsplit_once(' ').expect("name value");
                samples.insert(series.to_owned(), value.parse().expect("a number"));
            }
        }
        Scrape { types, samples }
    }

    fn value(&self, series: &str) -> f64 {
        *self.samples.get(series).unwrap_or_else(|| {
            let mut names: Vec<_> = self.samples.keys().collect();
            names.sort();
            panic!("{series} not in the scrape: {names:#?}")
        })
    }
}

async fn get(url: &str) -> (u16, String) {
    let resp = HttpClient::new()
        .request(Method::GET, url, None, None)
        .await;
    (resp.status.as_u16(), resp.text())
}

#[tokio::test]
async fn metrics_keep_the_go_proxy_names_and_types_and_count_a_sync() {
    let (_db, hs, proxy) = scripted(&[(TOKEN, ALICE, "ALICEDEV")]).await;
    hs.push_rooms(
        TOKEN,
        rooms_join(vec![(ROOM, new_room(ALICE, Some("Ops"), 1_000))]),
    );
    proxy.sync_ok(TOKEN, None, 0, &request()).await;

    let (status, text) = get(&format!("{}/metrics", proxy.ops_url)).await;
    assert_eq!(status, 200, "{text}");
    let scrape = Scrape::parse(&text);
    for (name, kind) in GO_FAMILIES {
        assert_eq!(
            scrape.types.get(name).map(String::as_str),
            Some(kind),
            "{name} in:\n{text}"
        );
    }
    // The Go proxy's counters keep their bare names (dashboards query them so).
    assert!(scrape.value("sliding_sync_poller_total_num_polls") >= 1.0);
    assert_eq!(scrape.value("sliding_sync_api_slow_requests"), 0.0);
    assert!(
        scrape.value(r#"sliding_sync_poller_num_payloads{payload_type="V2Accumulate"}"#) >= 1.0
    );
    assert!(
        scrape.value(r#"sliding_sync_poller_num_payloads{payload_type="V2Initialise"}"#) >= 1.0
    );
    assert_eq!(
        scrape.value(r#"sliding_sync_poller_num_payloads{payload_type="V2InitialSyncComplete"}"#),
        1.0
    );
    assert_eq!(
        scrape.value(r#"sliding_sync_api_num_payloads{payload_type="V3EnsurePolling"}"#),
        1.0
    );
    assert_eq!(
        scrape.value(r#"sliding_sync_poller_process_duration_secs_count{initial="1",first="1"}"#),
        1.0
    );
    assert_eq!(
        scrape.value(r#"sliding_sync_poller_timeline_size_bucket{le="1.0",limited="unlimited"}"#),
        1.0
    );
    assert_eq!(
        scrape.value(r#"sliding_sync_api_setup_duration_secs_count{initial="1"}"#),
        1.0
    );
    assert_eq!(
        scrape.value(r#"sliding_sync_api_process_duration_secs_count{initial="1"}"#),
        1.0
    );
    assert_eq!(
        scrape.value(r#"sliding_sync_api_process_duration_secs_bucket{le="10.0",initial="1"}"#),
        1.0
    );
    assert_eq!(scrape.value("sliding_sync_poller_num_pollers"), 1.0);
    assert_eq!(scrape.value("sliding_sync_api_num_active_conns"), 1.0);
    assert_eq!(
        scrape.value("sliding_sync_api_num_devices_pending_ensure_polling"),
        0.0
    );
    // Ours.
    assert_eq!(scrape.value("slidesync_rooms"), 1.0);
    assert_eq!(scrape.value("slidesync_users"), 1.0);
    assert!(scrape.value("slidesync_state_archive_bytes") > 0.0);
    assert_eq!(scrape.value("slidesync_write_rejected_rows_total"), 0.0);
    assert_eq!(scrape.types["slidesync_write_queue_depth"], "gauge");
    assert_eq!(
        scrape.types["slidesync_write_queue_credits_in_use"],
        "gauge"
    );
    assert_eq!(
        scrape.types["slidesync_write_oldest_uncommitted_seconds"],
        "gauge"
    );
    assert_eq!(
        scrape.types["slidesync_write_batch_commit_seconds"],
        "histogram"
    );
    assert_eq!(scrape.types["slidesync_write_batch_failures"], "counter");
    assert_eq!(scrape.types["slidesync_poller_lag_seconds"], "histogram");
    assert_eq!(scrape.value("slidesync_poller_lag_seconds_count"), 1.0);
    assert_eq!(scrape.value("slidesync_poller_catching_up"), 0.0);
    assert_eq!(scrape.value("slidesync_api_parked_long_polls"), 0.0);
    assert!(scrape.value(r#"slidesync_task_instrumented_total{task="poller"}"#) >= 1.0);
    assert!(scrape.value(r#"slidesync_task_instrumented_total{task="request"}"#) >= 1.0);
    assert_eq!(
        scrape.value(r#"slidesync_task_instrumented_total{task="writer"}"#),
        1.0
    );
    assert!(scrape.value("slidesync_tokio_workers") >= 1.0);

    let (status, body) = get(&format!("{}/health", proxy.ops_url)).await;
    assert_eq!(status, 200);
    assert_eq!(
        sonic_rs::from_str::<Value>(&body).unwrap()["pollers_catching_up"].as_u64(),
        Some(0)
    );

    // Never on the public listener.
    for path in ["/metrics", "/health", "/debug/pprof/profile"] {
        let (status, _) = get(&format!("{}{path}", proxy.url)).await;
        assert_eq!(status, 404, "{path} on the public listener");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn health_and_metrics_show_a_device_waiting_for_its_first_poll() {
    let (_db, hs, proxy) = scripted(&[(TOKEN, ALICE, "ALICEDEV")]).await;
    hs.push_rooms(
        TOKEN,
        rooms_join(vec![(ROOM, new_room(ALICE, Some("Ops"), 1_000))]),
    );
    hs.hold(TOKEN);
    let waiting = proxy.spawn_sync(TOKEN, None, 0, &request());
    hs.wait_for_calls(TOKEN, 1).await;

    let (status, body) = get(&format!("{}/health", proxy.ops_url)).await;
    assert_eq!(status, 200);
    assert_eq!(
        sonic_rs::from_str::<Value>(&body).unwrap()["pollers_catching_up"].as_u64(),
        Some(1)
    );
    let scrape = Scrape::parse(&get(&format!("{}/metrics", proxy.ops_url)).await.1);
    assert_eq!(scrape.value("slidesync_poller_catching_up"), 1.0);
    assert_eq!(
        scrape.value("sliding_sync_poller_num_outstanding_sync_v2_reqs"),
        1.0
    );
    assert_eq!(
        scrape.value("sliding_sync_api_num_devices_pending_ensure_polling"),
        1.0
    );

    hs.release(TOKEN);
    assert_eq!(waiting.await.unwrap().status, 200);
    let (_, body) = get(&format!("{}/health", proxy.ops_url)).await;
    assert_eq!(
        sonic_rs::from_str::<Value>(&body).unwrap()["pollers_catching_up"].as_u64(),
        Some(0)
    );
    let scrape = Scrape::parse(&get(&format!("{}/metrics", proxy.ops_url)).await.1);
    assert_eq!(
        scrape.value("sliding_sync_api_num_devices_pending_ensure_polling"),
        0.0
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_come_as_pprof_protobuf_and_as_an_svg_flame_graph() {
    let listener = listen::bind(&BindAddr::Tcp("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let url = format!("http://{}/debug/pprof", listener.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(profiling::serve(listener, async {
        let _ = stopped.await;
    }));
    let client = HttpClient::new();
    // A thread burning CPU, so the profiles have samples (the profiler counts CPU time).
    let busy = Arc::new(AtomicBool::new(true));
    let burner = {
        let busy = Arc::clone(&busy);
        std::thread::spawn(move || {
            let mut x = 1u64;
            while busy.load(Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        })
    };

    let resp = client
        .request(Method::GET, &format!("{url}/profile?seconds=1"), None, None)
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let profile = pprof::protos::Profile::decode(&resp.body[..]).expect("a pprof protobuf");
    assert!(!profile.sample.is_empty(), "samples of the burning thread");
    assert!(profile.duration_nanos >= 1_000_000_000);

    let resp = client
        .request(
            Method::GET,
            &format!("{url}/flamegraph?seconds=1"),
            None,
            None,
        )
        .await;
    assert_eq!(resp.status, 200);
    let svg = resp.text();
    assert!(svg.contains("<svg"), "{svg:.200}");
    assert!(svg.trim_end().ends_with("</svg>"));
    busy.store(false, Ordering::Relaxed);
    burner.join().unwrap();

    let (status, memory) = get(&format!("{url}/memory")).await;
    assert_eq!(status, 200);
    assert!(memory.contains("VmRSS:"), "{memory}");
    let (status, _) = get(&format!("{url}/profile?seconds=100000")).await;
    assert_eq!(status, 400);

    let _ = stop.send(());
    server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_every_since_and_logs_json_lines() {
    let db = TestDb::postgres().await;
    let hs = FakeHomeserver::with_devices(&[(TOKEN, ALICE, "ALICEDEV")]);
    let http = hs.serve_http().await;
    hs.append_log(
        TOKEN,
        rooms_join(vec![(ROOM, new_room(ALICE, Some("Ops"), 1_000))]),
    );
    for n in 1..=5u64 {
        hs.append_log(
            TOKEN,
            rooms_join(vec![(
                ROOM,
                joined(vec![], vec![message(ALICE, &format!("m{n}"), 2_000 + n)]),
            )]),
        );
    }
    let log = std::env::temp_dir().join(format!("slidesync-ops-{}.log", free_port()));
    let prom = format!("127.0.0.1:{}", free_port());
    let binary = Binary::start_with(
        &http.url(),
        &db.url,
        &[
            ("SYNCV3_LOG_FORMAT", "json"),
            ("SYNCV3_LOG_LEVEL", "info"),
            ("SYNCV3_PROM", &prom),
        ],
        Some(log.clone()),
    )
    .await;
    binary.sync(TOKEN, &request()).await;
    // The whole log applied: the poller now waits at its end.
    hs.wait_for_call(TOKEN, "the end of the log", |c| {
        c.since.as_deref() == Some("log_6")
    })
    .await;
    let (status, health) = get(&format!("http://{prom}/health")).await;
    assert_eq!(status, 200, "{health}");

    let lines = binary.stop().expect("a log");
    let _ = std::fs::remove_file(&log);
    let (mut messages, mut access_lines) = (Vec::new(), 0);
    for line in lines.lines() {
        let value: Value = sonic_rs::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        messages.push(value["fields"]["message"].as_str().unwrap_or("").to_owned());
        if value["fields"]["message"].as_str() == Some("request")
            && value["span"]["c"].as_str().is_some()
        {
            // The access line of the sync request, with the Go proxy's fields.
            access_lines += 1;
            assert_eq!(value["span"]["u"].as_str(), Some(ALICE), "{line}");
            assert_eq!(value["span"]["dev"].as_str(), Some("ALICEDEV"), "{line}");
            assert_eq!(value["fields"]["status"].as_u64(), Some(200), "{line}");
            assert!(value["fields"]["duration"].as_str().unwrap().contains('+'));
        }
    }
    assert_eq!(access_lines, 1, "{lines}");
    assert!(
        messages
            .iter()
            .any(|m| m == "every queued write and since is committed"),
        "{messages:?}"
    );

    let store = PgStore::connect(&db.url, 1).await.unwrap();
    let devices = store.devices().await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].since.as_deref(), Some("log_6"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_on_storage_that_is_down_after_its_limit() {
    let db = TestDb::postgres().await;
    let (chaos, through_chaos) = Chaos::before_postgres(&db.url).await;
    let hs = FakeHomeserver::with_devices(&[(TOKEN, ALICE, "ALICEDEV")]);
    let mut settings = proxy::settings();
    settings.flush_limit = Duration::from_secs(1);
    let proxy = Proxy::start_with(&through_chaos, hs.clone(), settings).await;
    hs.push_rooms(
        TOKEN,
        rooms_join(vec![(ROOM, new_room(ALICE, Some("Ops"), 1_000))]),
    );
    proxy.sync_ok(TOKEN, None, 0, &request()).await;

    // Postgres goes away with this poll's writes and `since` still to commit.
    chaos.refuse();
    let next = hs.push_rooms(
        TOKEN,
        rooms_join(vec![(
            ROOM,
            joined(vec![], vec![message(ALICE, "late", 2_000)]),
        )]),
    );
    hs.wait_for_call(TOKEN, "the poll after the late message", |c| {
        c.since.as_deref() == Some(next.as_str())
    })
    .await;

    // Without the limit the flush would wait for Postgres forever; the bound here only
    // turns that hang into a failure.
    tokio::time::timeout(Duration::from_secs(60), proxy.stop())
        .await
        .expect("shutdown ends although storage is down");
}

/// What a trace collector received: each request's path, `Authorization` and body.
type Exports = Arc<parking_lot::Mutex<Vec<(String, Option<String>, bytes::Bytes)>>>;

/// A stand-in OTLP/HTTP collector on a free port that keeps what it is sent.
async fn collector() -> (String, Exports, tokio::sync::oneshot::Sender<()>) {
    use http_body_util::BodyExt;
    let listener = listen::bind(&BindAddr::Tcp("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr());
    let exports: Exports = Arc::default();
    let kept = Arc::clone(&exports);
    let handler = move |req: http::Request<hyper::body::Incoming>| {
        let kept = Arc::clone(&kept);
        async move {
            let path = req.uri().path().to_owned();
            let auth = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_owned());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            kept.lock().push((path, auth, body));
            http::Response::new(http_body_util::Full::new(bytes::Bytes::new()))
        }
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(listen::serve(listener, None, handler, async {
        let _ = stopped.await;
    }));
    (url, exports, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_of_requests_polls_and_commits_reach_the_otlp_collector() {
    let db = TestDb::postgres().await;
    let hs = FakeHomeserver::with_devices(&[(TOKEN, ALICE, "ALICEDEV")]);
    let http = hs.serve_http().await;
    hs.append_log(
        TOKEN,
        rooms_join(vec![(ROOM, new_room(ALICE, Some("Traced"), 1_000))]),
    );
    let (otlp, exports, _stop) = collector().await;
    let binary = Binary::start_with(
        &http.url(),
        &db.url,
        &[
            ("SYNCV3_OTLP_URL", &otlp),
            ("SYNCV3_OTLP_USERNAME", "ops"),
            ("SYNCV3_OTLP_PASSWORD", "hunter2"),
            // Traces do not depend on the log level.
            ("SYNCV3_LOG_LEVEL", "error"),
        ],
        None,
    )
    .await;
    // The caller's trace: the request's span must join it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = HttpClient::new()
        .request_with_headers(
            Method::POST,
            &format!("{}{}", binary.url, crate::support::proxy::MSC3575),
            Some(TOKEN),
            Some(&request()),
            &[("traceparent", &format!("00-{trace_id}-00f067aa0ba902b7-01"))],
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    // SIGTERM flushes the batch of spans still held.
    binary.stop();

    let exports = exports.lock().clone();
    assert!(!exports.is_empty(), "nothing was exported");
    let mut all = Vec::new();
    for (path, auth, body) in &exports {
        assert_eq!(path, "/v1/traces");
        assert_eq!(auth.as_deref(), Some("Basic b3BzOmh1bnRlcjI="));
        all.extend_from_slice(body);
    }
    // The protobuf carries names as plain bytes and the trace ID as its 16 raw bytes.
    let holds = |needle: &[u8]| all.windows(needle.len()).any(|w| w == needle);
    for name in ["sliding-sync", "request", "poll", "commit"] {
        assert!(holds(name.as_bytes()), "no {name:?} in the exported spans");
    }
    assert!(
        holds(&hex::decode(trace_id).unwrap()),
        "the request span did not join the caller's trace"
    );
}
