//! The homeserver client against a real HTTP server, over TCP and a unix socket.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use parking_lot::Mutex;
use slidesync::config::BindAddr;
use slidesync::ops::listen;
use slidesync::upstream::http::{HttpHomeserver, Target};
use slidesync::upstream::{Homeserver, SyncCall, UpstreamError};

/// A homeserver that records request URIs and Authorization headers: `good` is a
/// valid token, anything else gets 401.
async fn recording_homeserver(
    addr: BindAddr,
) -> (
    String,
    Arc<Mutex<Vec<(String, String)>>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = listen::bind(&addr).await.unwrap();
    let local = listener.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let record = Arc::clone(&seen);
    let handler = move |req: Request<hyper::body::Incoming>| {
        let record = Arc::clone(&record);
        async move {
            let auth = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            record.lock().push((req.uri().to_string(), auth.clone()));
            let (status, body): (StatusCode, &'static str) = match req.uri().path() {
                "/_matrix/client/versions" => (StatusCode::OK, r#"{"versions":["v1.11"]}"#),
                _ if auth != "Bearer good" => {
                    (StatusCode::UNAUTHORIZED, r#"{"errcode":"M_UNKNOWN_TOKEN"}"#)
                }
                "/_matrix/client/v3/account/whoami" => {
                    (StatusCode::OK, r#"{"user_id":"@a:test","device_id":"DEV"}"#)
                }
                "/_matrix/client/v3/sync" => (StatusCode::OK, r#"{"next_batch":"s2"}"#),
                _ => (StatusCode::NOT_FOUND, "{}"),
            };
            let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
            *resp.status_mut() = status;
            resp
        }
    };
    tokio::spawn(listen::serve(listener, None, handler, async {
        let _ = stopped.await;
    }));
    (local, seen, stop)
}

async fn exercise(target: Target, seen: &Mutex<Vec<(String, String)>>) {
    let hs = HttpHomeserver::new(target, Duration::from_secs(5));
    assert!(hs.versions().await.unwrap().starts_with(b"{\"versions\""));
    let who = hs.whoami("good").await.unwrap();
    assert_eq!(
        (who.user_id.as_str(), who.device_id.as_str()),
        ("@a:test", "DEV")
    );
    assert!(matches!(
        hs.whoami("bad").await,
        Err(UpstreamError::Unauthorized)
    ));
    let body = hs
        .sync(SyncCall {
            token: "good",
            since: Some("s1 x"),
            timeout_ms: 30_000,
            filter: r#"{"room":{"timeline":{"limit":50}}}"#,
            deadline: Duration::from_secs(5),
        })
        .await
        .unwrap();
    assert_eq!(&body[..], br#"{"next_batch":"s2"}"#);
    let (uri, auth) = seen.lock().last().cloned().unwrap();
    assert_eq!(auth, "Bearer good");
    assert!(uri.contains("timeout=30000"), "{uri}");
    assert!(uri.contains("set_presence=offline"), "{uri}");
    assert!(uri.contains("since=s1%20x"), "{uri}");
    assert!(uri.contains("filter=%7B%22room%22"), "{uri}");
}

#[tokio::test]
async fn the_homeserver_is_reached_over_tcp() {
    let (addr, seen, _stop) =
        recording_homeserver(BindAddr::Tcp("127.0.0.1:0".parse().unwrap())).await;
    exercise(
        Target::Url(format!("http://{addr}").parse().unwrap()),
        &seen,
    )
    .await;
}

#[tokio::test]
async fn the_homeserver_is_reached_over_a_unix_socket() {
    let dir = std::env::temp_dir().join(format!(
        "slidesync-upstream-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hs.sock");
    let (_, seen, _stop) = recording_homeserver(BindAddr::Unix(path.clone())).await;
    exercise(Target::Unix(path), &seen).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_unreachable_homeserver_is_a_transport_error() {
    let hs = HttpHomeserver::new(
        Target::Url("http://127.0.0.1:1".parse().unwrap()),
        Duration::from_secs(5),
    );
    assert!(matches!(
        hs.versions().await,
        Err(UpstreamError::Transport(_))
    ));
}
