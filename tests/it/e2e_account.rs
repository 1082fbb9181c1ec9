//! Account data, DMs, tags, receipts and typing through slidesync in front of a real
//! Synapse, set the way clients set them: through the homeserver's client API.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use slidesync::upstream::http::{HttpHomeserver, Target};
use sonic_rs::{json, JsonValueTrait, Value};

use crate::support::db::TestDb;
use crate::support::http::encode;
use crate::support::proxy::{ops, pos, synced_ids, Proxy};
use crate::support::synapse::{synapse, Synapse, TestUser};

fn homeserver(synapse: &Synapse) -> Arc<HttpHomeserver> {
    Arc::new(HttpHomeserver::new(
        Target::Url(synapse.base_url.parse().unwrap()),
        Duration::from_secs(60),
    ))
}

/// Long-polls the connection until a response satisfies `done` (Synapse delivers what
/// a test did through its own /sync, a moment later); returns it.
async fn until(
    proxy: &Proxy,
    user: &TestUser,
    first: &Value,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let mut p = pos(first);
    for _ in 0..20 {
        let resp = proxy
            .sync_ok(&user.access_token, Some(&p), 10_000, &json!({}))
            .await;
        if done(&resp) {
            return resp;
        }
        p = pos(&resp);
    }
    panic!("{what} never arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_created_with_is_direct_and_a_tag_set_by_the_client_reach_the_filters() {
    let hs = synapse().await;
    let alice = hs.register("alice").await;
    let bob = hs.register("bob").await;
    let project = hs
        .create_room(&alice, json!({"name": "Project", "preset": "private_chat"}))
        .await;
    let db = TestDb::new().await;
    let proxy = Proxy::start(&db.url, homeserver(hs)).await;
    let body = json!({"lists": {
        "dms": {"ranges": [[0, 9]], "filters": {"is_dm": true}},
        "favourites": {"ranges": [[0, 9]], "filters": {"tags": ["m.favourite"]}},
    }});
    let first = proxy.sync_ok(&alice.access_token, None, 0, &body).await;
    assert_eq!(first["lists"]["dms"]["count"].as_u64(), Some(0));
    assert_eq!(first["lists"]["favourites"]["count"].as_u64(), Some(0));

    // Bob starts a DM with Alice, as Element does: the invite says is_direct.
    let dm = hs
        .create_room(
            &bob,
            json!({"is_direct": true, "invite": [alice.user_id], "preset": "trusted_private_chat"}),
        )
        .await;
    let invited = until(&proxy, &alice, &first, "the DM invite", |r| {
        ops(r, "dms").contains(&format!("INSERT 0 {dm}"))
    })
    .await;
    assert_eq!(invited["rooms"][dm.as_str()]["is_dm"].as_bool(), Some(true));

    // Alice marks a room as a favourite through the tags API (m.tag room account data).
    let path = format!(
        "/_matrix/client/v3/user/{}/rooms/{}/tags/m.favourite",
        encode(&alice.user_id),
        encode(&project)
    );
    hs.call(
        "tag",
        Method::PUT,
        &path,
        Some(&alice),
        Some(&json!({"order": 0.5})),
    )
    .await;
    let tagged = until(&proxy, &alice, &invited, "the tag", |r| {
        ops(r, "favourites").contains(&format!("INSERT 0 {project}"))
    })
    .await;
    assert_eq!(tagged["lists"]["favourites"]["count"].as_u64(), Some(1));

    // A new connection lists both from the start.
    let fresh = proxy
        .sync_ok(
            &alice.access_token,
            None,
            0,
            &json!({"conn_id": "again", "lists": body["lists"]}),
        )
        .await;
    assert_eq!(synced_ids(&fresh, "dms"), vec![dm]);
    assert_eq!(synced_ids(&fresh, "favourites"), vec![project]);
    proxy.stop().await;
}
