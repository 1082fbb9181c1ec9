//! `POST /_matrix/client/unstable/org.matrix.msc3575/sync`: MSC3575 as the Go proxy
//! served it (spec: `msc3575-sliding-sync.md`, "Sliding sync API").
//!
//! Translates the wire request into a [`SyncRequest`] (with every limit checked here,
//! so the engine only sees valid input) and a [`SyncResponse`] back into JSON.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use super::json::JsonWriter;
use crate::conn::request::{
    BumpTypes, Filters, ListParams, Op, RoomResult, RoomSubscription, SortBy, SortSpec,
    SyncRequest, SyncResponse,
};
use crate::error::MatrixError;

/// Limits on what one request may ask for; past them a request is refused with a message
/// naming the field, so memory per connection stays bounded. The list limit is the
/// engine's, since lists are sticky across requests.
pub use crate::conn::{MAX_LISTS, MAX_SUBSCRIPTIONS};
/// Matrix IDs are at most 255 bytes.
pub const MAX_ROOM_ID: usize = 255;
pub const MAX_LIST_NAME: usize = 64;
pub const MAX_RANGES: usize = 16;
pub const MAX_REQUIRED_STATE: usize = 100;
/// Larger `timeline_limit`s are lowered to this, as the Go proxy did.
pub const MAX_TIMELINE_LIMIT: u64 = 50;
pub const MAX_CONN_ID: usize = 16;
pub const MAX_TXN_ID: usize = 64;
/// Deepest nesting of arrays and objects a body may have (see `nesting`).
pub const MAX_DEPTH: usize = 64;

#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    conn_id: Option<String>,
    #[serde(default)]
    txn_id: Option<String>,
    #[serde(default)]
    lists: Option<HashMap<String, Object<WireList>>>,
    #[serde(default)]
    room_subscriptions: Option<HashMap<String, Object<WireSubscription>>>,
    #[serde(default)]
    unsubscribe_rooms: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct WireSubscription {
    #[serde(default)]
    timeline_limit: Option<u64>,
    #[serde(default)]
    required_state: Option<Vec<Vec<String>>>,
    #[serde(default)]
    include_heroes: Option<bool>,
    #[serde(default)]
    include_old_rooms: Option<Box<Object<WireSubscription>>>,
}

/// A struct that must come as a JSON object: serde's derive also reads an array as the
/// fields in order, which would make `{"a": [[[0, 5]]]}` a list with ranges.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
            .map(Object)
    }
}

#[derive(Deserialize)]
struct WireList {
    #[serde(default)]
    ranges: Option<Vec<[u64; 2]>>,
    #[serde(default)]
    sort: Option<Vec<String>>,
    #[serde(default)]
    timeline_limit: Option<u64>,
    #[serde(default)]
    required_state: Option<Vec<Vec<String>>>,
    #[serde(default)]
    filters: Option<Object<WireFilters>>,
    #[serde(default)]
    bump_event_types: Option<Vec<String>>,
    #[serde(default)]
    include_heroes: Option<bool>,
    #[serde(default)]
    include_old_rooms: Option<Object<WireSubscription>>,
}

#[derive(Deserialize)]
struct WireFilters {
    #[serde(default)]
    is_encrypted: Option<bool>,
    #[serde(default)]
    is_invite: Option<bool>,
    #[serde(default)]
    is_tombstoned: Option<bool>,
    #[serde(default)]
    room_types: Option<Vec<Option<String>>>,
    #[serde(default)]
    not_room_types: Option<Vec<Option<String>>>,
    #[serde(default)]
    room_name_like: Option<String>,
    // `is_dm`, `spaces`, `tags` and `not_tags` are not applied yet (see README); like
    // any unknown field, they are skipped.
}

/// Entries one filter array may hold.
pub const MAX_FILTER_ENTRIES: usize = 100;
/// `room_name_like` is matched against names: longer than a name is nonsense.
pub const MAX_NAME_LIKE: usize = 255;
/// Event types in one list's `bump_event_types`.
pub const MAX_BUMP_TYPES: usize = 100;
/// An event type longer than this cannot come from a homeserver (Synapse refuses
/// 255-byte types), so it bumps nothing.
pub const MAX_EVENT_TYPE: usize = 255;

/// Parses and validates a request body. An empty body is an empty request.
pub fn parse(body: &[u8]) -> Result<SyncRequest, MatrixError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Ok(SyncRequest::default()),
        // Serde would read an array as the struct's fields in order.
        Some(b'{') => {}
        Some(_) => return Err(MatrixError::bad_json("request body must be a JSON object")),
    }
    if crate::nesting::nests_deeper_than(body, MAX_DEPTH) {
        return Err(MatrixError::bad_json(format!(
            "request body nests arrays or objects deeper than {MAX_DEPTH} levels"
        )));
    }
    let mut de = sonic_rs::Deserializer::from_slice(body);
    let wire: Body = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            MatrixError::bad_json(format!(
                "request body is not a valid sliding sync request: {inner}"
            ))
        } else {
            MatrixError::bad_json(format!("field '{path}' is invalid: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| MatrixError::bad_json(format!("data after the request object: {e}")))?;
    let mut req = SyncRequest {
        conn_id: wire.conn_id,
        txn_id: wire.txn_id,
        ..SyncRequest::default()
    };
    if req.conn_id.as_ref().is_some_and(|c| c.len() > MAX_CONN_ID) {
        return Err(MatrixError::invalid_param(format!(
            "conn_id is longer than {MAX_CONN_ID} bytes"
        )));
    }
    if req.txn_id.as_ref().is_some_and(|t| t.len() > MAX_TXN_ID) {
        return Err(MatrixError::invalid_param(format!(
            "txn_id is longer than {MAX_TXN_ID} bytes"
        )));
    }
    let lists = wire.lists.unwrap_or_default();
    if lists.len() > MAX_LISTS {
        return Err(MatrixError::invalid_param(format!(
            "lists: at most {MAX_LISTS} lists are allowed"
        )));
    }
    for (name, Object(list)) in lists {
        if name.len() > MAX_LIST_NAME {
            return Err(MatrixError::invalid_param(format!(
                "lists: list name is longer than {MAX_LIST_NAME} bytes"
            )));
        }
        let params = list_params(&name, list)?;
        req.lists.insert(name, params);
    }
    let subscriptions = wire.room_subscriptions.unwrap_or_default();
    let unsubscribe = wire.unsubscribe_rooms.unwrap_or_default();
    for (field, count) in [
        ("room_subscriptions", subscriptions.len()),
        ("unsubscribe_rooms", unsubscribe.len()),
    ] {
        if count > MAX_SUBSCRIPTIONS {
            return Err(MatrixError::invalid_param(format!(
                "{field}: at most {MAX_SUBSCRIPTIONS} rooms are allowed"
            )));
        }
    }
    for (room_id, Object(sub)) in subscriptions {
        let field = format!("room_subscriptions.{}", room_field(&room_id)?);
        req.room_subscriptions
            .insert(room_id.into(), subscription(&field, sub)?);
    }
    for room_id in unsubscribe {
        room_field(&room_id)?;
        req.unsubscribe_rooms.push(room_id.into());
    }
    Ok(req)
}

fn filters(list: &str, f: WireFilters) -> Result<Filters, MatrixError> {
    let bad = |field: &str, msg: String| {
        MatrixError::invalid_param(format!("lists.{list}.filters.{field}: {msg}"))
    };
    let lengths = [
        ("room_types", f.room_types.as_ref().map_or(0, Vec::len)),
        (
            "not_room_types",
            f.not_room_types.as_ref().map_or(0, Vec::len),
        ),
    ];
    for (field, len) in lengths {
        if len > MAX_FILTER_ENTRIES {
            return Err(bad(
                field,
                format!("at most {MAX_FILTER_ENTRIES} entries are allowed"),
            ));
        }
    }
    if f.room_name_like
        .as_ref()
        .is_some_and(|l| l.len() > MAX_NAME_LIKE)
    {
        return Err(bad(
            "room_name_like",
            format!("at most {MAX_NAME_LIKE} bytes"),
        ));
    }
    Ok(Filters {
        is_encrypted: f.is_encrypted,
        is_invite: f.is_invite,
        is_tombstoned: f.is_tombstoned,
        room_types: f.room_types,
        not_room_types: f.not_room_types.unwrap_or_default(),
        room_name_like: f.room_name_like.map(|l| l.to_lowercase()),
    })
}

/// A room ID as a field name in errors, refused when longer than an ID can be.
fn room_field(room_id: &str) -> Result<&str, MatrixError> {
    if room_id.len() > MAX_ROOM_ID {
        return Err(MatrixError::invalid_param(format!(
            "room IDs are at most {MAX_ROOM_ID} bytes"
        )));
    }
    Ok(room_id)
}

/// A room subscription, or a list's `include_old_rooms`, named by `field` in errors.
fn subscription(field: &str, sub: WireSubscription) -> Result<RoomSubscription, MatrixError> {
    Ok(RoomSubscription {
        timeline_limit: timeline_limit(sub.timeline_limit).unwrap_or(0),
        required_state: required_state(field, sub.required_state)?.unwrap_or_default(),
        include_heroes: sub.include_heroes.unwrap_or(false),
        include_old_rooms: old_rooms(field, sub.include_old_rooms.map(|o| o.0))?,
    })
}

/// `include_old_rooms` of the list or subscription named by `field`. The old rooms
/// are a whole chain already, so an `include_old_rooms` inside it means nothing.
fn old_rooms(
    field: &str,
    old: Option<WireSubscription>,
) -> Result<Option<Arc<RoomSubscription>>, MatrixError> {
    let Some(mut old) = old else {
        return Ok(None);
    };
    old.include_old_rooms = None;
    let field = format!("{field}.include_old_rooms");
    Ok(Some(Arc::new(subscription(&field, old)?)))
}

/// Larger limits are lowered to [`MAX_TIMELINE_LIMIT`], as the Go proxy did.
fn timeline_limit(limit: Option<u64>) -> Option<usize> {
    limit.map(|l| l.min(MAX_TIMELINE_LIMIT) as usize)
}

/// `required_state` of a list or subscription named by `field` in errors.
fn required_state(
    field: &str,
    entries: Option<Vec<Vec<String>>>,
) -> Result<Option<Vec<(String, String)>>, MatrixError> {
    let Some(entries) = entries else {
        return Ok(None);
    };
    let bad = |msg: String| MatrixError::invalid_param(format!("{field}.required_state: {msg}"));
    if entries.len() > MAX_REQUIRED_STATE {
        return Err(bad(format!(
            "at most {MAX_REQUIRED_STATE} entries are allowed"
        )));
    }
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        match <[String; 2]>::try_from(entry) {
            Ok([t, k]) => out.push((t, k)),
            Err(_) => return Err(bad("each entry must be [event_type, state_key]".into())),
        }
    }
    Ok(Some(out))
}

fn list_params(name: &str, list: WireList) -> Result<ListParams, MatrixError> {
    let bad = |field: &str, msg: String| {
        MatrixError::invalid_param(format!("lists.{name}.{field}: {msg}"))
    };
    let ranges = match list.ranges {
        None => None,
        Some(ranges) => {
            if ranges.len() > MAX_RANGES {
                return Err(bad(
                    "ranges",
                    format!("at most {MAX_RANGES} ranges are allowed"),
                ));
            }
            let mut sorted: Vec<(u64, u64)> = ranges.iter().map(|r| (r[0], r[1])).collect();
            for &(s, e) in &sorted {
                if s > e {
                    return Err(bad(
                        "ranges",
                        format!("range [{s}, {e}] starts after it ends"),
                    ));
                }
            }
            sorted.sort_unstable();
            if let Some(w) = sorted.windows(2).find(|w| w[1].0 <= w[0].1) {
                return Err(bad(
                    "ranges",
                    format!(
                        "ranges [{}, {}] and [{}, {}] overlap",
                        w[0].0, w[0].1, w[1].0, w[1].1
                    ),
                ));
            }
            // Any index is valid: the engine clamps ranges to the list, as the Go
            // proxy did.
            let index = |i: u64| usize::try_from(i).unwrap_or(usize::MAX);
            Some(ranges.iter().map(|r| (index(r[0]), index(r[1]))).collect())
        }
    };
    let sort = match list.sort {
        None => None,
        Some(names) => {
            let mut out = Vec::new();
            for n in &names {
                let by = match n.as_str() {
                    "by_recency" => SortBy::Recency,
                    "by_name" => SortBy::Name,
                    "by_notification_level" => SortBy::NotificationLevel,
                    "by_notification_count" => SortBy::NotificationCount,
                    "by_highlight_count" => SortBy::HighlightCount,
                    other => return Err(bad("sort", format!("unknown sort '{other}'"))),
                };
                // A sort named twice orders nothing the first did not.
                if !out.contains(&by) {
                    out.push(by);
                }
            }
            // No sort at all is the default one, as for a list that names none.
            if out.is_empty() {
                out.push(SortBy::Recency);
            }
            Some(SortSpec::from(out))
        }
    };
    let required_state = required_state(&format!("lists.{name}"), list.required_state)?;
    let filters = match list.filters {
        None => None,
        Some(Object(f)) => Some(Arc::new(filters(name, f)?)),
    };
    let bump_event_types = match list.bump_event_types {
        None => None,
        Some(types) => {
            if types.len() > MAX_BUMP_TYPES {
                return Err(bad(
                    "bump_event_types",
                    format!("at most {MAX_BUMP_TYPES} event types are allowed"),
                ));
            }
            if types.iter().any(|t| t.len() > MAX_EVENT_TYPE) {
                return Err(bad(
                    "bump_event_types",
                    format!("an event type is at most {MAX_EVENT_TYPE} bytes"),
                ));
            }
            let mut types: Vec<Box<str>> = types.into_iter().map(Into::into).collect();
            types.sort_unstable();
            types.dedup();
            // An empty list bumps on every event, as no list at all does.
            Some((!types.is_empty()).then(|| BumpTypes::from(types)))
        }
    };
    let include_old_rooms = old_rooms(
        &format!("lists.{name}"),
        list.include_old_rooms.map(|o| o.0),
    )?;
    Ok(ListParams {
        filters,
        include_old_rooms,
        bump_event_types,
        include_heroes: list.include_heroes,
        ranges,
        sort,
        timeline_limit: timeline_limit(list.timeline_limit),
        required_state,
    })
}

/// Writes the response. Events and invite state are copied in as stored.
pub fn serialize(resp: &SyncResponse) -> Vec<u8> {
    let mut w = JsonWriter::with_capacity(4096);
    w.begin_object();
    w.key("pos").str(&resp.pos);
    if let Some(txn) = &resp.txn_id {
        w.key("txn_id").str(txn);
    }
    w.key("lists").begin_object();
    for (name, list) in &resp.lists {
        w.key(name).begin_object();
        w.key("count").u64(list.count as u64);
        if !list.ops.is_empty() {
            w.key("ops").begin_array();
            for op in &list.ops {
                write_op(&mut w, op);
            }
            w.end_array();
        }
        w.end_object();
    }
    w.end_object();
    w.key("rooms").begin_object();
    for (room_id, room) in &resp.rooms {
        w.key(room_id);
        write_room(&mut w, room);
    }
    w.end_object();
    w.key("extensions").begin_object().end_object();
    w.end_object();
    w.finish()
}

fn write_range(w: &mut JsonWriter, (s, e): (usize, usize)) {
    w.key("range")
        .begin_array()
        .u64(s as u64)
        .u64(e as u64)
        .end_array();
}

fn write_op(w: &mut JsonWriter, op: &Op) {
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

fn write_room(w: &mut JsonWriter, room: &RoomResult) {
    w.begin_object();
    if let Some(name) = &room.name {
        w.key("name").str(name);
    }
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
    if room.initial {
        w.key("initial").bool(true);
    }
    if let Some(invite_state) = &room.invite_state {
        w.key("invite_state").raw(invite_state);
    }
    if !room.required_state.is_empty() {
        w.key("required_state").begin_array();
        for ev in &room.required_state {
            w.raw(ev);
        }
        w.end_array();
    }
    if !room.timeline.is_empty() {
        w.key("timeline").begin_array();
        for ev in &room.timeline {
            w.raw(ev);
        }
        w.end_array();
    }
    if room.limited {
        w.key("limited").bool(true);
    }
    if let Some(prev_batch) = &room.prev_batch {
        w.key("prev_batch").str(prev_batch);
    }
    if let Some(ts) = room.timestamp {
        w.key("timestamp").u64(ts);
    }
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
    if room.num_live > 0 {
        w.key("num_live").u64(room.num_live as u64);
    }
    w.end_object();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::RoomId;

    #[test]
    fn a_client_request_becomes_sticky_list_params() {
        let req = parse(
            br#"{"conn_id":"room-list","txn_id":"t1","lists":{"all":{"ranges":[[0,19]],"sort":["by_recency"],"timeline_limit":100,"required_state":[["m.room.name",""],["m.room.member","$ME"]]}},"extensions":{"e2ee":{"enabled":true}}}"#,
        )
        .unwrap();
        assert_eq!(req.conn_id.as_deref(), Some("room-list"));
        let list = &req.lists["all"];
        assert_eq!(list.ranges, Some(vec![(0, 19)]));
        assert_eq!(list.timeline_limit, Some(50), "timeline_limit is capped");
        assert_eq!(
            list.required_state.as_ref().unwrap()[1],
            ("m.room.member".into(), "$ME".into())
        );
    }

    #[test]
    fn room_subscriptions_and_unsubscriptions_are_read_and_bounded() {
        let req = parse(
            br#"{"room_subscriptions":{"!a:x":{"timeline_limit":500,"required_state":[["*","*"]]},"!b:x":{}},"unsubscribe_rooms":["!c:x"]}"#,
        )
        .unwrap();
        let a = &req.room_subscriptions["!a:x"];
        assert_eq!(
            a.timeline_limit, MAX_TIMELINE_LIMIT as usize,
            "clamped as in lists"
        );
        assert_eq!(a.required_state, [("*".to_owned(), "*".to_owned())]);
        assert_eq!(req.room_subscriptions["!b:x"], RoomSubscription::default());
        assert_eq!(req.unsubscribe_rooms, [RoomId::from("!c:x")]);

        let many: Vec<String> = (0..=MAX_SUBSCRIPTIONS)
            .map(|i| format!("!r{i}:x"))
            .collect();
        let body = format!(
            r#"{{"unsubscribe_rooms":{}}}"#,
            sonic_rs::to_string(&many).unwrap()
        );
        let err = parse(body.as_bytes()).unwrap_err();
        assert!(err.message.contains("unsubscribe_rooms"), "{}", err.message);
        let long = format!(
            r#"{{"unsubscribe_rooms":["!{}"]}}"#,
            "x".repeat(MAX_ROOM_ID)
        );
        assert_eq!(
            parse(long.as_bytes()).unwrap_err().errcode,
            "M_INVALID_PARAM"
        );
    }

    #[test]
    fn room_field_parameters_are_read_and_bump_types_normalised() {
        let req = parse(
            br#"{"lists":{"a":{"bump_event_types":["m.room.message","m.sticker","m.room.message"],"include_heroes":true,"include_old_rooms":{"timeline_limit":2,"required_state":[["m.room.create",""]]}},"b":{"bump_event_types":[]}},"room_subscriptions":{"!r:x":{"include_heroes":true}}}"#,
        )
        .unwrap();
        let a = &req.lists["a"];
        let types = a.bump_event_types.clone().flatten().unwrap();
        let types: Vec<&str> = types.iter().map(|t| &**t).collect();
        assert_eq!(types, ["m.room.message", "m.sticker"]);
        assert_eq!(a.include_heroes, Some(true));
        assert_eq!(a.include_old_rooms.as_ref().unwrap().timeline_limit, 2);
        assert_eq!(
            req.lists["b"].bump_event_types,
            Some(None),
            "an empty list bumps on everything"
        );
        assert!(req.room_subscriptions["!r:x"].include_heroes);
        let nested = parse(
            br#"{"room_subscriptions":{"!r:x":{"include_old_rooms":{"timeline_limit":1,"include_old_rooms":{}}}}}"#,
        )
        .unwrap();
        let old = nested.room_subscriptions["!r:x"]
            .include_old_rooms
            .clone()
            .unwrap();
        assert_eq!(old.timeline_limit, 1);
        assert!(
            old.include_old_rooms.is_none(),
            "one chain, not chains of chains"
        );
        let many = format!(
            r#"{{"lists":{{"a":{{"bump_event_types":{}}}}}}}"#,
            sonic_rs::to_string(&vec!["t"; MAX_BUMP_TYPES + 1]).unwrap()
        );
        let err = parse(many.as_bytes()).unwrap_err();
        assert!(
            err.message.contains("lists.a.bump_event_types"),
            "{}",
            err.message
        );
    }

    #[test]
    fn any_index_is_a_valid_range_end() {
        let req = parse(br#"{"lists":{"a":{"ranges":[[0,99999],[100000,18446744073709551615]]}}}"#)
            .unwrap();
        assert_eq!(
            req.lists["a"].ranges,
            Some(vec![(0, 99_999), (100_000, usize::MAX)]),
            "the engine clamps ranges to the list"
        );
    }

    #[test]
    fn malformed_bodies_name_the_field() {
        let err = parse(br#"{"lists":{"a":{"ranges":[[0,"x"]]}}}"#).unwrap_err();
        assert_eq!(err.errcode, "M_BAD_JSON");
        assert!(err.message.contains("lists.a.ranges"), "{}", err.message);
        let err = parse(b"{not json").unwrap_err();
        assert_eq!(err.errcode, "M_BAD_JSON");
        let err = parse(br#"{"lists":[]}"#).unwrap_err();
        assert!(err.message.contains("lists"), "{}", err.message);
        let err = parse(br#"{"lists":{"a":[[[0,5]]]}}"#).unwrap_err();
        assert_eq!(err.errcode, "M_BAD_JSON", "a list must be an object");
        assert!(err.message.contains("lists.a"), "{}", err.message);
    }

    #[test]
    fn only_one_json_object_is_a_request() {
        for body in [
            &b"[]"[..],
            br#"[null,"t"]"#,
            br#"{"lists":{}} x"#,
            b"{}{}",
            b"5",
        ] {
            let err = parse(body).unwrap_err();
            assert_eq!(
                err.errcode,
                "M_BAD_JSON",
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(parse(b" {} \n").is_ok());
    }

    #[test]
    fn deep_nesting_is_refused_before_it_reaches_the_parser() {
        let deep = |n: usize| format!("{{\"extensions\":{}{}}}", "[".repeat(n), "]".repeat(n));
        assert!(parse(deep(MAX_DEPTH - 1).as_bytes()).is_ok());
        let err = parse(deep(MAX_DEPTH).as_bytes()).unwrap_err();
        assert_eq!(err.errcode, "M_BAD_JSON");
        assert!(parse(deep(1_000_000).as_bytes()).is_err());
        // Brackets in strings, escaped quotes included, are text.
        let text = format!(r#"{{"note":"\"{}"}}"#, "[".repeat(100));
        assert!(parse(text.as_bytes()).is_ok());
    }

    #[test]
    fn invalid_ranges_and_entries_are_invalid_params() {
        for (body, needle) in [
            (
                &br#"{"lists":{"a":{"ranges":[[5,1]]}}}"#[..],
                "starts after",
            ),
            (br#"{"lists":{"a":{"ranges":[[0,10],[5,20]]}}}"#, "overlap"),
            (
                br#"{"lists":{"a":{"required_state":[["m.room.name"]]}}}"#,
                "[event_type, state_key]",
            ),
            (br#"{"lists":{"a":{"sort":["by_magic"]}}}"#, "unknown sort"),
            (br#"{"conn_id":"aaaaaaaaaaaaaaaaaaaaaaaaa"}"#, "conn_id"),
            (
                br#"{"room_subscriptions":{"!r:x":{"required_state":[["a","b","c"]]}}}"#,
                "room_subscriptions.!r:x.required_state",
            ),
        ] {
            let err = parse(body).unwrap_err();
            assert_eq!(
                err.errcode,
                "M_INVALID_PARAM",
                "{}",
                String::from_utf8_lossy(body)
            );
            assert!(
                err.message.contains(needle),
                "{} lacks {needle}",
                err.message
            );
        }
        let err = parse(br#"{"lists":{"a":{"ranges":[[-1,3]]}}}"#).unwrap_err();
        assert_eq!(err.errcode, "M_BAD_JSON");
    }

    #[test]
    fn responses_omit_empty_fields_and_keep_events_verbatim() {
        let mut resp = SyncResponse {
            pos: "7".into(),
            ..SyncResponse::default()
        };
        resp.lists.insert(
            "all".into(),
            crate::conn::request::ListResult {
                count: 2,
                ops: vec![
                    Op::Delete { index: 1 },
                    Op::Insert {
                        index: 0,
                        room_id: "!b:x".into(),
                    },
                ],
            },
        );
        resp.rooms.insert(
            "!b:x".into(),
            RoomResult {
                timeline: vec![bytes::Bytes::from_static(
                    br#"{"event_id":"$e","type":"m.room.message"}"#,
                )],
                num_live: 1,
                ..RoomResult::default()
            },
        );
        let out = String::from_utf8(serialize(&resp)).unwrap();
        assert_eq!(
            out,
            r#"{"pos":"7","lists":{"all":{"count":2,"ops":[{"op":"DELETE","index":1},{"op":"INSERT","index":0,"room_id":"!b:x"}]}},"rooms":{"!b:x":{"timeline":[{"event_id":"$e","type":"m.room.message"}],"num_live":1}},"extensions":{}}"#
        );
    }
}

#[cfg(test)]
mod robustness {
    use rand::{Rng, SeedableRng};

    use super::*;

    const SEEDS: [&[u8]; 3] = [
        br#"{"conn_id":"c","txn_id":"t","lists":{"a":{"ranges":[[0,19],[30,39]],"sort":["by_recency"],"timeline_limit":5,"required_state":[["*","*"],["m.room.member","$ME"]]}}}"#,
        br#"{"lists":{"a":{"ranges":[[0,0]]},"b":{"timeline_limit":0}}}"#,
        b"{}",
    ];

    /// Random byte edits of valid requests: every outcome is a request or a Matrix error
    /// with a 4xx status, never a panic.
    #[test]
    fn mangled_bodies_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3575);
        for i in 0..20_000 {
            let mut body = SEEDS[i % SEEDS.len()].to_vec();
            for _ in 0..rng.gen_range(1..6) {
                let at = rng.gen_range(0..=body.len());
                match rng.gen_range(0..3) {
                    0 if at < body.len() => {
                        body.remove(at);
                    }
                    1 => body.insert(at, b"{}[]\",:-09azE\\\x00\xff"[rng.gen_range(0..16)]),
                    _ if at < body.len() => body[at] = rng.gen(),
                    _ => {}
                }
            }
            if let Err(e) = parse(&body) {
                assert!(e.status.is_client_error(), "{e}");
            }
        }
    }
}
