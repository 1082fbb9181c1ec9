//! The binary as an operator meets it: `--help`, and one clear line for each bad setting.

use std::process::{Command, Output};

use slidesync::config::SETTINGS;

/// Runs the built binary with only `env` in its environment, so the developer's own
/// `SYNCV3_*` variables cannot leak in.
fn slidesync(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_slidesync"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("the slidesync binary runs")
}

const SERVER: (&str, &str) = ("SYNCV3_SERVER", "https://matrix.example.org");
const DB: (&str, &str) = ("SYNCV3_DB", "postgres://proxy:dbpass@localhost/syncv3");
const SECRET: (&str, &str) = ("SYNCV3_SECRET", "cli-test-secret");

/// Asserts exit code 1, nothing on stdout and exactly one line on stderr; returns it.
fn fails_with_one_line(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(output.stdout.is_empty(), "stdout: {:?}", output.stdout);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr: {stderr}");
    assert!(!stderr.contains(SECRET.1), "stderr: {stderr}");
    lines[0].to_owned()
}

#[test]
fn help_exits_zero_and_lists_every_setting() {
    let output = slidesync(&["--help"], &[]);
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8(output.stdout).unwrap();
    for name in [
        "SYNCV3_SERVER",
        "SYNCV3_DB",
        "SYNCV3_DATA_DIR",
        "SYNCV3_SECRET",
        "SYNCV3_BINDADDR",
        "SYNCV3_TLS_CERT",
        "SYNCV3_TLS_KEY",
        "SYNCV3_LOG_LEVEL",
        "SYNCV3_MAX_DB_CONN",
        "SYNCV3_HTTP_TIMEOUT_SECS",
        "SYNCV3_HTTP_INITIAL_TIMEOUT_SECS",
        "SYNCV3_PROM",
        "SYNCV3_PPROF",
        "SYNCV3_LOG_FORMAT",
        "SYNCV3_PUBLIC_URL",
    ] {
        assert!(stdout.contains(name), "{name} missing from:\n{stdout}");
    }
    for setting in SETTINGS {
        assert!(stdout.contains(&format!("--{} ", setting.flag)), "{stdout}");
    }
    assert!(
        stdout.contains("Unset: the embedded store, an SQLite file in SYNCV3_DATA_DIR"),
        "the default store is named: {stdout}"
    );
}

#[test]
fn version_exits_zero() {
    let output = slidesync(&["--version"], &[]);
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn missing_server_is_one_line_naming_it() {
    let line = fails_with_one_line(&slidesync(&[], &[DB, SECRET]));
    assert!(
        line.starts_with("SYNCV3_SERVER (--server) is not set: "),
        "{line}"
    );
}

#[test]
fn server_without_a_scheme_is_one_line_naming_it() {
    let line = fails_with_one_line(&slidesync(
        &[],
        &[("SYNCV3_SERVER", "matrix.org"), DB, SECRET],
    ));
    assert!(
        line.starts_with("SYNCV3_SERVER (--server) is \"matrix.org\": not a URL; "),
        "{line}"
    );
}

#[test]
fn non_number_for_max_db_conn_is_one_line_naming_it() {
    let line = fails_with_one_line(&slidesync(
        &[],
        &[SERVER, DB, SECRET, ("SYNCV3_MAX_DB_CONN", "lots")],
    ));
    assert!(
        line.starts_with("SYNCV3_MAX_DB_CONN (--max-db-conn) is \"lots\": "),
        "{line}"
    );
}

#[test]
fn bad_log_level_is_one_line_naming_it() {
    let line = fails_with_one_line(&slidesync(
        &[],
        &[SERVER, DB, SECRET, ("SYNCV3_LOG_LEVEL", "verbose")],
    ));
    assert!(
        line.starts_with("SYNCV3_LOG_LEVEL (--log-level) is \"verbose\": "),
        "{line}"
    );
}

#[test]
fn a_flag_overrides_a_bad_environment_value() {
    let output = slidesync(
        &["--log-level", "shouting"],
        &[SERVER, DB, SECRET, ("SYNCV3_LOG_LEVEL", "info")],
    );
    let line = fails_with_one_line(&output);
    assert!(line.contains("\"shouting\""), "{line}");
}

#[test]
fn an_unreachable_database_stops_startup_with_one_line() {
    let output = slidesync(
        &[],
        &[
            ("SYNCV3_SERVER", "http://127.0.0.1:1"),
            ("SYNCV3_DB", "postgres://proxy:dbpass@127.0.0.1:1/syncv3"),
            SECRET,
        ],
    );
    let line = fails_with_one_line(&output);
    assert!(line.starts_with("SYNCV3_DB (--db)"), "{line}");
    assert!(!line.contains("dbpass"), "the password is redacted: {line}");
}

#[tokio::test]
async fn a_secret_that_does_not_decrypt_the_stored_tokens_stops_startup() {
    let db = crate::support::db::TestDb::new().await;
    {
        let store = db.open().await;
        let cipher = slidesync::store::tokens::TokenCipher::new("the original secret");
        let device = slidesync::types::DeviceKey::new("@a:test", "DEV");
        store
            .insert_token("hash", &cipher.encrypt("syt_token"), &device)
            .await
            .unwrap();
    }
    let url = db.url.clone();
    let output = tokio::task::spawn_blocking(move || {
        slidesync(
            &["--bindaddr", "127.0.0.1:0"],
            &[
                ("SYNCV3_SERVER", "http://127.0.0.1:1"),
                ("SYNCV3_DB", &url),
                SECRET,
            ],
        )
    })
    .await
    .unwrap();
    let line = fails_with_one_line(&output);
    assert!(line.starts_with("SYNCV3_SECRET (--secret)"), "{line}");
    assert!(line.contains("1 stored access tokens"), "{line}");
}

/// A generated secret that is not the one the tokens were stored under (the file was
/// replaced) stops startup, naming the file rather than a setting nobody set.
#[tokio::test]
async fn a_replaced_generated_secret_stops_startup_naming_its_file() {
    let db = crate::support::db::TestDb::sqlite();
    {
        let store = db.open().await;
        let cipher = slidesync::store::tokens::TokenCipher::new("the original secret");
        let device = slidesync::types::DeviceKey::new("@a:test", "DEV");
        store
            .insert_token("hash", &cipher.encrypt("syt_token"), &device)
            .await
            .unwrap();
    }
    let db_path = std::path::PathBuf::from(db.url.trim_start_matches("sqlite://"));
    let secret_path = db_path.with_extension("secret");
    std::fs::write(&secret_path, "some other secret\n").unwrap();
    let url = db.url.clone();
    let output = tokio::task::spawn_blocking(move || {
        slidesync(
            &["--bindaddr", "127.0.0.1:0"],
            &[
                ("SYNCV3_SERVER", "http://127.0.0.1:1"),
                ("SYNCV3_DB", &url),
                ("SYNCV3_LOG_LEVEL", "error"),
            ],
        )
    })
    .await
    .unwrap();
    let line = fails_with_one_line(&output);
    assert!(
        line.starts_with(&format!(
            "the generated secret in {} does not decrypt any of the 1 stored",
            secret_path.display()
        )),
        "{line}"
    );
}

#[test]
fn a_metrics_address_that_is_not_host_port_is_one_line_naming_it() {
    let line = fails_with_one_line(&slidesync(
        &[],
        &[SERVER, DB, SECRET, ("SYNCV3_PROM", "2112")],
    ));
    assert!(
        line.starts_with("SYNCV3_PROM (--prom) is \"2112\": not host:port; "),
        "{line}"
    );
}

#[test]
fn a_taken_profiling_port_is_one_line_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let line = fails_with_one_line(&slidesync(
        &[],
        &[SERVER, DB, SECRET, ("SYNCV3_PPROF", &addr)],
    ));
    assert!(
        line.starts_with(&format!(
            "SYNCV3_PPROF (--pprof) is \"{addr}\": cannot listen"
        )),
        "{line}"
    );
}
