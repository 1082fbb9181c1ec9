//! slidesync in-process on a free port, over a test database (either store) and any
//! homeserver.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use slidesync::app::{App, Settings};
use slidesync::config::BindAddr;
use slidesync::config::Db;
use slidesync::ingest::pollers::PollerConfig;
use slidesync::ops::admin::{self, Admin};
use slidesync::ops::listen;
use slidesync::store::tokens::TokenCipher;
use slidesync::upstream::Homeserver;
use sonic_rs::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::db::TestDb;
use super::fake::FakeHomeserver;
use super::http::{HttpClient, TestResponse};

pub const SECRET: &str = "test-secret-for-slidesync";
pub const MSC3575: &str = "/_matrix/client/unstable/org.matrix.msc3575/sync";
pub const MSC4186: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

pub struct Proxy {
    pub url: String,
    /// The operator's listener (`/metrics`, `/health`), as `SYNCV3_PROM` serves it.
    pub ops_url: String,
    pub client: HttpClient,
    stop: Option<oneshot::Sender<()>>,
    /// Dropped with the proxy, which stops the operator's listener.
    _stop_ops: oneshot::Sender<()>,
    server: Option<JoinHandle<App>>,
}

/// A fresh database, a scripted homeserver that knows these (token, user, device)
/// triples, and the proxy over both.
pub async fn scripted(devices: &[(&str, &str, &str)]) -> (TestDb, Arc<FakeHomeserver>, Proxy) {
    let db = TestDb::new().await;
    let hs = FakeHomeserver::with_devices(devices);
    let proxy = Proxy::start(&db.url, hs.clone()).await;
    (db, hs, proxy)
}

/// Test-friendly tunables: quick retries.
pub fn settings() -> Settings {
    Settings {
        poller: PollerConfig {
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(400),
            ..PollerConfig::default()
        },
        ..Settings::default()
    }
}

impl Proxy {
    pub async fn start(db_url: &str, upstream: Arc<dyn Homeserver>) -> Proxy {
        Self::start_with(db_url, upstream, settings()).await
    }

    pub async fn start_with(
        db_url: &str,
        upstream: Arc<dyn Homeserver>,
        settings: Settings,
    ) -> Proxy {
        let db = Db::parse(db_url).expect("a test database URL");
        let persist = slidesync::app::open_store(&db, 4)
            .await
            .expect("test database");
        let app = App::start(persist, upstream, TokenCipher::new(SECRET), settings)
            .await
            .expect("app starts");
        let listener = listen::bind(&BindAddr::Tcp("127.0.0.1:0".parse().unwrap()))
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr());
        let ops_listener = listen::bind(&BindAddr::Tcp("127.0.0.1:0".parse().unwrap()))
            .await
            .expect("bind");
        let ops_url = format!("http://{}", ops_listener.local_addr());
        let ops = Arc::new(Admin::default());
        ops.loaded(Arc::clone(&app.registry), Arc::clone(&app.api.pollers));
        let (stop_ops, ops_stopped) = oneshot::channel::<()>();
        tokio::spawn(admin::serve(ops_listener, ops, async {
            let _ = ops_stopped.await;
        }));
        let (stop, stopped) = oneshot::channel::<()>();
        let handler = app.handler();
        let server = tokio::spawn(async move {
            listen::serve(listener, None, handler, async {
                let _ = stopped.await;
            })
            .await;
            app
        });
        Proxy {
            url,
            ops_url,
            client: HttpClient::new(),
            stop: Some(stop),
            _stop_ops: stop_ops,
            server: Some(server),
        }
    }

    /// Stops serving, stops pollers and waits for every write to be committed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let app = server.await.expect("server task");
            app.shutdown().await;
        }
    }

    /// One MSC3575 request.
    pub async fn sync(
        &self,
        token: &str,
        pos: Option<&str>,
        timeout_ms: u64,
        body: &Value,
    ) -> TestResponse {
        let mut url = format!("{}{MSC3575}?timeout={timeout_ms}", self.url);
        if let Some(pos) = pos {
            url.push_str("&pos=");
            url.push_str(pos);
        }
        self.client
            .request(Method::POST, &url, Some(token), Some(body))
            .await
    }

    /// One MSC4186 request to `base_url` (the proxy's, or a homeserver's own), `pos`
    /// and `timeout` in the query as matrix-rust-sdk sends them.
    pub async fn simplified_at(
        base_url: &str,
        token: &str,
        pos: Option<&str>,
        timeout_ms: u64,
        body: &Value,
    ) -> TestResponse {
        let mut url = format!("{base_url}{MSC4186}?timeout={timeout_ms}");
        if let Some(pos) = pos {
            url.push_str("&pos=");
            url.push_str(&super::http::encode(pos));
        }
        HttpClient::new()
            .request(Method::POST, &url, Some(token), Some(body))
            .await
    }

    /// The same request from a task of its own (a long-poll to park while the test acts).
    pub fn spawn_sync(
        &self,
        token: &str,
        pos: Option<&str>,
        timeout_ms: u64,
        body: &Value,
    ) -> JoinHandle<TestResponse> {
        let mut url = format!("{}{MSC3575}?timeout={timeout_ms}", self.url);
        if let Some(pos) = pos {
            url.push_str("&pos=");
            url.push_str(pos);
        }
        let (token, body) = (token.to_owned(), body.clone());
        tokio::spawn(async move {
            HttpClient::new()
                .request(Method::POST, &url, Some(&token), Some(&body))
                .await
        })
    }

    /// A request with any method, path and query, and body bytes sent as they are (not
    /// necessarily JSON). `token` goes into `Authorization: Bearer`.
    pub async fn raw(
        &self,
        method: Method,
        path_and_query: &str,
        token: Option<&str>,
        body: impl Into<Bytes>,
    ) -> TestResponse {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", self.url))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req.body(Full::new(body.into())).expect("a valid request");
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let exchange = async {
            let resp = client.request(req).await.expect("the proxy answers");
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .expect("a whole body")
                .to_bytes();
            TestResponse { status, body }
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("the proxy answers in time")
    }

    /// One MSC3575 request that must succeed; returns its JSON.
    pub async fn sync_ok(
        &self,
        token: &str,
        pos: Option<&str>,
        timeout_ms: u64,
        body: &Value,
    ) -> Value {
        let resp = self.sync(token, pos, timeout_ms, body).await;
        assert_eq!(resp.status, 200, "sync failed: {}", resp.text());
        resp.json()
    }
}

/// The `pos` of a response.
pub fn pos(resp: &Value) -> String {
    use sonic_rs::JsonValueTrait;
    resp["pos"].as_str().expect("pos").to_owned()
}

/// Room IDs of a list's first SYNC op.
pub fn synced_ids(resp: &Value, list: &str) -> Vec<String> {
    use sonic_rs::{JsonContainerTrait, JsonValueTrait};
    let ops = resp["lists"][list]["ops"].as_array().expect("ops");
    let sync = ops
        .iter()
        .find(|op| op["op"].as_str() == Some("SYNC"))
        .expect("a SYNC op");
    sync["room_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// A list's ops as compact strings: "DELETE 3", "INSERT 0 !room", "SYNC 0-19", ...
pub fn ops(resp: &Value, list: &str) -> Vec<String> {
    use sonic_rs::{JsonContainerTrait, JsonValueTrait};
    let Some(ops) = resp["lists"][list]["ops"].as_array() else {
        return Vec::new();
    };
    ops.iter()
        .map(|op| match op["op"].as_str().unwrap() {
            "DELETE" => format!("DELETE {}", op["index"].as_u64().unwrap()),
            "INSERT" => format!(
                "INSERT {} {}",
                op["index"].as_u64().unwrap(),
                op["room_id"].as_str().unwrap()
            ),
            other => format!(
                "{other} {}-{}",
                op["range"][0].as_u64().unwrap(),
                op["range"][1].as_u64().unwrap()
            ),
        })
        .collect()
}

/// The room IDs a response carries data for, sorted.
pub fn room_ids(resp: &Value) -> Vec<String> {
    use sonic_rs::JsonContainerTrait;
    let mut ids: Vec<String> = resp["rooms"]
        .as_object()
        .map(|rooms| rooms.iter().map(|(k, _)| k.to_owned()).collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Event IDs of a room's `timeline` in a response, in order.
pub fn timeline_ids(resp: &Value, room_id: &str) -> Vec<String> {
    use sonic_rs::{JsonContainerTrait, JsonValueTrait};
    resp["rooms"][room_id]["timeline"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| e["event_id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Message bodies (`content.n`) of a response's to-device events, in order.
pub fn message_numbers(resp: &Value) -> Vec<u64> {
    use sonic_rs::{JsonContainerTrait, JsonValueTrait};
    resp["extensions"]["to_device"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| e["content"]["n"].as_u64().expect("a numbered message"))
                .collect()
        })
        .unwrap_or_default()
}

/// The to-device `next_batch` of a response.
pub fn next_batch(resp: &Value) -> String {
    use sonic_rs::JsonValueTrait;
    resp["extensions"]["to_device"]["next_batch"]
        .as_str()
        .expect("next_batch is always sent")
        .to_owned()
}
