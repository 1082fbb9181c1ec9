//! Bad input gets a Matrix error, never a 500 (DESIGN invariant 4): every error below is
//! JSON with `errcode` and `error`, and the proxy keeps serving afterwards.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use slidesync::app::Settings;
use slidesync::ingest::pollers::PollerConfig;
use sonic_rs::{json, JsonValueTrait};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::db::TestDb;
use crate::support::fake::{FakeHomeserver, Reply};
use crate::support::http::TestResponse;
use crate::support::proxy::{ops, pos, scripted, settings, synced_ids, Proxy, MSC3575, MSC4186};
use crate::support::v2::*;

const ALICE: &str = "@alice:test";
const TOKEN: &str = "alice_token";
const MAX_BODY: usize = 1024 * 1024;

async fn setup() -> (TestDb, Arc<FakeHomeserver>, Proxy) {
    scripted(&[(TOKEN, ALICE, "ALICEDEV")]).await
}

/// Asserts a Matrix error: the status, the errcode, a JSON body with a message, and
/// returns the message.
#[track_caller]
fn matrix_error(resp: &TestResponse, status: u16, errcode: &str) -> String {
    assert_eq!(
        resp.status,
        StatusCode::from_u16(status).unwrap(),
        "{}",
        resp.text()
    );
    let body = resp.json();
    assert_eq!(body["errcode"].as_str(), Some(errcode), "{}", resp.text());
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {}", resp.text()));
    assert!(!message.is_empty());
    message.to_owned()
}

async fn post(proxy: &Proxy, query: &str, body: impl Into<bytes::Bytes>) -> TestResponse {
    proxy
        .raw(
            Method::POST,
            &format!("{MSC3575}?timeout=0{query}"),
            Some(TOKEN),
            body,
        )
        .await
}

/// After all the abuse, a good request is still served.
async fn still_serving(hs: &FakeHomeserver, proxy: &Proxy) {
    hs.push_rooms(
        TOKEN,
        rooms_join(vec![("!a:test", new_room(ALICE, Some("A"), 1_000))]),
    );
    let ok = proxy
        .sync_ok(
            TOKEN,
            None,
            0,
            &json!({"lists": {"all": {"ranges": [[0, 9]]}}}),
        )
        .await;
    assert_eq!(synced_ids(&ok, "all"), ["!a:test"]);
}

#[tokio::test]
async fn malformed_json_is_m_bad_json() {
    let (_db, hs, proxy) = setup().await;
    let bodies: [&[u8]; 9] = [
        b"{",
        b"{\"lists\": }",
        b"not json",
        b"\"lists\"",
        b"[]",
        b"[null, \"txn\"]",
        b"{\"lists\":{}} trailing",
        b"{\"lists\":{}}{}",
        b"\xff\xfe",
    ];
    let mut accepted = Vec::new();
    for body in bodies {
        let resp = post(&proxy, "", body).await;
        if resp.status == 400 {
            matrix_error(&resp, 400, "M_BAD_JSON");
        } else {
            accepted.push(format!("{} -> {resp:?}", String::from_utf8_lossy(body)));
        }
    }
    assert!(
        accepted.is_empty(),
        "not refused as M_BAD_JSON: {accepted:#?}"
    );
    assert!(hs.calls().is_empty(), "a refused request started a poller");
    still_serving(&hs, &proxy).await;
    proxy.stop().await;
}

#[tokio::test]
async fn wrong_types_are_m_bad_json_naming_the_field() {
    let (_db, hs, proxy) = setup().await;
    for (body, field) in [
        (json!({"lists": []}), "lists"),
        (
            json!({"lists": {"all": {"ranges": "all"}}}),
            "lists.all.ranges",
        ),
        (
            json!({"lists": {"all": {"ranges": [[0, "9"]]}}}),
            "lists.all.ranges",
        ),
        (
            json!({"lists": {"all": {"ranges": [[-1, 9]]}}}),
            "lists.all.ranges",
        ),
        (
            json!({"lists": {"all": {"timeline_limit": "ten"}}}),
            "lists.all.timeline_limit",
        ),
        (
            json!({"lists": {"all": {"required_state": "m.room.name"}}}),
            "lists.all.required_state",
        ),
        (json!({"txn_id": 5}), "txn_id"),
        (json!({"conn_id": {"id": 1}}), "conn_id"),
    ] {
        let resp = post(&proxy, "", body.to_string()).await;
        let message = matrix_error(&resp, 400, "M_BAD_JSON");
        assert!(
            message.contains(field),
            "{body}: {message:?} does not name {field}"
        );
    }
    still_serving(&hs, &proxy).await;
    proxy.stop().await;
}

#[tokio::test]
async fn inverted_or_overlapping_ranges_are_m_invalid_param() {
    let (_db, hs, proxy) = setup().await;
    for ranges in [
        json!([[5, 1]]),
        json!([[0, 10], [5, 20]]),
        json!([[10, 20], [0, 10]]),
        json!([[0, 5], [0, 5]]),
    ] {
        let body = json!({"lists": {"all": {"ranges": ranges.clone()}}});
        let resp = post(&proxy, "", body.to_string()).await;
        let message = matrix_error(&resp, 400, "M_INVALID_PARAM");
        assert!(message.contains("ranges"), "{ranges}: {message:?}");
    }
    still_serving(&hs, &proxy).await;
    proxy.stop().await;
}

#[tokio::test]
async fn ranges_past_the_end_are_clamped_to_the_list() {
    let (_db, hs, proxy) = setup().await;
    hs.push_rooms(
        TOKEN,
        rooms_join(
            (0..10)
                .map(|i| (format!("!r{i}:test"), new_room(ALICE, None, 1_000 + i)))
                .collect::<Vec<_>>()
                .iter()
                .map(|(id, room)| (id.as_str(), room.clone()))
                .collect(),
        ),
    );
    let mut lists = json!({});
    for i in 0..99 {
        lists[format!("l{i}").as_str()] = json!({"ranges": [[0, 99_999]]});
    }
    lists["far"] = json!({"ranges": [[1_000_000_000, u64::MAX]]});
    let resp = post(&proxy, "", json!({"lists": lists}).to_string()).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let body = resp.json();
    let newest_first: Vec<String> = (0..10).rev().map(|i| format!("!r{i}:test")).collect();
    for i in 0..99 {
        let list = format!("l{i}");
        assert_eq!(body["lists"][list.as_str()]["count"].as_u64(), Some(10));
        assert_eq!(ops(&body, &list), ["SYNC 0-9"]);
        assert_eq!(synced_ids(&body, &list), newest_first);
    }
    assert_eq!(body["lists"]["far"]["count"].as_u64(), Some(10));
    assert!(ops(&body, "far").is_empty(), "{}", resp.text());
    proxy.stop().await;
}

#[tokio::test]
async fn requests_past_the_limits_are_m_invalid_param() {
    let (_db, hs, proxy) = setup().await;
    let mut lists = json!({});
    for i in 0..101 {
        lists[format!("l{i}").as_str()] = json!({"ranges": [[0, 0]]});
    }
    let too_many_ranges: Vec<[u64; 2]> = (0..17).map(|i| [i * 10, i * 10 + 5]).collect();
    let too_much_state: Vec<[String; 2]> =
        (0..101).map(|i| [format!("t{i}"), String::new()]).collect();
    for body in [
        json!({"lists": lists}),
        json!({"lists": {"all": {"ranges": too_many_ranges}}}),
        json!({"lists": {"all": {"required_state": too_much_state}}}),
        json!({"lists": {"all": {"required_state": [["m.room.name"]]}}}),
        json!({"conn_id": "a conn_id that is far too long"}),
        json!({"txn_id": "t".repeat(65)}),
    ] {
        let resp = post(&proxy, "", body.to_string()).await;
        matrix_error(&resp, 400, "M_INVALID_PARAM");
    }
    still_serving(&hs, &proxy).await;
    proxy.stop().await;
}

#[tokio::test]
async fn an_unknown_or_unreadable_pos_is_m_unknown_pos() {
    let (_db, hs, proxy) = setup().await;
    for pos in ["987654321", "abc", "-1", "1.5", ""] {
        let resp = post(&proxy, &format!("&pos={pos}"), "{}").await;
        matrix_error(&resp, 400, "M_UNKNOWN_POS");
    }
    still_serving(&hs, &proxy).await;
    proxy.stop().await;
}

#[tokio::test]
async fn an_unreadable_timeout_is_m_invalid_param() {
    let (_db, hs, proxy) = setup().await;
    for timeout in ["soon", "-5", "1e3"] {
        let resp = proxy
            .raw(
                Method::POST,
                &format!("{MSC3575}?timeout={timeout}"),
                Some(TOKEN),
                "{}",
            )
            .await;
        let message = matrix_error(&resp, 400, "M_INVALID_PARAM");
        assert!(message.contains("timeout"), "{message:?}");
    }
    still_serving(&hs, &proxy).await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_body_over_one_mebibyte_is_413_and_one_at_the_limit_is_served() {
    let (_db, hs, proxy) = setup().await;
    let mut over = b"{\"lists\":{}}".to_vec();
    over.resize(MAX_BODY + 1, b' ');
    let resp = post(&proxy, "", over).await;
    matrix_error(&resp, 413, "M_TOO_LARGE");

    hs.push_rooms(
        TOKEN,
        rooms_join(vec![("!a:test", new_room(ALICE, Some("A"), 1_000))]),
    );
    let mut at_limit = json!({"lists": {"all": {"ranges": [[0, 9]]}}})
        .to_string()
        .into_bytes();
    at_limit.resize(MAX_BODY, b' ');
    let resp = post(&proxy, "", at_limit).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(synced_ids(&resp.json(), "all"), ["!a:test"]);
    proxy.stop().await;
}

#[tokio::test]
async fn deeply_nested_json_is_refused_or_ignored_without_harm() {
    let (_db, hs, proxy) = setup().await;
    let depth = 100_000;
    for field in ["extensions", "lists"] {
        let body = format!("{{\"{field}\":{}{}}}", "[".repeat(depth), "]".repeat(depth));
        let resp = post(&proxy, "", body).await;
        assert!(
            resp.status == 200 || resp.status == 400,
            "{field}: {} {}",
            resp.status,
            resp.text()
        );
        if resp.status == 400 {
            matrix_error(&resp, 400, "M_BAD_JSON");
        }
    }
    still_serving(&hs, &proxy).await;
    proxy.stop().await;
}

#[tokio::test]
async fn wrong_method_and_unknown_paths_get_json_errors() {
    let (_db, _hs, proxy) = setup().await;
    let get = proxy.raw(Method::GET, MSC3575, Some(TOKEN), "").await;
    matrix_error(&get, 405, "M_UNRECOGNIZED");
    let put = proxy.raw(Method::PUT, MSC3575, Some(TOKEN), "{}").await;
    matrix_error(&put, 405, "M_UNRECOGNIZED");
    for path in [
        "/nowhere",
        "/_slidesync/unknown",
        "/client/server.json/extra",
    ] {
        let resp = proxy.raw(Method::GET, path, None, "").await;
        matrix_error(&resp, 404, "M_UNRECOGNIZED");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn a_stale_pos_is_refused_at_once_even_before_the_first_poll() {
    let db = TestDb::new().await;
    let hs = Arc::new(FakeHomeserver::default());
    hs.add_device("new_token", "@new:test", "NEWDEV");
    hs.hold("new_token");
    let proxy = Proxy::start(&db.url, hs.clone()).await;
    let resp = tokio::time::timeout(
        Duration::from_secs(2),
        proxy.sync("new_token", Some("12345"), 0, &json!({})),
    )
    .await
    .expect("not held up by the device's first poll");
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["errcode"].as_str(), Some("M_UNKNOWN_POS"));
    hs.release("new_token");
    proxy.stop().await;
}

#[tokio::test]
async fn a_body_sent_too_slowly_is_cut_off_with_408() {
    let db = TestDb::new().await;
    let hs = FakeHomeserver::with_devices(&[(TOKEN, ALICE, "ALICEDEV")]);
    let quick = Settings {
        body_timeout: Duration::from_millis(200),
        ..settings()
    };
    let proxy = Proxy::start_with(&db.url, hs.clone(), quick).await;
    let mut stream = TcpStream::connect(proxy.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST {MSC3575} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"lists\""
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The rest of the body never comes.
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 1024];
        while !String::from_utf8_lossy(&answer).contains("M_UNKNOWN") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the proxy stops waiting for the body");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within"), "{answer}");
    still_serving(&hs, &proxy).await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_first_request_gets_502_once_the_poller_gives_up() {
    let db = TestDb::new().await;
    let hs = FakeHomeserver::with_devices(&[(TOKEN, ALICE, "ALICEDEV")]);
    // Retries every 50-100 ms, so the fourth failure comes at least 150 ms after the
    // first: the poller has given up by then.
    let retry = Duration::from_millis(100);
    for _ in 0..4 {
        hs.push(TOKEN, Reply::Status(500));
    }
    let give_up_soon = Settings {
        poller: PollerConfig {
            backoff: retry,
            max_backoff: retry,
            give_up: Duration::from_millis(150),
            ..settings().poller
        },
        ..settings()
    };
    let proxy = Proxy::start_with(&db.url, hs.clone(), give_up_soon).await;
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        proxy.sync(TOKEN, None, 0, &json!({})),
    )
    .await
    .expect("the request does not wait for a poller that gave up");
    let message = matrix_error(&resp, 502, "M_UNKNOWN");
    assert!(
        message.contains("homeserver could not be synced"),
        "{message}"
    );

    // The device's next request polls again, and the homeserver recovers. A poller
    // gives up at its second failure at the earliest (the first is at 0 ms), and at
    // most two failures are left, so at most one more request sees a 502.
    hs.push_rooms(
        TOKEN,
        rooms_join(vec![("!a:test", new_room(ALICE, Some("A"), 1_000))]),
    );
    let list = json!({"lists": {"all": {"ranges": [[0, 9]]}}});
    let mut resp = proxy.sync(TOKEN, None, 0, &list).await;
    if resp.status == 502 {
        resp = proxy.sync(TOKEN, None, 0, &list).await;
    }
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(synced_ids(&resp.json(), "all"), ["!a:test"]);
    proxy.stop().await;
}

#[tokio::test]
async fn a_first_request_waits_for_the_first_poll_at_most_the_initial_timeout() {
    let db = TestDb::new().await;
    let hs = FakeHomeserver::with_devices(&[(TOKEN, ALICE, "ALICEDEV")]);
    hs.hold(TOKEN);
    let short = Settings {
        poller: PollerConfig {
            initial_timeout: Duration::from_millis(300),
            ..settings().poller
        },
        ..settings()
    };
    let proxy = Proxy::start_with(&db.url, hs.clone(), short).await;
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        proxy.sync(TOKEN, None, 0, &json!({})),
    )
    .await
    .expect("the wait for the first poll has a deadline");
    let message = matrix_error(&resp, 504, "M_UNKNOWN");
    assert!(message.contains("first sync"), "{message}");
    // The first poll goes on and answers a retry.
    hs.push_rooms(
        TOKEN,
        rooms_join(vec![("!a:test", new_room(ALICE, Some("A"), 1_000))]),
    );
    hs.release(TOKEN);
    let ok = proxy
        .sync_ok(
            TOKEN,
            None,
            0,
            &json!({"lists": {"all": {"ranges": [[0, 9]]}}}),
        )
        .await;
    assert_eq!(synced_ids(&ok, "all"), ["!a:test"]);
    let calls = hs.calls_for(TOKEN);
    assert_eq!(
        calls.iter().filter(|c| c.since.is_none()).count(),
        1,
        "the retry waited for the same first poll: {calls:?}"
    );
    proxy.stop().await;
}

/// The MSC4186 endpoint refuses bad input by the same rules, with the same limits.
#[tokio::test]
async fn msc4186_bad_input_gets_the_same_matrix_errors() {
    let (_db, hs, proxy) = setup().await;
    let post4186 = |query: String, body: String| {
        let proxy = &proxy;
        async move {
            proxy
                .raw(
                    Method::POST,
                    &format!("{MSC4186}?timeout=0{query}"),
                    Some(TOKEN),
                    body,
                )
                .await
        }
    };
    let mut lists = json!({});
    for i in 0..101 {
        lists[format!("l{i}").as_str()] = json!({"ranges": [[0, 0]]});
    }
    for (body, status, errcode, field) in [
        (json!({"lists": []}), 400, "M_BAD_JSON", "lists"),
        (
            json!({"lists": {"all_rooms": {"ranges": [[0, "9"]]}}}),
            400,
            "M_BAD_JSON",
            "lists.all_rooms.ranges",
        ),
        (
            json!({"lists": {"all_rooms": {"required_state": "m.room.name"}}}),
            400,
            "M_BAD_JSON",
            "lists.all_rooms.required_state",
        ),
        (
            json!({"lists": {"all_rooms": {"ranges": [[0, 10], [5, 20]]}}}),
            400,
            "M_INVALID_PARAM",
            "overlap",
        ),
        (
            json!({"lists": {"all_rooms": {"range": [0, 1], "ranges": [[0, 1]]}}}),
            400,
            "M_INVALID_PARAM",
            "lists.all_rooms",
        ),
        (
            json!({"lists": {"a": {"required_state": {"include": [{}], "exclude": [{}]}}}}),
            400,
            "M_INVALID_PARAM",
            "lists.a.required_state.exclude",
        ),
        (json!({"lists": lists}), 400, "M_INVALID_PARAM", "lists"),
        (
            json!({"conn_id": "a conn_id that is far too long"}),
            400,
            "M_INVALID_PARAM",
            "conn_id",
        ),
        (json!({"timeout": "soon"}), 400, "M_BAD_JSON", "timeout"),
        (json!({"pos": "987654321"}), 400, "M_UNKNOWN_POS", ""),
    ] {
        let resp = post4186(String::new(), body.to_string()).await;
        let message = matrix_error(&resp, status, errcode);
        assert!(message.contains(field), "{body}: {message:?} lacks {field}");
    }
    for (query, errcode) in [
        ("&pos=987654321", "M_UNKNOWN_POS"),
        ("&pos=abc", "M_UNKNOWN_POS"),
        ("&timeout=soon", "M_INVALID_PARAM"),
    ] {
        let resp = post4186(query.to_owned(), "{}".to_owned()).await;
        matrix_error(&resp, 400, errcode);
    }
    let mut over = b"{\"lists\":{}}".to_vec();
    over.resize(MAX_BODY + 1, b' ');
    let resp = proxy
        .raw(
            Method::POST,
            &format!("{MSC4186}?timeout=0"),
            Some(TOKEN),
            over,
        )
        .await;
    matrix_error(&resp, 413, "M_TOO_LARGE");
    let get = proxy.raw(Method::GET, MSC4186, Some(TOKEN), "").await;
    matrix_error(&get, 405, "M_UNRECOGNIZED");
    let missing = proxy.raw(Method::POST, MSC4186, None, "{}").await;
    matrix_error(&missing, 401, "M_MISSING_TOKEN");
    hs.add_device("good_for_nothing", "@x:test", "XDEV");
    hs.revoke("good_for_nothing");
    let unknown = proxy
        .raw(Method::POST, MSC4186, Some("good_for_nothing"), "{}")
        .await;
    matrix_error(&unknown, 401, "M_UNKNOWN_TOKEN");
    assert!(hs.calls().is_empty(), "a refused request started a poller");

    // The same connection, on the other dialect's endpoint, is not the same one.
    hs.push_rooms(
        TOKEN,
        rooms_join(vec![("!a:test", new_room(ALICE, Some("A"), 1_000))]),
    );
    let ok = post4186(
        String::new(),
        json!({"lists": {"all_rooms": {"ranges": [[0, 9]], "timeline_limit": 1}}}).to_string(),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let ok = ok.json();
    assert_eq!(synced_ids(&ok, "all_rooms"), ["!a:test"]);
    let other = post(&proxy, &format!("&pos={}", pos(&ok)), "{}").await;
    matrix_error(&other, 400, "M_UNKNOWN_POS");
    still_serving(&hs, &proxy).await;
    proxy.stop().await;
}
