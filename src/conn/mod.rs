//! Sliding sync connections: the protocol-neutral engine under both wire dialects.
//!
//! - [`request`]: the neutral request and response.
//! - [`connection`]: one connection's state and the pure step that computes a response.
//! - [`window`], [`required_state`]: the pieces of that step.
//! - this file: the registry of connections, `pos` bookkeeping and the long-poll.

pub mod connection;
pub mod request;
pub mod required_state;
pub mod window;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::Notify;

use self::connection::{Connection, View};
use self::request::{Dialect, SyncRequest, SyncResponse};
use crate::error::MatrixError;
use crate::extensions::{self, Applied, Extensions};
use crate::store::room::HistoryGap;
use crate::store::users::UserState;
use crate::store::Store;
use crate::types::{DeviceKey, RoomId};

/// Connections a device may hold; a new one beyond this replaces its oldest.
const MAX_CONNS_PER_DEVICE: usize = 16;
/// Lists a connection may hold. Lists are sticky, so without this a client naming new
/// lists in every request would grow the connection without bound.
pub const MAX_LISTS: usize = 100;
/// Room subscriptions a connection may hold, sticky like lists.
pub const MAX_SUBSCRIPTIONS: usize = 100;
/// Rooms a connection's windows may hold together: each held room costs memory and a
/// look on every step, so a hundred lists of `[0, 99999]` over a big account are
/// refused rather than held. Far above what a client shows.
pub const MAX_WINDOW_ROOMS: usize = 50_000;

/// Fetches history the store lacks for rooms a response sends (`ingest::history`);
/// `conn/` does no I/O itself, so the caller hands this in.
#[async_trait]
pub trait Backfill: Send + Sync {
    /// Fills what it can of `gaps` into the store; returns when done or given up.
    async fn fill(&self, gaps: Vec<HistoryGap>);
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub device: DeviceKey,
    pub conn_id: String,
}

struct Slot {
    conn: Connection,
    extensions: Extensions,
    /// The `pos` of the newest response, and of the one before (a client that did not
    /// receive the newest retries with the older one and gets it again).
    pos: u64,
    prev_pos: u64,
    last: Option<SyncResponse>,
    /// The request `last` answered, without its `txn_id`: a retry with the same body gets
    /// `last` again, a different body is new data.
    last_request: Option<SyncRequest>,
    /// A response computed for a retry with a different body, while the client had not
    /// acknowledged `last`: sent after `last`, as the Go proxy did (at most one; later
    /// retries merge into `pending`).
    queued: Option<SyncResponse>,
    /// Sticky changes of retried requests, merged as they arrive (later ones win) and
    /// applied at the next computed response: one request however often a client
    /// retries.
    pending: Option<SyncRequest>,
    responses: u64,
}

struct Entry {
    /// A `tokio` mutex because it is held across the long-poll: one request per
    /// connection at a time. A newer request first fires `cancel`, so the older one
    /// returns at once instead of holding the connection.
    slot: tokio::sync::Mutex<Slot>,
    /// Bumped by every request (and by replacing the connection); a long-poll whose
    /// request is no longer the newest stops. With the `Notify` alone a request that
    /// arrived while the older one was between two waits would go unnoticed.
    generation: AtomicU64,
    cancel: Notify,
    last_used: Mutex<Instant>,
}

impl Entry {
    /// Makes the in-flight request (if any) return; returns the caller's generation.
    fn supersede(&self) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.cancel.notify_waiters();
        generation
    }
}

pub struct Conns {
    map: DashMap<ConnKey, Arc<Entry>>,
    per_device: DashMap<DeviceKey, VecDeque<String>>,
    /// `pos` values are unique across connections, so a stale `pos` from a replaced
    /// connection can never be mistaken for the new one's; and across restarts (see
    /// [`first_pos`]), so neither can one from before a restart.
    next_pos: AtomicU64,
    idle: Duration,
}

/// What a request asks of the long-poll.
pub struct Wait {
    pub timeout: Duration,
}

impl Conns {
    pub fn new(idle: Duration) -> Self {
        Self {
            map: DashMap::new(),
            per_device: DashMap::new(),
            next_pos: AtomicU64::new(first_pos()),
            idle,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether a request with `pos` can be served at all: answered before anything slow.
    pub fn exists(&self, key: &ConnKey) -> bool {
        self.map.contains_key(key)
    }

    /// Drops connections idle for longer than the configured time; returns how many.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let idle = self.idle;
        let mut removed = Vec::new();
        self.map.retain(|key, entry| {
            let keep = now.duration_since(*entry.last_used.lock()) < idle;
            if !keep {
                removed.push(key.clone());
            }
            keep
        });
        let count = removed.len();
        for key in removed {
            if let Some(mut ids) = self.per_device.get_mut(&key.device) {
                ids.retain(|id| *id != key.conn_id);
            }
        }
        self.per_device.retain(|_, ids| !ids.is_empty());
        count
    }

    fn open(&self, key: &ConnKey, dialect: Dialect) -> Arc<Entry> {
        let entry = Arc::new(Entry {
            slot: tokio::sync::Mutex::new(Slot {
                conn: Connection::new(dialect),
                extensions: Extensions::default(),
                pos: 0,
                prev_pos: 0,
                last: None,
                last_request: None,
                queued: None,
                pending: None,
                responses: 0,
            }),
            generation: AtomicU64::new(0),
            cancel: Notify::new(),
            last_used: Mutex::new(Instant::now()),
        });
        if let Some(old) = self.map.insert(key.clone(), Arc::clone(&entry)) {
            old.supersede();
        }
        let mut ids = self.per_device.entry(key.device.clone()).or_default();
        ids.retain(|id| *id != key.conn_id);
        ids.push_back(key.conn_id.clone());
        while ids.len() > MAX_CONNS_PER_DEVICE {
            if let Some(oldest) = ids.pop_front() {
                let old_key = ConnKey {
                    device: key.device.clone(),
                    conn_id: oldest,
                };
                if let Some((_, old)) = self.map.remove(&old_key) {
                    old.supersede();
                }
            }
        }
        entry
    }

    /// Serves one request: a new connection without `pos`, else the connection `pos`
    /// belongs to. Long-polls until there is something to send, the timeout passes, or
    /// a newer request on the same connection arrives. Rooms sent with less history than
    /// asked for get it from `backfill` first, when the homeserver has it.
    #[allow(clippy::too_many_arguments)]
    pub async fn sync(
        &self,
        key: ConnKey,
        pos: Option<u64>,
        req: SyncRequest,
        wait: Wait,
        user: &UserState,
        store: &Store,
        backfill: &dyn Backfill,
    ) -> Result<SyncResponse, MatrixError> {
        let entry = match pos {
            None => self.open(&key, req.dialect),
            Some(_) => self
                .map
                .get(&key)
                .map(|e| Arc::clone(&e))
                .ok_or_else(MatrixError::unknown_pos)?,
        };
        *entry.last_used.lock() = Instant::now();
        let generation = entry.supersede();
        let mut guard = entry.slot.lock().await;
        let slot = &mut *guard;
        // A `pos` of the other dialect's connection under the same `conn_id` is not
        // this one's.
        if slot.conn.dialect() != req.dialect {
            return Err(MatrixError::unknown_pos());
        }
        check_list_count(slot, &req)?;
        check_subscription_count(slot, &req)?;
        if let Some(pos) = pos {
            if pos == slot.prev_pos && pos != slot.pos {
                if let Some(last) = slot.last.clone() {
                    // A retry: the client did not receive `last`.
                    if slot.last_request.as_ref() == Some(&without_txn_id(&req)) {
                        return Ok(last);
                    }
                    // Different data at the same pos: the Go proxy processed it at once
                    // and sent its response after the unacknowledged one.
                    if slot.queued.is_none() && slot.pending.is_none() {
                        let now = Wait {
                            timeout: Duration::ZERO,
                        };
                        let parts = (&key, user, store, backfill);
                        let queued = self.respond(&entry, generation, slot, req, now, parts);
                        slot.queued = Some(queued.await?);
                    } else {
                        slot.pending = Some(merge_pending(&slot.conn, slot.pending.take(), req));
                    }
                    return Ok(last);
                }
            }
            if pos != slot.pos {
                return Err(MatrixError::unknown_pos());
            }
            if let Some(queued) = slot.queued.take() {
                // `last` arrived; the response queued behind it goes out now, and this
                // request's changes apply to the next one.
                slot.pending = Some(merge_pending(&slot.conn, slot.pending.take(), req));
                slot.prev_pos = slot.pos;
                slot.pos = queued.pos.parse().unwrap_or_default();
                slot.last = Some(queued.clone());
                return Ok(queued);
            }
        }
        let parts = (&key, user, store, backfill);
        let resp = self
            .respond(&entry, generation, slot, req, wait, parts)
            .await?;
        slot.prev_pos = slot.pos;
        slot.pos = resp.pos.parse().unwrap_or_default();
        slot.last = Some(resp.clone());
        Ok(resp)
    }

    /// Computes the response to `req` (and to the retries merged before it), long-polling
    /// as `wait` says, and gives it the next `pos`.
    async fn respond(
        &self,
        entry: &Entry,
        generation: u64,
        slot: &mut Slot,
        req: SyncRequest,
        wait: Wait,
        (key, user, store, backfill): (&ConnKey, &UserState, &Store, &dyn Backfill),
    ) -> Result<SyncResponse, MatrixError> {
        let txn_id = req.txn_id.clone();
        let asked = without_txn_id(&req);
        // Kept until the request passes the checks below: a refused request must not
        // lose the sticky changes of the retries before it.
        let earlier = slot.pending.take();
        let mut request = Some(merge_pending(&slot.conn, earlier.clone(), req));
        let rooms = user.read().index.len();
        if slot.conn.window_rooms(request.as_ref(), rooms) > MAX_WINDOW_ROOMS {
            slot.pending = earlier;
            return Err(MatrixError::invalid_param(format!(
                "lists: the windows of a connection may hold at most {MAX_WINDOW_ROOMS} \
                 rooms together; ask for smaller or fewer ranges"
            )));
        }
        // Orders other than recency are kept only while lists use them; the first use
        // builds one (once per user, not per request).
        let orders = slot.conn.orders(request.as_ref());
        if let Err(max) = store.use_orders(user, &orders) {
            slot.pending = earlier;
            return Err(MatrixError::invalid_param(format!(
                "lists: an account's lists may use at most {max} different combinations \
                 of sort and filters at once; reuse them across lists and connections"
            )));
        }
        let deadline = tokio::time::Instant::now() + wait.timeout;
        let device = store.device(&key.device);
        // Subscribe before the first read: a change landing between the read and the
        // wait bumps the version we wait on, so it is never missed.
        let mut woken = user.subscribe();
        let mut device_woken = device.subscribe();
        let first = slot.responses == 0;
        let mut applied = slot
            .extensions
            .apply(request.as_ref().map(|r| &r.extensions));
        let mut resp = loop {
            if slot.extensions.wants_to_device() {
                store.refill_to_device(&device).await;
            }
            // The device's own message must not go out live before its poller has
            // reported its transaction ID, when another poller delivered it first. A
            // connection's first answer does not wait: it is what a new device, whose
            // first poll may take minutes, gets from memory at once.
            if !first {
                store.txn_ids.settle(&key.device).await;
            }
            let mut resp = with_view(user, store, key, |view| {
                slot.conn.step(request.take().as_ref(), view)
            });
            let gaps = slot.conn.take_history_gaps();
            if !gaps.is_empty() {
                // No lock is held here but the connection's own: its next request
                // waits for this one anyway.
                let rooms: Vec<RoomId> = gaps.iter().map(|g| g.room_id.clone()).collect();
                backfill.fill(gaps).await;
                with_view(user, store, key, |view| {
                    slot.conn.resend_whole(&rooms, view, &mut resp)
                });
            }
            // The extensions step over the response's final rooms.
            let extensions = with_view(user, store, key, |view| {
                let ctx = extensions::Context {
                    user_id: &user.user_id,
                    device: &device,
                    data: view.data,
                    room: view.room,
                    windows: &slot.conn,
                    initial: first,
                    response_rooms: &resp.rooms,
                    store,
                };
                slot.extensions.step(&applied, &ctx)
            });
            if let Some(typing) = extensions.typing.as_ref().filter(|t| !t.rooms.is_empty()) {
                with_view(user, store, key, |view| {
                    slot.conn.lazy_typing(&typing.rooms, view, &mut resp)
                });
            }
            resp.extensions = extensions;
            // Only the first step of a request sees what it turned on.
            applied = Applied::default();
            // A timeout of 0 (or one already over) answers now, not at the next timer tick.
            if first || resp.has_data() || tokio::time::Instant::now() >= deadline {
                break resp;
            }
            let cancelled = entry.cancel.notified();
            tokio::pin!(cancelled);
            cancelled.as_mut().enable();
            if entry.generation.load(Ordering::SeqCst) != generation {
                break resp;
            }
            let wants_device = slot.extensions.wants_device();
            tokio::select! {
                changed = woken.changed() => if changed.is_err() { break resp },
                changed = device_woken.changed(), if wants_device => {
                    if changed.is_err() { break resp }
                }
                _ = tokio::time::sleep_until(deadline) => break resp,
                _ = cancelled => break resp,
            }
        };
        slot.conn.finish(&mut resp);
        let new_pos = self.next_pos.fetch_add(1, Ordering::Relaxed);
        slot.responses += 1;
        slot.last_request = Some(asked);
        resp.pos = new_pos.to_string();
        resp.txn_id = txn_id;
        *entry.last_used.lock() = Instant::now();
        Ok(resp)
    }
}

/// The request as compared for retries: the Go proxy ignored `txn_id` there.
fn without_txn_id(req: &SyncRequest) -> SyncRequest {
    SyncRequest {
        txn_id: None,
        ..req.clone()
    }
}

/// Runs `f` over the user's data as published now and the store's rooms.
fn with_view<R>(
    user: &UserState,
    store: &Store,
    key: &ConnKey,
    f: impl FnOnce(&View<'_>) -> R,
) -> R {
    // Read before the user's data: a room the data names is then never newer than it.
    let position = store.position_now();
    let data = user.read();
    let room = |id: &str| store.room(id);
    let txn_id = |event: &str| store.txn_ids.get(&key.device, event);
    f(&View {
        user_id: &user.user_id,
        data: &data,
        room: &room,
        position,
        txn_id: &txn_id,
    })
}

/// The first `pos` of this process: the clock in microseconds. A restarted proxy then
/// starts above every `pos` the previous process gave out (unless that one served more
/// than a million responses a second, or the clock went back), so a client's `pos` from
/// before the restart gets `M_UNKNOWN_POS` instead of matching a new connection's.
fn first_pos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
        .max(1)
}

/// Refuses a request that would make the connection hold more than [`MAX_LISTS`] lists,
/// counting those of pending retried requests. Costs what the request names, not what
/// the connection holds.
fn check_list_count(slot: &Slot, req: &SyncRequest) -> Result<(), MatrixError> {
    // Lists a request does not name are dropped in a dialect without sticky lists; the
    // dialect's parser caps how many one request names.
    if !req.dialect.is_sticky() {
        return Ok(());
    }
    let pending = slot.pending.as_ref().map(|p| &p.lists);
    let is_new = |name: &String| !slot.conn.has_list(name);
    let mut added = pending.map_or(0, |p| p.keys().filter(|n| is_new(n)).count());
    added += req
        .lists
        .keys()
        .filter(|n| is_new(n) && !pending.is_some_and(|p| p.contains_key(*n)))
        .count();
    if slot.conn.list_count() + added > MAX_LISTS {
        return Err(MatrixError::invalid_param(format!(
            "lists: a connection holds at most {MAX_LISTS} lists, and lists are sticky; \
             reuse list names or start a new connection without pos"
        )));
    }
    Ok(())
}

/// Refuses a request that would make the connection hold more than
/// [`MAX_SUBSCRIPTIONS`] room subscriptions, counting pending retried requests and
/// applying each request's subscriptions before its unsubscriptions.
fn check_subscription_count(slot: &Slot, req: &SyncRequest) -> Result<(), MatrixError> {
    if !req.dialect.is_sticky() {
        return Ok(());
    }
    let mut added: HashSet<&RoomId> = HashSet::new();
    let mut removed: HashSet<&RoomId> = HashSet::new();
    for r in slot.pending.iter().chain(std::iter::once(req)) {
        for room in r.room_subscriptions.keys() {
            if slot.conn.is_subscribed(room) {
                removed.remove(room);
            } else {
                added.insert(room);
            }
        }
        for room in &r.unsubscribe_rooms {
            if slot.conn.is_subscribed(room) {
                removed.insert(room);
            } else {
                added.remove(room);
            }
        }
    }
    if slot.conn.subscription_count() + added.len() - removed.len() > MAX_SUBSCRIPTIONS {
        return Err(MatrixError::invalid_param(format!(
            "room_subscriptions: a connection holds at most {MAX_SUBSCRIPTIONS} room \
             subscriptions, and they are sticky; unsubscribe from rooms with \
             unsubscribe_rooms"
        )));
    }
    Ok(())
}

/// Merges a request retried at an old `pos` into the ones retried before it: sticky
/// parameters it states win. Unsubscriptions are kept only for rooms the connection
/// holds, so retries cannot pile them up.
fn merge_pending(
    conn: &Connection,
    earlier: Option<SyncRequest>,
    later: SyncRequest,
) -> SyncRequest {
    // Without sticky parameters the newest request states everything.
    if !later.dialect.is_sticky() {
        return later;
    }
    let mut merged = earlier.unwrap_or_default();
    for (room, sub) in later.room_subscriptions {
        merged.unsubscribe_rooms.retain(|r| *r != room);
        merged.room_subscriptions.insert(room, sub);
    }
    for room in later.unsubscribe_rooms {
        merged.room_subscriptions.remove(&room);
        if conn.is_subscribed(&room) && !merged.unsubscribe_rooms.contains(&room) {
            merged.unsubscribe_rooms.push(room);
        }
    }
    merged.conn_id = later.conn_id;
    merged.txn_id = later.txn_id;
    merged.extensions.merge(&later.extensions);
    for (name, params) in later.lists {
        merged.lists.entry(name).or_default().overlay(params);
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::request::{ListParams, RoomSubscription};
    use crate::store::testing::store;

    fn key(conn_id: &str) -> ConnKey {
        ConnKey {
            device: DeviceKey::new("@a:x", "DEV"),
            conn_id: conn_id.into(),
        }
    }

    #[test]
    fn idle_connections_are_swept() {
        let conns = Conns::new(Duration::from_secs(60));
        conns.open(&key("kept"), Dialect::Msc3575);
        conns.sweep();
        assert_eq!(conns.len(), 1);
        let conns = Conns::new(Duration::ZERO);
        conns.open(&key("idle"), Dialect::Msc3575);
        conns.sweep();
        assert!(conns.is_empty());
        assert!(conns.per_device.is_empty());
    }

    #[test]
    fn a_device_cannot_open_connections_without_bound() {
        let conns = Conns::new(Duration::from_secs(60));
        for i in 0..MAX_CONNS_PER_DEVICE + 5 {
            conns.open(&key(&format!("c{i}")), Dialect::Msc3575);
        }
        assert_eq!(conns.len(), MAX_CONNS_PER_DEVICE);
        assert!(
            !conns.map.contains_key(&key("c0")),
            "the oldest one went first"
        );
        assert!(conns
            .map
            .contains_key(&key(&format!("c{}", MAX_CONNS_PER_DEVICE + 4))));
    }

    fn lists(names: impl IntoIterator<Item = String>, params: ListParams) -> SyncRequest {
        SyncRequest {
            lists: names.into_iter().map(|n| (n, params.clone())).collect(),
            ..SyncRequest::default()
        }
    }

    async fn sync(
        conns: &Conns,
        store: &Store,
        pos: Option<&str>,
        req: SyncRequest,
    ) -> Result<SyncResponse, MatrixError> {
        let user = store.user_or_insert(&"@a:x".into());
        let wait = Wait {
            timeout: Duration::ZERO,
        };
        let pos = pos.map(|p| p.parse().unwrap());
        conns
            .sync(key(""), pos, req, wait, &user, store, &NoHistory)
            .await
    }

    #[tokio::test]
    async fn retries_of_an_old_pos_are_merged_into_one_pending_request() {
        let store = store();
        let conns = Conns::new(Duration::from_secs(60));
        let first = sync(&conns, &store, None, SyncRequest::default())
            .await
            .unwrap();
        let second = sync(&conns, &store, Some(&first.pos), SyncRequest::default())
            .await
            .unwrap();
        for i in 0..1_000 {
            let params = if i % 2 == 0 {
                ListParams {
                    ranges: Some(vec![(0, i)]),
                    ..ListParams::default()
                }
            } else {
                ListParams {
                    timeline_limit: Some(i),
                    ..ListParams::default()
                }
            };
            let retried = sync(
                &conns,
                &store,
                Some(&first.pos),
                lists(["all".into()], params),
            )
            .await
            .unwrap();
            assert_eq!(retried.pos, second.pos, "the newest response is resent");
        }
        let entry = Arc::clone(&conns.map.get(&key("")).unwrap());
        let slot = entry.slot.lock().await;
        let expected = lists(
            ["all".into()],
            ListParams {
                ranges: Some(vec![(0, 998)]),
                timeline_limit: Some(999),
                ..ListParams::default()
            },
        );
        assert_eq!(slot.pending.as_ref(), Some(&expected), "later retries win");
    }

    #[tokio::test]
    async fn a_connection_cannot_gather_lists_without_bound() {
        let store = store();
        let conns = Conns::new(Duration::from_secs(60));
        let names = |from: usize, to: usize| (from..to).map(|i| format!("l{i}"));
        let first = sync(
            &conns,
            &store,
            None,
            lists(names(0, 60), ListParams::default()),
        )
        .await
        .unwrap();
        let full = sync(
            &conns,
            &store,
            Some(&first.pos),
            lists(names(60, MAX_LISTS), ListParams::default()),
        )
        .await
        .unwrap();
        let more = sync(
            &conns,
            &store,
            Some(&full.pos),
            lists(names(MAX_LISTS, MAX_LISTS + 1), ListParams::default()),
        )
        .await
        .unwrap_err();
        assert_eq!(more.errcode, "M_INVALID_PARAM");
        let retried = sync(
            &conns,
            &store,
            Some(&first.pos),
            lists(names(MAX_LISTS, MAX_LISTS + 1), ListParams::default()),
        )
        .await
        .unwrap_err();
        assert_eq!(retried.errcode, "M_INVALID_PARAM", "nor through retries");
        sync(
            &conns,
            &store,
            Some(&full.pos),
            lists(names(0, MAX_LISTS), ListParams::default()),
        )
        .await
        .expect("lists it holds can be named again");
    }

    fn subscribe(rooms: impl IntoIterator<Item = String>) -> SyncRequest {
        SyncRequest {
            room_subscriptions: rooms
                .into_iter()
                .map(|r| (r.into(), RoomSubscription::default()))
                .collect(),
            ..SyncRequest::default()
        }
    }

    fn unsubscribe(rooms: impl IntoIterator<Item = String>) -> SyncRequest {
        SyncRequest {
            unsubscribe_rooms: rooms.into_iter().map(Into::into).collect(),
            ..SyncRequest::default()
        }
    }

    #[tokio::test]
    async fn subscriptions_are_capped_and_retried_unsubscriptions_do_not_pile_up() {
        let store = store();
        let conns = Conns::new(Duration::from_secs(60));
        let rooms = |from: usize, to: usize| (from..to).map(|i| format!("!r{i}:x"));
        let first = sync(&conns, &store, None, subscribe(rooms(0, MAX_SUBSCRIPTIONS)))
            .await
            .unwrap();
        let over = sync(&conns, &store, Some(&first.pos), subscribe(rooms(100, 101))).await;
        assert_eq!(over.unwrap_err().errcode, "M_INVALID_PARAM");
        // Swapping one for another in one request stays within the cap.
        let mut swap = subscribe(rooms(100, 101));
        swap.unsubscribe_rooms = vec!["!r0:x".into()];
        let second = sync(&conns, &store, Some(&first.pos), swap).await.unwrap();

        // Retries at the old pos naming rooms the connection does not hold keep nothing.
        for i in 0..1_000 {
            let retried = sync(
                &conns,
                &store,
                Some(&first.pos),
                unsubscribe(rooms(1_000 + i, 1_001 + i)),
            )
            .await
            .unwrap();
            assert_eq!(retried.pos, second.pos);
        }
        let entry = Arc::clone(&conns.map.get(&key("")).unwrap());
        let pending = entry.slot.lock().await.pending.clone().unwrap();
        assert!(pending.unsubscribe_rooms.is_empty(), "{pending:?}");
    }

    #[tokio::test]
    async fn windows_holding_too_many_rooms_together_are_refused() {
        use crate::event::Membership;
        use crate::store::testing::{delta, event, with_membership};
        let store = store();
        let user = store.user_or_insert(&"@a:x".into());
        let rooms = MAX_WINDOW_ROOMS / 100 + 1;
        for i in 0..rooms {
            let join = with_membership(
                event("m.room.member", Some("@a:x"), "@a:x", 1),
                Membership::Join,
            );
            store.apply_room(delta(&format!("!r{i}:x"), vec![join], vec![]));
        }
        assert_eq!(user.read().index.len(), rooms);
        let everything = |n: usize| {
            let params = ListParams {
                ranges: Some(vec![(0, 99_999)]),
                ..ListParams::default()
            };
            lists((0..n).map(|i| format!("l{i}")), params)
        };
        let over = sync(&conns_for_test(), &store, None, everything(100)).await;
        assert_eq!(over.unwrap_err().errcode, "M_INVALID_PARAM");
        let within = sync(&conns_for_test(), &store, None, everything(99))
            .await
            .unwrap();
        assert_eq!(within.lists.len(), 99);
    }

    struct NoHistory;

    #[async_trait]
    impl Backfill for NoHistory {
        async fn fill(&self, _: Vec<HistoryGap>) {}
    }

    fn conns_for_test() -> Conns {
        Conns::new(Duration::from_secs(60))
    }
}
