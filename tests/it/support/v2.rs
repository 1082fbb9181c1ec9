//! Builders for v2 `/sync` room data, so tests read as what happens, not as JSON.

use std::sync::atomic::{AtomicU64, Ordering};

use sonic_rs::{json, JsonValueTrait, Value};

static EVENT: AtomicU64 = AtomicU64::new(1);

fn event_id() -> String {
    format!("$ev{}", EVENT.fetch_add(1, Ordering::Relaxed))
}

pub fn create(creator: &str, ts: u64) -> Value {
    json!({"type": "m.room.create", "state_key": "", "event_id": event_id(), "sender": creator,
           "origin_server_ts": ts, "content": {"creator": creator, "room_version": "10"}})
}

pub fn member(user: &str, membership: &str, ts: u64) -> Value {
    member_by(user, user, membership, ts)
}

pub fn member_by(sender: &str, user: &str, membership: &str, ts: u64) -> Value {
    json!({"type": "m.room.member", "state_key": user, "event_id": event_id(), "sender": sender,
           "origin_server_ts": ts, "content": {"membership": membership}})
}

pub fn name(sender: &str, name: &str, ts: u64) -> Value {
    json!({"type": "m.room.name", "state_key": "", "event_id": event_id(), "sender": sender,
           "origin_server_ts": ts, "content": {"name": name}})
}

pub fn message(sender: &str, body: &str, ts: u64) -> Value {
    json!({"type": "m.room.message", "event_id": event_id(), "sender": sender,
           "origin_server_ts": ts, "content": {"msgtype": "m.text", "body": body}})
}

/// A joined room: `state` before the timeline, then the timeline.
pub fn joined(state: Vec<Value>, timeline: Vec<Value>) -> Value {
    json!({"state": {"events": state}, "timeline": {"events": timeline, "limited": false, "prev_batch": "p0"}})
}

pub fn joined_with_unread(
    state: Vec<Value>,
    timeline: Vec<Value>,
    notifications: u64,
    highlights: u64,
) -> Value {
    json!({"state": {"events": state}, "timeline": {"events": timeline, "limited": false},
           "unread_notifications": {"notification_count": notifications, "highlight_count": highlights}})
}

/// A new room with the user joined: create, the user's join, an optional name, then
/// one message at `ts`.
pub fn new_room(user: &str, room_name: Option<&str>, ts: u64) -> Value {
    let mut state = vec![create(user, ts - 3), member(user, "join", ts - 2)];
    if let Some(n) = room_name {
        state.push(name(user, n, ts - 1));
    }
    joined(state, vec![message(user, "hello", ts)])
}

pub fn rooms_join(rooms: Vec<(&str, Value)>) -> Value {
    let mut join = json!({});
    for (id, room) in rooms {
        join[id] = room;
    }
    json!({"join": join})
}

pub fn rooms_invite(room_id: &str, stripped: Vec<Value>) -> Value {
    let mut invite = json!({});
    invite[room_id] = json!({"invite_state": {"events": stripped}});
    json!({"invite": invite})
}

pub fn rooms_leave(room_id: &str, timeline: Vec<Value>) -> Value {
    let mut leave = json!({});
    leave[room_id] = json!({"timeline": {"events": timeline}});
    json!({"leave": leave})
}

/// Stripped state for an invite (no event ID, as the homeserver sends it).
pub fn stripped(kind: &str, state_key: &str, sender: &str, content: Value) -> Value {
    json!({"type": kind, "state_key": state_key, "sender": sender, "content": content})
}

/// An account data event (global or of a room).
pub fn account(kind: &str, content: Value) -> Value {
    json!({"type": kind, "content": content})
}

/// Global `m.direct`: each (user, rooms) pair.
pub fn direct(dms: &[(&str, &[&str])]) -> Value {
    let mut content = json!({});
    for (user, rooms) in dms {
        content[*user] = json!(rooms.to_vec());
    }
    account("m.direct", content)
}

/// A room's `m.tag`.
pub fn tags(names: &[&str]) -> Value {
    let mut tags = json!({});
    for t in names {
        tags[*t] = json!({});
    }
    account("m.tag", json!({ "tags": tags }))
}

/// `m.space.child` state of a space; `via` empty removes the child.
pub fn space_child(sender: &str, child: &str, via: &[&str], ts: u64) -> Value {
    json!({"type": "m.space.child", "state_key": child, "event_id": event_id(), "sender": sender,
           "origin_server_ts": ts, "content": {"via": via.to_vec()}})
}

/// A space with these children: like [`new_room`], with the create event's `type`
/// `m.space`.
pub fn new_space(user: &str, ts: u64, children: &[&str]) -> Value {
    let create = json!({"type": "m.room.create", "state_key": "", "event_id": event_id(), "sender": user,
           "origin_server_ts": ts - 3, "content": {"creator": user, "room_version": "10", "type": "m.space"}});
    let mut state = vec![create, member(user, "join", ts - 2)];
    state.extend(
        children
            .iter()
            .map(|c| space_child(user, c, &["test"], ts - 1)),
    );
    joined(state, vec![message(user, "hello", ts)])
}

/// An `m.receipt` EDU: (event, receipt type, user, thread) each.
pub fn receipts(entries: &[(&str, &str, &str, Option<&str>)]) -> Value {
    let mut content = json!({});
    for (event, kind, user, thread) in entries {
        let mut receipt = json!({"ts": 1});
        if let Some(thread) = thread {
            receipt["thread_id"] = json!(*thread);
        }
        if content.get(*event).is_none() {
            content[*event] = json!({});
        }
        if content[*event].get(*kind).is_none() {
            content[*event][*kind] = json!({});
        }
        content[*event][*kind][*user] = receipt;
    }
    json!({"type": "m.receipt", "content": content})
}

/// An `m.typing` EDU.
pub fn typing(users: &[&str]) -> Value {
    json!({"type": "m.typing", "content": {"user_ids": users.to_vec()}})
}

/// A joined room's update with only ephemeral events.
pub fn ephemeral(events: Vec<Value>) -> Value {
    json!({"ephemeral": {"events": events}})
}

/// A joined room's update with only room account data.
pub fn room_account(events: Vec<Value>) -> Value {
    json!({"account_data": {"events": events}})
}

/// The `event_id` of a built event.
pub fn id_of(event: &Value) -> String {
    event["event_id"]
        .as_str()
        .expect("an event with an event_id")
        .to_owned()
}

/// A to-device event as the homeserver delivers it.
pub fn to_device(sender: &str, kind: &str, content: Value) -> Value {
    json!({"type": kind, "sender": sender, "content": content})
}

/// An `m.room_key_request` (`action` "request" or "request_cancellation").
pub fn key_request(sender: &str, device: &str, request_id: &str, action: &str) -> Value {
    to_device(
        sender,
        "m.room_key_request",
        json!({"action": action, "request_id": request_id, "requesting_device_id": device}),
    )
}

static BATCH: AtomicU64 = AtomicU64::new(1);

/// A whole `/sync` body: `fields` (`to_device`, `device_lists`, `rooms`, ...) and a fresh
/// `next_batch`.
pub fn sync_body(mut fields: Value) -> String {
    use sonic_rs::JsonValueMutTrait;
    let next = format!("dev_batch_{}", BATCH.fetch_add(1, Ordering::Relaxed));
    if let Some(object) = fields.as_object_mut() {
        object.insert("next_batch", Value::from(next.as_str()));
    }
    fields.to_string()
}
