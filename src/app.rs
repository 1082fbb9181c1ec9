//! Wiring: builds every stage from the configuration and runs them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_metrics::TaskMonitor;

use crate::api::metrics::ApiMetrics;
use crate::api::Api;
use crate::config::{redact_db_url, Config, Db, ServerAddr};
use crate::conn::Conns;
use crate::ingest::history::History;
use crate::ingest::pollers::{PollerConfig, Pollers};
use crate::ops::admin::{self, Admin, BindError};
use crate::ops::listen::{self, ListenError, Listener};
use crate::ops::metrics::{RuntimeCollector, TaskCollector};
use crate::ops::tls::{self, TlsError};
use crate::ops::{notify, pprof};
use crate::store::persist::{Persist, PersistError};
use crate::store::pg::PgStore;
use crate::store::secret::{self, SecretError};
use crate::store::sessions::Sessions;
use crate::store::sqlite::SqliteStore;
use crate::store::tokens::TokenCipher;
use crate::store::writer::WriteQueue;
use crate::store::Store;
use crate::upstream::http::{HttpHomeserver, Target};
use crate::upstream::Homeserver;

/// Why the proxy could not start. Each message names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Postgres could not be reached, migrated or read.
    #[error("SYNCV3_DB (--db) is {url:?}: {error}; check the URL and that Postgres is running and reachable")]
    Database { url: String, error: PersistError },
    /// The embedded store's file could not be opened, migrated or read.
    #[error("the embedded store {} (SYNCV3_DATA_DIR, or SYNCV3_DB=sqlite://PATH) cannot be used: {error}; check that its directory is writable and the file is slidesync's", .path.display())]
    Embedded { path: PathBuf, error: PersistError },
    /// SYNCV3_SECRET is unset and the generated one cannot be kept or read.
    #[error("SYNCV3_SECRET (--secret) is unset and the generated secret at {} cannot be used: {error}; make its directory writable or set SYNCV3_SECRET", .path.display())]
    Secret { path: PathBuf, error: SecretError },
    /// None of the stored tokens decrypts: the secret is not the one the database was
    /// written with.
    #[error("SYNCV3_SECRET (--secret) does not decrypt any of the {stored} stored access tokens: it is not the secret this database was created with; set the original secret, or point SYNCV3_DB at a new database")]
    WrongSecret { stored: usize },
    /// As [`StartupError::WrongSecret`], for a secret generated earlier and read back.
    #[error("the generated secret in {} does not decrypt any of the {stored} stored access tokens: the file was replaced, or the database was moved without it; put back the original file, set SYNCV3_SECRET to the original secret, or start from a new database", .path.display())]
    WrongGeneratedSecret { path: PathBuf, stored: usize },
    /// The listen address could not be bound.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The TLS certificate or key could not be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The metrics or profiling address could not be bound.
    #[error(transparent)]
    OpsListen(#[from] BindError),
}

/// Tunables that are not operator settings (yet).
#[derive(Clone, Debug)]
pub struct Settings {
    /// `SYNCV3_SERVER` as shown to clients in `/client/server.json`.
    pub server: String,
    pub poller: PollerConfig,
    /// A connection unused for this long is dropped (its client gets `M_UNKNOWN_POS`).
    pub conn_idle: Duration,
    /// How long a token the homeserver accepted is trusted before asking again.
    pub session_ttl: Duration,
    /// How long a rejected token is refused without asking the homeserver.
    pub rejected_ttl: Duration,
    /// Durable writes waiting for Postgres before pollers are slowed down.
    pub write_queue: usize,
    /// How long a client may take to send a request body.
    pub body_timeout: Duration,
    /// The longest shutdown waits for queued writes to commit.
    pub flush_limit: Duration,
    /// `SYNCV3_PUBLIC_URL`: where clients reach the proxy; `None` to take each
    /// request's `Host`.
    pub public_url: Option<String>,
    /// Whether the public listener serves HTTPS: the scheme of a URL taken from `Host`.
    pub https: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server: String::new(),
            poller: PollerConfig::default(),
            conn_idle: Duration::from_secs(30 * 60),
            session_ttl: Duration::from_secs(10 * 60),
            rejected_ttl: Duration::from_secs(30),
            write_queue: 16 * 1024,
            body_timeout: Duration::from_secs(30),
            flush_limit: Duration::from_secs(30),
            public_url: None,
            https: false,
        }
    }
}

/// A running proxy without its listener: tests serve it on their own socket.
pub struct App {
    pub api: Arc<Api>,
    /// Every component's metrics, for the `/metrics` listener.
    pub registry: Arc<Registry>,
    /// Every request runs under this monitor, so their cost shows in the metrics.
    requests: TaskMonitor,
    flush_limit: Duration,
    janitor: JoinHandle<()>,
}

impl App {
    /// Rebuilds the hot state from storage, resumes the pollers in the background and
    /// returns as soon as requests can be answered.
    pub async fn start(
        persist: Arc<dyn Persist>,
        upstream: Arc<dyn Homeserver>,
        cipher: TokenCipher,
        settings: Settings,
    ) -> Result<App, PersistOrSecret> {
        let devices = persist.devices().await?;
        let decryptable = devices
            .iter()
            .filter(|d| cipher.decrypt(&d.token_encrypted).is_ok())
            .count();
        if !devices.is_empty() && decryptable == 0 {
            return Err(PersistOrSecret::WrongSecret {
                stored: devices.len(),
            });
        }
        let (queue, _writer) = WriteQueue::spawn(Arc::clone(&persist), settings.write_queue);
        let started = std::time::Instant::now();
        let store = Arc::new(Store::load(&*persist, queue, &crate::upstream::wire::DECODER).await?);
        tracing::info!(
            rooms = store.room_count(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "startup rebuild done"
        );
        let sessions = Arc::new(Sessions::new(settings.session_ttl, settings.rejected_ttl));
        let pollers = Pollers::new(
            Arc::clone(&store),
            Arc::clone(&upstream),
            Arc::clone(&persist),
            Arc::clone(&sessions),
            settings.poller.clone(),
        );
        let (resumed, undecryptable) = pollers.resume(devices, &cipher);
        if undecryptable > 0 {
            tracing::warn!(undecryptable, "some stored tokens do not decrypt with SYNCV3_SECRET; those devices must make a request to be polled again");
        }
        tracing::info!(resumed, "pollers resuming in the background");
        let conns = Arc::new(Conns::new(settings.conn_idle));
        let metrics = ApiMetrics::default();
        let janitor = {
            let conns = Arc::clone(&conns);
            let store = Arc::clone(&store);
            // An order outlives the connections that used it by their idle time.
            let idle = settings.conn_idle;
            let expired = metrics.expiry_conn_timed_out.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    expired.inc_by(conns.sweep() as u64);
                    store.sweep_orders(idle);
                }
            })
        };
        let requests = TaskMonitor::new();
        let mut registry = Registry::default();
        metrics.register(&conns, &mut registry);
        pollers.register_metrics(&mut registry);
        crate::store::metrics::register(&store, &mut registry);
        let history = Arc::new(History::new(Arc::clone(&upstream), Arc::clone(&store)));
        history.register(&mut registry);
        let mut tasks = TaskCollector::default();
        tasks.add("poller", pollers.task_monitor());
        tasks.add("request", requests.clone());
        tasks.add("writer", store.queue().metrics().task.clone());
        registry.register_collector(Box::new(tasks));
        registry.register_collector(Box::new(RuntimeCollector::current()));
        let api = Arc::new(Api {
            store,
            conns,
            sessions,
            pollers,
            history,
            upstream,
            persist,
            cipher,
            server: settings.server,
            public_url: settings.public_url,
            https: settings.https,
            body_timeout: settings.body_timeout,
            // As long as the first poll's own deadline: a request waiting longer would
            // only wait for the retry.
            first_sync_wait: settings.poller.initial_timeout,
            metrics,
        });
        Ok(App {
            api,
            registry: Arc::new(registry),
            requests,
            flush_limit: settings.flush_limit,
            janitor,
        })
    }

    /// The request handler to serve.
    pub fn handler(
        &self,
    ) -> impl Fn(
        Request<Incoming>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = http::Response<crate::api::Body>> + Send>,
    > + Clone
           + Send
           + Sync
           + 'static {
        let api = Arc::clone(&self.api);
        let monitor = self.requests.clone();
        move |req| Box::pin(monitor.instrument(Arc::clone(&api).handle(req)))
    }

    /// Stops pollers and waits until every queued write is committed, each device's
    /// newest `since` included, or until `settings.flush_limit` has passed: storage that
    /// is down must not hold a restart hostage, and nothing is lost by giving up, since
    /// a device's `since` is committed only after its data and its poller resumes from
    /// the last committed one.
    pub async fn shutdown(self) {
        let started = std::time::Instant::now();
        self.janitor.abort();
        let pollers = self.api.pollers.count();
        self.api.pollers.stop_all();
        let queue = self.api.store.queue().clone();
        let queued = queue.depth();
        tracing::info!(
            pollers,
            queued,
            "shutting down: pollers stopped, committing queued writes"
        );
        match tokio::time::timeout(self.flush_limit, queue.flush()).await {
            Ok(()) => tracing::info!(
                committed = queued,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "every queued write and since is committed"
            ),
            Err(_) => tracing::error!(
                uncommitted = queue.depth(),
                limit_secs = self.flush_limit.as_secs(),
                "storage did not commit the queued writes in time; exiting without them: the devices concerned repeat their last polls after the restart"
            ),
        }
        // Everything queued before the flush is committed. Stopped pollers may still
        // queue a little while their tasks end; that is never a `since` without its
        // data (see `writer`), so the writer is not waited for: it ends with the runtime.
    }
}

/// Startup failures of [`App::start`], before they are tied to a setting.
#[derive(Debug, thiserror::Error)]
pub enum PersistOrSecret {
    #[error(transparent)]
    Persist(#[from] PersistError),
    #[error("the secret decrypts none of the {stored} stored tokens")]
    WrongSecret { stored: usize },
}

/// Opens the store `SYNCV3_DB` names, applying its migrations.
pub async fn open_store(db: &Db, max_connections: u32) -> Result<Arc<dyn Persist>, PersistError> {
    Ok(match db {
        Db::Postgres(url) => Arc::new(PgStore::connect(url, max_connections).await?),
        Db::Sqlite(path) => Arc::new(SqliteStore::connect(path).await?),
    })
}

/// A failure of the store `SYNCV3_DB` names, as the operator is told about it.
pub fn store_error(db: &Db, error: PersistError) -> StartupError {
    match db {
        Db::Postgres(url) => StartupError::Database {
            url: redact_db_url(url),
            error,
        },
        Db::Sqlite(path) => StartupError::Embedded {
            path: path.clone(),
            error,
        },
    }
}

/// Where a generated secret is kept: beside the SQLite file, or in the data directory when
/// the database is elsewhere.
fn secret_path(db: &Db, data_dir: &Path) -> PathBuf {
    match db {
        Db::Sqlite(path) => path.with_extension("secret"),
        Db::Postgres(_) => data_dir.join("slidesync.secret"),
    }
}

/// Runs the proxy until SIGINT/SIGTERM.
pub async fn run(config: Config) -> Result<(), StartupError> {
    let db_error = |error| store_error(&config.db, error);
    let (tls, certificate) = match &config.tls {
        Some(files) => {
            let (tls, certificate) = tls::server_config(files)?;
            (Some(tls), Some(certificate))
        }
        None => (None, None),
    };
    // The operator's listeners start first and stop last: `/health` answers (503) while
    // the store loads, and metrics cover the shutdown.
    let (stop_ops, ops_stopped) = tokio::sync::watch::channel(false);
    let stopped = || {
        let mut stopped = ops_stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let admin = Arc::new(Admin::default());
    let mut ops = Vec::new();
    if let Some(addr) = config.prom {
        let listener = admin::bind("SYNCV3_PROM (--prom)", addr).await?;
        ops.push(tokio::spawn(admin::serve(
            listener,
            Arc::clone(&admin),
            stopped(),
        )));
    }
    if let Some(addr) = config.pprof {
        let listener = admin::bind("SYNCV3_PPROF (--pprof)", addr).await?;
        ops.push(tokio::spawn(pprof::serve(listener, stopped())));
    }
    let persist = open_store(&config.db, config.max_db_conn)
        .await
        .map_err(db_error)?;
    let (secret, generated) = match &config.secret {
        Some(secret) => (secret.clone(), None),
        None => {
            let path = secret_path(&config.db, &config.data_dir);
            let (secret, created) =
                secret::load_or_create(&path).map_err(|error| StartupError::Secret {
                    path: path.clone(),
                    error,
                })?;
            tracing::info!(
                path = %path.display(),
                created,
                "SYNCV3_SECRET is unset: using the generated secret kept in this file; keep it with the database"
            );
            (secret, Some(path))
        }
    };
    let target = match &config.server {
        ServerAddr::Http(uri) => Target::Url(uri.clone()),
        ServerAddr::Unix(path) => Target::Unix(path.clone()),
    };
    let upstream: Arc<dyn Homeserver> = Arc::new(HttpHomeserver::new(target, config.http_timeout));
    let settings = Settings {
        server: config.server.to_string(),
        poller: PollerConfig {
            http_timeout: config.http_timeout,
            initial_timeout: config.http_initial_timeout,
            ..PollerConfig::default()
        },
        public_url: config.public_url.clone(),
        https: config.tls.is_some(),
        ..Settings::default()
    };
    let app = App::start(persist, upstream, TokenCipher::new(&secret), settings)
        .await
        .map_err(|e| match e {
            PersistOrSecret::Persist(e) => db_error(e),
            PersistOrSecret::WrongSecret { stored } => match generated {
                Some(path) => StartupError::WrongGeneratedSecret { path, stored },
                None => StartupError::WrongSecret { stored },
            },
        })?;
    admin.loaded(Arc::clone(&app.registry), Arc::clone(&app.api.pollers));
    // Only a warning, and only after every fatal check: a failed start prints one line.
    match app.api.upstream.versions().await {
        Ok(_) => tracing::info!(server = %config.server, "homeserver reachable"),
        Err(e) => {
            tracing::warn!(server = %config.server, error = %e, "homeserver not reachable at startup (SYNCV3_SERVER); continuing, pollers will retry")
        }
    }
    let listener: Listener = listen::bind(&config.bind).await?;
    if let Some(certificate) = certificate {
        tokio::spawn(reload_on_sighup(certificate));
    }
    notify::notify("READY=1");
    listen::serve(listener, tls, app.handler(), shutdown_signal()).await;
    notify::notify("STOPPING=1");
    app.shutdown().await;
    let _ = stop_ops.send(true);
    for task in ops {
        let _ = task.await;
    }
    Ok(())
}

/// Reloads the TLS certificate on each SIGHUP, as certificate renewal tools expect.
async fn reload_on_sighup(certificate: Arc<tls::Certificate>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the TLS certificate will not be reloaded");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        match certificate.reload() {
            Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: TLS certificate not reloaded; keeping the one in use")
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
