//! `slidesync import-go`: a database shaped exactly as the Go proxy leaves it is imported
//! by the shipped binary, and a client that used the Go proxy carries on through
//! slidesync: its session, its unacknowledged to-device messages at their Go positions,
//! its device-list changes and key counts.

use std::process::Output;

use ciborium::Value as Cbor;
use slidesync::store::tokens::{token_hash, TokenCipher};
use sonic_rs::{json, JsonContainerTrait, JsonValueTrait, Value};
use sqlx::{Connection, PgConnection};

use crate::support::db::{Backend, TestDb};
use crate::support::fake::{FakeHomeserver, Reply};
use crate::support::on_both_stores;
use crate::support::proxy::{message_numbers as numbers, next_batch, pos, Proxy, SECRET};
use crate::support::v2::{sync_body, to_device};

const ALICE: &str = "@alice:test";
const BOB: &str = "@bob:test";
const ALICE_TOKEN: &str = "syt_alice_newest";
const BOB_TOKEN: &str = "syt_bob";
/// Alice's `since` in the Go database.
const ALICE_GO_SINCE: &str = "s72594_4483_1934";
const BOB_GO_SINCE: &str = "s72594_4483_1935";

/// The Go proxy's tables as its code creates them (go-proxy reference, section 2).
const GO_SCHEMA: &str = "
CREATE TABLE syncv3_sync2_tokens (
    token_hash TEXT NOT NULL PRIMARY KEY,
    token_encrypted TEXT NOT NULL,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    last_seen TIMESTAMP WITH TIME ZONE NOT NULL
);
CREATE TABLE syncv3_sync2_devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    since TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
CREATE SEQUENCE syncv3_to_device_messages_seq;
CREATE TABLE syncv3_to_device_messages (
    position BIGINT NOT NULL PRIMARY KEY DEFAULT nextval('syncv3_to_device_messages_seq'),
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    sender TEXT NOT NULL,
    message TEXT NOT NULL,
    unique_key TEXT,
    action SMALLINT DEFAULT 0
);
CREATE INDEX syncv3_to_device_messages_device_idx ON syncv3_to_device_messages(device_id);
CREATE INDEX syncv3_to_device_messages_ukey_idx ON syncv3_to_device_messages(unique_key, device_id);
CREATE INDEX syncv3_to_device_messages_pos_device_idx ON syncv3_to_device_messages(position, device_id);
CREATE TABLE syncv3_to_device_ack_pos (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    unack_pos BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
CREATE TABLE syncv3_device_data (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    data BYTEA NOT NULL,
    UNIQUE(user_id, device_id)
) WITH (fillfactor = 90);
";

const GO_DEVICE_LISTS: &str = "
CREATE TABLE syncv3_device_list_updates (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    target_user_id TEXT NOT NULL,
    target_state SMALLINT NOT NULL,
    bucket SMALLINT NOT NULL,
    UNIQUE(user_id, device_id, target_user_id, bucket)
) WITH (fillfactor = 90);
CREATE INDEX syncv3_device_list_updates_bucket_idx
    ON syncv3_device_list_updates(user_id, device_id, bucket);
";

async fn go_db(with_device_lists: bool) -> (TestDb, PgConnection) {
    let db = TestDb::postgres().await;
    let mut conn = PgConnection::connect(&db.url)
        .await
        .expect("the Go database");
    let schema = if with_device_lists {
        format!("{GO_SCHEMA}{GO_DEVICE_LISTS}")
    } else {
        GO_SCHEMA.to_owned()
    };
    sqlx::raw_sql(&schema)
        .execute(&mut conn)
        .await
        .expect("the Go schema");
    (db, conn)
}

async fn insert_token(
    conn: &mut PgConnection,
    secret: &str,
    token: &str,
    user: &str,
    device: &str,
    days_ago: i32,
) {
    sqlx::query(
        "INSERT INTO syncv3_sync2_tokens VALUES ($1, $2, $3, $4, now() - make_interval(days => $5))",
    )
    .bind(token_hash(token))
    .bind(TokenCipher::new(secret).encrypt(token))
    .bind(user)
    .bind(device)
    .bind(days_ago)
    .execute(conn)
    .await
    .expect("a Go token row");
}

async fn insert_message(conn: &mut PgConnection, position: i64, user: &str, device: &str, n: u64) {
    let message = to_device("@carol:test", "m.test", json!({"n": n}));
    sqlx::query(
        "INSERT INTO syncv3_to_device_messages \
         (position, user_id, device_id, event_type, sender, message) \
         VALUES ($1, $2, $3, 'm.test', '@carol:test', $4)",
    )
    .bind(position)
    .bind(user)
    .bind(device)
    .bind(sonic_rs::to_string(&message).unwrap())
    .execute(conn)
    .await
    .expect("a Go to-device row");
}

/// CBOR as fxamacker/cbor writes the Go `DeviceData` struct.
fn device_data(
    otk: &[(&str, i64)],
    fallback: Option<&[&str]>,
    extra: Vec<(&str, Cbor)>,
) -> Vec<u8> {
    let mut entries = vec![
        (
            Cbor::Text("otk".into()),
            Cbor::Map(
                otk.iter()
                    .map(|(k, v)| (Cbor::Text((*k).into()), Cbor::Integer((*v).into())))
                    .collect(),
            ),
        ),
        (
            Cbor::Text("fallback".into()),
            match fallback {
                Some(types) => Cbor::Array(types.iter().map(|t| Cbor::Text((*t).into())).collect()),
                None => Cbor::Null,
            },
        ),
        (Cbor::Text("c".into()), Cbor::Integer(3.into())),
    ];
    entries.extend(extra.into_iter().map(|(k, v)| (Cbor::Text(k.into()), v)));
    let mut out = Vec::new();
    ciborium::ser::into_writer(&Cbor::Map(entries), &mut out).unwrap();
    out
}

async fn insert_device_data(conn: &mut PgConnection, user: &str, device: &str, data: Vec<u8>) {
    sqlx::query("INSERT INTO syncv3_device_data VALUES ($1, $2, $3)")
        .bind(user)
        .bind(device)
        .bind(data)
        .execute(conn)
        .await
        .expect("a Go device data row");
}

/// A Go database as a running Go proxy leaves it: Alice's device was handed messages up
/// to position 7 and holds 5, 7 and 9 unacknowledged; Bob's device holds 12 (positions
/// are global in Go) and its client once sent an absurd `since`; Carol's token was stored under another secret, and her device data
/// is broken.
async fn filled_go_db() -> TestDb {
    let (db, mut conn) = go_db(true).await;
    let c = &mut conn;
    insert_token(c, SECRET, "syt_alice_older", ALICE, "ALICEDEV", 40).await;
    insert_token(c, SECRET, ALICE_TOKEN, ALICE, "ALICEDEV", 1).await;
    insert_token(c, SECRET, BOB_TOKEN, BOB, "BOBDEV", 2).await;
    insert_token(
        c,
        "another secret",
        "syt_carol",
        "@carol:test",
        "CAROLDEV",
        1,
    )
    .await;
    sqlx::raw_sql(
        "INSERT INTO syncv3_sync2_devices VALUES
             ('@alice:test', 'ALICEDEV', 's72594_4483_1934'),
             ('@bob:test', 'BOBDEV', 's72594_4483_1935'),
             ('@carol:test', 'CAROLDEV', '');
         INSERT INTO syncv3_to_device_ack_pos VALUES ('@alice:test', 'ALICEDEV', 7),
             -- Go stored whatever `since` a client sent.
             ('@bob:test', 'BOBDEV', 9223372036854775807);
         INSERT INTO syncv3_device_list_updates VALUES
             ('@alice:test', 'ALICEDEV', '@new:test', 1, 1),
             ('@alice:test', 'ALICEDEV', '@gone:test', 2, 1),
             ('@alice:test', 'ALICEDEV', '@sent:test', 1, 2);",
    )
    .execute(&mut *c)
    .await
    .unwrap();
    for (position, n) in [(5, 1), (7, 2), (9, 3)] {
        insert_message(c, position, ALICE, "ALICEDEV", n).await;
    }
    insert_message(c, 12, BOB, "BOBDEV", 4).await;
    let alice = device_data(
        &[("signed_curve25519", 17)],
        Some(&[]),
        vec![("UserID", Cbor::Text(ALICE.into()))],
    );
    insert_device_data(c, ALICE, "ALICEDEV", alice).await;
    let bob = device_data(&[("signed_curve25519", 3)], None, Vec::new());
    insert_device_data(c, BOB, "BOBDEV", bob).await;
    // A blob that is not CBOR costs Carol's key data, not the import.
    insert_device_data(c, "@carol:test", "CAROLDEV", b"not cbor".to_vec()).await;
    conn.close().await.unwrap();
    db
}

/// Runs the shipped binary's `import-go`, with only the settings an operator gives it.
fn import(from: &str, into: &str, secret: &str) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_slidesync"))
        .env_clear()
        .args(["import-go", "--from", from])
        .env("SYNCV3_DB", into)
        .env("SYNCV3_SECRET", secret)
        .env("SYNCV3_LOG_LEVEL", "warn")
        .output()
        .expect("the slidesync binary runs")
}

fn summary(output: &Output) -> String {
    assert!(
        output.status.success(),
        "import-go failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn request(since: Option<&str>) -> Value {
    let mut to_device = json!({"enabled": true});
    if let Some(since) = since {
        to_device["since"] = Value::from(since);
    }
    json!({"extensions": {"to_device": to_device, "e2ee": {"enabled": true}}})
}

fn users(e2ee: &Value, kind: &str) -> Vec<String> {
    let mut users: Vec<String> = e2ee["device_lists"][kind]
        .as_array()
        .map(|a| a.iter().map(|u| u.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    users.sort();
    users
}

async fn a_go_database_is_imported_and_its_devices_carry_on(backend: Backend) {
    let go = filled_go_db().await;
    let db = TestDb::of(backend).await;

    let first = summary(&import(&go.url, &db.url, SECRET));
    assert_eq!(
        first,
        "imported 2 of 3 devices (0 already present), 4 to-device messages, 3 device-list \
         changes, key data of 2 devices; tokens: 2 imported, 0 already present, 1 of 4 rows \
         undecryptable; 2 devices start with an initial sync"
    );
    let again = summary(&import(&go.url, &db.url, SECRET));
    assert_eq!(
        again,
        "imported 0 of 3 devices (2 already present), 0 to-device messages, 0 device-list \
         changes, key data of 0 devices; tokens: 0 imported, 2 already present, 1 of 4 rows \
         undecryptable; 0 devices start with an initial sync",
        "a second run changes nothing"
    );
    // A client's absurd Go `since` is trusted only as far as Go handed messages out.
    let persist = db.open().await;
    let bob = persist
        .load_device_data()
        .await
        .unwrap()
        .into_iter()
        .find(|d| &*d.device.user_id == BOB)
        .expect("bob's device");
    assert_eq!(bob.delivered, 12);
    drop(persist);

    let hs = FakeHomeserver::with_devices(&[
        (ALICE_TOKEN, ALICE, "ALICEDEV"),
        (BOB_TOKEN, BOB, "BOBDEV"),
    ]);
    // Between the Go proxy's last poll and slidesync's first: asked after that first
    // poll (an initial sync reports none), again once the first answer fails.
    hs.script_keys_changes(ALICE_GO_SINCE, Reply::Status(502));
    // Bob's is refused for good: asked once, never again.
    hs.script_keys_changes(BOB_GO_SINCE, Reply::Status(400));
    hs.script_keys_changes(
        ALICE_GO_SINCE,
        Reply::Body(r#"{"changed":["@caught:test"],"left":["@away:test"]}"#.into()),
    );
    let proxy = Proxy::start(&db.url, hs.clone()).await;
    // The imported token is polled at once, from scratch: rooms were not imported.
    let polled = hs
        .wait_for_call(ALICE_TOKEN, "the imported token's first poll", |_| true)
        .await;
    assert_eq!(polled[0].since, None, "the Go since is not resumed");

    // The client had processed position 5 when it left the Go proxy.
    let resp = proxy
        .sync_ok(ALICE_TOKEN, None, 0, &request(Some("5")))
        .await;
    assert_eq!(
        numbers(&resp),
        [2, 3],
        "5 is acknowledged; 7 and 9 in order"
    );
    assert_eq!(next_batch(&resp), "9", "the Go position");
    let e2ee = &resp["extensions"]["e2ee"];
    assert_eq!(
        e2ee["device_one_time_keys_count"]["signed_curve25519"].as_u64(),
        Some(17)
    );
    assert_eq!(
        e2ee["device_unused_fallback_key_types"]
            .as_array()
            .map(|a| a.len()),
        Some(0),
        "a used-up fallback key stays [], not absent: {resp:?}"
    );
    assert_eq!(
        users(e2ee, "changed"),
        ["@sent:test"],
        "bucket 2 again, first"
    );

    // A message the homeserver sends now comes after every Go position.
    hs.push(
        ALICE_TOKEN,
        Reply::Body(sync_body(json!({"to_device": {"events": [
            to_device("@carol:test", "m.test", json!({"n": 5}))
        ]}}))),
    );
    let mut resp = resp;
    let mut got = Vec::new();
    let (mut changed, mut left) = (Vec::new(), Vec::new());
    let all_changed = ["@caught:test", "@new:test"];
    let all_left = ["@away:test", "@gone:test"];
    for _ in 0..100 {
        let since = next_batch(&resp);
        resp = proxy
            .sync_ok(
                ALICE_TOKEN,
                Some(&pos(&resp)),
                2_000,
                &request(Some(&since)),
            )
            .await;
        // The imported changes and the caught-up ones may come in one response or two.
        let e2ee = &resp["extensions"]["e2ee"];
        changed.extend(users(e2ee, "changed"));
        left.extend(users(e2ee, "left"));
        changed.sort();
        left.sort();
        got.extend(numbers(&resp));
        if !got.is_empty() && changed == all_changed && left == all_left {
            break;
        }
    }
    assert_eq!(changed, all_changed, "each delivered once, none missing");
    assert_eq!(left, all_left, "each delivered once, none missing");
    let asked = hs.keys_changes_calls();
    let alice_asked: Vec<_> = asked.iter().filter(|c| c.0 == ALICE_TOKEN).collect();
    assert_eq!(
        alice_asked.len(),
        2,
        "asked again after a failure, then no more"
    );
    for (_, from, to) in &alice_asked {
        assert_eq!(from, ALICE_GO_SINCE);
        assert!(
            hs.calls_for(ALICE_TOKEN)
                .iter()
                .any(|c| c.since.as_deref() == Some(to.as_str())),
            "up to a since slidesync's poller reached: {to}"
        );
    }
    assert_eq!(
        got,
        [5],
        "7 and 9 were acknowledged, the new one arrived once"
    );
    assert!(
        next_batch(&resp).parse::<u64>().unwrap() > 12,
        "above every imported position"
    );

    // Bob never reported a fallback key: absent, not [].
    let bob = proxy.sync_ok(BOB_TOKEN, None, 0, &request(None)).await;
    assert_eq!(numbers(&bob), [4]);
    assert_eq!(next_batch(&bob), "12");
    let e2ee = &bob["extensions"]["e2ee"];
    assert_eq!(
        e2ee["device_one_time_keys_count"]["signed_curve25519"].as_u64(),
        Some(3)
    );
    assert!(
        e2ee.get("device_unused_fallback_key_types").is_none(),
        "{bob:?}"
    );
    proxy.stop().await;

    // Caught up: a restart does not ask again, however many polls it makes.
    let alice_asked = || {
        hs.keys_changes_calls()
            .iter()
            .filter(|c| c.0 == ALICE_TOKEN)
            .count()
    };
    let asked = alice_asked();
    let proxy = Proxy::start(&db.url, hs.clone()).await;
    let polls = hs.calls_for(ALICE_TOKEN).len();
    let again = proxy.sync_ok(ALICE_TOKEN, None, 0, &request(None)).await;
    hs.wait_for_calls(ALICE_TOKEN, polls + 3).await;
    assert_eq!(alice_asked(), asked, "{again:?}");
    // Bob's catch-up, refused for good, was given up after one try.
    let bob_polls = hs.calls_for(BOB_TOKEN).len();
    proxy.sync_ok(BOB_TOKEN, None, 0, &request(None)).await;
    hs.wait_for_calls(BOB_TOKEN, bob_polls + 2).await;
    let bob_asked = hs
        .keys_changes_calls()
        .iter()
        .filter(|c| c.0 == BOB_TOKEN)
        .count();
    assert_eq!(bob_asked, 1);
    proxy.stop().await;
}

async fn an_old_go_database_gives_its_device_lists_from_the_device_data(backend: Backend) {
    let (go, mut conn) = go_db(false).await;
    insert_token(&mut conn, SECRET, ALICE_TOKEN, ALICE, "ALICEDEV", 1).await;
    let dl = Cbor::Map(vec![
        (
            Cbor::Text("n".into()),
            Cbor::Map(vec![(
                Cbor::Text("@new:test".into()),
                Cbor::Integer(1.into()),
            )]),
        ),
        (Cbor::Text("s".into()), Cbor::Map(Vec::new())),
    ]);
    let data = device_data(&[], Some(&["signed_curve25519"]), vec![("dl", dl)]);
    insert_device_data(&mut conn, ALICE, "ALICEDEV", data).await;
    conn.close().await.unwrap();
    let db = TestDb::of(backend).await;

    let out = import(&go.url, &db.url, SECRET);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("syncv3_device_list_updates"),
        "the missing table is named"
    );
    assert!(summary(&out).starts_with(
        "imported 1 of 1 devices (0 already present), 0 to-device messages, 1 device-list changes"
    ));

    let hs = FakeHomeserver::with_devices(&[(ALICE_TOKEN, ALICE, "ALICEDEV")]);
    let proxy = Proxy::start(&db.url, hs).await;
    let first = proxy.sync_ok(ALICE_TOKEN, None, 0, &request(None)).await;
    assert_eq!(
        first["extensions"]["e2ee"]["device_unused_fallback_key_types"][0].as_str(),
        Some("signed_curve25519")
    );
    let next = proxy
        .sync_ok(ALICE_TOKEN, Some(&pos(&first)), 0, &request(None))
        .await;
    assert_eq!(users(&next["extensions"]["e2ee"], "changed"), ["@new:test"]);
    proxy.stop().await;
}

on_both_stores!(
    a_go_database_is_imported_and_its_devices_carry_on,
    an_old_go_database_gives_its_device_lists_from_the_device_data,
);

#[tokio::test]
async fn a_wrong_secret_imports_nothing_and_says_so() {
    let go = filled_go_db().await;
    let db = TestDb::sqlite();
    let out = import(&go.url, &db.url, "not the Go secret");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SYNCV3_SECRET (--secret) decrypts none of the Go proxy's 4 access tokens"),
        "{stderr}"
    );
    let persist = db.open().await;
    assert!(persist.devices().await.unwrap().is_empty());
    assert!(persist.load_device_data().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_database_that_is_not_the_go_proxys_is_refused() {
    let empty = TestDb::postgres().await;
    let db = TestDb::sqlite();
    let out = import(&empty.url, &db.url, SECRET);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "the database has no table syncv3_sync2_tokens: it is not a Go sliding sync proxy's"
        ),
        "{stderr}"
    );
    assert!(
        stderr.starts_with("SYNCV3_IMPORT_FROM (--from) is "),
        "{stderr}"
    );
}

#[test]
fn import_needs_the_go_secret_and_a_postgres_source() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_slidesync"))
            .env_clear()
            .arg("import-go")
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let no_secret = run(&["--from", "postgres://go@localhost/syncv3"], &[]);
    assert!(
        no_secret.starts_with(
            "SYNCV3_SECRET (--secret) is not set: import-go needs the Go proxy's secret"
        ),
        "{no_secret}"
    );
    let no_from = run(&[], &[("SYNCV3_SECRET", "s")]);
    assert!(
        no_from.starts_with("SYNCV3_IMPORT_FROM (--from) is not set"),
        "{no_from}"
    );
    let sqlite = run(&["--from", "sqlite:///tmp/x.db"], &[("SYNCV3_SECRET", "s")]);
    assert!(sqlite.contains("not a Postgres URL"), "{sqlite}");
}
