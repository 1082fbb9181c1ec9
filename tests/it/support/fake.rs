//! An in-process homeserver that serves scripted `/sync` responses.
//!
//! Implements the proxy's `Homeserver` seam directly: no sockets, so tests are fast and
//! deterministic. Each token has a queue of responses; a poll takes the next one, or
//! waits (up to its long-poll timeout, capped short) for one to be pushed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use slidesync::upstream::{full, Body, Homeserver, MessagesCall, SyncCall, UpstreamError, WhoAmI};
use tokio::sync::Notify;

/// A poll with nothing scripted returns empty after at most this long, so pollers loop
/// quickly in tests.
const IDLE_POLL: Duration = Duration::from_millis(200);

/// What a scripted poll answers.
pub enum Reply {
    Body(String),
    Status(u16),
}

/// One `/sync` call as the fake saw it.
#[derive(Clone, Debug)]
pub struct SeenCall {
    pub token: String,
    pub since: Option<String>,
    pub timeout_ms: u64,
    pub filter: String,
    pub at: tokio::time::Instant,
}

#[derive(Default)]
pub struct FakeHomeserver {
    devices: Mutex<HashMap<String, WhoAmI>>,
    queues: Mutex<HashMap<String, VecDeque<Reply>>>,
    pushed: Notify,
    calls: Mutex<Vec<SeenCall>>,
    whoami_calls: Mutex<usize>,
    batch: Mutex<u64>,
    /// Tokens whose `/sync` calls hang until released.
    held: Mutex<HashSet<String>>,
    /// Per token: `/sync` calls in progress now, and the most ever at once.
    in_flight: Mutex<HashMap<String, (usize, usize)>>,
    /// Per token: `rooms` objects answered by `since`, as a real homeserver does, so a
    /// poller that starts again from an older `since` gets the same data again.
    logs: Mutex<HashMap<String, Vec<sonic_rs::Value>>>,
    /// `/messages` pages by (room, from).
    pages: Mutex<HashMap<(String, String), Page>>,
    /// `/messages` calls as (token, room, from, limit).
    messages_calls: Mutex<Vec<(String, String, String, usize)>>,
    /// `/keys/changes` answers by `from`, in turn; unscripted, nothing changed.
    key_changes: Mutex<HashMap<String, VecDeque<Reply>>>,
    /// `/keys/changes` calls as (token, from, to).
    key_changes_calls: Mutex<Vec<(String, String, String)>>,
}

/// A scripted `/messages` page: the `chunk` (newest first) and `end`.
type Page = (Vec<sonic_rs::Value>, Option<String>);

/// Counts a `/sync` call as in flight until dropped (also when the poller is aborted).
struct InFlight<'a> {
    fake: &'a FakeHomeserver,
    token: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.fake.in_flight.lock().get_mut(&self.token) {
            n.0 -= 1;
        }
    }
}

impl FakeHomeserver {
    /// A homeserver that knows these (token, user, device) triples.
    pub fn with_devices(devices: &[(&str, &str, &str)]) -> Arc<FakeHomeserver> {
        let hs = Arc::new(FakeHomeserver::default());
        for (token, user, device) in devices {
            hs.add_device(token, user, device);
        }
        hs
    }

    /// Makes `token` valid for (user, device).
    pub fn add_device(&self, token: &str, user_id: &str, device_id: &str) {
        self.devices.lock().insert(
            token.to_owned(),
            WhoAmI {
                user_id: user_id.to_owned(),
                device_id: device_id.to_owned(),
            },
        );
    }

    /// Scripts `/rooms/{room}/messages?dir=b&from={from}`: `chunk` newest first, and the
    /// page's `end` (None at the room's start). Unscripted pages answer 500.
    pub fn script_messages(
        &self,
        room: &str,
        from: &str,
        chunk: Vec<sonic_rs::Value>,
        end: Option<&str>,
    ) {
        self.pages.lock().insert(
            (room.to_owned(), from.to_owned()),
            (chunk, end.map(str::to_owned)),
        );
    }

    /// The `/messages` calls made, as (token, room, from, limit).
    pub fn messages_calls(&self) -> Vec<(String, String, String, usize)> {
        self.messages_calls.lock().clone()
    }

    /// Scripts the next `/keys/changes?from={from}` answer.
    pub fn script_keys_changes(&self, from: &str, reply: Reply) {
        self.key_changes
            .lock()
            .entry(from.to_owned())
            .or_default()
            .push_back(reply);
    }

    /// The `/keys/changes` calls made, as (token, from, to).
    pub fn keys_changes_calls(&self) -> Vec<(String, String, String)> {
        self.key_changes_calls.lock().clone()
    }

    /// Makes the homeserver forget the token (logout): whoami and sync answer 401.
    pub fn revoke(&self, token: &str) {
        self.devices.lock().remove(token);
    }

    /// Queues a `/sync` response for the token. `rooms` is the v2 `rooms` object.
    /// Returns the response's `next_batch`.
    pub fn push_rooms(&self, token: &str, rooms: sonic_rs::Value) -> String {
        let next = {
            let mut b = self.batch.lock();
            *b += 1;
            format!("batch_{}", *b)
        };
        let body = sonic_rs::json!({"next_batch": next.clone(), "rooms": rooms});
        self.push(token, Reply::Body(body.to_string()));
        next
    }

    /// Queues a `/sync` response made of `fields` (a v2 object with `rooms`,
    /// `account_data`, ...) and a new `next_batch`, which it returns.
    pub fn push_sync(&self, token: &str, mut fields: sonic_rs::Value) -> String {
        let next = {
            let mut b = self.batch.lock();
            *b += 1;
            format!("batch_{}", *b)
        };
        fields["next_batch"] = sonic_rs::json!(next.clone());
        self.push(token, Reply::Body(fields.to_string()));
        next
    }

    /// Appends to the token's log: a poll with `since` `log_{n}` (or none, for n = 0)
    /// answers entry n with `next_batch` `log_{n+1}`; past the end, it waits like an idle
    /// homeserver. Queued replies are answered only past the end.
    pub fn append_log(&self, token: &str, rooms: sonic_rs::Value) {
        self.logs
            .lock()
            .entry(token.to_owned())
            .or_default()
            .push(rooms);
        self.pushed.notify_waiters();
    }

    fn log_answer(&self, token: &str, since: Option<&str>) -> Option<Bytes> {
        let n = match since {
            None => 0,
            Some(s) => s.strip_prefix("log_")?.parse().ok()?,
        };
        let logs = self.logs.lock();
        let rooms = logs.get(token)?.get(n)?;
        let next = format!("log_{}", n + 1);
        Some(Bytes::from(
            sonic_rs::json!({"next_batch": next, "rooms": rooms}).to_string(),
        ))
    }

    /// From now on `/sync` calls with the token hang (a slow homeserver) until
    /// [`Self::release`].
    pub fn hold(&self, token: &str) {
        self.held.lock().insert(token.to_owned());
    }

    pub fn release(&self, token: &str) {
        self.held.lock().remove(token);
        self.pushed.notify_waiters();
    }

    /// The `/sync` calls made with one token, oldest first.
    pub fn calls_for(&self, token: &str) -> Vec<SeenCall> {
        self.calls
            .lock()
            .iter()
            .filter(|c| c.token == token)
            .cloned()
            .collect()
    }

    /// Waits (bounded) until a `/sync` call with the token matches, and returns every
    /// call made with it so far.
    pub async fn wait_for_call(
        &self,
        token: &str,
        what: &str,
        found: impl Fn(&SeenCall) -> bool,
    ) -> Vec<SeenCall> {
        for _ in 0..500 {
            let calls = self.calls_for(token);
            if calls.iter().any(&found) {
                return calls;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "no /sync call for {token}: {what}; calls: {:#?}",
            self.calls_for(token)
        );
    }

    /// Waits (bounded) until at least `n` `/sync` calls were made with the token.
    pub async fn wait_for_calls(&self, token: &str, n: usize) -> Vec<SeenCall> {
        for _ in 0..500 {
            let calls = self.calls_for(token);
            if calls.len() >= n {
                return calls;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "fewer than {n} /sync calls for {token}: {:#?}",
            self.calls_for(token)
        );
    }

    /// The most `/sync` calls with the token that were ever in progress at once.
    pub fn max_concurrent_syncs(&self, token: &str) -> usize {
        self.in_flight.lock().get(token).map_or(0, |n| n.1)
    }

    pub fn push(&self, token: &str, reply: Reply) {
        self.queues
            .lock()
            .entry(token.to_owned())
            .or_default()
            .push_back(reply);
        self.pushed.notify_waiters();
    }

    pub fn calls(&self) -> Vec<SeenCall> {
        self.calls.lock().clone()
    }

    pub fn whoami_calls(&self) -> usize {
        *self.whoami_calls.lock()
    }

    /// Waits until every queued response for the token was taken by a poller.
    pub async fn drained(&self, token: &str) {
        for _ in 0..500 {
            if self.queues.lock().get(token).is_none_or(|q| q.is_empty()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the poller for {token} never took its scripted responses");
    }
}

/// The fake on a loopback port, for code that speaks HTTP to a homeserver: the shipped
/// binary, or slidesync's own client through a fault proxy. Stops when dropped.
pub struct HttpFake {
    pub addr: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl HttpFake {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl FakeHomeserver {
    /// Serves `/sync`, `/whoami` and `/versions` over HTTP, answering each from the
    /// scripted fake.
    pub async fn serve_http(self: &Arc<Self>) -> HttpFake {
        use slidesync::config::BindAddr;
        use slidesync::ops::listen;

        let listener = listen::bind(&BindAddr::Tcp("127.0.0.1:0".parse().unwrap()))
            .await
            .expect("bind the HTTP fake");
        let addr = listener.local_addr().parse().expect("a TCP address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let fake = Arc::clone(self);
        let handler = move |req: http::Request<hyper::body::Incoming>| {
            let fake = Arc::clone(&fake);
            async move { fake.answer_http(&req).await }
        };
        tokio::spawn(listen::serve(listener, None, handler, async {
            let _ = stopped.await;
        }));
        HttpFake { addr, _stop: stop }
    }

    async fn answer_http<B>(
        &self,
        req: &http::Request<B>,
    ) -> http::Response<http_body_util::Full<Bytes>> {
        let token = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_owned();
        let query: HashMap<String, String> =
            form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let result = match req.uri().path() {
            "/_matrix/client/versions" => self.versions().await,
            "/_matrix/client/v3/account/whoami" => self.whoami(&token).await.map(|who| {
                Bytes::from(
                    sonic_rs::json!({"user_id": who.user_id, "device_id": who.device_id})
                        .to_string(),
                )
            }),
            "/_matrix/client/v3/sync" => {
                self.sync(SyncCall {
                    token: &token,
                    since: query.get("since").map(String::as_str),
                    timeout_ms: query
                        .get("timeout")
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(0),
                    filter: query.get("filter").map_or("", String::as_str),
                    deadline: Duration::MAX,
                })
                .await
            }
            _ => Err(UpstreamError::Status {
                status: 404,
                body: r#"{"errcode":"M_UNRECOGNIZED"}"#.into(),
            }),
        };
        let (status, body) = match result {
            Ok(body) => (200, body),
            Err(UpstreamError::Unauthorized) => {
                (401, Bytes::from_static(br#"{"errcode":"M_UNKNOWN_TOKEN"}"#))
            }
            Err(UpstreamError::Status { status, body }) => (status, Bytes::from(body)),
            Err(other) => (500, Bytes::from(other.to_string())),
        };
        http::Response::builder()
            .status(status)
            .body(http_body_util::Full::new(body))
            .unwrap()
    }
}

#[async_trait]
impl Homeserver for FakeHomeserver {
    async fn whoami(&self, token: &str) -> Result<WhoAmI, UpstreamError> {
        *self.whoami_calls.lock() += 1;
        self.devices
            .lock()
            .get(token)
            .cloned()
            .ok_or(UpstreamError::Unauthorized)
    }

    async fn sync(&self, call: SyncCall<'_>) -> Result<Bytes, UpstreamError> {
        self.calls.lock().push(SeenCall {
            token: call.token.to_owned(),
            since: call.since.map(str::to_owned),
            timeout_ms: call.timeout_ms,
            filter: call.filter.to_owned(),
            at: tokio::time::Instant::now(),
        });
        let _in_flight = {
            let mut map = self.in_flight.lock();
            let n = map.entry(call.token.to_owned()).or_default();
            n.0 += 1;
            n.1 = n.1.max(n.0);
            InFlight {
                fake: self,
                token: call.token.to_owned(),
            }
        };
        loop {
            let released = self.pushed.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if !self.held.lock().contains(call.token) {
                break;
            }
            released.await;
        }
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(call.timeout_ms).min(IDLE_POLL);
        loop {
            let pushed = self.pushed.notified();
            tokio::pin!(pushed);
            pushed.as_mut().enable();
            if !self.devices.lock().contains_key(call.token) {
                return Err(UpstreamError::Unauthorized);
            }
            if let Some(body) = self.log_answer(call.token, call.since) {
                return Ok(body);
            }
            let next = self
                .queues
                .lock()
                .get_mut(call.token)
                .and_then(VecDeque::pop_front);
            match next {
                Some(Reply::Body(body)) => return Ok(Bytes::from(body)),
                Some(Reply::Status(401)) => return Err(UpstreamError::Unauthorized),
                Some(Reply::Status(status)) => {
                    return Err(UpstreamError::Status {
                        status,
                        body: "scripted failure".into(),
                    })
                }
                None => {}
            }
            tokio::select! {
                _ = pushed => {}
                _ = tokio::time::sleep_until(deadline) => {
                    let since = call.since.unwrap_or("batch_0");
                    return Ok(Bytes::from(format!(r#"{{"next_batch":"{since}"}}"#)));
                }
            }
        }
    }

    async fn versions(&self) -> Result<Bytes, UpstreamError> {
        Ok(Bytes::from_static(
            br#"{"versions":["v1.11"],"unstable_features":{}}"#,
        ))
    }

    async fn messages(&self, call: MessagesCall<'_>) -> Result<Bytes, UpstreamError> {
        self.messages_calls.lock().push((
            call.token.to_owned(),
            call.room_id.to_owned(),
            call.from.to_owned(),
            call.limit,
        ));
        if !self.devices.lock().contains_key(call.token) {
            return Err(UpstreamError::Unauthorized);
        }
        let page = self
            .pages
            .lock()
            .get(&(call.room_id.to_owned(), call.from.to_owned()))
            .cloned();
        let Some((mut chunk, end)) = page else {
            return Err(UpstreamError::Status {
                status: 500,
                body: "no page scripted".into(),
            });
        };
        let mut end = end;
        if chunk.len() > call.limit {
            chunk.truncate(call.limit);
            end = Some(format!("{}_cut", call.from));
        }
        let body = match end {
            Some(end) => sonic_rs::json!({"chunk": chunk, "start": call.from, "end": end}),
            None => sonic_rs::json!({"chunk": chunk, "start": call.from}),
        };
        Ok(Bytes::from(body.to_string()))
    }

    async fn keys_changes(
        &self,
        token: &str,
        from: &str,
        to: &str,
    ) -> Result<Bytes, UpstreamError> {
        self.key_changes_calls
            .lock()
            .push((token.to_owned(), from.to_owned(), to.to_owned()));
        if !self.devices.lock().contains_key(token) {
            return Err(UpstreamError::Unauthorized);
        }
        let reply = self
            .key_changes
            .lock()
            .get_mut(from)
            .and_then(VecDeque::pop_front);
        match reply {
            Some(Reply::Body(body)) => Ok(Bytes::from(body)),
            Some(Reply::Status(status)) => Err(UpstreamError::Status {
                status,
                body: "scripted failure".into(),
            }),
            None => Ok(Bytes::from_static(br#"{"changed":[],"left":[]}"#)),
        }
    }

    /// Echoes what arrived: method, path and query, Authorization, Connection, body.
    async fn forward(
        &self,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, UpstreamError> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| UpstreamError::Transport(e.to_string()))?
            .to_bytes();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let echo = sonic_rs::json!({
            "method": parts.method.as_str(),
            "path": parts.uri.path_and_query().map_or("", |p| p.as_str()),
            "authorization": header("authorization"),
            "connection": header("connection"),
            "body": String::from_utf8_lossy(&body),
        });
        Ok(http::Response::builder()
            .status(201)
            .body(full(echo.to_string()))
            .unwrap())
    }
}
