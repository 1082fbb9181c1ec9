//! Phases a to c, and what every phase shares. Each prints its section of the report, or
//! its failures instead of numbers (and the run stops there).

use std::sync::Arc;
use std::time::{Duration, Instant};

use slidesync::api::Api;
use sonic_rs::Value;

use crate::client::{check_first_window, has_data, pos, window_request, SyncClient};
use crate::homeserver::Synthetic;
use crate::report::{cpu_line, cpu_time, section, Failures, Ms, Samples};
use crate::Options;

/// The room list window every client holds: `[0, 19]`.
const WINDOW: usize = 20;
/// The big list of phase c: `[0, 999]`.
const BIG: usize = 1000;
/// Requests of phase c; the first is reported on its own.
const BIG_REPEATS: usize = 20;

/// What every phase needs.
pub struct Run {
    pub opts: Options,
    pub client: SyncClient,
    pub hs: Arc<Synthetic>,
    pub api: Arc<Api>,
}

/// A phase failed; its failures are printed.
pub struct Failed(pub &'static str);

impl Run {
    pub fn window(&self) -> usize {
        WINDOW.min(self.opts.rooms)
    }

    /// Opens a connection for `user` with the window request and checks the answer
    /// against the order the homeserver implies.
    pub async fn open(&self, user: usize, conn: &str, n: usize) -> Result<Opened, String> {
        let reply = self
            .client
            .sync(user, None, 0, window_request(conn, n - 1))
            .await?;
        let resp = reply.json()?;
        let count = self.hs.rooms_of(user);
        check_first_window(&resp, count, &self.hs.expected_window(user, n))?;
        Ok(Opened {
            took: reply.took,
            size: reply.body.len(),
            pos: pos(&resp)?,
            resp,
        })
    }

    /// Waits until Postgres has every write queued so far; returns how long that took.
    pub async fn flush(&self) -> Duration {
        let started = Instant::now();
        self.api.store.queue().flush().await;
        started.elapsed()
    }
}

/// A new connection's first answer.
pub struct Opened {
    /// From sending the request to having the whole body.
    pub took: Duration,
    /// Body bytes.
    pub size: usize,
    pub pos: String,
    pub resp: Value,
}

/// Prints the phase's failures, if any, and then fails the phase.
pub fn check(failures: &Failures, name: &'static str) -> Result<(), Failed> {
    if failures.print() {
        Err(Failed(name))
    } else {
        Ok(())
    }
}

/// a. A new connection's first 20-room window: each user's very first request (which
/// waits for the user's first `/sync`), then many more on warm data.
pub async fn initial_window(run: &Run) -> Result<(), Failed> {
    let n = run.window();
    section(&format!(
        "a. initial window: new connection, [0,{}] by_recency, timeline_limit 1, required_state name + own membership",
        n - 1
    ));
    let failures = Failures::default();
    let mut first = Samples::default();
    for user in 0..run.opts.users {
        match run.open(user, "first", n).await {
            Ok(opened) => first.push(opened.took),
            Err(e) => failures.record(format!("user {user}, first request: {e}")),
        }
    }
    let flushed = run.flush().await;

    let mut warm = Samples::default();
    let (cpu, wall) = (cpu_time(), Instant::now());
    for i in 0..run.opts.warm {
        let user = i % run.opts.users;
        match run.open(user, "warm", n).await {
            Ok(opened) => warm.push(opened.took),
            Err(e) => failures.record(format!("user {user}, warm request {i}: {e}")),
        }
    }
    let (cpu, wall) = (cpu_time() - cpu, wall.elapsed());
    check(&failures, "initial window")?;
    println!(
        "  first request of each user (includes its first /sync: {} rooms parsed and stored): {}",
        run.opts.rooms,
        first.summary()
    );
    println!(
        "  write-behind: Postgres had every row of those first syncs {} after the last first request",
        Ms(flushed)
    );
    println!(
        "  warm new connection, sequential (Synapse native: ~56 ms): {}",
        warm.summary()
    );
    println!("  {}", cpu_line(cpu, wall));
    Ok(())
}

/// b. Clients that each hold a connection and ask again at once with their `pos` and
/// `timeout=0`, re-sending their list as clients do, for the given seconds.
pub async fn no_change(run: &Run) -> Result<(), Failed> {
    let (clients, seconds, n) = (run.opts.clients, run.opts.seconds, run.window());
    section(&format!(
        "b. no-change requests: {clients} clients, each on its own connection, pos + timeout=0, {seconds} s"
    ));
    let failures = Arc::new(Failures::default());
    let mut opened = Vec::new();
    for c in 0..clients {
        let user = c % run.opts.users;
        match run.open(user, &format!("nc{c}"), n).await {
            Ok(o) => opened.push((c, user, o.pos)),
            Err(e) => failures.record(format!("client {c}, opening request: {e}")),
        }
    }
    check(&failures, "no-change requests")?;

    let (cpu, started) = (cpu_time(), Instant::now());
    let until = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = opened
        .into_iter()
        .map(|(c, user, mut p)| {
            let client = run.client.clone();
            let failures = Arc::clone(&failures);
            let body = window_request(&format!("nc{c}"), n - 1);
            tokio::spawn(async move {
                let mut samples = Samples::default();
                while Instant::now() < until {
                    let result = async {
                        let reply = client.sync(user, Some(&p), 0, body.clone()).await?;
                        let resp = reply.json()?;
                        if has_data(&resp) {
                            return Err(format!(
                                "nothing changed, yet the response has data: {}",
                                String::from_utf8_lossy(&reply.body)
                            ));
                        }
                        Ok((reply.took, pos(&resp)?))
                    }
                    .await;
                    match result {
                        Ok((took, next)) => {
                            samples.push(took);
                            p = next;
                        }
                        Err(e) => {
                            failures.record(format!("client {c}: {e}"));
                            break;
                        }
                    }
                }
                (samples, Instant::now())
            })
        })
        .collect();
    let mut all = Samples::default();
    let mut ended = started;
    for task in tasks {
        match task.await {
            Ok((samples, end)) => {
                all.extend(samples);
                ended = ended.max(end);
            }
            Err(e) => failures.record(format!("client task: {e}")),
        }
    }
    let wall = ended - started;
    let cpu = cpu_time() - cpu;
    check(&failures, "no-change requests")?;
    println!(
        "  {} requests in {:.2} s: {:.0} requests/s (Synapse native: ~110/s with 8 clients)",
        all.len(),
        wall.as_secs_f64(),
        all.len() as f64 / wall.as_secs_f64()
    );
    println!("  latency: {}", all.summary());
    println!("  {}", cpu_line(cpu, wall));
    Ok(())
}

/// c. One new connection asking for the first 1000 rooms at once.
pub async fn big_list(run: &Run) -> Result<(), Failed> {
    let n = BIG.min(run.opts.rooms);
    section(&format!(
        "c. big list: new connection, [0,{}], timeline_limit 1, required_state name + own membership",
        n - 1
    ));
    let failures = Failures::default();
    let mut first = None;
    let mut again = Samples::default();
    for i in 0..BIG_REPEATS {
        match run.open(0, "big", n).await {
            Ok(opened) if i == 0 => first = Some((opened.took, opened.size)),
            Ok(opened) => again.push(opened.took),
            Err(e) => failures.record(format!("request {i}: {e}")),
        }
    }
    check(&failures, "big list")?;
    if let Some((took, size)) = first {
        println!(
            "  first: {n} rooms in {} (Synapse native: ~7 s), response {} KiB",
            Ms(took),
            size / 1024
        );
    }
    println!(
        "  the same request again, new connection each time: {}",
        again.summary()
    );
    Ok(())
}
