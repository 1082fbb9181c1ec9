//! Both stores, Postgres against a real server and SQLite in a file: what a batch writes
//! is what startup reads, with the same rules on each. Every test body takes the backend
//! and runs once per store (`postgres::NAME`, `sqlite::NAME`); the few that test
//! something only one store has are plain tests.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slidesync::store::persist::{
    LoadedMembership, LoadedRoom, LoadedUnread, MembershipKind, Persist, PersistError,
    StoredDevice, StoredEvent, StoredToken, Write,
};
use slidesync::store::pg::PgStore;
use slidesync::types::{DeviceKey, Position, RoomId};

use crate::support::db::{Backend, TestDb};
use crate::support::on_both_stores;

on_both_stores!(
    a_batch_round_trips,
    an_invite_keeps_its_stripped_state,
    an_empty_database_loads_nothing,
    duplicate_events_are_ignored,
    an_older_snapshot_does_not_replace_a_newer_one,
    many_rooms_load_in_chunks_with_progress,
    tokens_are_inserted_found_and_deleted,
    devices_resume_with_their_newest_token_and_since,
    a_batch_with_a_failing_row_leaves_nothing_behind,
    memberships_and_counts_load_across_pages,
    events_filled_into_a_gap_load_before_the_event_after_it,
    the_newest_event_ids_load_and_say_whether_they_are_all,
    stored_event_ids_names_only_committed_events,
    a_filled_gap_keeps_its_order_across_a_restart,
    a_refused_row_is_split_out_and_the_rest_commits,
    state_set_just_after_a_fold_survives_a_restart,
    a_filled_gap_is_no_gap_after_a_restart,
    room_fields_survive_a_restart,
    device_data_round_trips_in_batch_order,
    a_redaction_applies_in_place_and_survives_a_restart
);

fn event(room: &str, position: Position, in_timeline: bool, is_state: bool) -> StoredEvent {
    StoredEvent {
        room_id: room.into(),
        position,
        event_id: format!("$e{position}").into(),
        in_timeline,
        is_state,
        // Even positions start a chunk after a gap, so both columns round-trip.
        prev_batch: (position % 2 == 0).then(|| format!("p{position}").into()),
        gap_before: position % 2 == 0,
        filled_order: None,
        ts: Some(position * 1000),
        json: Bytes::from(format!(r#"{{"event_id":"$e{position}"}}"#)),
    }
}

fn timeline(room: &str, position: Position) -> StoredEvent {
    event(room, position, true, false)
}

fn state_block(room: &str, position: Position) -> StoredEvent {
    event(room, position, false, true)
}

fn timeline_state(room: &str, position: Position) -> StoredEvent {
    event(room, position, true, true)
}

fn writes(events: &[StoredEvent]) -> Vec<Write> {
    events.iter().cloned().map(Write::Event).collect()
}

fn positions(events: &[StoredEvent]) -> Vec<Position> {
    events.iter().map(|e| e.position).collect()
}

fn device(user: &str, device: &str) -> DeviceKey {
    DeviceKey::new(user, device)
}

async fn rooms(store: &dyn Persist, timeline_per_room: usize) -> Vec<(RoomId, LoadedRoom)> {
    store
        .load_rooms(timeline_per_room, 16, &|_| {})
        .await
        .expect("load rooms")
}

async fn a_batch_round_trips(backend: Backend) {
    let db = TestDb::of(backend).await;
    let store = db.open().await;
    let a = "!a:example.org";
    let b = "!b:example.org";
    let all = vec![
        state_block(a, 1),
        state_block(a, 2),
        timeline(a, 3),
        timeline_state(a, 4),
        timeline(b, 5),
        timeline(a, 6),
        timeline_state(b, 7),
        timeline(a, 8),
        state_block(a, 9),
    ];
    let mut batch = writes(&all);
    batch.push(Write::Snapshot {
        room_id: a.into(),
        position: 3,
        bytes: Bytes::from_static(b"archived state of a"),
    });
    batch.extend([
        Write::Membership {
            user_id: "@alice:example.org".into(),
            room_id: a.into(),
            kind: MembershipKind::Join,
            position: 3,
            invite_state: None,
        },
        Write::Membership {
            user_id: "@bob:example.org".into(),
            room_id: b.into(),
            kind: MembershipKind::Invite,
            position: 5,
            invite_state: Some(Bytes::from_static(b"[]")),
        },
        Write::Unread {
            user_id: "@alice:example.org".into(),
            room_id: a.into(),
            notification_count: 4,
            highlight_count: 1,
        },
        Write::Unread {
            user_id: "@alice:example.org".into(),
            room_id: a.into(),
            notification_count: 5,
            highlight_count: 2,
        },
        Write::DeviceSince {
            device: device("@alice:example.org", "PHONE"),
            since: "s1".into(),
        },
    ]);
    store.write(&batch).await.expect("first batch");
    store
        .write(&[
            Write::Membership {
                user_id: "@bob:example.org".into(),
                room_id: b.into(),
                kind: MembershipKind::Join,
                position: 7,
                invite_state: None,
            },
            Write::Unread {
                user_id: "@alice:example.org".into(),
                room_id: a.into(),
                notification_count: 0,
                highlight_count: 0,
            },
            Write::DeviceSince {
                device: device("@alice:example.org", "PHONE"),
                since: "s2".into(),
            },
        ])
        .await
        .expect("second batch");

    let loaded = rooms(&*store, 2).await;
    let ids: Vec<&str> = loaded.iter().map(|(id, _)| &**id).collect();
    assert_eq!(ids, [a, b]);
    let room_a = &loaded[0].1;
    assert_eq!(
        room_a.snapshot,
        Some((3, Bytes::from_static(b"archived state of a")))
    );
    assert_eq!(positions(&room_a.state_after_snapshot), [4, 9]);
    assert_eq!(room_a.state_after_snapshot[0], all[3]);
    assert_eq!(positions(&room_a.timeline), [6, 8]);
    assert_eq!(room_a.timeline[1], all[7]);
    let room_b = &loaded[1].1;
    assert_eq!(room_b.snapshot, None);
    assert_eq!(room_b.state_after_snapshot, [all[6].clone()]);
    assert_eq!(positions(&room_b.timeline), [5, 7]);

    let loaded = rooms(&*store, 0).await;
    assert!(loaded.iter().all(|(_, room)| room.timeline.is_empty()));
    assert_eq!(positions(&loaded[0].1.state_after_snapshot), [4, 9]);

    let mut memberships = store.load_memberships().await.unwrap();
    memberships.sort_by(|x, y| x.user_id.cmp(&y.user_id));
    assert_eq!(
        memberships,
        [
            LoadedMembership {
                user_id: "@alice:example.org".into(),
                room_id: a.into(),
                kind: MembershipKind::Join,
                position: 3,
                invite_state: None,
            },
            LoadedMembership {
                user_id: "@bob:example.org".into(),
                room_id: b.into(),
                kind: MembershipKind::Join,
                position: 7,
                invite_state: None,
            },
        ]
    );
    assert_eq!(
        store.load_unread().await.unwrap(),
        [LoadedUnread {
            user_id: "@alice:example.org".into(),
            room_id: a.into(),
            notification_count: 0,
            highlight_count: 0,
        }]
    );
    assert_eq!(store.max_position().await.unwrap(), 9);

    store
        .insert_token("hash", "encrypted", &device("@alice:example.org", "PHONE"))
        .await
        .unwrap();
    assert_eq!(
        store.devices().await.unwrap()[0].since.as_deref(),
        Some("s2")
    );
}

async fn an_invite_keeps_its_stripped_state(backend: Backend) {
    let db = TestDb::of(backend).await;
    let store = db.open().await;
    let invite = LoadedMembership {
        user_id: "@bob:example.org".into(),
        room_id: "!a:example.org".into(),
        kind: MembershipKind::Invite,
        position: 12,
        invite_state: Some(Bytes::from_static(br#"[{"type":"m.room.name"}]"#)),
    };
    store
        .write(&[Write::Membership {
            user_id: invite.user_id.clone(),
            room_id: invite.room_id.clone(),
            kind: invite.kind,
            position: invite.position,
            invite_state: invite.invite_state.clone(),
        }])
        .await
        .unwrap();
    assert_eq!(store.load_memberships().await.unwrap(), [invite]);
}

async fn an_empty_database_loads_nothing(backend: Backend) {
    let db = TestDb::of(backend).await;
    let store = db.open().await;
    assert!(rooms(&*store, 10).await.is_empty());
    assert!(store.load_memberships().await.unwrap().is_empty());
    assert!(store.load_unread().await.unwrap().is_empty());
    assert_eq!(store.max_position().await.unwrap(), 0);
    assert!(store.devices().await.unwrap().is_empty());
    assert!(store.load_device_data().await.unwrap().is_empty());
    store.write(&[]).await.unwrap();
}

async fn duplicate_events_are_ignored(backend: Backend) {
    let db = TestDb::of(backend).await;
    let store = db.open().await;
    let room = "!a:example.org";
    let first = timeline(room, 1);
    let mut again = first.clone();
    again.position = 2;
    again.json = Bytes::from_static(b"{}");
    store
        .write(&[Write::Event(first.clone()), Write::Event(again.clone())])
        .await
        .unwrap();
    store.write(&[Write::Event(again)]).await.unwrap();

    let loaded = rooms(&*store, 10).await;
    assert_eq!(loaded[0].1.timeline, [first]);
    assert_eq!(store.max_position().await.unwrap(), 1);
}

async fn an_older_snapshot_does_not_replace_a_newer_one(backend: Backend) {
    let db = TestDb::of(backend).await;
    let store = db.open().await;
    let snapshot = |position: Position| Write::Snapshot {
        room_id: "!a:example.org".into(),
        position,
        bytes: Bytes::from(format!("state at {position}")),
    };
    store
        .write(&[snapshot(5), snapshot(7), snapshot(6)])
        .await
        .unwrap();
    store.write(&[snapshot(4)]).await.unwrap();
    let loaded = rooms(&*store, 10).await;
    assert_eq!(loaded[0].1.snapshot, Some((7, Bytes::from("state at 7"))));

    store.write(&[snapshot(8)]).await.unwrap();
    let loaded = rooms(&*store, 10).await;
    assert_eq!(loaded[0].1.snapshot, Some((8, Bytes::from("state at 8"))));
}

async fn many_rooms_load_in_chunks_with_progress(backend: Backend) {
    let db = TestDb::of(backend).await;
    let store = db.open().await;
    let count = 2500;
    let mut batch = Vec::new();
    for i in 0..count {
        let room = format!("!r{i:05}:example.org");
        let base = 3 * i as Position + 1;
        batch.push(Write::Event(state_block(&room, base)));
        batch.push(Write::Event(timeline(&room, base + 1)));
        batch.push(Write::Event(timeline(&room, base + 2)));
    }
    store.write(&batch).await.unwrap();

    let reported = Mutex::new(Vec::new());
    let loaded = store
        .load_rooms(1, 16, &|n| reported.lock().unwrap().push(n))
        .await
        .unwrap();
    assert_eq!(*reported.lock().unwrap(), [1000, 2000, 2500]);
    assert_eq!(loaded.len(), count);
    for (i, (room_id, room)) in loaded.iter().enumerate() {
        let base = 3 * i as Position + 1;
        assert_eq!(&**room_id, format!("!r{i:05}:example.org"));
        assert_eq!(positions(&room.state_after_snapshot), [base]);
        assert_eq!(positions(&room.timeline), [base + 2]);
        assert!(room.timeline.iter().all(|e| e.room_id == *room_id));
    }
}

#[tokio::test]
async fn connecting_to_an_unreachable_port_fails_fast_without_the_password() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("postgres://proxy:hunter2-secret@127.0.0.1:{port}/syncv3");
    let started = Instant::now();
    let err = PgStore::connect(&url, 0).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(6), "{err}");
    match err {
        PersistError::Connect(message) => {
            assert!(!message.contains("hunter2"), "{message}");
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
}

async fn tokens_are_inserted_found_and_deleted(backend: Backend) {
    let db = TestDb::of(backend).await;
    let store = db.open().await;
    let phone = device("@alice:example.org", "PHONE");
    assert_eq!(store.token("h1").await.unwrap(), None);

    store.insert_token("h1", "enc1", &phone).await.unwrap();
    assert_eq!(
        store.token("h1").await.unwrap(),
        Some(StoredToken {
            device: phone.clone(),
            token_encrypted: "enc1".into(),
        })
    );
    // Re-encryption of the same token, e.g. under a new secret.
    store
        .insert_token("h1", "enc1-again", &phone)
        .await
        .unwrap();
    assert_eq!(
        store.token("h1").await.unwrap().unwrap().token_encrypted,
        "enc1-again"
    );

    store.delete_token("h1").await.unwrap();
    assert_eq!(store.token("h1").await.unwrap(), None);
    store.delete_token("h1").await.unwrap();
    assert!(store.devices().await.unwrap().is_empty());
}

async fn devices_resume_with_their_newest_token_and_since(backend: Backend) {
    let db = TestDb::of(backend).await;
    let store = db.open().await;
    let phone = device("@alice:example.org", "PHONE");
    let laptop = device("@alice:example.org", "LAPTOP");
    let tokenless = device("@bob:example.org", "GONE");

    store.insert_token("h1", "enc1", &phone).await.unwrap();
    store
        .write(&[
            Write::DeviceSince {
                device: phone.clone(),
                since: "s_phone".into(),
            },
            Write::DeviceSince {
                device: tokenless.clone(),
                since: "s_gone".into(),
            },
        ])
        .await
        .unwrap();
    // A second token for the phone (a refresh) must not reset its since.
    store.insert_token("h2", "enc2", &phone).await.unwrap();
    store.insert_token("h3", "enc3", &laptop).await.unwrap();

    let mut devices = store.devices().await.unwrap();
    devices.sort_by(|x, y| x.device.cmp(&y.device));
    assert_eq!(
        devices,
        [
            StoredDevice {
                device: laptop.clone(),
                token_encrypted: "enc3".into(),
                since: None,
            },
            StoredDevice {
                device: phone.clone(),
                token_encrypted: "enc2".into(),
                since: Some("s_phone".into()),
            },
        ]
    );

    // Seeing the older token again makes it the newest.
    store.insert_token("h1", "enc1", &phone).await.unwrap();
    let devices = store.devices().await.unwrap();
    let phone_row = devices.iter().find(|d| d.device == phone).unwrap();
    assert_eq!(phone_row.token_encrypted, "enc1");

    store.delete_token("h1").await.unwrap();
    let devices = store.devices().await.unwrap();
    let phone_row = devices.iter().find(|d| d.device == phone).unwrap();
    assert_eq!(phone_row.token_encrypted, "enc2");
    assert_eq!(phone_row.since.as_deref(), Some("s_phone"));
}

async fn a_batch_with_a_failing_row_leaves_nothing_behind(backend: Backend) {
    let db = TestDb::of(backend).await;
    let store = db.open().await;
    let room = "!a:example.org";
    let phone = device("@alice:example.org", "PHONE");
    store.insert_token("h1", "enc1", &phone).await.unwrap();
    store
        .write(&[Write::Event(timeline(room, 1))])
        .await
        .unwrap();

    let mut clash = timeline(room, 1);
    clash.event_id = "$another".into();
    let err = store
        .write(&[
            Write::Event(timeline(room, 2)),
            Write::Snapshot {
                room_id: room.into(),
                position: 2,
                bytes: Bytes::from_static(b"state"),
            },
            Write::Membership {
                user_id: phone.user_id.clone(),
                room_id: room.into(),
                kind: MembershipKind::Join,
                position: 2,
                invite_state: None,
            },
            Write::Unread {
                user_id: phone.user_id.clone(),
                room_id: room.into(),
                notification_count: 1,
                highlight_count: 0,
            },
            // Same position, different event: a primary key violation, which no retry
            // can fix.
            Write::Event(clash),
            Write::DeviceSince {
                device: phone.clone(),
                since: "s1".into(),
            },
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, PersistError::Rejected(_)), "{err:?}");

    assert_eq!(store.max_position().await.unwrap(), 1);
    let loaded = rooms(&*store, 10).await;
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].1.snapshot, None);
    assert_eq!(positions(&loaded[0].1.timeline), [1]);
    assert!(store.load_memberships().await.unwrap().is_empty());
    assert!(store.load_unread().await.unwrap().is_empty());
    assert_eq!(store.devices().await.unwrap()[0].since, None);

    // The store is still usable after the rollback.
    store
        .write(&[Write::Event(timeline(room, 2))])
        .await
        .unwrap();
    assert_eq!(store.max_position().await.unwrap(), 2);
}

#[tokio::test]
async fn text_postgres_cannot_hold_is_refused_as_bad_data_not_retried() {
    let db = TestDb::postgres().await;
    let store = db.open().await;
    let mut nul = timeline("!a:example.org", 1);
    nul.event_id = "$nul\u{0}here".into();
    let err = store.write(&[Write::Event(nul)]).await.unwrap_err();
    assert!(matches!(err, PersistError::Rejected(_)), "{err:?}");
    // The same row without the NUL is fine: only the data was at fault.
    store
        .write(&[Write::Event(timeline("!a:example.org", 1))])
        .await
        .unwrap();
}

async fn memberships_and_counts_load_across_pages(backend: Backend) {
    let db = TestDb::of(backend).await;
    let store = db.open().await;
    let count = 10_050;
    let mut batch = Vec::new();
    for i in 0..count {
        let user_id = format!("@u{:02}:example.org", i % 7);
        let room_id = format!("!r{i:05}:example.org");
        batch.push(Write::Membership {
            user_id: user_id.as_str().into(),
            room_id: room_id.as_str().into(),
            kind: MembershipKind::Join,
            position: i as Position,
            invite_state: None,
        });
        batch.push(Write::Unread {
            user_id: user_id.as_str().into(),
            room_id: room_id.as_str().into(),
            notification_count: i as u64,
            highlight_count: 0,
        });
    }
    store.write(&batch).await.unwrap();

    let mut memberships = store.load_memberships().await.unwrap();
    assert_eq!(memberships.len(), count);
    memberships.sort_by_key(|m| m.position);
    assert!(memberships
        .iter()
        .enumerate()
        .all(|(i, m)| m.position == i as Position
            && m.room_id.ends_with(&format!("{i:05}:example.org"))));
    let unread = store.load_unread().await.unwrap();
    assert_eq!(unread.len(), count);
    let total: u64 = unread.iter().map(|u| u.notification_count).sum();
    assert_eq!(total, (0..count as u64).sum::<u64>());
}

async fn events_filled_into_a_gap_load_before_the_event_after_it(backend: Backend) {
    let db = TestDb::of(backend).await;
    let store = db.open().await;
    let room = "!a:example.org";
    let before = timeline(room, 5);
    let anchor = timeline(room, 10);
    // Delivered later, so given later positions, but older than the anchor.
    let mut filled_1 = timeline(room, 11);
    filled_1.filled_order = Some((10, -2));
    let mut filled_2 = timeline(room, 12);
    filled_2.filled_order = Some((10, -1));
    let after = timeline(room, 13);
    store
        .write(&writes(&[
            before.clone(),
            anchor.clone(),
            filled_1.clone(),
            filled_2.clone(),
            after.clone(),
        ]))
        .await
        .unwrap();

    let loaded = rooms(&*store, 10).await;
    assert_eq!(positions(&loaded[0].1.timeline), [5, 11, 12, 10, 13]);
    assert_eq!(loaded[0].1.timeline[1], filled_1, "the order round-trips");
    let newest_three = rooms(&*store, 3).await;
    assert_eq!(
        positions(&newest_three[0].1.timeline),
        [12, 10, 13],
        "the newest in timeline order, not by position"
    );
}

async fn the_newest_event_ids_load_and_say_whether_they_are_all(backend: Backend) {
    let db = TestDb::of(backend).await;
    let store = db.open().await;
    let small = "!small:example.org";
    let big = "!big:example.org";
    let mut events: Vec<StoredEvent> = (1..=3).map(|p| timeline(small, p)).collect();
    events.extend((10..30).map(|p| state_block(big, p)));
    store.write(&writes(&events)).await.unwrap();

    let loaded = store.load_rooms(0, 16, &|_| {}).await.unwrap();
    let (_, big_room) = loaded.iter().find(|(id, _)| &**id == big).unwrap();
    let (_, small_room) = loaded.iter().find(|(id, _)| &**id == small).unwrap();
    assert!(small_room.ids_complete);
    let mut small_ids = small_room.recent_ids.clone();
    small_ids.sort();
    assert_eq!(small_ids, ["$e1".into(), "$e2".into(), "$e3".into()]);
    assert!(!big_room.ids_complete, "20 events, 16 read");
    assert_eq!(big_room.recent_ids.len(), 16);
    assert!(
        big_room.recent_ids.contains(&"$e29".into())
            && !big_room.recent_ids.contains(&"$e10".into()),
        "the newest ones"
    );
}

async fn stored_event_ids_names_only_committed_events(backend: Backend) {
    let db = TestDb::of(backend).await;
    let store = db.open().await;
    store
        .write(&writes(&[
            timeline("!a:example.org", 1),
            timeline("!b:example.org", 2),
        ]))
        .await
        .unwrap();
    let mut found = store
        .stored_event_ids(&["$e2".into(), "$e1".into(), "$e9".into()])
        .await
        .unwrap();
    found.sort();
    assert_eq!(found, ["$e1".into(), "$e2".into()]);
    assert!(store.stored_event_ids(&[]).await.unwrap().is_empty());
}

fn message(id: &str, ts: u64) -> slidesync::event::Event {
    let json = format!(
        r#"{{"event_id":"{id}","type":"m.room.message","sender":"@b:example.org","origin_server_ts":{ts},"content":{{"body":"{id}"}}}}"#
    );
    slidesync::upstream::wire::parse_event(json.as_bytes()).expect("a valid event")
}

fn chunk(
    room: &str,
    events: &[slidesync::event::Event],
    limited: bool,
) -> slidesync::store::RoomDelta {
    slidesync::store::RoomDelta {
        room_id: room.into(),
        state: Vec::new(),
        timeline: events.to_vec(),
        prev_batch: None,
        limited,
        stored: Default::default(),
        redacted: Vec::new(),
    }
}

fn timeline_ids(store: &slidesync::store::Store, room: &str) -> Vec<String> {
    store
        .room(room)
        .expect("the room")
        .timeline
        .iter()
        .map(|e| e.event_id.to_string())
        .collect()
}

/// A poller's one-event first sync leaves a gap; another poller fills it. The filled
/// events got later positions than the event after them, and a restart reads the
/// timeline back in the order it had.
async fn a_filled_gap_keeps_its_order_across_a_restart(backend: Backend) {
    use std::sync::Arc;

    use slidesync::store::writer::WriteQueue;
    use slidesync::store::Store;

    let db = TestDb::of(backend).await;
    let persist = db.open().await;
    let room = "!gap:example.org";
    // More than the timeline ring keeps: the oldest are in storage only.
    let events: Vec<_> = (1..=100)
        .map(|i| message(&format!("$m{i}"), 1000 + i))
        .collect();
    let before = {
        let (queue, writer) = WriteQueue::spawn(Arc::clone(&persist), 1024);
        let hot = Store::new(queue, 1);
        hot.apply_room(chunk(room, &events[99..], true));
        hot.apply_room(chunk(room, &events[..], false));
        hot.queue().flush().await;
        let order = timeline_ids(&hot, room);
        drop(hot);
        writer.await.unwrap();
        order
    };
    let newest: Vec<String> = (37..=100).map(|i| format!("$m{i}")).collect();
    assert_eq!(before, newest);

    let reloaded = reload(&persist).await;
    assert_eq!(timeline_ids(&reloaded, room), before);

    // A poller that was far behind delivers the first one again after the restart.
    let mut again = chunk(room, &events[..1], false);
    again.stored = reloaded.stored_copies(&again).await;
    reloaded.apply_room(again);
    assert_eq!(
        timeline_ids(&reloaded, room),
        before,
        "nothing served twice"
    );
}

/// The write-behind over a real store: a batch holding a row the database refuses is
/// split until that row stands alone; it is counted and skipped, and every other row,
/// before and after it, commits in order.
async fn a_refused_row_is_split_out_and_the_rest_commits(backend: Backend) {
    use std::sync::Arc;

    use slidesync::store::writer::WriteQueue;

    let db = TestDb::of(backend).await;
    let persist = db.open().await;
    let (queue, _writer) = WriteQueue::spawn(Arc::clone(&persist), 1024);
    let room = "!a:example.org";
    // Another event at position 1: a key violation on either store, which no retry fixes.
    let mut bad = timeline(room, 1);
    bad.event_id = "$clash".into();
    let batch: Vec<StoredEvent> = vec![
        timeline(room, 1),
        timeline(room, 2),
        bad,
        timeline(room, 4),
        timeline(room, 5),
    ];
    let reservation = queue.reserve(batch.len()).await;
    queue.push(writes(&batch));
    queue.release(reservation);
    queue.flush().await;
    assert_eq!(queue.rejected(), 1);

    let reservation = queue.reserve(1).await;
    queue.push(writes(&[timeline(room, 6)]));
    queue.release(reservation);
    queue.flush().await;
    let loaded = rooms(&*persist, 10).await;
    assert_eq!(positions(&loaded[0].1.timeline), [1, 2, 4, 5, 6]);
}

fn state_event(id: &str, kind: &str, key: &str, content: &str) -> slidesync::event::Event {
    let json = format!(
        r#"{{"event_id":"{id}","type":"{kind}","state_key":"{key}","sender":"@b:example.org","origin_server_ts":1,"content":{content}}}"#
    );
    slidesync::upstream::wire::parse_event(json.as_bytes()).expect("a valid event")
}

/// The state event applied right after a fold of the room's state is replayed after a
/// restart: the snapshot is valid as of the last position handed out, not the next.
async fn state_set_just_after_a_fold_survives_a_restart(backend: Backend) {
    use std::sync::Arc;

    use slidesync::store::writer::WriteQueue;
    use slidesync::store::Store;

    let db = TestDb::of(backend).await;
    let persist = db.open().await;
    let room = "!fold:example.org";
    {
        let (queue, writer) = WriteQueue::spawn(Arc::clone(&persist), 4096);
        let hot = Store::new(queue, 1);
        let mut folded = false;
        for i in 0..500 {
            let join = state_event(
                &format!("$m{i}"),
                "m.room.member",
                &format!("@u{i}:example.org"),
                r#"{"membership":"join"}"#,
            );
            hot.apply_room(chunk(room, &[join], false));
            if hot.room(room).unwrap().state.base_position() > 0 {
                folded = true;
                break;
            }
        }
        assert!(folded, "the members folded the state");
        let name = state_event("$name", "m.room.name", "", r#"{"name":"After the fold"}"#);
        hot.apply_room(chunk(room, &[name], false));
        stop(hot, writer).await;
    }
    let reloaded = reload(&persist).await;
    assert_eq!(
        reloaded.room(room).unwrap().meta.name.as_deref(),
        Some("After the fold")
    );
}

/// A gap closed by events filled in front of its event is stored closed, whether the
/// event was written in an earlier batch or in the same one.
async fn a_filled_gap_is_no_gap_after_a_restart(backend: Backend) {
    let db = TestDb::of(backend).await;
    let store = db.open().await;
    let room = "!a:example.org";
    let filled = |position: Position| Write::GapFilled {
        room_id: room.into(),
        event_id: format!("$e{position}").into(),
    };
    // Even positions start after a gap (see `event`).
    store.write(&writes(&[timeline(room, 2)])).await.unwrap();
    store.write(&[filled(2)]).await.unwrap();
    store
        .write(&[
            Write::Event(timeline(room, 4)),
            filled(4),
            Write::Event(timeline(room, 6)),
        ])
        .await
        .unwrap();
    let loaded = rooms(&*store, 10).await;
    let gaps: Vec<(Position, bool)> = loaded[0]
        .1
        .timeline
        .iter()
        .map(|e| (e.position, e.gap_before))
        .collect();
    assert_eq!(gaps, [(2, false), (4, false), (6, true)]);
}

/// What names, avatars, old rooms and bump types read from a room's state and timeline
/// is rebuilt at startup as it was: the snapshot's archive keeps a member's avatar and a
/// room's predecessor.
async fn room_fields_survive_a_restart(backend: Backend) {
    use std::sync::Arc;

    use slidesync::store::writer::WriteQueue;
    use slidesync::store::Store;
    use slidesync::upstream::wire::parse_event;

    let db = TestDb::of(backend).await;
    let persist = db.open().await;
    let room = "!fields:example.org";
    let raw = |json: String| parse_event(json.as_bytes()).expect("valid event");
    let member = |id: &str, user: &str, membership: &str, ts: u64| {
        raw(format!(
            r#"{{"type":"m.room.member","state_key":"{user}","event_id":"{id}","sender":"{user}","origin_server_ts":{ts},"content":{{"membership":"{membership}","displayname":"N{ts}","avatar_url":"mxc://x/{ts}"}}}}"#
        ))
    };
    let state = vec![
        raw(r#"{"type":"m.room.create","state_key":"","event_id":"$c","sender":"@a:x","origin_server_ts":1,"content":{"predecessor":{"room_id":"!older:x","event_id":"$t"}}}"#.into()),
        member("$a", "@a:x", "join", 2),
        member("$b", "@b:x", "join", 3),
        member("$gone", "@c:x", "leave", 4),
    ];
    let timeline = vec![
        raw(r#"{"type":"m.room.message","event_id":"$m","sender":"@a:x","origin_server_ts":5,"content":{}}"#.into()),
        raw(r#"{"type":"m.room.topic","state_key":"","event_id":"$t2","sender":"@a:x","origin_server_ts":6,"content":{}}"#.into()),
    ];
    let before = {
        let (queue, writer) = WriteQueue::spawn(Arc::clone(&persist), 1024);
        let hot = Store::new(queue, 1);
        let mut delta = chunk(room, &timeline, false);
        delta.state = state;
        hot.apply_room(delta);
        hot.queue().flush().await;
        let meta = hot.room(room).expect("the room").meta.clone();
        drop(hot);
        writer.await.unwrap();
        meta
    };
    assert_eq!(before.heroes[1].avatar_url.as_deref(), Some("mxc://x/3"));
    assert_eq!(before.former[0].user_id.as_ref(), "@c:x");
    assert_eq!(before.predecessor.as_deref(), Some("!older:x"));

    let (queue, _writer) = WriteQueue::spawn(Arc::clone(&persist), 1024);
    let reloaded = Store::load(&*persist, queue, &slidesync::upstream::wire::DECODER)
        .await
        .expect("load");
    let after = reloaded.room(room).expect("the room").meta.clone();
    assert_eq!(after.heroes, before.heroes);
    assert_eq!(after.former, before.former);
    assert_eq!(after.predecessor, before.predecessor);
    assert_eq!(
        after.latest_by_type.newest_of(["m.room.topic"]),
        before.latest_by_type.newest_of(["m.room.topic"])
    );
}

/// To-device messages, acknowledgements, drops, key data and device-list steps: what a
/// batch writes in one order is what startup reads, whether the writes came in one batch
/// or one at a time.
async fn device_data_round_trips_in_batch_order(backend: Backend) {
    use slidesync::store::devices::ListChange;
    let dev = device("@a:x", "D");
    let other = device("@b:x", "E");
    let message = |device: &DeviceKey, position: Position| Write::ToDevice {
        device: device.clone(),
        position,
        json: Bytes::from(format!(
            r#"{{"type":"m.test","content":{{"n":{position}}}}}"#
        )),
        key_request: (position == 4).then(|| "@b:x|E|r1".into()),
    };
    let change = |user: &str, change: ListChange| Write::DeviceListChange {
        device: dev.clone(),
        user_id: user.into(),
        change,
    };
    let batch = vec![
        message(&dev, 1),
        message(&dev, 2),
        message(&other, 3),
        message(&dev, 4),
        message(&dev, 5),
        Write::ToDeviceAck {
            device: dev.clone(),
            position: 2,
        },
        Write::ToDeviceDrop {
            device: dev.clone(),
            position: 5,
        },
        Write::DeviceKeys {
            device: dev.clone(),
            otk_counts: Some(Bytes::from_static(br#"{"signed_curve25519":3}"#)),
            fallback_types: Some(Bytes::from_static(b"[]")),
        },
        change("@carol:x", ListChange::Changed),
        change("@dan:x", ListChange::Changed),
        change("@dan:x", ListChange::Left),
        Write::DeviceListsDelivered {
            device: dev.clone(),
        },
        change("@erin:x", ListChange::Changed),
    ];
    for one_by_one in [false, true] {
        let db = TestDb::of(backend).await;
        let store = db.open().await;
        if one_by_one {
            for write in &batch {
                store.write(std::slice::from_ref(write)).await.unwrap();
            }
        } else {
            store.write(&batch).await.unwrap();
        }
        let loaded = store.load_device_data().await.unwrap();
        assert_eq!(loaded.len(), 2, "{loaded:?}");
        let d = loaded.iter().find(|d| d.device == dev).unwrap();
        assert_eq!(
            (d.acked, d.to_device_max),
            (2, 4),
            "one_by_one: {one_by_one}"
        );
        assert_eq!(
            d.otk_counts.as_deref(),
            Some(&br#"{"signed_curve25519":3}"#[..])
        );
        assert_eq!(
            d.fallback_types.as_deref(),
            Some(&b"[]"[..]),
            "[] is a value"
        );
        let mut lists: Vec<(String, ListChange, bool)> = d
            .lists
            .iter()
            .map(|(u, c, sent)| (u.to_string(), *c, *sent))
            .collect();
        lists.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            lists,
            [
                ("@carol:x".to_owned(), ListChange::Changed, true),
                ("@dan:x".to_owned(), ListChange::Left, true),
                ("@erin:x".to_owned(), ListChange::Changed, false),
            ],
            "one_by_one: {one_by_one}"
        );
        let left = store.to_device_after(&dev, 0, 10).await.unwrap();
        let positions: Vec<Position> = left.iter().map(|m| m.position).collect();
        assert_eq!(positions, [4], "acknowledged and dropped ones are gone");
        assert_eq!(left[0].key_request.as_deref(), Some("@b:x|E|r1"));
        let others = store.to_device_after(&other, 0, 10).await.unwrap();
        assert_eq!(others.len(), 1, "another device's messages stay");
        assert!(store.to_device_after(&dev, 4, 10).await.unwrap().is_empty());
    }
}

/// A redaction replaces its target with the redacted form in the timeline and in the
/// room's state (the name it held is gone), and a restart loads the redacted forms.
async fn a_redaction_applies_in_place_and_survives_a_restart(backend: Backend) {
    use std::sync::Arc;

    use slidesync::ingest::metrics::PollerMetrics;
    use slidesync::ingest::v2::process;
    use slidesync::store::writer::WriteQueue;
    use slidesync::store::Store;
    use slidesync::types::DeviceKey;
    use sonic_rs::{JsonContainerTrait, JsonValueTrait};

    let db = TestDb::of(backend).await;
    let persist = db.open().await;
    let room = "!redact:example.org";
    let me = "@a:example.org";
    let body =
        |rooms: String| format!(r#"{{"next_batch":"s","rooms":{{"join":{{"{room}":{rooms}}}}}}}"#);
    let first = body(format!(
        r#"{{"state":{{"events":[
            {{"type":"m.room.create","state_key":"","event_id":"$create","sender":"{me}","content":{{"room_version":"10"}}}},
            {{"type":"m.room.member","state_key":"{me}","event_id":"$join","sender":"{me}","content":{{"membership":"join"}}}},
            {{"type":"m.room.name","state_key":"","event_id":"$name","sender":"{me}","content":{{"name":"Secret plan"}}}}]}},
          "timeline":{{"events":[{{"type":"m.room.message","event_id":"$msg","sender":"{me}","origin_server_ts":5,"content":{{"body":"the secret"}}}}]}}}}"#
    ));
    let second = body(format!(
        r#"{{"timeline":{{"events":[
            {{"type":"m.room.redaction","event_id":"$r1","sender":"{me}","redacts":"$msg","content":{{}}}},
            {{"type":"m.room.redaction","event_id":"$r2","sender":"{me}","redacts":"$name","content":{{}}}}]}}}}"#
    ));
    let device = DeviceKey::new(me, "DEV");
    let redacted_body = |store: &Store| -> (Option<String>, usize) {
        let room = store.room(room).expect("the room");
        let msg = room
            .timeline
            .iter()
            .find(|e| &*e.event_id == "$msg")
            .expect("the message");
        let v: sonic_rs::Value = sonic_rs::from_slice(&msg.json).unwrap();
        assert_eq!(
            v["unsigned"]["redacted_because"]["event_id"].as_str(),
            Some("$r1")
        );
        let name = room.state.get("m.room.name", "").expect("the name event");
        let n: sonic_rs::Value = sonic_rs::from_slice(name.json()).unwrap();
        (
            room.meta.name.as_deref().map(str::to_owned),
            v["content"].as_object().unwrap().len() + n["content"].as_object().unwrap().len(),
        )
    };
    {
        let (queue, writer) = WriteQueue::spawn(Arc::clone(&persist), 4096);
        let hot = Store::new(queue, 1);
        let user = hot.user_or_insert(&me.into());
        let device = hot.device(&device);
        for b in [&first, &second] {
            process(
                &hot,
                &user,
                &device,
                b.as_bytes(),
                &PollerMetrics::default(),
            )
            .await
            .expect("applies");
        }
        assert_eq!(
            redacted_body(&hot),
            (None, 0),
            "no name and no content left"
        );
        stop(hot, writer).await;
    }
    let reloaded = reload(&persist).await;
    assert_eq!(redacted_body(&reloaded), (None, 0), "after a restart too");
}

/// Commits what the store queued and ends its writer, as a shutdown does.
async fn stop(hot: slidesync::store::Store, writer: tokio::task::JoinHandle<()>) {
    hot.queue().flush().await;
    drop(hot);
    writer.await.unwrap();
}

/// The hot state rebuilt from storage, as a restart does.
async fn reload(persist: &std::sync::Arc<dyn Persist>) -> slidesync::store::Store {
    let (queue, _writer) =
        slidesync::store::writer::WriteQueue::spawn(std::sync::Arc::clone(persist), 1024);
    slidesync::store::Store::load(&**persist, queue, &slidesync::upstream::wire::DECODER)
        .await
        .expect("load")
}
