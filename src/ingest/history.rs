//! A room's history from before the device's first poll, fetched once from the
//! homeserver when a client asks for more timeline than the proxy holds.
//!
//! A device's first `/sync` asks for one event per room, so a big account's initial sync
//! stays small; the proxy then knows each room's newest event and the `prev_batch`
//! before it. When a client asks a longer `timeline_limit`, the connection reports the
//! gap ([`HistoryGap`]) and this fetches `/messages` backwards from that `prev_batch`,
//! with the asking user's token, so the homeserver applies that user's history
//! visibility. It stops at the user's own join (nothing before it is theirs to see) and
//! hands the page to the store's gap fill, which stores the events ordered before the
//! known ones; every later reader finds them there.
//!
//! A gap is fetched at most once, whether the fetch succeeded or failed: a failure is
//! logged, and the request is answered with what the proxy holds.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

use crate::conn::Backfill;
use crate::event::{Event, Membership};
use crate::store::room::HistoryGap;
use crate::store::{RoomDelta, Store};
use crate::types::RoomId;
use crate::upstream::{wire, Homeserver, MessagesCall};

/// Fetches in flight at once, across every request: each holds a homeserver connection.
const CONCURRENT: usize = 8;
/// Gaps one request fetches; a response showing more rooms serves the others as held.
const PER_REQUEST: usize = 20;
/// How long one fetch may take before the request goes on without it.
const DEADLINE: Duration = Duration::from_secs(10);
/// Gaps remembered as fetched. Past it the oldest are forgotten (and could be fetched a
/// second time); about 100 bytes each.
const REMEMBERED: usize = 100_000;

type Labels = [(&'static str, &'static str); 1];

pub struct History {
    upstream: Arc<dyn Homeserver>,
    store: Arc<Store>,
    permits: Semaphore,
    /// Gaps fetched or being fetched, oldest first. A plain mutex: held only to look up
    /// and insert, never across the fetch.
    fetched: Mutex<Fetched>,
    /// `slidesync_history_fetches_total` by `result` (`filled`, `failed`).
    pub fetches: Family<Labels, Counter>,
}

#[derive(Default)]
struct Fetched {
    set: HashSet<(RoomId, Box<str>)>,
    order: VecDeque<(RoomId, Box<str>)>,
}

impl Fetched {
    /// Claims the gap for one fetch; false if it was fetched (or is being) already.
    fn claim(&mut self, gap: &HistoryGap) -> bool {
        let key = (gap.room_id.clone(), gap.anchor.clone());
        if !self.set.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

impl History {
    pub fn new(upstream: Arc<dyn Homeserver>, store: Arc<Store>) -> Self {
        Self {
            upstream,
            store,
            permits: Semaphore::new(CONCURRENT),
            fetched: Mutex::new(Fetched::default()),
            fetches: Family::default(),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.sub_registry_with_prefix("slidesync").register(
            "history_fetches",
            "Room histories fetched from the homeserver's /messages for a client asking more timeline than the proxy held, by result",
            self.fetches.clone(),
        );
    }

    /// The fetcher for one request: `user_id`'s gaps, with their token.
    pub fn for_user<'a>(&'a self, user_id: &'a str, token: &'a str) -> ForUser<'a> {
        ForUser {
            history: self,
            user_id,
            token,
        }
    }

    async fn fill(&self, user_id: &str, token: &str, gaps: Vec<HistoryGap>) {
        let gaps: Vec<HistoryGap> = {
            let mut fetched = self.fetched.lock();
            gaps.into_iter()
                .filter(|g| fetched.claim(g))
                .take(PER_REQUEST)
                .collect()
        };
        let fetches = gaps.iter().map(|gap| async move {
            let result = match tokio::time::timeout(DEADLINE, self.fetch(user_id, token, gap))
                .await
            {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {DEADLINE:?}")),
            };
            let label = match result {
                Ok(filled) => {
                    tracing::debug!(room = %gap.room_id, filled, "room history fetched");
                    "filled"
                }
                Err(error) => {
                    tracing::warn!(room = %gap.room_id, user = user_id, %error, "cannot fetch the room's history; serving what the proxy holds");
                    "failed"
                }
            };
            self.fetches.get_or_create(&[("result", label)]).inc();
        });
        futures_util::future::join_all(fetches).await;
    }

    /// Fetches one page before the gap and fills it in; returns how many events.
    async fn fetch(&self, user_id: &str, token: &str, gap: &HistoryGap) -> Result<usize, String> {
        let Some(anchor) = self.anchor(gap) else {
            return Ok(0);
        };
        let body = self.page(token, gap, gap.want).await?;
        let body = wire::clamp(&body);
        let page = wire::parse_messages(&body).map_err(|e| e.to_string())?;
        // The page goes backwards: newest first.
        let mut older = Vec::new();
        let mut at_join = false;
        for raw in &page.chunk {
            let Ok(ev) = wire::parse_event(raw.as_raw_str().as_bytes()) else {
                continue;
            };
            if is_join_of(&ev, user_id) {
                // Nothing before the user's join is theirs to see.
                at_join = true;
                break;
            }
            older.push(ev);
            if older.len() >= gap.want {
                break;
            }
        }
        if older.is_empty() {
            return Ok(0);
        }
        // Where the kept events start: the page's end, unless the page went on past the
        // user's join; then a page of just the kept events says (other readers may see
        // further back, and this user's client pages back from there too). Without it,
        // the gap closes where it is.
        let end = if at_join {
            match self.page(token, gap, older.len()).await {
                Ok(body) => wire::parse_messages(&wire::clamp(&body))
                    .ok()
                    .and_then(|p| p.end),
                Err(_) => None,
            }
        } else {
            page.end.clone()
        };
        older.reverse();
        let filled = older.len();
        older.push(anchor);
        let mut delta = RoomDelta {
            room_id: gap.room_id.clone(),
            state: Vec::new(),
            timeline: older,
            limited: end.is_some(),
            prev_batch: end,
            stored: Default::default(),
            redacted: Vec::new(),
        };
        delta.stored = self.store.stored_copies(&delta).await;
        let queue = self.store.queue();
        let reservation = queue.reserve(delta.timeline.len() + 2).await;
        self.store.apply_room(delta);
        queue.release(reservation);
        Ok(filled)
    }

    /// One page of at most `limit` events before the gap, through the shared permits.
    async fn page(
        &self,
        token: &str,
        gap: &HistoryGap,
        limit: usize,
    ) -> Result<bytes::Bytes, String> {
        let _permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
        let call = MessagesCall {
            token,
            room_id: &gap.room_id,
            from: &gap.from,
            limit,
        };
        self.upstream
            .messages(call)
            .await
            .map_err(|e| e.to_string())
    }

    /// The gap's first known event, while it still starts the gap.
    fn anchor(&self, gap: &HistoryGap) -> Option<Event> {
        let room = self.store.room(&gap.room_id)?;
        room.timeline
            .iter()
            .find(|e| e.event_id == gap.anchor && e.gap_before)
            .map(|e| Event::clone(e))
    }
}

/// The user's own join (also a profile change while joined: history then stops a little
/// early, never late).
fn is_join_of(ev: &Event, user_id: &str) -> bool {
    ev.membership == Some(Membership::Join) && ev.state_key.as_deref() == Some(user_id)
}

/// [`History`] for one request.
pub struct ForUser<'a> {
    history: &'a History,
    user_id: &'a str,
    token: &'a str,
}

#[async_trait]
impl Backfill for ForUser<'_> {
    async fn fill(&self, gaps: Vec<HistoryGap>) {
        self.history.fill(self.user_id, self.token, gaps).await;
    }
}
