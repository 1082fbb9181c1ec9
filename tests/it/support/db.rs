//! A fresh database per test, on either store.
//!
//! Tests run in parallel and must not see each other's rows, so each one gets a database
//! of its own, removed when the test ends, pass or fail. An SQLite one is a file in a
//! directory of its own under the system's temporary directory. A Postgres one is created
//! on the server `SLIDESYNC_TEST_PG` names (a URL without a database name), else on
//! `postgres://postgres@127.0.0.1:5432` (trust auth) if it answers, else on a throwaway
//! cluster this process makes with `initdb` and runs until it exits, as it does Synapse.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use slidesync::config::Db;
use slidesync::store::persist::Persist;
use sqlx::{Connection, PgConnection};

const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// Which store a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A database that exists for as long as this value.
#[derive(Debug)]
pub struct TestDb {
    /// `SYNCV3_DB` for the database: a Postgres URL or `sqlite://PATH`.
    pub url: String,
    place: Place,
}

#[derive(Debug)]
enum Place {
    Postgres { name: String, server: String },
    Sqlite { dir: PathBuf },
}

impl TestDb {
    /// The store the proxy-level tests run on: Postgres, or SQLite when
    /// `SLIDESYNC_TEST_STORE=sqlite`, so the whole suite can be run against either.
    pub async fn new() -> TestDb {
        match std::env::var("SLIDESYNC_TEST_STORE").as_deref() {
            Ok("sqlite") => TestDb::sqlite(),
            Ok("postgres") | Err(_) => TestDb::postgres().await,
            Ok(other) => panic!("SLIDESYNC_TEST_STORE is {other:?}: use postgres or sqlite"),
        }
    }

    pub async fn of(backend: Backend) -> TestDb {
        match backend {
            Backend::Postgres => TestDb::postgres().await,
            Backend::Sqlite => TestDb::sqlite(),
        }
    }

    /// An empty SQLite file's place; the store creates the file.
    pub fn sqlite() -> TestDb {
        let dir = std::env::temp_dir().join(format!(
            "slidesync-test-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        TestDb {
            url: format!("sqlite://{}", dir.join("slidesync.db").display()),
            place: Place::Sqlite { dir },
        }
    }

    /// The store over this database, migrated, as the proxy opens it.
    pub async fn open(&self) -> Arc<dyn Persist> {
        let db = Db::parse(&self.url).expect("a test database URL");
        slidesync::app::open_store(&db, 4)
            .await
            .expect("open the test database")
    }

    pub async fn postgres() -> TestDb {
        let server = postgres_server().to_owned();
        let name = format!(
            "slidesync_test_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let mut admin = PgConnection::connect(&format!("{server}/postgres"))
            .await
            .unwrap_or_else(|e| panic!("tests need Postgres at {server}: {e}"));
        // The name is ours (digits and hex), so interpolating it is safe.
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        let _ = admin.close().await;
        TestDb {
            url: format!("{server}/{name}"),
            place: Place::Postgres { name, server },
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (name, server) = match &self.place {
            Place::Postgres { name, server } => (name.clone(), server),
            Place::Sqlite { dir } => {
                if let Err(e) = std::fs::remove_dir_all(dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        eprintln!("could not remove test database {}: {e}", dir.display());
                    }
                }
                return;
            }
        };
        // Drop cannot await, and blocking inside the test's runtime is not allowed, so the
        // DROP runs on a thread with a runtime of its own. FORCE ends the sessions a pool
        // under test may still hold open.
        let admin_url = format!("{server}/postgres");
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database");
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&admin_url).await?;
                sqlx::query(&sql).execute(&mut admin).await?;
                admin.close().await
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop test database {name}: {e}"),
            Err(_) => eprintln!("dropping test database {name} panicked"),
        }
    }
}

/// What to do when there is no Postgres at all; the tests never pass by skipping.
const NO_POSTGRES: &str = "the Postgres tests need Postgres: none answers on 127.0.0.1:5432, \
SLIDESYNC_TEST_PG is unset, and no initdb was found on PATH or under /usr/lib/postgresql/*/bin \
to start a throwaway one; install the Postgres server packages (Debian and Ubuntu: \
apt-get install postgresql; Fedora: dnf install postgresql-server) or set SLIDESYNC_TEST_PG \
to a server URL without a database name";

/// How long the throwaway cluster may take to accept connections.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The server of this test process, found or started by the first caller; the others
/// wait. The error is kept too, so every test reports it at once instead of retrying.
fn postgres_server() -> &'static str {
    static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
    match SERVER.get_or_init(find_or_start_server) {
        Ok(server) => server,
        Err(e) => panic!("{e}"),
    }
}

fn find_or_start_server() -> Result<String, String> {
    if let Ok(server) = std::env::var("SLIDESYNC_TEST_PG") {
        return Ok(server.trim_end_matches('/').to_owned());
    }
    let local = SocketAddr::from(([127, 0, 0, 1], 5432));
    if TcpStream::connect_timeout(&local, Duration::from_secs(1)).is_ok() {
        return Ok(DEFAULT_SERVER.to_owned());
    }
    start_cluster()
}

/// `initdb` on PATH, else the newest under Debian's `/usr/lib/postgresql/<major>/bin`.
fn postgres_bindir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| dir.join("initdb").is_file()));
    // `initdb` on PATH may be a link into the real directory, which also holds `postgres`.
    let on_path = on_path.map(|dir| {
        std::fs::canonicalize(dir.join("initdb"))
            .ok()
            .and_then(|real| real.parent().map(Path::to_path_buf))
            .unwrap_or(dir)
    });
    on_path.or_else(|| {
        let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let major = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                bin.join("initdb").is_file().then_some((major, bin))
            })
            .collect();
        majors.sort();
        majors.pop().map(|(_, bin)| bin)
    })
}

/// Makes a cluster with trust auth for `postgres` on a free port and runs its server
/// until this process exits. The data sit under the target directory, one directory per
/// process; those of processes that are gone are removed here.
fn start_cluster() -> Result<String, String> {
    let bin = postgres_bindir().ok_or_else(|| NO_POSTGRES.to_owned())?;
    // initdb and postgres refuse to run as root: as root, they run as the `postgres` user
    // the server packages create, under the system's temporary directory, since that user
    // may not be able to enter the target directory (often under root's home).
    let owner = if unsafe { libc::geteuid() } == 0 {
        Some(postgres_user()?)
    } else {
        None
    };
    let root = match owner {
        Some(_) => std::env::temp_dir().join("slidesync-test-postgres"),
        None => Path::new(
            option_env!("CARGO_TARGET_TMPDIR")
                .unwrap_or(concat!(env!("CARGO_MANIFEST_DIR"), "/target/tmp")),
        )
        .join("slidesync-test-postgres"),
    };
    remove_stale_clusters(&root);
    let dir = root.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    if let Some((uid, gid)) = owner {
        for path in [&root, &dir] {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", path.display()))?;
        }
    }
    let data = dir.join("data");
    let as_owner = |command: &mut Command| {
        if let Some((uid, gid)) = owner {
            command.uid(uid).gid(gid);
        }
    };

    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        .stdin(Stdio::null());
    as_owner(&mut initdb);
    let made = initdb
        .output()
        .map_err(|e| format!("run {}: {e}", bin.join("initdb").display()))?;
    if !made.status.success() {
        return Err(format!(
            "initdb for the throwaway test cluster failed ({}): {}",
            made.status,
            String::from_utf8_lossy(&made.stderr)
        ));
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("find a free port: {e}"))?
        .port();
    let log = std::fs::File::create(dir.join("postgres.log"))
        .map_err(|e| format!("create the cluster log: {e}"))?;
    let mut server = Command::new(bin.join("postgres"));
    server
        .arg("-D")
        .arg(&data)
        .arg("-k")
        .arg(&dir)
        .args(["-p", &port.to_string()])
        // Durability is not what these tests check on this cluster; speed is welcome.
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
        .args(["-c", "max_connections=300"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    as_owner(&mut server);
    // SAFETY: prctl is async-signal-safe. The server gets SIGINT (a fast shutdown) when
    // the thread that spawned it ends; that thread waits on it for the rest of the
    // process, so the server stops when the test process does, however it ends.
    unsafe {
        server.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (spawned_tx, spawned_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("test-postgres".into())
        .spawn(move || match server.spawn() {
            Ok(mut child) => {
                let _ = spawned_tx.send(Ok(()));
                let _ = child.wait();
            }
            Err(e) => {
                let _ = spawned_tx.send(Err(e.to_string()));
            }
        })
        .map_err(|e| format!("spawn the Postgres thread: {e}"))?;
    spawned_rx
        .recv()
        .map_err(|_| "the Postgres thread died before starting Postgres".to_owned())?
        .map_err(|e| format!("start {}: {e}", bin.join("postgres").display()))?;

    // Ready when postmaster.pid says so, as `pg_ctl -w` checks it.
    let started = Instant::now();
    let pid_file = data.join("postmaster.pid");
    while started.elapsed() < CLUSTER_READY_TIMEOUT {
        let status = std::fs::read_to_string(&pid_file).unwrap_or_default();
        if status.lines().nth(7).map(str::trim) == Some("ready") {
            eprintln!(
                "postgres: throwaway cluster ready on port {port} in {:.2?} (dir {})",
                started.elapsed(),
                dir.display()
            );
            return Ok(format!("postgres://postgres@127.0.0.1:{port}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "the throwaway test cluster did not become ready within {} s; see {}",
        CLUSTER_READY_TIMEOUT.as_secs(),
        dir.join("postgres.log").display()
    ))
}

/// (uid, gid) of the `postgres` user.
fn postgres_user() -> Result<(u32, u32), String> {
    // SAFETY: getpwnam returns a pointer into static storage or null; it is read at once,
    // and the tests call this once per process (under the OnceLock).
    let entry = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    if entry.is_null() {
        return Err(format!(
            "running as root, the throwaway test cluster needs a `postgres` user to run as \
             (initdb refuses root), and there is none; {NO_POSTGRES}"
        ));
    }
    // SAFETY: non-null, as checked above.
    let entry = unsafe { &*entry };
    Ok((entry.pw_uid, entry.pw_gid))
}

/// Removes the cluster directories of test processes that no longer run; their servers
/// stopped with them.
fn remove_stale_clusters(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
