//! The to-device and e2ee extensions in front of a real Synapse: messages sent with
//! `/sendToDevice`, device-list changes after `/keys/upload`, and a proxy killed with
//! SIGKILL while messages flow.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use slidesync::upstream::http::{HttpHomeserver, Target};
use sonic_rs::{json, JsonContainerTrait, JsonValueTrait, Value};

use crate::support::binary::Binary;
use crate::support::db::{Backend, TestDb};
use crate::support::http::HttpClient;
use crate::support::on_both_stores;
use crate::support::proxy::{pos, Proxy, MSC3575};
use crate::support::synapse::{synapse, Synapse, TestUser, TEST_PASSWORD};

const KIND: &str = "org.slidesync.test";

fn homeserver(synapse: &Synapse) -> Arc<HttpHomeserver> {
    Arc::new(HttpHomeserver::new(
        Target::Url(synapse.base_url.parse().unwrap()),
        Duration::from_secs(60),
    ))
}

fn extensions(since: Option<&str>) -> Value {
    let mut to_device = json!({"enabled": true});
    if let Some(since) = since {
        to_device["since"] = Value::from(since);
    }
    json!({"extensions": {"to_device": to_device, "e2ee": {"enabled": true}}})
}

/// `content.n` of the test messages in a response, with their senders.
fn received(resp: &Value) -> Vec<(u64, String)> {
    resp["extensions"]["to_device"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["type"].as_str() == Some(KIND))
                .map(|e| {
                    (
                        e["content"]["n"].as_u64().unwrap(),
                        e["sender"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn next_batch(resp: &Value) -> Option<String> {
    resp["extensions"]["to_device"]["next_batch"]
        .as_str()
        .map(str::to_owned)
}

/// One device syncing through the proxy as a client does: each request acknowledges the
/// messages of the one before.
struct Client {
    token: String,
    pos: Option<String>,
    since: Option<String>,
}

impl Client {
    fn new(user: &TestUser) -> Client {
        Client {
            token: user.access_token.clone(),
            pos: None,
            since: None,
        }
    }

    /// One request to the proxy at `url` (in-process or the binary).
    async fn sync(&mut self, url: &str, timeout_ms: u64) -> Value {
        let mut url = format!("{url}{MSC3575}?timeout={timeout_ms}");
        if let Some(pos) = &self.pos {
            url.push_str("&pos=");
            url.push_str(pos);
        }
        let resp = HttpClient::new()
            .request(
                http::Method::POST,
                &url,
                Some(&self.token),
                Some(&extensions(self.since.as_deref())),
            )
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let resp = resp.json();
        self.pos = Some(pos(&resp));
        self.since = next_batch(&resp).or(self.since.take());
        resp
    }

    /// One request; the numbers of the test messages it carried.
    async fn numbers(&mut self, url: &str, timeout_ms: u64) -> Vec<u64> {
        let resp = self.sync(url, timeout_ms).await;
        received(&resp).into_iter().map(|(n, _)| n).collect()
    }

    /// Syncs until `n` test messages arrived (bounded); returns them in order.
    async fn receive(&mut self, url: &str, n: usize) -> Vec<(u64, String)> {
        let mut got = Vec::new();
        for _ in 0..60 {
            got.extend(received(&self.sync(url, 5_000).await));
            if got.len() >= n {
                return got;
            }
        }
        panic!("only {got:?} of {n} messages arrived");
    }
}

fn to(user: &TestUser, content: Value) -> Value {
    let mut devices = json!({});
    devices[user.device_id.as_str()] = content;
    let mut messages = json!({});
    messages[user.user_id.as_str()] = devices;
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_device_messages_sent_through_synapse_reach_their_device_only() {
    let hs = synapse().await;
    let alice = hs.register("alice").await;
    let phone = hs.login(&alice, TEST_PASSWORD).await;
    let bob = hs.register("bob").await;
    let db = TestDb::new().await;
    let proxy = Proxy::start(&db.url, homeserver(hs)).await;
    let mut laptop_client = Client::new(&alice);
    let mut phone_client = Client::new(&phone);
    laptop_client.sync(&proxy.url, 0).await;
    phone_client.sync(&proxy.url, 0).await;

    for n in 0..3 {
        hs.send_to_device(&bob, KIND, to(&phone, json!({"n": n})))
            .await;
    }
    let got = phone_client.receive(&proxy.url, 3).await;
    assert_eq!(
        got,
        (0..3).map(|n| (n, bob.user_id.clone())).collect::<Vec<_>>(),
        "in order, from bob"
    );

    hs.send_to_device(&bob, KIND, to(&alice, json!({"n": 100})))
        .await;
    let laptop = laptop_client.receive(&proxy.url, 1).await;
    assert_eq!(
        laptop,
        [(100, bob.user_id.clone())],
        "the laptop gets its own message and none of the phone's"
    );
    let nothing = phone_client.sync(&proxy.url, 0).await;
    assert!(received(&nothing).is_empty(), "acknowledged: {nothing:?}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_upload_shows_as_a_device_list_change_and_key_counts() {
    let hs = synapse().await;
    let alice = hs.register("alice").await;
    let bob = hs.register("bob").await;
    let room = hs
        .create_room(&alice, json!({"preset": "public_chat", "name": "Keys"}))
        .await;
    hs.join(&bob, &room).await;
    let db = TestDb::new().await;
    let proxy = Proxy::start(&db.url, homeserver(hs)).await;
    let mut alice_client = Client::new(&alice);
    alice_client.sync(&proxy.url, 0).await;

    let bobs_new_device = hs.login(&bob, TEST_PASSWORD).await;
    let counts = hs.upload_keys(&bobs_new_device, 5).await;
    assert_eq!(counts["signed_curve25519"].as_u64(), Some(5));

    let mut changed = Vec::new();
    for _ in 0..30 {
        let resp = alice_client.sync(&proxy.url, 5_000).await;
        if let Some(users) = resp["extensions"]["e2ee"]["device_lists"]["changed"].as_array() {
            changed.extend(users.iter().map(|u| u.as_str().unwrap().to_owned()));
        }
        if changed.contains(&bob.user_id) {
            break;
        }
    }
    assert!(
        changed.contains(&bob.user_id),
        "alice shares a room with bob and learns his devices changed: {changed:?}"
    );

    // Bob's new device sees its own key counts and its unused fallback key.
    let mut bob_client = Client::new(&bobs_new_device);
    let mut e2ee = Value::default();
    for _ in 0..30 {
        let resp = bob_client.sync(&proxy.url, 2_000).await;
        e2ee = resp["extensions"]["e2ee"].clone();
        if e2ee.get("device_one_time_keys_count").is_some() {
            break;
        }
    }
    assert_eq!(
        e2ee["device_one_time_keys_count"]["signed_curve25519"].as_u64(),
        Some(5),
        "{e2ee:?}"
    );
    assert_eq!(
        e2ee["device_unused_fallback_key_types"][0].as_str(),
        Some("signed_curve25519"),
        "{e2ee:?}"
    );
    proxy.stop().await;
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_binary_killed_while_to_device_messages_flow_loses_none
);

/// The shipped binary in front of Synapse, killed with SIGKILL while Bob sends Alice
/// messages and Alice syncs and acknowledges them; restarted on the same database. Every
/// message reaches Alice at least once: again is allowed, never is not.
async fn a_binary_killed_while_to_device_messages_flow_loses_none(backend: Backend) {
    const TOTAL: u64 = 120;
    let hs = synapse().await;
    let alice = hs.register("alice").await;
    let bob = hs.register("bob").await;
    let db = TestDb::of(backend).await;

    let binary = Binary::start(&hs.base_url, &db.url).await;
    let mut client = Client::new(&alice);
    client.sync(&binary.url, 0).await;
    let mut got = BTreeSet::new();
    let mut next = 0;
    // Half of them while the client follows, the last few not yet fetched by it.
    while next < TOTAL / 2 {
        for _ in 0..10 {
            hs.send_to_device(&bob, KIND, to(&alice, json!({"n": next})))
                .await;
            next += 1;
        }
        got.extend(client.numbers(&binary.url, 1_000).await);
    }
    binary.kill();

    // Sent while the proxy is down: the homeserver keeps them for the device.
    for _ in 0..10 {
        hs.send_to_device(&bob, KIND, to(&alice, json!({"n": next})))
            .await;
        next += 1;
    }
    let binary = Binary::start(&hs.base_url, &db.url).await;
    // A new connection, with the `since` the client kept, as a client after an error.
    client.pos = None;
    while next < TOTAL {
        hs.send_to_device(&bob, KIND, to(&alice, json!({"n": next})))
            .await;
        next += 1;
        if next % 10 == 0 {
            got.extend(client.numbers(&binary.url, 1_000).await);
        }
    }
    for _ in 0..60 {
        if got.len() as u64 == TOTAL {
            break;
        }
        got.extend(client.numbers(&binary.url, 2_000).await);
    }
    binary.stop();
    let missing: Vec<u64> = (0..TOTAL).filter(|n| !got.contains(n)).collect();
    assert!(missing.is_empty(), "lost across the kill: {missing:?}");
}
