//! A fresh Postgres database per test.
//!
//! Tests run in parallel and must not see each other's rows, so each one gets a database
//! of its own, created on the local server and dropped when the test ends, pass or fail.
//! The server is `postgres://postgres@127.0.0.1:5432` (trust auth) unless
//! `SLIDESYNC_TEST_PG` names another, as a URL without a database name.

use sqlx::{Connection, PgConnection};

const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// A database that exists for as long as this value.
#[derive(Debug)]
pub struct TestDb {
    /// Connection URL of the database, for `PgStore::connect`.
    pub url: String,
    name: String,
    server: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
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
            name,
            server,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop cannot await, and blocking inside the test's runtime is not allowed, so the
        // DROP runs on a thread with a runtime of its own. FORCE ends the sessions a pool
        // under test may still hold open.
        let admin_url = format!("{}/postgres", self.server);
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
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
            Ok(Err(e)) => eprintln!("could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("dropping test database {} panicked", self.name),
        }
    }
}
