//! Load generator: a synthetic homeserver, slidesync in-process on a scratch Postgres
//! database, and sliding sync clients over HTTP. Prints a report.
//!
//! ```sh
//! cargo run --release --example loadtest -- [--users N] [--rooms R] [--clients C] \
//!     [--seconds S] [--rate M] [--warm W] [--late-login R] [--pprof HOST:PORT]
//! ```
//!
//! # Layout
//!
//! - [`homeserver`]: the synthetic homeserver behind the proxy's `Homeserver` seam.
//! - [`client`]: requests over HTTP, and the window a client holds.
//! - [`phases`]: phases a to c, each printing its section of the report.
//! - [`live`]: phase d, and how each message a client lacks is accounted for.
//! - [`report`]: percentiles, failures, the machine and the process.
//! - [`db`]: the scratch database, shared with the integration tests.
//! - this file: options, wiring, teardown.
//!
//! Every response is checked (status, window contents and order, room data, each
//! injected message arriving once); a phase with a failure prints the failures instead
//! of its numbers and the run stops with a non-zero status.

mod client;
// The tests' database per run: created on the same server (`SLIDESYNC_TEST_PG`), dropped
// when the value is, also on a panic or Ctrl-C.
#[path = "../tests/it/support/db.rs"]
// Shared with the integration tests, which use the parts the load generator does not.
#[allow(dead_code)]
mod db;
mod homeserver;
mod live;
mod phases;
mod report;

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::sync::Arc;

use futures_util::FutureExt;
use slidesync::app::{App, Settings};
use slidesync::config::{redact_db_url, BindAddr};
use slidesync::ops::listen;
use slidesync::store::tokens::TokenCipher;
use sqlx::{Connection, PgConnection};

use crate::db::{Backend, TestDb};

use crate::client::SyncClient;
use crate::homeserver::Synthetic;
use crate::phases::{Failed, Run};
use crate::report::{machine, proc_status, section};

// As in the proxy's binary, so memory and allocation costs are the production ones.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: cargo run --release --example loadtest -- [--users N] [--rooms R] [--clients C] [--seconds S] [--rate M] [--warm W] [--late-login R] [--pprof HOST:PORT]

  --users N     users of the synthetic homeserver, one device each (default 8)
  --rooms R     rooms per user, not shared between users (default 1000)
  --clients C   concurrent clients in phases b and d; client c is user c mod N (default 8)
  --seconds S   length of phases b and d (default 10)
  --rate M      messages injected per second in phase d (default 200)
  --warm W      sequential warm new-connection requests in phase a (default 500)
  --late-login R  2 s into phase d, one more user with R rooms makes its first request
                (default: none)
  --pprof HOST:PORT  serve the proxy's profiling endpoints there (as SYNCV3_PPROF) and
                print a line on stderr as each phase starts, to profile one phase

Postgres: postgres://postgres@127.0.0.1:5432 (trust), or SLIDESYNC_TEST_PG (a URL
without a database name). A scratch database is created and dropped.";

/// A device holds at most 16 connections (`conn::MAX_CONNS_PER_DEVICE`); phase b's must
/// all live beside the two opened before them.
const MAX_CLIENTS_PER_USER: usize = 14;

#[derive(Clone, Debug)]
pub struct Options {
    pub users: usize,
    pub rooms: usize,
    pub clients: usize,
    pub seconds: u64,
    pub rate: u64,
    pub warm: usize,
    /// Rooms of a user who logs in during phase d, if any.
    pub late_login: Option<usize>,
    /// Where to serve the profiling endpoints, if anywhere.
    pub pprof: Option<SocketAddr>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            users: 8,
            rooms: 1000,
            clients: 8,
            seconds: 10,
            rate: 200,
            warm: 500,
            late_login: None,
            pprof: None,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            if arg == "--help" || arg == "-h" {
                return Err(String::new());
            }
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (arg.as_str(), None),
            };
            let value = inline
                .or_else(|| args.next().cloned())
                .ok_or_else(|| format!("{name} needs a value"))?;
            if name == "--pprof" {
                o.pprof = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--pprof must be host:port, not {value:?}"))?,
                );
                continue;
            }
            let number: u64 =
                value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    format!("{name} must be a whole number above 0, not {value:?}")
                })?;
            match name {
                "--users" => o.users = number as usize,
                "--rooms" => o.rooms = number as usize,
                "--clients" => o.clients = number as usize,
                "--seconds" => o.seconds = number,
                "--rate" => o.rate = number,
                "--warm" => o.warm = number as usize,
                "--late-login" => o.late_login = Some(number as usize),
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        if o.clients.div_ceil(o.users) > MAX_CLIENTS_PER_USER {
            return Err(format!(
                "at most {MAX_CLIENTS_PER_USER} clients per user (a device holds 16 connections): raise --users or lower --clients"
            ));
        }
        Ok(o)
    }
}

/// The arguments as a shell would need them.
fn command_line(args: &[String]) -> String {
    let mut line = "cargo run --release --example loadtest".to_owned();
    if !args.is_empty() {
        line.push_str(" --");
    }
    for arg in args {
        let plain = arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=.,/:".contains(c));
        if plain {
            line.push(' ');
            line.push_str(arg);
        } else {
            line.push_str(&format!(" '{}'", arg.replace('\'', r"'\''")));
        }
    }
    line
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match Options::parse(&args) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // The proxy's own warnings and errors go to stderr, apart from the report.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    println!("slidesync load test");
    println!("command: {}", command_line(&args));
    println!(
        "settings: {} users x {} rooms, {} clients, {} s per timed phase, {} messages/s, {} warm requests{}",
        opts.users,
        opts.rooms,
        opts.clients,
        opts.seconds,
        opts.rate,
        opts.warm,
        opts.late_login.map_or(String::new(), |r| format!(
            ", a late login with {r} rooms in phase d"
        ))
    );
    println!("machine: {}", machine());
    if cfg!(debug_assertions) {
        println!("build: DEBUG (debug assertions on): numbers are not comparable; use --release");
    }
    println!("setup: generator, proxy and synthetic homeserver share this process; HTTP/1.1 keep-alive over 127.0.0.1; Postgres on the same machine");

    // Postgres: the database-size and event-count checks at the end query it.
    let db = TestDb::of(Backend::Postgres).await;
    println!("database: {}", redact_db_url(&db.url));
    // A panic anywhere in the run, or Ctrl-C, still drops the database.
    let outcome = tokio::select! {
        outcome = AssertUnwindSafe(run(&opts, &db)).catch_unwind() => match outcome {
            Ok(outcome) => outcome,
            Err(_) => Err("the load generator panicked (see above)".to_owned()),
        },
        _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
    };
    drop(db);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("\nRUN FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the proxy, runs the phases, stops it, and prints the process section.
async fn run(opts: &Options, db: &TestDb) -> Result<(), String> {
    let mut rooms = vec![opts.rooms; opts.users];
    rooms.extend(opts.late_login);
    let hs = Arc::new(Synthetic::new(&rooms));
    let persist = db.open().await;
    let app = App::start(
        persist,
        hs.clone(),
        TokenCipher::new("loadtest"),
        Settings::default(),
    )
    .await
    .map_err(|e| format!("starting the proxy: {e}"))?;
    let listener = listen::bind(&BindAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 0))))
        .await
        .map_err(|e| format!("listening: {e}"))?;
    let base = format!("http://{}", listener.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(listen::serve(listener, None, app.handler(), async {
        let _ = stopped.await;
    }));
    let (stop_pprof, pprof_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = opts.pprof {
        let listener = slidesync::ops::admin::bind("--pprof", addr)
            .await
            .map_err(|e| e.to_string())?;
        println!("pprof: http://{addr}/debug/pprof/");
        tokio::spawn(slidesync::ops::pprof::serve(listener, async {
            let _ = pprof_stopped.await;
        }));
    }

    let ctx = Run {
        opts: opts.clone(),
        client: SyncClient::new(base),
        hs: Arc::clone(&hs),
        api: Arc::clone(&app.api),
    };
    let outcome = phases(&ctx).await;
    let rss = (proc_status("VmRSS"), proc_status("VmHWM"));
    let conns = ctx.api.conns.len();
    drop(ctx);

    let _ = stop.send(());
    let _ = stop_pprof.send(());
    let _ = server.await;
    app.shutdown().await;
    outcome.map_err(|Failed(phase)| format!("phase \"{phase}\" failed"))?;

    section("e. process and machine");
    println!("  RSS after load: {} (peak {})", rss.0, rss.1);
    let (initial, polls) = hs.calls();
    println!(
        "  proxy: {conns} sliding sync connections open at the end; the homeserver served {initial} initial /sync and {polls} long-polls"
    );
    let (size, events) = usage(&db.url).await?;
    let expected = (rooms.iter().sum::<usize>() * 4) as i64 + hs.injected() as i64;
    println!(
        "  Postgres: {events} events stored (expected {expected}), database {} MiB",
        size / (1024 * 1024)
    );
    if events != expected {
        return Err(format!(
            "Postgres has {events} events after shutdown, expected {expected}"
        ));
    }
    println!("  machine: {}", machine());
    Ok(())
}

async fn phases(run: &Run) -> Result<(), Failed> {
    // With --pprof, a marker on stderr as each phase starts, so a profile can be aimed.
    let starts = |phase: &str| {
        if run.opts.pprof.is_some() {
            eprintln!("phase {phase} starts");
        }
    };
    starts("a");
    phases::initial_window(run).await?;
    starts("b");
    phases::no_change(run).await?;
    starts("c");
    phases::big_list(run).await?;
    starts("d");
    live::live_delivery(run).await
}

/// (database size in bytes, rows in the event table).
async fn usage(url: &str) -> Result<(i64, i64), String> {
    let mut conn = PgConnection::connect(url)
        .await
        .map_err(|e| e.to_string())?;
    let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM slidesync_events")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let _ = conn.close().await;
    Ok((size, events))
}
