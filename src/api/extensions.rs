//! The `extensions` object of a sync request and response, the same in both dialects
//! (MSC3575's extension MSCs and MSC4186 share the shapes): parsed into the engine's
//! [`ExtensionsRequest`] with every limit checked, and written from
//! [`ExtensionsResponse`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use super::json::JsonWriter;
use crate::error::MatrixError;
use crate::event::Receipt;
use crate::extensions::{
    to_device, Common, ExtensionRequest, ExtensionsRequest, ExtensionsResponse,
};

/// Entries an extension's `lists` or `rooms` may hold: they are sticky, so each is
/// capped like the lists and subscriptions they name.
pub const MAX_SCOPE_ENTRIES: usize = 100;
/// List names and room IDs in `lists`/`rooms`, as elsewhere in a request.
const MAX_LIST_NAME: usize = 64;
const MAX_ROOM_ID: usize = 255;

#[derive(Deserialize, Default)]
pub struct WireExtensions {
    #[serde(default)]
    to_device: Option<WireToDevice>,
    #[serde(default)]
    e2ee: Option<WireCommon>,
    #[serde(default)]
    account_data: Option<WireCommon>,
    #[serde(default)]
    receipts: Option<WireCommon>,
    #[serde(default)]
    typing: Option<WireCommon>,
}

#[derive(Deserialize, Default)]
struct WireCommon {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    lists: Option<Vec<String>>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
struct WireToDevice {
    #[serde(flatten)]
    common: WireCommon,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    limit: Option<u64>,
}

/// Checks and converts what one request states of the extensions.
pub fn parse(wire: WireExtensions) -> Result<ExtensionsRequest, MatrixError> {
    let to_device = match wire.to_device {
        None => None,
        Some(t) => {
            let field = "extensions.to_device";
            let since = match t.since.as_deref() {
                None | Some("") => None,
                Some(s) => Some(s.parse().map_err(|_| {
                    MatrixError::invalid_param(format!(
                        "{field}.since: must be a next_batch this server returned, not '{}'",
                        s.chars().take(32).collect::<String>()
                    ))
                })?),
            };
            Some(ExtensionRequest {
                common: common(field, t.common)?,
                params: to_device::Params {
                    since,
                    // Any number: the engine lowers it to the most a response carries.
                    limit: t.limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX)),
                },
            })
        }
    };
    let only_common = |name: &str, wire: Option<WireCommon>| {
        wire.map(|c| {
            Ok::<_, MatrixError>(ExtensionRequest {
                common: common(&format!("extensions.{name}"), c)?,
                params: (),
            })
        })
        .transpose()
    };
    Ok(ExtensionsRequest {
        to_device,
        e2ee: only_common("e2ee", wire.e2ee)?,
        account_data: only_common("account_data", wire.account_data)?,
        receipts: only_common("receipts", wire.receipts)?,
        typing: only_common("typing", wire.typing)?,
    })
}

fn common(field: &str, wire: WireCommon) -> Result<Common, MatrixError> {
    let bad =
        |what: &str, msg: String| MatrixError::invalid_param(format!("{field}.{what}: {msg}"));
    for (what, entries, max_len) in [
        ("lists", &wire.lists, MAX_LIST_NAME),
        ("rooms", &wire.rooms, MAX_ROOM_ID),
    ] {
        let Some(entries) = entries else {
            continue;
        };
        if entries.len() > MAX_SCOPE_ENTRIES {
            return Err(bad(
                what,
                format!("at most {MAX_SCOPE_ENTRIES} entries are allowed"),
            ));
        }
        if entries.iter().any(|e| e.len() > max_len) {
            return Err(bad(what, format!("entries are at most {max_len} bytes")));
        }
    }
    Ok(Common {
        enabled: wire.enabled,
        lists: wire.lists,
        rooms: wire
            .rooms
            .map(|rooms| rooms.into_iter().map(Into::into).collect()),
    })
}

/// One room's receipts as the `m.receipt` EDU of v2 `/sync`:
/// `{event_id: {receipt_type: {user_id: {ts, thread_id}}}}`. A user has one entry per
/// event and type, so where a user's unthreaded and threaded receipts are on the same
/// event the unthreaded one is sent (MSC4102, as the Go proxy did).
fn write_receipts(w: &mut JsonWriter, receipts: &[Arc<Receipt>]) {
    let mut by_event: BTreeMap<&str, BTreeMap<&str, BTreeMap<&str, &Receipt>>> = BTreeMap::new();
    for r in receipts {
        let kind = if r.private {
            "m.read.private"
        } else {
            "m.read"
        };
        let users = by_event
            .entry(&r.event_id)
            .or_default()
            .entry(kind)
            .or_default();
        let slot = users.entry(&r.user_id).or_insert(r);
        if slot.thread_id.is_some() && r.thread_id.is_none() {
            *slot = r;
        }
    }
    w.begin_object();
    w.key("type").str("m.receipt");
    w.key("content").begin_object();
    for (event, kinds) in by_event {
        w.key(event).begin_object();
        for (kind, users) in kinds {
            w.key(kind).begin_object();
            for (user, r) in users {
                w.key(user).begin_object();
                w.key("ts").u64(r.ts);
                if let Some(thread) = &r.thread_id {
                    w.key("thread_id").str(thread);
                }
                w.end_object();
            }
            w.end_object();
        }
        w.end_object();
    }
    w.end_object();
    w.end_object();
}

/// Writes the `extensions` object: each enabled extension's part.
pub fn write(w: &mut JsonWriter, ext: &ExtensionsResponse) {
    w.begin_object();
    if let Some(t) = &ext.to_device {
        w.key("to_device").begin_object();
        w.key("next_batch")
            .str(itoa::Buffer::new().format(t.next_batch));
        w.key("events").begin_array();
        for ev in &t.events {
            w.raw(ev);
        }
        w.end_array();
        w.end_object();
    }
    if let Some(e) = &ext.e2ee {
        w.key("e2ee").begin_object();
        if let Some(otk) = &e.otk_counts {
            w.key("device_one_time_keys_count").raw(otk);
        }
        if let Some(fallback) = &e.fallback_types {
            w.key("device_unused_fallback_key_types").raw(fallback);
        }
        // Both arrays, never null, and left out when both are empty, as in the Go proxy.
        if !e.changed.is_empty() || !e.left.is_empty() {
            w.key("device_lists").begin_object();
            for (name, users) in [("changed", &e.changed), ("left", &e.left)] {
                w.key(name).begin_array();
                for user in users {
                    w.str(user);
                }
                w.end_array();
            }
            w.end_object();
        }
        w.end_object();
    }
    if let Some(a) = &ext.account_data {
        w.key("account_data").begin_object();
        w.key("global").begin_array();
        for ev in &a.global {
            w.raw(ev);
        }
        w.end_array();
        w.key("rooms").begin_object();
        for (room, events) in &a.rooms {
            w.key(room).begin_array();
            for ev in events {
                w.raw(ev);
            }
            w.end_array();
        }
        w.end_object();
        w.end_object();
    }
    if let Some(r) = &ext.receipts {
        w.key("receipts").begin_object();
        w.key("rooms").begin_object();
        for (room, receipts) in &r.rooms {
            w.key(room);
            write_receipts(w, receipts);
        }
        w.end_object();
        w.end_object();
    }
    if let Some(t) = &ext.typing {
        w.key("typing").begin_object();
        w.key("rooms").begin_object();
        for (room, users) in &t.rooms {
            w.key(room).begin_object();
            w.key("type").str("m.typing");
            w.key("content").begin_object();
            w.key("user_ids").begin_array();
            for user in users.iter() {
                w.str(user);
            }
            w.end_array();
            w.end_object();
            w.end_object();
        }
        w.end_object();
        w.end_object();
    }
    w.end_object();
}
