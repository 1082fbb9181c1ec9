//! The sliding sync client side: requests over HTTP/1.1 with keep-alive, and what a
//! client does with the answers (the window it holds, the events it saw).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use sonic_rs::{JsonContainerTrait, JsonValueTrait, Value};

use crate::homeserver::token;

const MSC3575: &str = "/_matrix/client/unstable/org.matrix.msc3575/sync";
/// Added to a request's own `timeout` before the client gives up on it.
const SLACK: Duration = Duration::from_secs(30);

/// The list every request asks for: newest rooms first, one timeline event, the room
/// name and the reader's own membership.
pub fn window_request(conn_id: &str, end: usize) -> Bytes {
    Bytes::from(format!(
        r#"{{"conn_id":"{conn_id}","lists":{{"all":{{"ranges":[[0,{end}]],"sort":["by_recency"],"timeline_limit":1,"required_state":[["m.room.name",""],["m.room.member","$ME"]]}}}}}}"#
    ))
}

/// One answer, read whole.
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
    /// From sending the request to having the whole body.
    pub took: Duration,
    pub received: Instant,
}

impl Reply {
    /// The body as JSON if the status is 200, else an error naming status and body.
    pub fn json(&self) -> Result<Value, String> {
        if self.status != StatusCode::OK {
            let text = String::from_utf8_lossy(&self.body);
            return Err(format!(
                "HTTP {}: {}",
                self.status,
                text.chars().take(300).collect::<String>()
            ));
        }
        sonic_rs::from_slice(&self.body).map_err(|e| format!("response is not JSON: {e}"))
    }
}

/// An HTTP client for the proxy. Cloning shares its keep-alive pool.
#[derive(Clone)]
pub struct SyncClient {
    http: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl SyncClient {
    pub fn new(base: String) -> Self {
        let mut connector = HttpConnector::new();
        // Requests are small and written whole; Nagle would only add delay.
        connector.set_nodelay(true);
        Self {
            http: Client::builder(TokioExecutor::new()).build(connector),
            base,
        }
    }

    /// One MSC3575 request as user `user`. Transport failures and timeouts are errors;
    /// any HTTP status is a [`Reply`].
    pub async fn sync(
        &self,
        user: usize,
        pos: Option<&str>,
        timeout_ms: u64,
        body: Bytes,
    ) -> Result<Reply, String> {
        let mut url = format!("{}{MSC3575}?timeout={timeout_ms}", self.base);
        if let Some(pos) = pos {
            url.push_str("&pos=");
            url.push_str(pos);
        }
        let req = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(header::AUTHORIZATION, format!("Bearer {}", token(user)))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| format!("building the request: {e}"))?;
        let started = Instant::now();
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| format!("sending: {e:?}"))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading the body: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let limit = Duration::from_millis(timeout_ms) + SLACK;
        let (status, body) = tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| format!("no answer within {limit:?}"))??;
        let received = Instant::now();
        Ok(Reply {
            status,
            body,
            took: received - started,
            received,
        })
    }
}

/// The `pos` of a response.
pub fn pos(resp: &Value) -> Result<String, String> {
    resp["pos"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "response without pos".to_owned())
}

/// The IDs of the rooms a response carries data for, with their data.
pub fn rooms(resp: &Value) -> Vec<(&str, &Value)> {
    resp["rooms"]
        .as_object()
        .map(|rooms| rooms.iter().collect())
        .unwrap_or_default()
}

/// Whether a response carries anything: ops for the list or room data.
pub fn has_data(resp: &Value) -> bool {
    let ops = resp["lists"]["all"]["ops"]
        .as_array()
        .is_some_and(|ops| !ops.is_empty());
    ops || !rooms(resp).is_empty()
}

/// Checks a response to a new connection's first request: the list's `count`, a SYNC
/// of exactly `expected` in order, and full data for each of those rooms.
pub fn check_first_window(resp: &Value, count: usize, expected: &[String]) -> Result<(), String> {
    let list = &resp["lists"]["all"];
    if list["count"].as_u64() != Some(count as u64) {
        return Err(format!(
            "list count {:?}, expected {count}",
            list["count"].as_u64()
        ));
    }
    let mut window = Window::new(expected.len());
    window.apply(list)?;
    if window.rooms != expected {
        return Err(window_difference(&window.rooms, expected));
    }
    let rooms = rooms(resp);
    if rooms.len() != expected.len() {
        return Err(format!(
            "data for {} rooms, expected {}",
            rooms.len(),
            expected.len()
        ));
    }
    for (id, room) in rooms {
        let number = id
            .strip_prefix("!r")
            .and_then(|s| s.split('-').next())
            .unwrap_or("?");
        let name_ok = room["name"].as_str() == Some(&format!("Room {number}"));
        let timeline = room["timeline"].as_array().map_or(0, |t| t.len());
        let state = room["required_state"].as_array().map_or(0, |s| s.len());
        if !name_ok || timeline != 1 || state != 2 || room["initial"].as_bool() != Some(true) {
            return Err(format!(
                "room {id}: name {:?}, {timeline} timeline events, {state} required_state events, initial {:?}",
                room["name"].as_str(),
                room["initial"].as_bool()
            ));
        }
    }
    Ok(())
}

/// Where two room lists first differ, for error messages.
pub fn window_difference(got: &[String], expected: &[String]) -> String {
    let at = got
        .iter()
        .zip(expected)
        .position(|(g, e)| g != e)
        .unwrap_or(got.len().min(expected.len()));
    format!(
        "window of {} rooms differs from the expected {} at index {at}: {:?} instead of {:?}",
        got.len(),
        expected.len(),
        got.get(at),
        expected.get(at)
    )
}

/// The window `[0, len - 1]` as a client holds it, kept up to date by applying the
/// list's ops the way MSC3575 says.
pub struct Window {
    len: usize,
    pub rooms: Vec<String>,
}

impl Window {
    pub fn new(len: usize) -> Self {
        Self {
            len,
            rooms: Vec::with_capacity(len),
        }
    }

    pub fn contains(&self, room: &str) -> bool {
        self.rooms.iter().any(|r| r == room)
    }

    /// Applies `list["ops"]` (a response's `lists.all`).
    pub fn apply(&mut self, list: &Value) -> Result<(), String> {
        let Some(ops) = list["ops"].as_array() else {
            return Ok(());
        };
        for op in ops.iter() {
            let index = |v: &Value| {
                v.as_u64()
                    .map(|i| i as usize)
                    .ok_or_else(|| format!("op without index: {op:?}"))
            };
            match op["op"].as_str() {
                Some("SYNC") => {
                    let (start, end) = (index(&op["range"][0])?, index(&op["range"][1])?);
                    let ids: Vec<String> = op["room_ids"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)))
                        .into_iter()
                        .flatten()
                        .collect();
                    if start > self.rooms.len() || end >= self.len || ids.len() > end - start + 1 {
                        return Err(format!(
                            "SYNC [{start}, {end}] of {} rooms does not fit a window of {} holding {}",
                            ids.len(),
                            self.len,
                            self.rooms.len()
                        ));
                    }
                    let replaced = (end + 1).min(self.rooms.len());
                    self.rooms.splice(start..replaced, ids);
                }
                Some("DELETE") => {
                    let i = index(&op["index"])?;
                    // The proxy deletes the slot a room will free even when the window
                    // is not full yet; then there is nothing to remove.
                    if i < self.rooms.len() {
                        self.rooms.remove(i);
                    }
                }
                Some("INSERT") => {
                    let i = index(&op["index"])?;
                    let id = op["room_id"]
                        .as_str()
                        .ok_or_else(|| format!("INSERT without room_id: {op:?}"))?;
                    if i > self.rooms.len() || i >= self.len {
                        return Err(format!(
                            "INSERT at {i} into a window of {} holding {}",
                            self.len,
                            self.rooms.len()
                        ));
                    }
                    self.rooms.insert(i, id.to_owned());
                    self.rooms.truncate(self.len);
                }
                Some("INVALIDATE") => {
                    let start = index(&op["range"][0])?;
                    self.rooms.truncate(start);
                }
                other => return Err(format!("unknown op {other:?}")),
            }
        }
        let mut seen = HashMap::new();
        for (i, r) in self.rooms.iter().enumerate() {
            if let Some(j) = seen.insert(r.as_str(), i) {
                return Err(format!("room {r} at both {j} and {i} after {ops:?}"));
            }
        }
        Ok(())
    }
}
