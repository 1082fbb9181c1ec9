//! The pollers: at most one per device, each a task that long-polls `/sync` with the
//! device's token and feeds the store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::{watch, Semaphore};
use tokio_metrics::TaskMonitor;

use super::metrics::{PollerCollector, PollerMetrics};
use super::v2;
use crate::ops::metrics::{flag, Held};
use crate::store::devices::DeviceState;
use crate::store::persist::{Persist, StoredDevice, Write};
use crate::store::sessions::Sessions;
use crate::store::tokens::{token_hash, TokenCipher};
use crate::store::Store;
use crate::types::{now_ms, DeviceKey};
use crate::upstream::wire::DeviceLists;
use crate::upstream::{Homeserver, SyncCall, UpstreamError};

/// The first poll of a device without `since` asks for one event per room: the room list
/// needs only the newest event, and a small initial sync is what keeps it fast.
const FILTER_INITIAL: &str = r#"{"room":{"timeline":{"limit":1}},"presence":{"not_types":["*"]}}"#;
/// The first poll of a device whose user's rooms are already known (another device of
/// theirs is polled) asks for no rooms, as the Go proxy's did: a new login is then fast,
/// and its to-device messages and key counts arrive at once.
const FILTER_TO_DEVICE_ONLY: &str =
    r#"{"room":{"rooms":[],"timeline":{"limit":1}},"presence":{"not_types":["*"]}}"#;
/// Later polls ask for the most Synapse allows, so gaps stay rare.
const FILTER_LIVE: &str = r#"{"room":{"timeline":{"limit":50}},"presence":{"not_types":["*"]}}"#;
/// Long-poll time of a caught-up poller.
const LONG_POLL_MS: u64 = 30_000;
/// First polls run at once when pollers resume after a restart: the homeserver should
/// not see every device's initial sync in the same second.
const RESUME_CONCURRENCY: usize = 16;

#[derive(Clone, Debug)]
pub struct PollerConfig {
    /// Deadline of a long-poll request.
    pub http_timeout: Duration,
    /// Deadline of a device's first (`timeout=0`, possibly huge) request.
    pub initial_timeout: Duration,
    /// First retry delay; doubles per consecutive failure up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// A poller whose polls have all failed for this long stops (as the Go proxy's did
    /// after about 50 minutes), and requests waiting for its first poll get an error; the
    /// device's next request starts a new one.
    pub give_up: Duration,
}

impl Default for PollerConfig {
    fn default() -> Self {
        Self {
            http_timeout: Duration::from_secs(300),
            initial_timeout: Duration::from_secs(1800),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(120),
            give_up: Duration::from_secs(50 * 60),
        }
    }
}

/// Where a device's poller is, as a request waiting for it sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollState {
    /// The first poll has not completed yet.
    Starting,
    /// At least one poll was applied to the store.
    Running,
    /// The homeserver rejected the token; the poller stopped.
    Expired,
    /// Every poll failed for [`PollerConfig::give_up`]; the poller stopped.
    Failed,
}

struct Handle {
    /// Swapped when the device presents a new token (refresh), so the running poller
    /// uses it from its next request on without restarting.
    token: Arc<Mutex<String>>,
    state: watch::Receiver<PollState>,
    task: tokio::task::AbortHandle,
    /// When the last poll was applied (ms since the epoch; the start until then), for
    /// the lag metric. Written by the poller, read by scrapes: a relaxed atomic is enough
    /// for a number that is only reported.
    last_ok: Arc<AtomicU64>,
}

pub struct Pollers {
    store: Arc<Store>,
    upstream: Arc<dyn Homeserver>,
    persist: Arc<dyn Persist>,
    sessions: Arc<Sessions>,
    config: PollerConfig,
    running: DashMap<DeviceKey, Handle>,
    /// Each device's newest `since`, so a device that logs in again resumes where its
    /// previous token stopped instead of doing a full initial sync.
    since: DashMap<DeviceKey, String>,
    resume_permits: Arc<Semaphore>,
    metrics: PollerMetrics,
    /// Every poller task runs under this monitor, so their cost shows in the metrics.
    tasks: TaskMonitor,
}

impl Pollers {
    pub fn new(
        store: Arc<Store>,
        upstream: Arc<dyn Homeserver>,
        persist: Arc<dyn Persist>,
        sessions: Arc<Sessions>,
        config: PollerConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            upstream,
            persist,
            sessions,
            config,
            running: DashMap::new(),
            since: DashMap::new(),
            resume_permits: Arc::new(Semaphore::new(RESUME_CONCURRENCY)),
            metrics: PollerMetrics::default(),
            tasks: TaskMonitor::new(),
        })
    }

    pub fn count(&self) -> usize {
        self.running.len()
    }

    pub fn metrics(&self) -> &PollerMetrics {
        &self.metrics
    }

    /// Registers the pollers' families and their scrape-time state.
    pub fn register_metrics(
        self: &Arc<Self>,
        registry: &mut prometheus_client::registry::Registry,
    ) {
        self.metrics.register(registry);
        registry.register_collector(Box::new(PollerCollector(Arc::clone(self))));
    }

    pub fn task_monitor(&self) -> TaskMonitor {
        self.tasks.clone()
    }

    /// Pollers whose first poll has not completed yet.
    pub fn catching_up(&self) -> usize {
        self.running
            .iter()
            .filter(|h| *h.state.borrow() == PollState::Starting)
            .count()
    }

    /// Each poller's time since its last applied poll (since its start before the
    /// first), in seconds.
    pub fn lags(&self) -> Vec<f64> {
        let now = now_ms();
        self.running
            .iter()
            .map(|h| now.saturating_sub(h.last_ok.load(Ordering::Relaxed)) as f64 / 1000.0)
            .collect()
    }

    /// Starts the device's poller unless one runs; a running one takes the token if it
    /// changed. Returns where the poller is.
    pub fn ensure(self: &Arc<Self>, device: &DeviceKey, token: &str) -> watch::Receiver<PollState> {
        self.start(device, token, false)
    }

    fn start(
        self: &Arc<Self>,
        device: &DeviceKey,
        token: &str,
        resumed: bool,
    ) -> watch::Receiver<PollState> {
        match self.running.entry(device.clone()) {
            Entry::Occupied(e) => {
                let handle = e.get();
                let mut current = handle.token.lock();
                if *current != token {
                    *current = token.to_owned();
                }
                handle.state.clone()
            }
            Entry::Vacant(e) => {
                let (tx, rx) = watch::channel(PollState::Starting);
                let token = Arc::new(Mutex::new(token.to_owned()));
                let since = self.since.get(device).map(|s| s.clone());
                let last_ok = Arc::new(AtomicU64::new(now_ms()));
                let this = Arc::clone(self);
                let task = tokio::spawn(self.tasks.instrument(this.run(
                    device.clone(),
                    Arc::clone(&token),
                    since,
                    tx,
                    resumed,
                    Arc::clone(&last_ok),
                )));
                // The vacant entry holds the shard lock, so the task cannot remove its
                // handle (on an expired token) before it is inserted.
                e.insert(Handle {
                    token,
                    state: rx.clone(),
                    task: task.abort_handle(),
                    last_ok,
                });
                rx
            }
        }
    }

    /// Stops every poller (shutdown). Data already applied is in the write queue; a
    /// poll cut short is fetched again from the last committed `since`.
    pub fn stop_all(&self) {
        for handle in self.running.iter() {
            handle.task.abort();
        }
        self.running.clear();
    }

    /// Restarts the pollers of every stored device in the background. Tokens the secret
    /// cannot decrypt are skipped and counted; returns (started, undecryptable).
    pub fn resume(
        self: &Arc<Self>,
        devices: Vec<StoredDevice>,
        cipher: &TokenCipher,
    ) -> (usize, usize) {
        let mut failed = 0;
        let mut states = Vec::with_capacity(devices.len());
        for d in devices {
            let Ok(token) = cipher.decrypt(&d.token_encrypted) else {
                failed += 1;
                continue;
            };
            if let Some(since) = d.since.filter(|s| !s.is_empty()) {
                self.since.insert(d.device.clone(), since);
            }
            states.push(self.start(&d.device, &token, true));
        }
        let started = states.len();
        tokio::spawn(report_resume(states));
        (started, failed)
    }

    async fn run(
        self: Arc<Self>,
        device: DeviceKey,
        token: Arc<Mutex<String>>,
        mut since: Option<String>,
        state: watch::Sender<PollState>,
        resumed: bool,
        last_ok: Arc<AtomicU64>,
    ) {
        let user = self.store.user_or_insert(&device.user_id);
        let device_state = self.store.device(&device);
        // Decided once: a device started while another device of its user is polled
        // never needs the rooms from its own poller. Rooms loaded at startup alone are
        // not enough: without a running poller they may be long out of date.
        let rooms_known = !resumed
            && since.is_none()
            && user.is_ready()
            && self.running.iter().any(|p| {
                p.key().user_id == device.user_id
                    && *p.key() != device
                    && *p.value().state.borrow() == PollState::Running
            });
        let mut failures: u32 = 0;
        let mut failing_since = None;
        let mut first = true;
        let mut catch_up: Option<tokio::task::JoinHandle<()>> = None;
        tracing::info!(user = %device.user_id, device = %device.device_id, resumed, has_since = since.is_some(), "poller started");
        loop {
            let token_now = token.lock().clone();
            let filter = match since {
                None if rooms_known => FILTER_TO_DEVICE_ONLY,
                None => FILTER_INITIAL,
                Some(_) => FILTER_LIVE,
            };
            let (timeout_ms, deadline) = if first {
                (0, self.config.initial_timeout)
            } else {
                (LONG_POLL_MS, self.config.http_timeout)
            };
            let permit = if resumed && first {
                self.resume_permits.clone().acquire_owned().await.ok()
            } else {
                None
            };
            // One span per poll, from the request to the data applied (a trace's unit).
            let poll = tracing::info_span!("poll", user = %device.user_id, device = %device.device_id, first);
            let in_flight = Held::new(&self.metrics.outstanding_requests);
            let call = self.upstream.sync(SyncCall {
                token: &token_now,
                since: since.as_deref(),
                timeout_ms,
                filter,
                deadline,
            });
            let result = tracing::Instrument::instrument(call, poll.clone()).await;
            drop(in_flight);
            drop(permit);
            self.metrics.total_num_polls.inc();
            let outcome = match result {
                Ok(body) => {
                    let started = Instant::now();
                    let process =
                        v2::process(&self.store, &user, &device_state, &body, &self.metrics);
                    let processed = tracing::Instrument::instrument(process, poll.clone()).await;
                    self.metrics
                        .process_duration
                        .get_or_create(&[
                            ("initial", flag(since.is_none())),
                            ("first", flag(first)),
                        ])
                        .observe(started.elapsed().as_secs_f64());
                    processed.map_err(|e| e.to_string())
                }
                Err(UpstreamError::Unauthorized) => {
                    if !self.expire(&device, &token_now).await {
                        // The device presented a new token while this request was out
                        // (a refresh): only the old one is dead.
                        tracing::info!(user = %device.user_id, device = %device.device_id, "homeserver rejected the device's previous token; polling with the new one");
                        continue;
                    }
                    tracing::warn!(user = %device.user_id, device = %device.device_id, "homeserver rejected the token; stopping the poller");
                    self.metrics.payload("V2ExpiredToken");
                    self.store.poller_stopped(&device);
                    state.send_replace(PollState::Expired);
                    return;
                }
                Err(e) => Err(e.to_string()),
            };
            drop(poll);
            match outcome {
                Ok(v2::Processed {
                    next_batch,
                    device_data,
                }) => {
                    last_ok.store(now_ms(), Ordering::Relaxed);
                    if first {
                        self.metrics.payload("V2InitialSyncComplete");
                    }
                    failures = 0;
                    failing_since = None;
                    first = false;
                    // The data is in memory: requests may be answered before its
                    // `since` has waited for room in the write queue.
                    user.set_ready();
                    if *state.borrow() != PollState::Running {
                        state.send_replace(PollState::Running);
                    }
                    if since.as_deref() != Some(&next_batch) {
                        self.since.insert(device.clone(), next_batch.clone());
                        let queue = self.store.queue();
                        let reservation = queue.reserve(1).await;
                        queue.push([Write::DeviceSince {
                            device: device.clone(),
                            since: next_batch.clone(),
                        }]);
                        queue.release(reservation);
                        if device_data {
                            // The next poll tells the homeserver to delete them.
                            queue.flush().await;
                        }
                        since = Some(next_batch);
                    }
                    // Beside polling, never in its way: a failure is tried again after
                    // the next poll.
                    let from = device_state.read().lists_catch_up.clone();
                    if let (Some(from), Some(to)) = (from, since.clone()) {
                        if catch_up.as_ref().is_none_or(|t| t.is_finished()) {
                            catch_up = Some(tokio::spawn(catch_up_lists(
                                Arc::clone(&self.store),
                                Arc::clone(&self.upstream),
                                Arc::clone(&device_state),
                                token_now,
                                from,
                                to,
                            )));
                        }
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let since_first = failing_since.get_or_insert_with(tokio::time::Instant::now);
                    if since_first.elapsed() >= self.config.give_up {
                        tracing::warn!(user = %device.user_id, device = %device.device_id, %error, failures, "every poll failed for too long; stopping the poller until the device makes a request");
                        // Only this poller's own handle: the device may have started a
                        // new one if this one was replaced.
                        self.running
                            .remove_if(&device, |_, h| Arc::ptr_eq(&h.token, &token));
                        self.store.poller_stopped(&device);
                        state.send_replace(PollState::Failed);
                        return;
                    }
                    let delay = backoff(&self.config, failures);
                    tracing::warn!(user = %device.user_id, device = %device.device_id, %error, failures, retry_in = ?delay, "poll failed");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Forgets a token the homeserver rejected. Returns whether the poller must stop: not
    /// if the device has presented another token meanwhile. The check runs under the map
    /// entry's lock, which `start` holds while it swaps tokens, so no swap slips between.
    async fn expire(&self, device: &DeviceKey, token: &str) -> bool {
        let hash = token_hash(token);
        self.sessions.forget(&hash);
        let stop = self
            .running
            .remove_if(device, |_, h| *h.token.lock() == token)
            .is_some()
            || !self.running.contains_key(device);
        if let Err(e) = self.persist.delete_token(&hash).await {
            tracing::warn!(error = %e, "could not delete the expired token");
        }
        stop
    }
}

/// Asks the homeserver which users' devices changed between a device's catch-up point
/// (the Go proxy's `since`) and `to`, a `since` its poller reached here, and adds them
/// to the device's device-list changes as a poll's would be. The device's first poll
/// here was an initial sync, which reports no such changes.
async fn catch_up_lists(
    store: Arc<Store>,
    upstream: Arc<dyn Homeserver>,
    device: Arc<DeviceState>,
    token: String,
    from: Box<str>,
    to: String,
) {
    let answer = upstream
        .keys_changes(&token, &from, &to)
        .await
        .and_then(|body| {
            sonic_rs::from_slice::<DeviceLists<'_>>(&body)
                .map(|lists| lists.users())
                .map_err(|e| UpstreamError::Invalid(e.to_string()))
        });
    let (changed, left) = match answer {
        Ok(users) => users,
        // The homeserver refuses the question itself (an old or unknown `from`), or
        // answers what is no answer: asking again would only repeat that after every
        // poll. Given up, with the one thing an operator can do about it.
        Err(
            error @ (UpstreamError::Status {
                status: 400..=428 | 430..=499,
                ..
            }
            | UpstreamError::Invalid(_)),
        ) => {
            tracing::error!(device = %device.key, %error, "the homeserver will not say which devices changed since the Go proxy's last poll; giving up: the device learns of them at their next change, or when its user logs in again");
            (Vec::new(), Vec::new())
        }
        Err(error) => {
            tracing::warn!(device = %device.key, %error, "cannot ask the homeserver for the device-list changes since the Go proxy's last poll; asking again after the next poll");
            return;
        }
    };
    tracing::info!(device = %device.key, changed = changed.len(), left = left.len(), "device lists caught up with the Go proxy's last poll");
    let queue = store.queue();
    let reservation = queue
        .reserve(changed.len().saturating_add(left.len()).saturating_add(1))
        .await;
    store.caught_up_device_lists(&device, changed, left);
    queue.release(reservation);
}

/// Logs how many resumed pollers have caught up (first poll done or token expired), at
/// most every few seconds, so an operator can watch a big restart progress.
async fn report_resume(states: Vec<watch::Receiver<PollState>>) {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let total = states.len();
    if total == 0 {
        return;
    }
    let mut pending: FuturesUnordered<_> = states
        .into_iter()
        .map(|mut state| async move {
            let _ = state.wait_for(|s| *s != PollState::Starting).await;
        })
        .collect();
    let (mut done, mut last_log) = (0usize, tokio::time::Instant::now());
    while pending.next().await.is_some() {
        done += 1;
        if done == total || last_log.elapsed() >= Duration::from_secs(5) {
            tracing::info!(done, total, "resumed pollers caught up");
            last_log = tokio::time::Instant::now();
        }
    }
}

/// Exponential back-off with jitter: half the nominal delay plus a random part, so many
/// pollers failing together (homeserver restart) do not retry in lock-step.
pub fn backoff(config: &PollerConfig, failures: u32) -> Duration {
    let nominal = config
        .backoff
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(config.max_backoff);
    let half = nominal / 2;
    half + half.mul_f64(rand::thread_rng().gen::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let c = PollerConfig {
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            ..PollerConfig::default()
        };
        for (failures, nominal) in [(1, 1), (2, 2), (3, 4), (7, 60), (40, 60)] {
            let d = backoff(&c, failures);
            let n = Duration::from_secs(nominal);
            assert!(
                d >= n / 2 && d <= n,
                "failure {failures}: {d:?} not within [{:?}, {n:?}]",
                n / 2
            );
        }
    }
}
