//! `POST /_matrix/client/unstable/org.matrix.msc3575/sync`: MSC3575 as the Go proxy
//! served it (spec: `msc3575-sliding-sync.md`, "Sliding sync API").
//!
//! Translates the wire request into a [`SyncRequest`] (with every limit of
//! [`super::body`] checked, so the engine only sees valid input) and a [`SyncResponse`]
//! back into JSON.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use super::body::{self, Object, WireFilters};
use super::json::JsonWriter;
use super::response;
use crate::conn::request::{
    BumpTypes, Dialect, ListParams, RoomResult, RoomSubscription, SortBy, SortSpec, SyncRequest,
    SyncResponse,
};
use crate::error::MatrixError;

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
    #[serde(default)]
    extensions: Option<super::extensions::WireExtensions>,
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
    #[serde(default)]
    slow_get_all_rooms: Option<bool>,
}

/// Event types in one list's `bump_event_types`.
pub const MAX_BUMP_TYPES: usize = 100;
/// An event type longer than this cannot come from a homeserver (Synapse refuses
/// 255-byte types), so it bumps nothing.
pub const MAX_EVENT_TYPE: usize = 255;

/// Parses and validates a request body. An empty body is an empty request.
pub fn parse(raw: &[u8]) -> Result<SyncRequest, MatrixError> {
    let Some(wire) = body::read::<Body>(raw)? else {
        return Ok(SyncRequest::default());
    };
    let unsubscribe = wire.unsubscribe_rooms.unwrap_or_default();
    body::room_count("unsubscribe_rooms", unsubscribe.len())?;
    let common = body::Common {
        conn_id: wire.conn_id,
        txn_id: wire.txn_id,
        lists: wire.lists,
        room_subscriptions: wire.room_subscriptions,
    };
    let mut req = body::request(Dialect::Msc3575, common, list_params, subscription)?;
    for room_id in unsubscribe {
        body::room_field(&room_id)?;
        req.unsubscribe_rooms.push(room_id.into());
    }
    req.extensions = super::extensions::parse(wire.extensions.unwrap_or_default())?;
    Ok(req)
}

fn subscription(field: &str, sub: WireSubscription) -> Result<RoomSubscription, MatrixError> {
    Ok(RoomSubscription {
        timeline_limit: body::timeline_limit(sub.timeline_limit).unwrap_or(0),
        required_state: body::required_state(field, sub.required_state)?.unwrap_or_default(),
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

fn list_params(name: &str, list: WireList) -> Result<ListParams, MatrixError> {
    let bad = |field: &str, msg: String| {
        MatrixError::invalid_param(format!("lists.{name}.{field}: {msg}"))
    };
    let ranges = match list.ranges {
        None => None,
        Some(ranges) => Some(body::ranges(&format!("lists.{name}.ranges"), &ranges)?),
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
    let required_state = body::required_state(&format!("lists.{name}"), list.required_state)?;
    let filters = match list.filters {
        None => None,
        Some(Object(f)) => Some(Arc::new(body::filters(name, f)?)),
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
        timeline_limit: body::timeline_limit(list.timeline_limit),
        required_state,
        slow_get_all_rooms: list.slow_get_all_rooms,
    })
}

/// Writes the response. Events and invite state are copied in as stored.
pub fn serialize(resp: &SyncResponse) -> Vec<u8> {
    response::write(
        resp,
        response::Shape {
            room: write_room,
            synapse_lists: false,
        },
    )
}

fn write_room(w: &mut JsonWriter, room: &RoomResult) {
    w.begin_object();
    if let Some(name) = &room.name {
        w.key("name").str(name);
    }
    response::heroes_and_avatar(w, room);
    if room.initial {
        w.key("initial").bool(true);
    }
    if let Some(dm) = room.is_dm {
        w.key("is_dm").bool(dm);
    }
    if let Some(invite_state) = &room.invite_state {
        w.key("invite_state").raw(invite_state);
    }
    response::events(w, "required_state", &room.required_state);
    response::timeline(w, room);
    if room.limited {
        w.key("limited").bool(true);
    }
    if let Some(prev_batch) = &room.prev_batch {
        w.key("prev_batch").str(prev_batch);
    }
    if let Some(ts) = room.timestamp {
        w.key("timestamp").u64(ts);
    }
    response::counts(w, room);
    if room.num_live > 0 {
        w.key("num_live").u64(room.num_live as u64);
    }
    w.end_object();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::body::{MAX_DEPTH, MAX_ROOM_ID, MAX_SUBSCRIPTIONS, MAX_TIMELINE_LIMIT};
    use crate::conn::request::Op;
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
        let deep = |n: usize| format!("{{\"unknown_field\":{}{}}}", "[".repeat(n), "]".repeat(n));
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
    const SEEDS: [&[u8]; 4] = [
        br#"{"extensions":{"to_device":{"enabled":true,"since":"5","limit":10,"lists":["a"]},"e2ee":{"enabled":true,"rooms":["!r:x","*"]}}}"#,
        br#"{"conn_id":"c","txn_id":"t","lists":{"a":{"ranges":[[0,19],[30,39]],"sort":["by_recency"],"timeline_limit":5,"required_state":[["*","*"],["m.room.member","$ME"]]}}}"#,
        br#"{"lists":{"a":{"ranges":[[0,0]]},"b":{"timeline_limit":0}}}"#,
        b"{}",
    ];

    #[test]
    fn mangled_bodies_never_panic() {
        crate::api::body::mangled_bodies_never_panic(&SEEDS, 3575, super::parse);
    }
}
