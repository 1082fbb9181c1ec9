//! The synthetic homeserver: users with many rooms each, and the messages the
//! generator injects, handed to each user's poller on its next long-poll.
//!
//! Rooms are not shared between users, so every injected message concerns exactly one
//! user, and the order each user's room list must have is known here
//! ([`Synthetic::expected_window`]). Each batch of messages handed to a poller is kept
//! ([`Synthetic::batches`]), so a client's window can be checked against every state
//! the proxy may have been in.

use std::cmp::Reverse;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use slidesync::upstream::{full, Body, Homeserver, MessagesCall, SyncCall, UpstreamError, WhoAmI};
use tokio::sync::Notify;

/// `origin_server_ts` of the rooms' first messages: room `r` at `INITIAL_TS + 1000 r`,
/// so the newest room is the one with the highest number.
const INITIAL_TS: u64 = 1_600_000_000_000;
/// Injected messages are newer than every first message: number `seq` at
/// `LIVE_TS + seq`, so each one moves its room to the top.
const LIVE_TS: u64 = 1_700_000_000_000;
/// The longest a long-poll waits here, whatever timeout the poller asks for: a shorter
/// wait only costs an empty answer and a new poll.
const MAX_WAIT: Duration = Duration::from_secs(1);

pub fn user_id(user: usize) -> String {
    format!("@user{user}:load")
}

pub fn room_id(user: usize, room: usize) -> String {
    format!("!r{room}-u{user}:load")
}

pub fn token(user: usize) -> String {
    format!("tok-{user}")
}

fn first_message_ts(room: usize) -> u64 {
    INITIAL_TS + 1000 * room as u64
}

/// One user's side of the homeserver.
struct Feed {
    rooms: usize,
    /// Injected messages not yet delivered. Held for a push or a drain, never across an
    /// `.await`.
    queue: Mutex<Vec<Queued>>,
    /// Every batch handed to the poller, in order: (sequence number, room).
    handed: Mutex<Vec<Vec<(u64, usize)>>>,
    /// A user has one device, hence one poller: `notify_one` keeps a permit when that
    /// poller is not waiting yet, so an injection between its drain and its wait still
    /// wakes it.
    wake: Notify,
    /// The `origin_server_ts` of each room's newest message: the order to expect.
    latest: Mutex<Vec<u64>>,
    /// Number of the last `next_batch` handed out.
    batch: AtomicU64,
}

struct Queued {
    seq: u64,
    room: usize,
    json: String,
}

pub struct Synthetic {
    feeds: Vec<Feed>,
    next_seq: AtomicU64,
    initial_syncs: AtomicU64,
    polls: AtomicU64,
}

impl Synthetic {
    /// `rooms[u]` rooms for each user `u`.
    pub fn new(rooms: &[usize]) -> Self {
        Self {
            feeds: rooms
                .iter()
                .map(|&rooms| Feed {
                    rooms,
                    queue: Mutex::new(Vec::new()),
                    handed: Mutex::new(Vec::new()),
                    wake: Notify::new(),
                    latest: Mutex::new((0..rooms).map(first_message_ts).collect()),
                    batch: AtomicU64::new(0),
                })
                .collect(),
            next_seq: AtomicU64::new(0),
            initial_syncs: AtomicU64::new(0),
            polls: AtomicU64::new(0),
        }
    }

    /// (`/sync` calls without `since`, with `since`) served so far.
    pub fn calls(&self) -> (u64, u64) {
        (
            self.initial_syncs.load(Ordering::Relaxed),
            self.polls.load(Ordering::Relaxed),
        )
    }

    /// How many rooms `user` is in.
    pub fn rooms_of(&self, user: usize) -> usize {
        self.feeds[user].rooms
    }

    /// Messages injected so far.
    pub fn injected(&self) -> u64 {
        self.next_seq.load(Ordering::Relaxed)
    }

    /// Queues a message for `room` of `user`, carrying `inj_ns` in its content, and
    /// returns its sequence number (its event ID is `$live<seq>`).
    pub fn inject(&self, user: usize, room: usize, inj_ns: u64) -> u64 {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let ts = LIVE_TS + seq;
        let event = format!(
            r#"{{"type":"m.room.message","event_id":"$live{seq}","sender":"{}","origin_server_ts":{ts},"content":{{"msgtype":"m.text","body":"load message {seq}","inj_ns":{inj_ns}}}}}"#,
            user_id(user)
        );
        let feed = &self.feeds[user];
        feed.latest.lock()[room] = ts;
        feed.queue.lock().push(Queued {
            seq,
            room,
            json: event,
        });
        feed.wake.notify_one();
        seq
    }

    /// The first `n` room IDs of `user`'s list, newest first, given every message
    /// injected so far.
    pub fn expected_window(&self, user: usize, n: usize) -> Vec<String> {
        let latest = self.feeds[user].latest.lock();
        let mut order: Vec<(Reverse<u64>, usize)> = latest
            .iter()
            .enumerate()
            .map(|(room, ts)| (Reverse(*ts), room))
            .collect();
        // Timestamps are distinct, so the proxy's room-ID tie-break never applies.
        order.sort_unstable();
        order
            .into_iter()
            .take(n)
            .map(|(_, room)| room_id(user, room))
            .collect()
    }

    /// The batches handed to `user`'s poller so far, oldest first.
    pub fn batches(&self, user: usize) -> Vec<Vec<(u64, usize)>> {
        self.feeds[user].handed.lock().clone()
    }

    /// The first `/sync` of a user: every room with its create event, the user's join, a
    /// name and one message, written as JSON text.
    fn initial(&self, user: usize) -> String {
        let me = user_id(user);
        let rooms = self.feeds[user].rooms;
        let mut out = String::with_capacity(rooms * 900 + 64);
        out.push_str(r#"{"next_batch":"s0","rooms":{"join":{"#);
        for r in 0..rooms {
            if r > 0 {
                out.push(',');
            }
            let ts = first_message_ts(r);
            let room = room_id(user, r);
            let _ = write!(
                out,
                concat!(
                    r#""{room}":{{"state":{{"events":["#,
                    r#"{{"type":"m.room.create","state_key":"","event_id":"$c{r}-{u}","sender":"{me}","origin_server_ts":{t0},"content":{{"creator":"{me}","room_version":"10"}}}},"#,
                    r#"{{"type":"m.room.member","state_key":"{me}","event_id":"$j{r}-{u}","sender":"{me}","origin_server_ts":{t1},"content":{{"membership":"join"}}}},"#,
                    r#"{{"type":"m.room.name","state_key":"","event_id":"$n{r}-{u}","sender":"{me}","origin_server_ts":{t2},"content":{{"name":"Room {r}"}}}}"#,
                    r#"]}},"timeline":{{"events":["#,
                    r#"{{"type":"m.room.message","event_id":"$m{r}-{u}","sender":"{me}","origin_server_ts":{ts},"content":{{"msgtype":"m.text","body":"hello"}}}}"#,
                    r#"],"limited":true,"prev_batch":"p{r}"}}}}"#
                ),
                room = room,
                r = r,
                u = user,
                me = me,
                t0 = ts - 3,
                t1 = ts - 2,
                t2 = ts - 1,
                ts = ts,
            );
        }
        out.push_str("}}}");
        out
    }

    /// A long-poll: whatever was injected for the user, or an empty answer after at
    /// most [`MAX_WAIT`].
    async fn poll(&self, user: usize, since: &str, timeout_ms: u64) -> String {
        let feed = &self.feeds[user];
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(timeout_ms).min(MAX_WAIT);
        loop {
            let events = std::mem::take(&mut *feed.queue.lock());
            if !events.is_empty() {
                return batch(feed, user, events);
            }
            tokio::select! {
                () = feed.wake.notified() => {}
                () = tokio::time::sleep_until(deadline) => {
                    return format!(r#"{{"next_batch":"{since}"}}"#);
                }
            }
        }
    }

    fn user_of(&self, token: &str) -> Result<usize, UpstreamError> {
        token
            .strip_prefix("tok-")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n < self.feeds.len())
            .ok_or(UpstreamError::Unauthorized)
    }
}

/// The v2 answer carrying `events`, grouped by room in injection order.
fn batch(feed: &Feed, user: usize, events: Vec<Queued>) -> String {
    feed.handed
        .lock()
        .push(events.iter().map(|q| (q.seq, q.room)).collect());
    let mut rooms: Vec<(usize, Vec<String>)> = Vec::new();
    for Queued { room, json, .. } in events {
        match rooms.iter_mut().find(|(r, _)| *r == room) {
            Some((_, list)) => list.push(json),
            None => rooms.push((room, vec![json])),
        }
    }
    let next = feed.batch.fetch_add(1, Ordering::Relaxed) + 1;
    let mut out = format!(r#"{{"next_batch":"s{next}","rooms":{{"join":{{"#);
    for (i, (room, events)) in rooms.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            r#""{}":{{"timeline":{{"events":[{}],"limited":false}}}}"#,
            room_id(user, *room),
            events.join(",")
        );
    }
    out.push_str("}}}");
    out
}

#[async_trait]
impl Homeserver for Synthetic {
    async fn whoami(&self, token: &str) -> Result<WhoAmI, UpstreamError> {
        let user = self.user_of(token)?;
        Ok(WhoAmI {
            user_id: user_id(user),
            device_id: format!("DEV{user}"),
        })
    }

    async fn sync(&self, call: SyncCall<'_>) -> Result<Bytes, UpstreamError> {
        let user = self.user_of(call.token)?;
        let body = match call.since {
            None => {
                self.initial_syncs.fetch_add(1, Ordering::Relaxed);
                self.initial(user)
            }
            Some(since) => {
                self.polls.fetch_add(1, Ordering::Relaxed);
                self.poll(user, since, call.timeout_ms).await
            }
        };
        Ok(Bytes::from(body))
    }

    async fn versions(&self) -> Result<Bytes, UpstreamError> {
        Ok(Bytes::from_static(
            br#"{"versions":["v1.11","v1.12"],"unstable_features":{}}"#,
        ))
    }

    /// Synthetic rooms have no history before what the initial sync gives.
    async fn messages(&self, call: MessagesCall<'_>) -> Result<Bytes, UpstreamError> {
        self.user_of(call.token)?;
        Ok(Bytes::from_static(br#"{"chunk":[]}"#))
    }

    /// Synthetic devices never come from the Go proxy: nothing to catch up.
    async fn keys_changes(
        &self,
        token: &str,
        _from: &str,
        _to: &str,
    ) -> Result<Bytes, UpstreamError> {
        self.user_of(token)?;
        Ok(Bytes::from_static(br#"{"changed":[],"left":[]}"#))
    }

    async fn forward(
        &self,
        _req: http::Request<Body>,
    ) -> Result<http::Response<Body>, UpstreamError> {
        let mut resp = http::Response::new(full(
            r#"{"errcode":"M_UNRECOGNIZED","error":"not served by the synthetic homeserver"}"#,
        ));
        *resp.status_mut() = http::StatusCode::NOT_FOUND;
        Ok(resp)
    }
}
