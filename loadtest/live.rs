//! Phase d, live delivery: clients long-poll while messages are injected at a fixed rate
//! into random rooms of their users.
//!
//! Every message moves its room to the top of the list, so a client gets it unless, by
//! the time the proxy answers, newer messages have pushed the room out of the window
//! again, or a newer message of the same room came with it (`timeline_limit` 1). Which
//! one applies is worked out exactly from the batches the homeserver handed the proxy
//! ([`account`]); anything else a client lacks is a failure.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sonic_rs::{JsonContainerTrait, JsonValueTrait, Value};
use tokio::sync::watch;

use crate::client::{check_first_window, pos, rooms, window_difference, window_request, Window};
use crate::homeserver::{room_id, Synthetic};
use crate::phases::{check, Failed, Run};
use crate::report::{cpu_line, cpu_time, section, Failures, Ms, Samples};
use crate::Options;

/// Long-poll time of the clients.
const LONG_POLL_MS: u64 = 30_000;
/// After the last injection, wait for deliveries until this long passes without one.
const DRAIN_QUIET: Duration = Duration::from_secs(2);
/// When `--late-login` logs its user in, after injection starts.
const LATE_LOGIN_AFTER: Duration = Duration::from_secs(2);

/// An injected message: sequence number, user, room, when (since the phase's start).
type Injected = (u64, usize, usize, Duration);

/// One response as a client saw it.
struct Observed {
    /// The window after applying the response's ops.
    window: Vec<String>,
    /// Rooms that brought injected messages: room → (their sequence numbers, `limited`).
    rooms: HashMap<String, (Vec<u64>, bool)>,
}

struct LiveClient {
    c: usize,
    /// The window's size.
    n: usize,
    user: usize,
    window: Window,
    pos: String,
    seen: HashSet<u64>,
    delays: Samples,
    observed: Vec<Observed>,
    bytes: u64,
}

impl LiveClient {
    /// Applies one response: moves the window, checks that room data is only for rooms
    /// in it and that no message comes twice, and records each injected message with
    /// its delay.
    fn take(
        &mut self,
        resp: &Value,
        size: usize,
        received: Duration,
        delivered: &AtomicU64,
    ) -> Result<(), String> {
        self.pos = pos(resp)?;
        self.window.apply(&resp["lists"]["all"])?;
        self.bytes += size as u64;
        let mut brought = HashMap::new();
        for (room_id, room) in rooms(resp) {
            if !self.window.contains(room_id) {
                return Err(format!("data for {room_id}, which is not in the window"));
            }
            let mut seqs = Vec::new();
            for ev in room["timeline"]
                .as_array()
                .into_iter()
                .flat_map(|a| a.iter())
            {
                let Some(inj_ns) = ev["content"]["inj_ns"].as_u64() else {
                    continue;
                };
                let seq = ev["event_id"]
                    .as_str()
                    .and_then(|id| id.strip_prefix("$live"))
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| format!("injected event without its ID: {ev:?}"))?;
                if !self.seen.insert(seq) {
                    return Err(format!("$live{seq} delivered twice, in {room_id}"));
                }
                delivered.fetch_add(1, Ordering::Relaxed);
                let received_ns = received.as_nanos() as u64;
                self.delays
                    .push(Duration::from_nanos(received_ns.saturating_sub(inj_ns)));
                seqs.push(seq);
            }
            if !seqs.is_empty() {
                let limited = room["limited"].as_bool() == Some(true);
                brought.insert(room_id.to_owned(), (seqs, limited));
            }
        }
        self.observed.push(Observed {
            window: self.window.rooms.clone(),
            rooms: brought,
        });
        Ok(())
    }
}

/// Where each injected message of one client's user ended up.
#[derive(Default)]
struct Tally {
    received: u64,
    /// Newer messages pushed the room out of the window before the proxy answered.
    pushed_out: u64,
    /// A newer message of the room came in the same response, `limited`.
    elided: u64,
    missing: u64,
}

/// Checks one client's responses against the batches its user's poller was handed:
/// each window must be the order after some prefix of them (never going back), and each
/// message the client lacks must be explained by that order.
fn account(
    lc: &LiveClient,
    start: &[String],
    batches: &[Vec<(u64, usize)>],
    injected: &[Injected],
    failures: &Failures,
) -> Tally {
    let mut tally = Tally::default();
    let n = start.len();
    // states[k]: the window once the first k batches are applied.
    let mut states = vec![start.to_vec()];
    let mut batch_of = HashMap::new();
    for (k, batch) in batches.iter().enumerate() {
        let mut window = states[k].clone();
        for &(seq, room) in batch {
            let id = room_id(lc.user, room);
            window.retain(|r| *r != id);
            window.insert(0, id);
            window.truncate(n);
            batch_of.insert(seq, k + 1);
        }
        states.push(window);
    }
    // The earliest state each response can have shown, at or after the previous one's.
    let mut shown = Vec::with_capacity(lc.observed.len());
    let mut k = 0;
    for (j, obs) in lc.observed.iter().enumerate() {
        match (k..states.len()).find(|&i| states[i] == obs.window) {
            Some(i) => {
                k = i;
                shown.push(i);
            }
            None => {
                let next = &states[(k + 1).min(states.len() - 1)];
                failures.record(format!(
                    "client {}, response {j}: the window is in no order the homeserver's batches {k}.. lead to; against the next one: {}",
                    lc.c,
                    window_difference(&obs.window, next)
                ));
                return tally;
            }
        }
    }
    if k != batches.len() {
        failures.record(format!(
            "client {}: the last response shows batch {k} of {} handed to the proxy",
            lc.c,
            batches.len()
        ));
    }
    for &(seq, user, room, _) in injected.iter().filter(|i| i.1 == lc.user) {
        if lc.seen.contains(&seq) {
            tally.received += 1;
            continue;
        }
        let id = room_id(user, room);
        let lost = |why: &str| format!("client {}: $live{seq} in {id} {why}", lc.c);
        let Some(&b) = batch_of.get(&seq) else {
            tally.missing += 1;
            failures.record(lost("was never polled by the proxy"));
            continue;
        };
        let Some(j) = shown.iter().position(|&k| k >= b) else {
            tally.missing += 1;
            failures.record(lost("never arrived: no response shows its batch"));
            continue;
        };
        if !lc.observed[j].window.contains(&id) {
            tally.pushed_out += 1;
            continue;
        }
        // The room was in the window once the proxy had the message: the first response
        // from then on that brings the room must bring it, or a newer one, `limited`.
        let first = lc.observed[j..]
            .iter()
            .find_map(|o| o.rooms.get(&id).cloned());
        match first {
            Some((seqs, true)) if seqs.iter().any(|&s| s > seq) => tally.elided += 1,
            _ => {
                tally.missing += 1;
                failures.record(lost("never arrived, though its room was in the window"));
            }
        }
    }
    tally
}

/// d. Live delivery (see the module).
pub async fn live_delivery(run: &Run) -> Result<(), Failed> {
    let Options {
        users,
        clients,
        seconds,
        rate,
        ..
    } = run.opts;
    let n = run.window();
    // Messages go only to users some client watches, so all of them can be checked.
    let watched = users.min(clients);
    section(&format!(
        "d. live delivery: {clients} clients long-polling (timeout={LONG_POLL_MS}) on [0,{}]; {rate} messages/s into random rooms of {watched} users for {seconds} s",
        n - 1
    ));
    let failures = Arc::new(Failures::default());
    let live = open_clients(run, &failures).await;
    check(&failures, "live delivery")?;
    let start: Vec<Vec<String>> = (0..users).map(|u| run.hs.expected_window(u, n)).collect();

    let t0 = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = watch::channel(false);
    let tasks: Vec<_> = live
        .into_iter()
        .map(|lc| {
            tokio::spawn(follow(
                run.client.clone(),
                lc,
                t0,
                Arc::clone(&delivered),
                Arc::clone(&failures),
                stopped.clone(),
            ))
        })
        .collect();
    let late = run.opts.late_login.map(|rooms| {
        tokio::spawn(late_login(
            run.client.clone(),
            Arc::clone(&run.hs),
            users,
            rooms,
            n,
            t0,
        ))
    });

    let (cpu, started) = (cpu_time(), Instant::now());
    let injected = inject(run, watched, t0).await;
    let injecting = started.elapsed();
    let watchers = |user: usize| (0..clients).filter(|c| c % users == user).count() as u64;
    let possible: u64 = injected.iter().map(|i| watchers(i.1)).sum();
    drain(&delivered, possible).await;
    let (cpu, wall) = (cpu_time() - cpu, started.elapsed());

    let _ = stop.send(true);
    let mut done = Vec::new();
    for task in tasks {
        match task.await {
            Ok(lc) => done.push(lc),
            Err(e) => failures.record(format!("client task: {e}")),
        }
    }
    let late = match late {
        Some(task) => match task.await {
            Ok(Ok(late)) => Some(late),
            Ok(Err(e)) => {
                failures.record(format!("late login: {e}"));
                None
            }
            Err(e) => {
                failures.record(format!("late login task: {e}"));
                None
            }
        },
        None => None,
    };
    let flushed = run.flush().await;
    let total = tally_up(run, done, &start, &injected, &failures);
    check(&failures, "live delivery")?;

    total.print(&Printed {
        injected: injected.len(),
        injecting,
        possible,
        late,
        flushed,
        cpu: cpu_line(cpu, wall),
    });
    Ok(())
}

/// Opens each client's connection and checks its first window.
async fn open_clients(run: &Run, failures: &Failures) -> Vec<LiveClient> {
    let n = run.window();
    let mut live = Vec::new();
    for c in 0..run.opts.clients {
        let user = c % run.opts.users;
        let opened = run.open(user, &format!("live{c}"), n).await;
        let outcome = opened.and_then(|opened| {
            let mut window = Window::new(n);
            window.apply(&opened.resp["lists"]["all"])?;
            Ok(LiveClient {
                c,
                n,
                user,
                window,
                pos: opened.pos,
                seen: HashSet::new(),
                delays: Samples::default(),
                observed: Vec::new(),
                bytes: 0,
            })
        });
        match outcome {
            Ok(lc) => live.push(lc),
            Err(e) => failures.record(format!("client {c}, opening request: {e}")),
        }
    }
    live
}

/// `user` (not used so far) makes its first request [`LATE_LOGIN_AFTER`] into the
/// phase. Returns when it asked, its room count and how long the answer took.
async fn late_login(
    client: crate::client::SyncClient,
    hs: Arc<Synthetic>,
    user: usize,
    rooms: usize,
    n: usize,
    t0: Instant,
) -> Result<(Duration, usize, Duration), String> {
    tokio::time::sleep(LATE_LOGIN_AFTER).await;
    let at = t0.elapsed();
    let reply = client
        .sync(user, None, 0, window_request("late", n - 1))
        .await?;
    let resp = reply.json()?;
    check_first_window(&resp, rooms, &hs.expected_window(user, n))?;
    Ok((at, rooms, reply.took))
}

/// Waits until every possible delivery happened, or none for [`DRAIN_QUIET`].
async fn drain(delivered: &AtomicU64, possible: u64) {
    let (mut last, mut quiet_since) = (0, Instant::now());
    while delivered.load(Ordering::Relaxed) < possible && quiet_since.elapsed() < DRAIN_QUIET {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = delivered.load(Ordering::Relaxed);
        if now != last {
            (last, quiet_since) = (now, Instant::now());
        }
    }
}

/// What all clients saw, together.
#[derive(Default)]
struct Total {
    tally: Tally,
    delays: Samples,
    responses: usize,
    bytes: u64,
    largest_batch: usize,
}

/// The phase's figures besides the clients' [`Total`].
struct Printed {
    injected: usize,
    injecting: Duration,
    possible: u64,
    /// When the late login asked, its room count, how long its answer took.
    late: Option<(Duration, usize, Duration)>,
    flushed: Duration,
    cpu: String,
}

impl Total {
    fn print(&self, p: &Printed) {
        let Total { tally, .. } = self;
        println!(
            "  injected {} messages in {:.2} s ({:.0}/s); {} deliveries possible (each message to every client of its user)",
            p.injected,
            p.injecting.as_secs_f64(),
            p.injected as f64 / p.injecting.as_secs_f64(),
            p.possible
        );
        println!(
            "  received {}; not sent, correctly: {} (newer messages pushed the room out of the window first), {} (a newer message of the room came, limited); missing 0",
            tally.received, tally.pushed_out, tally.elided
        );
        println!(
            "  delivery delay, injection to the client having the response: {}",
            self.delays.summary()
        );
        println!(
            "  {} responses ({:.1} messages and {:.1} KiB each on average); largest batch the homeserver handed a poller: {} messages",
            self.responses,
            tally.received as f64 / self.responses.max(1) as f64,
            self.bytes as f64 / 1024.0 / self.responses.max(1) as f64,
            self.largest_batch
        );
        if let Some((at, rooms, took)) = p.late {
            println!(
                "  late login: a new user with {rooms} rooms logged in {:.2} s into the phase; its first request took {}",
                at.as_secs_f64(),
                Ms(took)
            );
        }
        println!(
            "  write-behind: Postgres had every row {} after the clients stopped",
            Ms(p.flushed)
        );
        println!("  {}", p.cpu);
    }
}

/// Checks each client's final window and accounts for every message of its user.
fn tally_up(
    run: &Run,
    done: Vec<LiveClient>,
    start: &[Vec<String>],
    injected: &[Injected],
    failures: &Failures,
) -> Total {
    let n = run.window();
    let mut total = Total::default();
    for lc in done {
        let final_order = run.hs.expected_window(lc.user, n);
        if lc.window.rooms != final_order {
            failures.record(format!(
                "client {}, at the end: {}",
                lc.c,
                window_difference(&lc.window.rooms, &final_order)
            ));
        }
        let batches = run.hs.batches(lc.user);
        let largest = batches.iter().map(Vec::len).max().unwrap_or(0);
        total.largest_batch = total.largest_batch.max(largest);
        let t = account(&lc, &start[lc.user], &batches, injected, failures);
        total.tally.received += t.received;
        total.tally.pushed_out += t.pushed_out;
        total.tally.elided += t.elided;
        total.tally.missing += t.missing;
        total.responses += lc.observed.len();
        total.bytes += lc.bytes;
        total.delays.extend(lc.delays);
    }
    total
}

/// One client: long-polls until told to stop, then asks once more without waiting, so
/// its window ends where the proxy's order is.
async fn follow(
    client: crate::client::SyncClient,
    mut lc: LiveClient,
    t0: Instant,
    delivered: Arc<AtomicU64>,
    failures: Arc<Failures>,
    mut stopped: watch::Receiver<bool>,
) -> LiveClient {
    let body = window_request(&format!("live{}", lc.c), lc.n - 1);
    loop {
        let request = client.sync(lc.user, Some(&lc.pos), LONG_POLL_MS, body.clone());
        let reply = tokio::select! {
            reply = request => reply,
            _ = stopped.wait_for(|stop| *stop) => break,
        };
        let outcome = reply.and_then(|reply| {
            let resp = reply.json()?;
            lc.take(&resp, reply.body.len(), reply.received - t0, &delivered)
        });
        if let Err(e) = outcome {
            failures.record(format!("client {}: {e}", lc.c));
            return lc;
        }
    }
    // A cancelled long-poll's answer, if the proxy had computed one, comes again here.
    let last = client.sync(lc.user, Some(&lc.pos), 0, body).await;
    let outcome = last.and_then(|reply| {
        let resp = reply.json()?;
        lc.take(&resp, reply.body.len(), reply.received - t0, &delivered)
    });
    if let Err(e) = outcome {
        failures.record(format!("client {}, last request: {e}", lc.c));
    }
    lc
}

/// Injects `rate × seconds` messages at a steady rate into random rooms of the first
/// `watched` users.
async fn inject(run: &Run, watched: usize, t0: Instant) -> Vec<Injected> {
    let total = run.opts.rate * run.opts.seconds;
    let mut injected = Vec::with_capacity(total as usize);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / run.opts.rate as f64));
    for _ in 0..total {
        tick.tick().await;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let user = (rng % watched as u64) as usize;
        let room = ((rng >> 24) % run.opts.rooms as u64) as usize;
        let at = t0.elapsed();
        let seq = run.hs.inject(user, room, at.as_nanos() as u64);
        injected.push((seq, user, room, at));
    }
    injected
}
