//! Proves the e2e harness against Synapse alone (no slidesync): users, rooms,
//! messages, and classic `/sync` seeing them.

use http::Method;
use sonic_rs::{json, JsonContainerTrait, JsonValueTrait, Value};

use crate::support::http::{encode, HttpClient};
use crate::support::synapse::{synapse, TestUser, TEST_PASSWORD};

#[tokio::test]
async fn invited_user_sees_a_message_in_classic_sync() {
    let hs = synapse().await;
    let alice = hs.register("alice").await;
    let bob = hs.register("bob").await;
    let room_id = hs
        .create_room(&alice, json!({"preset": "private_chat", "name": "smoke"}))
        .await;
    hs.invite(&alice, &room_id, &bob.user_id).await;
    hs.join(&bob, &room_id).await;
    let event_id = hs
        .send_text(&alice, &room_id, "hello from the harness")
        .await;

    let (sync, _) = classic_sync(&hs.base_url, &bob, None).await;
    let events = &sync["rooms"]["join"][&room_id]["timeline"]["events"];
    let message = find_event(events, &event_id)
        .unwrap_or_else(|| panic!("no {event_id} in bob's timeline of {room_id}: {sync:?}"));
    assert_eq!(message["sender"].as_str(), Some(alice.user_id.as_str()));
    assert_eq!(
        message["content"]["body"].as_str(),
        Some("hello from the harness")
    );

    // The remaining helpers: a second device, a state change, and leaving.
    let bob_phone = hs.login(&bob, TEST_PASSWORD).await;
    assert_eq!(bob_phone.user_id, bob.user_id);
    assert_ne!(bob_phone.device_id, bob.device_id);
    let rename_id = hs.set_room_name(&alice, &room_id, "smoke, renamed").await;
    let (sync, since) = classic_sync(&hs.base_url, &bob_phone, None).await;
    let events = &sync["rooms"]["join"][&room_id]["timeline"]["events"];
    assert!(find_event(events, &event_id).is_some(), "{sync:?}");
    let rename = find_event(events, &rename_id).expect("the rename in the timeline");
    assert_eq!(rename["content"]["name"].as_str(), Some("smoke, renamed"));

    hs.leave(&bob, &room_id).await;
    let (sync, _) = classic_sync(&hs.base_url, &bob_phone, Some(&since)).await;
    assert!(
        sync["rooms"]["leave"].get(&room_id).is_some(),
        "{room_id} not under rooms.leave after leaving: {sync:?}"
    );
}

/// One `GET /v3/sync` (initial when `since` is `None`) with a timeline long enough for
/// every event of these small rooms; returns the answer and its `next_batch`.
async fn classic_sync(base_url: &str, user: &TestUser, since: Option<&str>) -> (Value, String) {
    let filter = encode(r#"{"room":{"timeline":{"limit":50}}}"#);
    let mut url = format!("{base_url}/_matrix/client/v3/sync?timeout=0&filter={filter}");
    if let Some(since) = since {
        url.push_str(&format!("&since={}", encode(since)));
    }
    let response = HttpClient::new()
        .request(Method::GET, &url, Some(&user.access_token), None)
        .await;
    assert!(response.status.is_success(), "sync: {response:?}");
    let sync = response.json();
    let next_batch = sync["next_batch"].as_str().expect("next_batch").to_owned();
    (sync, next_batch)
}

fn find_event<'a>(events: &'a Value, event_id: &str) -> Option<&'a Value> {
    events
        .as_array()?
        .iter()
        .find(|event| event["event_id"].as_str() == Some(event_id))
}
