//! Pieces of a sliding sync response that both dialects write the same way.

use bytes::Bytes;

use super::json::JsonWriter;
use crate::conn::request::{Op, RoomResult, SyncResponse};

/// Where the dialects' responses differ.
pub struct Shape {
    /// Writes one room.
    pub room: fn(&mut JsonWriter, &RoomResult),
    /// Synapse's MSC4186: `lists` left out when there are none, `ops` always written;
    /// otherwise `lists` always and `ops` only when there are some, as the Go proxy.
    pub synapse_lists: bool,
}

/// Writes a response. Events and invite state are copied in as stored.
pub fn write(resp: &SyncResponse, shape: Shape) -> Vec<u8> {
    let mut w = JsonWriter::with_capacity(4096);
    w.begin_object();
    w.key("pos").str(&resp.pos);
    if let Some(txn) = &resp.txn_id {
        w.key("txn_id").str(txn);
    }
    if !(shape.synapse_lists && resp.lists.is_empty()) {
        w.key("lists").begin_object();
        for (name, list) in &resp.lists {
            w.key(name).begin_object();
            w.key("count").u64(list.count as u64);
            if shape.synapse_lists || !list.ops.is_empty() {
                w.key("ops").begin_array();
                for o in &list.ops {
                    op(&mut w, o);
                }
                w.end_array();
            }
            w.end_object();
        }
        w.end_object();
    }
    w.key("rooms").begin_object();
    for (room_id, room) in &resp.rooms {
        w.key(room_id);
        (shape.room)(&mut w, room);
    }
    w.end_object();
    w.key("extensions");
    super::extensions::write(&mut w, &resp.extensions);
    w.end_object();
    w.finish()
}

/// `key: [events]`, the events copied in as stored; nothing when there are none.
pub fn events(w: &mut JsonWriter, key: &str, events: &[Bytes]) {
    if events.is_empty() {
        return;
    }
    w.key(key).begin_array();
    for ev in events {
        w.raw(ev);
    }
    w.end_array();
}

/// The room's timeline, each of the reader's own events with the transaction ID its
/// device sent it with; nothing when the timeline is empty.
pub fn timeline(w: &mut JsonWriter, room: &RoomResult) {
    if room.timeline.is_empty() {
        return;
    }
    w.key("timeline").begin_array();
    for (i, ev) in room.timeline.iter().enumerate() {
        match room.transaction_ids.iter().find(|(at, _)| *at == i) {
            Some((_, txn)) => w.raw(&super::json::with_transaction_id(ev, txn)),
            None => w.raw(ev),
        };
    }
    w.end_array();
}

/// The member and unread counts that are known or changed.
pub fn counts(w: &mut JsonWriter, room: &RoomResult) {
    if let Some(n) = room.joined_count {
        w.key("joined_count").u64(n.into());
    }
    if let Some(n) = room.invited_count {
        w.key("invited_count").u64(n.into());
    }
    if let Some(n) = room.notification_count {
        w.key("notification_count").u64(n);
    }
    if let Some(n) = room.highlight_count {
        w.key("highlight_count").u64(n);
    }
}

/// `heroes` when sent, and `avatar` in its three states: absent (unchanged), `null`
/// (none) or a URL.
pub fn heroes_and_avatar(w: &mut JsonWriter, room: &RoomResult) {
    if let Some(heroes) = &room.heroes {
        w.key("heroes").begin_array();
        for h in heroes {
            w.begin_object();
            w.key("user_id").str(&h.user_id);
            if let Some(name) = &h.displayname {
                w.key("displayname").str(name);
            }
            if let Some(url) = &h.avatar_url {
                w.key("avatar_url").str(url);
            }
            w.end_object();
        }
        w.end_array();
    }
    match &room.avatar {
        Some(Some(url)) => {
            w.key("avatar").str(url);
        }
        Some(None) => {
            w.key("avatar").raw(b"null");
        }
        None => {}
    }
}

fn write_range(w: &mut JsonWriter, (s, e): (usize, usize)) {
    w.key("range")
        .begin_array()
        .u64(s as u64)
        .u64(e as u64)
        .end_array();
}

/// One list operation.
pub fn op(w: &mut JsonWriter, op: &Op) {
    w.begin_object();
    match op {
        Op::Sync { range, room_ids } => {
            w.key("op").str("SYNC");
            write_range(w, *range);
            w.key("room_ids").begin_array();
            for r in room_ids {
                w.str(r);
            }
            w.end_array();
        }
        Op::Invalidate { range } => {
            w.key("op").str("INVALIDATE");
            write_range(w, *range);
        }
        Op::Delete { index } => {
            w.key("op").str("DELETE");
            w.key("index").u64(*index as u64);
        }
        Op::Insert { index, room_id } => {
            w.key("op").str("INSERT");
            w.key("index").u64(*index as u64);
            w.key("room_id").str(room_id);
        }
    }
    w.end_object();
}
