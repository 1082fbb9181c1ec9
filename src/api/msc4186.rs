//! `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`: MSC4186 Simplified
//! Sliding Sync (spec: `msc4186-simplified-sliding-sync.md`, "API"), in the dialect
//! Synapse serves and matrix-rust-sdk sends; where the MSC's text and Synapse differ,
//! Synapse's behaviour wins.
//!
//! Requests come in two shapes, both read here: Synapse's (`pos` and `timeout` as query
//! parameters, `lists.X.ranges`, `required_state` as `[[type, state_key]]`) and the
//! MSC's current text (`pos` and `timeout` in the body, `lists.X.range`,
//! `required_state` as `{include, exclude, lazy_members}`, `is_invited`). Nothing is
//! sticky: a request states every list and subscription it wants, so every field of a
//! list is filled in here and the engine drops what a request leaves out. Responses take
//! Synapse's shape.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use super::body::{self, Object, WireFilters};
use super::json::JsonWriter;
use super::response;
use crate::conn::request::{
    Dialect, Filters, ListParams, RoomResult, RoomSubscription, SortSpec, SyncRequest, SyncResponse,
};
use crate::error::MatrixError;
use crate::rooms::bump::SYNAPSE_BUMP_TYPES;
use crate::rooms::sort::{by_recency, BumpTypes};

#[derive(Deserialize, Default)]
#[serde(default)]
struct Body {
    conn_id: Option<String>,
    txn_id: Option<String>,
    /// The MSC's text moves `pos` and `timeout` into the body.
    pos: Option<String>,
    timeout: Option<u64>,
    lists: Option<HashMap<String, Object<WireList>>>,
    room_subscriptions: Option<HashMap<String, Object<RoomConfig>>>,
    /// The same extensions as MSC3575's, with the same `lists`/`rooms` scoping.
    extensions: Option<super::extensions::WireExtensions>,
    // `set_presence` is skipped, like any unknown field: the proxy polls the
    // homeserver as offline whatever the client asks.
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireList {
    ranges: Option<Vec<[u64; 2]>>,
    /// The MSC's text: one range.
    range: Option<[u64; 2]>,
    timeline_limit: Option<u64>,
    required_state: Option<RequiredState>,
    filters: Option<Object<WireFilters>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RoomConfig {
    timeline_limit: Option<u64>,
    required_state: Option<RequiredState>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RequiredState {
    /// Synapse's and matrix-rust-sdk's `[[type, state_key]]`, with `*`, `$ME`, `$LAZY`.
    Pairs(Vec<Vec<String>>),
    /// The MSC's text.
    Spec(Object<StateSpec>),
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct StateSpec {
    include: Vec<Object<StateElement>>,
    exclude: Vec<Object<StateElement>>,
    lazy_members: bool,
}

/// An absent field matches anything.
#[derive(Deserialize, Default)]
#[serde(default)]
struct StateElement {
    #[serde(rename = "type")]
    kind: Option<String>,
    state_key: Option<String>,
}

/// A parsed request, with the `pos` and `timeout` its body may carry (they win over the
/// query's).
#[derive(Debug)]
pub struct Parsed {
    pub request: SyncRequest,
    pub pos: Option<String>,
    pub timeout_ms: Option<u64>,
}

/// Parses and validates a request body. An empty body is an empty request.
pub fn parse(raw: &[u8]) -> Result<Parsed, MatrixError> {
    let wire = body::read::<Body>(raw)?.unwrap_or_default();
    let common = body::Common {
        conn_id: wire.conn_id,
        txn_id: wire.txn_id,
        lists: wire.lists,
        room_subscriptions: wire.room_subscriptions,
    };
    let mut request = body::request(Dialect::Msc4186, common, list_params, |field, sub| {
        Ok(RoomSubscription {
            timeline_limit: body::timeline_limit(sub.timeline_limit).unwrap_or(0),
            required_state: required_state(field, sub.required_state)?,
            // Synapse sends heroes with every room named after its members.
            include_heroes: true,
            include_old_rooms: None,
        })
    })?;
    request.extensions = super::extensions::parse(wire.extensions.unwrap_or_default())?;
    Ok(Parsed {
        request,
        pos: wire.pos,
        timeout_ms: wire.timeout,
    })
}

fn list_params(name: &str, list: WireList) -> Result<ListParams, MatrixError> {
    let field = format!("lists.{name}");
    let ranges: Vec<[u64; 2]> = match (list.ranges, list.range) {
        (Some(_), Some(_)) => {
            return Err(MatrixError::invalid_param(format!(
                "{field}: give either ranges or range, not both"
            )))
        }
        (Some(ranges), None) => ranges,
        (None, Some(range)) => vec![range],
        // As in Synapse: a list without ranges has a count and no rooms.
        (None, None) => Vec::new(),
    };
    Ok(ListParams {
        ranges: Some(body::ranges(&format!("{field}.ranges"), &ranges)?),
        // MSC4186 has no sorts: lists are by recency.
        sort: Some(SortSpec::clone(&by_recency())),
        filters: Some(Arc::new(match list.filters {
            Some(Object(f)) => body::filters(name, f)?,
            None => Filters::default(),
        })),
        timeline_limit: Some(body::timeline_limit(list.timeline_limit).unwrap_or(0)),
        required_state: Some(required_state(&field, list.required_state)?),
        // Synapse orders by the newest event of its bump types.
        bump_event_types: Some(Some(synapse_bump_types())),
        include_heroes: Some(true),
        ..ListParams::default()
    })
}

/// Synapse's bump event types, sorted as a list's own `bump_event_types` are.
fn synapse_bump_types() -> BumpTypes {
    let mut types: Vec<Box<str>> = SYNAPSE_BUMP_TYPES.iter().map(|t| (*t).into()).collect();
    types.sort_unstable();
    BumpTypes::from(types)
}

/// Either shape of `required_state` as `[type, state_key]` pairs, under the same limits
/// as MSC3575's.
fn required_state(
    field: &str,
    wire: Option<RequiredState>,
) -> Result<Vec<(String, String)>, MatrixError> {
    let pairs = match wire {
        None => Vec::new(),
        Some(RequiredState::Pairs(pairs)) => pairs,
        Some(RequiredState::Spec(Object(spec))) => {
            if !spec.exclude.is_empty() {
                return Err(MatrixError::invalid_param(format!(
                    "{field}.required_state.exclude is not supported; list what to include, \
                     or use the [[type, state_key]] form with [\"*\", \"*\"]"
                )));
            }
            let any = |v: Option<String>| v.unwrap_or_else(|| "*".to_owned());
            let mut pairs: Vec<Vec<String>> = spec
                .include
                .into_iter()
                .map(|Object(e)| vec![any(e.kind), any(e.state_key)])
                .collect();
            if spec.lazy_members {
                pairs.push(vec!["m.room.member".to_owned(), "$LAZY".to_owned()]);
            }
            pairs
        }
    };
    Ok(body::required_state(field, Some(pairs))?.unwrap_or_default())
}

/// Writes the response in Synapse's shape. Events and invite state are copied in as
/// stored.
pub fn serialize(resp: &SyncResponse) -> Vec<u8> {
    response::write(
        resp,
        response::Shape {
            room: write_room,
            synapse_lists: true,
        },
    )
}

fn write_room(w: &mut JsonWriter, room: &RoomResult) {
    w.begin_object();
    if let Some(stamp) = room.bump_stamp {
        w.key("bump_stamp").u64(stamp);
    }
    response::counts(w, room);
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
    if room.expanded_timeline {
        w.key("unstable_expanded_timeline").bool(true);
    }
    response::events(w, "required_state", &room.required_state);
    response::timeline(w, room);
    match &room.invite_state {
        Some(invite_state) => {
            w.key("invite_state").raw(invite_state);
        }
        // As Synapse: every room but an invite says whether its timeline is whole and
        // how much of it is new.
        None => {
            w.key("limited").bool(room.limited);
            if let Some(prev_batch) = &room.prev_batch {
                w.key("prev_batch").str(prev_batch);
            }
            w.key("num_live").u64(room.num_live as u64);
        }
    }
    w.end_object();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::request::{ListResult, Op};

    #[test]
    fn rust_sdk_room_list_requests_become_full_list_params() {
        let parsed = parse(
            br#"{"conn_id":"room-list","lists":{"all_rooms":{"ranges":[[0,19]],"timeline_limit":1,"required_state":[["m.room.name",""],["m.room.member","$LAZY"],["m.room.member","$ME"]],"filters":{"is_invite":null}}},"room_subscriptions":{"!a:x":{"timeline_limit":20,"required_state":[["m.room.pinned_events",""]]}},"extensions":{"account_data":{"enabled":true},"receipts":{"enabled":true,"rooms":["*"]}}}"#,
        )
        .unwrap();
        let req = parsed.request;
        assert_eq!(req.dialect, Dialect::Msc4186);
        assert_eq!(req.conn_id.as_deref(), Some("room-list"));
        let list = &req.lists["all_rooms"];
        assert_eq!(list.ranges, Some(vec![(0, 19)]));
        assert_eq!(list.timeline_limit, Some(1));
        assert_eq!(list.filters.as_deref(), Some(&Filters::default()));
        assert_eq!(list.sort, Some(by_recency()));
        assert_eq!(
            list.required_state.as_ref().unwrap()[1],
            ("m.room.member".into(), "$LAZY".into())
        );
        assert_eq!(req.room_subscriptions["!a:x"].timeline_limit, 20);
        assert!(parsed.pos.is_none() && parsed.timeout_ms.is_none());
    }

    #[test]
    fn the_msc_text_shape_reads_the_same() {
        let parsed = parse(
            br#"{"pos":"42","timeout":0,"lists":{"a":{"range":[0,9],"timeline_limit":3,"required_state":{"include":[{"type":"m.room.create","state_key":""},{"type":"m.space.child"},{}],"lazy_members":true},"filters":{"is_invited":false}}},"room_subscriptions":{"!r:x":{"timeline_limit":5,"required_state":{"include":[{}]}}}}"#,
        )
        .unwrap();
        assert_eq!(parsed.pos.as_deref(), Some("42"));
        assert_eq!(parsed.timeout_ms, Some(0));
        let list = &parsed.request.lists["a"];
        assert_eq!(list.ranges, Some(vec![(0, 9)]));
        let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter()
                .map(|(t, k)| (t.to_string(), k.to_string()))
                .collect()
        };
        assert_eq!(
            list.required_state.as_deref(),
            Some(
                &pairs(&[
                    ("m.room.create", ""),
                    ("m.space.child", "*"),
                    ("*", "*"),
                    ("m.room.member", "$LAZY")
                ])[..]
            )
        );
        assert_eq!(list.filters.as_ref().unwrap().is_invite, Some(false));
        assert_eq!(
            parsed.request.room_subscriptions["!r:x"].required_state,
            pairs(&[("*", "*")])
        );
    }

    #[test]
    fn a_list_without_ranges_lists_no_rooms_and_both_forms_are_refused() {
        let req = parse(br#"{"lists":{"a":{"timeline_limit":1,"required_state":[]}}}"#)
            .unwrap()
            .request;
        assert_eq!(req.lists["a"].ranges, Some(vec![]));
        let err = parse(br#"{"lists":{"a":{"range":[0,1],"ranges":[[0,1]]}}}"#).unwrap_err();
        assert_eq!(err.errcode, "M_INVALID_PARAM");
        assert!(err.message.contains("lists.a"), "{}", err.message);
    }

    #[test]
    fn bad_input_names_the_field() {
        for (body, errcode, needle) in [
            (
                &br#"{"lists":{"a":{"ranges":[[5,1]]}}}"#[..],
                "M_INVALID_PARAM",
                "lists.a.ranges",
            ),
            (
                br#"{"lists":{"a":{"required_state":[["m.room.name"]]}}}"#,
                "M_INVALID_PARAM",
                "lists.a.required_state",
            ),
            (
                br#"{"lists":{"a":{"required_state":{"exclude":[{}]}}}}"#,
                "M_INVALID_PARAM",
                "lists.a.required_state.exclude",
            ),
            (
                br#"{"lists":{"a":{"required_state":7}}}"#,
                "M_BAD_JSON",
                "lists.a.required_state",
            ),
            (
                br#"{"conn_id":"aaaaaaaaaaaaaaaaaaaaaa"}"#,
                "M_INVALID_PARAM",
                "conn_id",
            ),
            (br#"{"timeout":"soon"}"#, "M_BAD_JSON", "timeout"),
            (b"[]", "M_BAD_JSON", "JSON object"),
        ] {
            let err = parse(body).err().unwrap();
            assert_eq!(err.errcode, errcode, "{}", String::from_utf8_lossy(body));
            assert!(
                err.message.contains(needle),
                "{} lacks {needle}",
                err.message
            );
        }
    }

    #[test]
    fn responses_take_synapses_shape() {
        let mut resp = SyncResponse {
            pos: "7".into(),
            ..SyncResponse::default()
        };
        resp.lists.insert(
            "all_rooms".into(),
            ListResult {
                count: 2,
                ops: vec![Op::Sync {
                    range: (0, 19),
                    room_ids: vec!["!b:x".into(), "!a:x".into()],
                }],
            },
        );
        resp.rooms.insert(
            "!b:x".into(),
            RoomResult {
                initial: true,
                expanded_timeline: true,
                name: Some("B".into()),
                bump_stamp: Some(12),
                timeline: vec![bytes::Bytes::from_static(br#"{"event_id":"$e"}"#)],
                ..RoomResult::default()
            },
        );
        resp.rooms.insert(
            "!i:x".into(),
            RoomResult {
                initial: true,
                invite_state: Some(bytes::Bytes::from_static(b"[]")),
                ..RoomResult::default()
            },
        );
        let out = String::from_utf8(serialize(&resp)).unwrap();
        assert_eq!(
            out,
            r#"{"pos":"7","lists":{"all_rooms":{"count":2,"ops":[{"op":"SYNC","range":[0,19],"room_ids":["!b:x","!a:x"]}]}},"rooms":{"!b:x":{"bump_stamp":12,"name":"B","initial":true,"unstable_expanded_timeline":true,"timeline":[{"event_id":"$e"}],"limited":false,"num_live":0},"!i:x":{"initial":true,"invite_state":[]}},"extensions":{}}"#
        );
    }
}

#[cfg(test)]
mod robustness {
    const SEEDS: [&[u8]; 3] = [
        br#"{"conn_id":"room-list","lists":{"all_rooms":{"ranges":[[0,19]],"timeline_limit":1,"required_state":[["m.room.member","$LAZY"],["*","*"]],"filters":{"is_invite":true,"not_room_types":["m.space",null]}}},"room_subscriptions":{"!a:x":{"timeline_limit":20,"required_state":[]}}}"#,
        br#"{"pos":"1","timeout":0,"lists":{"a":{"range":[0,0],"timeline_limit":1,"required_state":{"include":[{"type":"m.room.name"}],"lazy_members":true}}}}"#,
        b"{}",
    ];

    #[test]
    fn mangled_bodies_never_panic() {
        crate::api::body::mangled_bodies_never_panic(&SEEDS, 4186, super::parse);
    }
}
