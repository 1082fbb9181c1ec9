//! A fresh database per test, on either store.
//!
//! Tests run in parallel and must not see each other's rows, so each one gets a database
//! of its own, removed when the test ends, pass or fail. A Postgres database is created
//! on the local server: `postgres://postgres@127.0.0.1:5432` (trust auth) unless
//! `SLIDESYNC_TEST_PG` names another, as a URL without a database name. An SQLite one is
//! a file in a directory of its own under the system's temporary directory.

use std::path::PathBuf;
use std::sync::Arc;

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
        let server = std::env::var("SLIDESYNC_TEST_PG")
            .unwrap_or_else(|_| DEFAULT_SERVER.to_owned())
            .trim_end_matches('/')
            .to_owned();
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
