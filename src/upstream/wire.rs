//! The v2 `/sync` wire format: parsed once with sonic-rs, events kept as raw bytes and
//! only the fields we index read out of them.

use std::borrow::Cow;
use std::collections::HashMap;

use bytes::Bytes;
use serde::Deserialize;
use sonic_rs::{JsonValueMutTrait, JsonValueTrait, LazyValue};

use crate::event::{Decoder, Event, EventError, InviteFacts, Member, Membership};

/// How the store reads back what it stored: this format's parsers, handed over at
/// startup.
pub const DECODER: Decoder = Decoder {
    event: parse_event,
    invite: invite_facts,
};

#[derive(Deserialize)]
pub struct SyncResponse<'a> {
    pub next_batch: String,
    #[serde(borrow, default)]
    pub rooms: Option<Rooms<'a>>,
}

#[derive(Deserialize, Default)]
pub struct Rooms<'a> {
    #[serde(borrow, default)]
    pub join: HashMap<String, JoinedRoom<'a>>,
    #[serde(borrow, default)]
    pub invite: HashMap<String, InvitedRoom<'a>>,
    #[serde(borrow, default)]
    pub leave: HashMap<String, LeftRoom<'a>>,
}

#[derive(Deserialize, Default)]
pub struct Events<'a> {
    #[serde(borrow, default)]
    pub events: Vec<LazyValue<'a>>,
}

#[derive(Deserialize, Default)]
pub struct Timeline<'a> {
    #[serde(borrow, default)]
    pub events: Vec<LazyValue<'a>>,
    #[serde(default)]
    pub limited: bool,
    #[serde(default)]
    pub prev_batch: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct UnreadNotifications {
    #[serde(default)]
    pub notification_count: Option<u64>,
    #[serde(default)]
    pub highlight_count: Option<u64>,
}

#[derive(Deserialize, Default)]
pub struct JoinedRoom<'a> {
    #[serde(borrow, default)]
    pub state: Events<'a>,
    #[serde(borrow, default)]
    pub timeline: Timeline<'a>,
    #[serde(default)]
    pub unread_notifications: Option<UnreadNotifications>,
}

#[derive(Deserialize, Default)]
pub struct InvitedRoom<'a> {
    #[serde(borrow, default)]
    pub invite_state: Events<'a>,
}

#[derive(Deserialize, Default)]
pub struct LeftRoom<'a> {
    #[serde(borrow, default)]
    pub state: Events<'a>,
    #[serde(borrow, default)]
    pub timeline: Timeline<'a>,
}

/// Deepest nesting kept from the homeserver; real events nest a handful of levels.
pub const MAX_DEPTH: usize = 128;

/// Parses a `/sync` body that went through [`clamp`]. Rooms whose IDs storage cannot
/// hold are left out, and such `prev_batch` tokens dropped (see [`storable`]).
pub fn parse_sync(body: &[u8]) -> Result<SyncResponse<'_>, sonic_rs::Error> {
    let mut resp: SyncResponse<'_> = sonic_rs::from_slice(body)?;
    if let Some(rooms) = &mut resp.rooms {
        rooms.join.retain(|id, _| storable(id));
        rooms.invite.retain(|id, _| storable(id));
        rooms.leave.retain(|id, _| storable(id));
        let timelines = rooms
            .join
            .values_mut()
            .map(|r| &mut r.timeline)
            .chain(rooms.leave.values_mut().map(|r| &mut r.timeline));
        for timeline in timelines {
            if timeline.prev_batch.as_deref().is_some_and(|p| !storable(p)) {
                timeline.prev_batch = None;
            }
        }
    }
    Ok(resp)
}

/// Whether an ID can be stored and served: valid JSON may carry `\u0000`, which no
/// real homeserver puts in an ID and Postgres text refuses. Refused at the edge, such
/// an ID would otherwise live in memory and vanish at the next restart.
pub fn storable(id: &str) -> bool {
    !id.contains('\0')
}

/// A homeserver body made safe to parse: bytes that are not UTF-8 become U+FFFD, and
/// anything nesting deeper than [`MAX_DEPTH`] becomes `null` (see `nesting`). Borrowed
/// unchanged in the usual case. sonic-rs finds invalid UTF-8 only after it has handed
/// out `&str`s of it (a debug assertion, undefined behaviour in release) and then refuses
/// the whole body; like too-deep nesting, one bad event must not wedge the poller.
pub fn clamp(body: &[u8]) -> Cow<'_, [u8]> {
    match String::from_utf8_lossy(body) {
        Cow::Borrowed(text) => crate::nesting::clamp_depth(text.as_bytes(), MAX_DEPTH),
        Cow::Owned(text) => {
            Cow::Owned(crate::nesting::clamp_depth(text.as_bytes(), MAX_DEPTH).into_owned())
        }
    }
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    state_key: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    sender: Cow<'a, str>,
    #[serde(default)]
    origin_server_ts: u64,
    #[serde(borrow, default)]
    content: Option<LazyValue<'a>>,
    #[serde(borrow, default)]
    unsigned: Option<LazyValue<'a>>,
}

/// `unsigned` fields that belong to one user or device and must not be served to others
/// from the shared copy: the sender's transaction ID and MSC4115 membership.
const PRIVATE_UNSIGNED: [&str; 3] = [
    "transaction_id",
    "membership",
    "io.element.msc4115.membership",
];

/// Reads the indexed fields of one event. The JSON is kept as is unless `unsigned`
/// carries per-user fields, which are removed.
pub fn parse_event(raw: &[u8]) -> Result<Event, EventError> {
    let f: Fields = sonic_rs::from_slice(raw).map_err(|e| EventError::Malformed(e.to_string()))?;
    let event_id = match f.event_id.as_deref() {
        Some(id) if !id.is_empty() && storable(id) => id,
        Some(id) if !id.is_empty() => {
            return Err(EventError::Malformed("event_id holds a NUL".into()))
        }
        _ => return Err(EventError::Malformed("no event_id".into())),
    };
    let field = |key: &str| -> Option<Box<str>> {
        let content = f.content.as_ref()?;
        let v = content.get(key)?;
        v.as_str().map(Into::into)
    };
    let mut membership = None;
    let detail = match &*f.kind {
        "m.room.member" => field("avatar_url"),
        "m.room.create" => f
            .content
            .as_ref()
            .and_then(|c| c.get("predecessor"))
            .and_then(|p| p.get("room_id").and_then(|r| r.as_str().map(Into::into))),
        _ => None,
    };
    let text = match &*f.kind {
        "m.room.member" => {
            membership = Some(
                field("membership")
                    .as_deref()
                    .and_then(Membership::parse)
                    .ok_or_else(|| {
                        EventError::Malformed("member event without membership".into())
                    })?,
            );
            field("displayname")
        }
        "m.room.name" => field("name"),
        "m.room.canonical_alias" => field("alias"),
        "m.room.avatar" => field("url"),
        "m.room.create" => field("type"),
        "m.room.tombstone" => field("replacement_room"),
        _ => None,
    };
    let has_private = f
        .unsigned
        .as_ref()
        .is_some_and(|u| PRIVATE_UNSIGNED.iter().any(|k| u.get(k).is_some()));
    let json = if has_private {
        strip_unsigned(raw)?
    } else {
        Bytes::copy_from_slice(raw)
    };
    Ok(Event {
        event_id: event_id.into(),
        kind: f.kind.as_ref().into(),
        state_key: f.state_key.map(|s| s.as_ref().into()),
        sender: f.sender.as_ref().into(),
        origin_server_ts: f.origin_server_ts,
        membership,
        text,
        detail,
        prev_batch: None,
        gap_before: false,
        filled_order: None,
        position: 0,
        json,
    })
}

fn strip_unsigned(raw: &[u8]) -> Result<Bytes, EventError> {
    let mut v: sonic_rs::Value =
        sonic_rs::from_slice(raw).map_err(|e| EventError::Malformed(e.to_string()))?;
    if let Some(unsigned) = v.get_mut("unsigned").and_then(|u| u.as_object_mut()) {
        for k in PRIVATE_UNSIGNED {
            unsigned.remove(&k);
        }
    }
    sonic_rs::to_vec(&v)
        .map(Bytes::from)
        .map_err(|e| EventError::Malformed(e.to_string()))
}

/// What an invite's stripped state says of the room, for the user invited. Stripped
/// state the homeserver sends broken gives an invite nothing is known of.
pub fn invite_facts(invite_state: &[u8], user_id: &str) -> InviteFacts {
    #[derive(Deserialize)]
    struct Stripped<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(borrow, default)]
        state_key: Option<Cow<'a, str>>,
        #[serde(default)]
        origin_server_ts: Option<u64>,
        #[serde(borrow, default)]
        content: Option<LazyValue<'a>>,
    }
    let mut facts = InviteFacts::default();
    let Ok(events) = sonic_rs::from_slice::<Vec<Stripped>>(invite_state) else {
        return facts;
    };
    for e in &events {
        let field = |key: &str| -> Option<Box<str>> {
            e.content
                .as_ref()?
                .get(key)?
                .as_str()
                .filter(|s| !s.is_empty())
                .map(Into::into)
        };
        match (&*e.kind, e.state_key.as_deref()) {
            ("m.room.member", Some(user)) if user == user_id => {
                facts.ts = e.origin_server_ts;
                facts.is_direct = e
                    .content
                    .as_ref()
                    .and_then(|c| c.get("is_direct"))
                    .and_then(|d| d.as_bool())
                    .unwrap_or(false);
            }
            ("m.room.member", Some(user)) => {
                let member = field("membership");
                if member
                    .as_deref()
                    .and_then(Membership::parse)
                    .is_some_and(Membership::is_member)
                    && !facts.members.iter().any(|m| &*m.user_id == user)
                    && facts.members.len() < crate::event::INVITE_MEMBERS
                {
                    facts.members.push(Member {
                        user_id: user.into(),
                        displayname: field("displayname"),
                        avatar_url: field("avatar_url"),
                    });
                }
            }
            ("m.room.name", Some("")) => facts.name = field("name"),
            ("m.room.canonical_alias", Some("")) => facts.canonical_alias = field("alias"),
            ("m.room.avatar", Some("")) => facts.avatar = field("url"),
            ("m.room.encryption", Some("")) => facts.encrypted = true,
            ("m.room.create", Some("")) => facts.room_type = field("type"),
            _ => {}
        }
    }
    facts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_event_fields_are_indexed() {
        let raw = br#"{"type":"m.room.member","state_key":"@a:x","event_id":"$1","sender":"@a:x","origin_server_ts":5,"content":{"membership":"join","displayname":"Alice"}}"#;
        let ev = parse_event(raw).unwrap();
        assert_eq!(ev.membership, Some(Membership::Join));
        assert_eq!(ev.text.as_deref(), Some("Alice"));
        assert_eq!(ev.state_key.as_deref(), Some("@a:x"));
        assert_eq!(
            &ev.json[..],
            &raw[..],
            "untouched events are kept byte for byte"
        );
    }

    #[test]
    fn transaction_id_is_stripped_from_the_shared_copy() {
        let raw = br#"{"type":"m.room.message","event_id":"$1","sender":"@a:x","content":{"body":"hi"},"unsigned":{"transaction_id":"t1","age":3}}"#;
        let ev = parse_event(raw).unwrap();
        let v: sonic_rs::Value = sonic_rs::from_slice(&ev.json).unwrap();
        assert!(v["unsigned"].get("transaction_id").is_none());
        assert_eq!(v["unsigned"]["age"].as_u64(), Some(3));
    }

    #[test]
    fn ids_storage_cannot_hold_are_refused_at_the_edge() {
        let ev =
            br#"{"type":"m.room.message","event_id":"$a\u0000b","sender":"@a:x","content":{}}"#;
        assert!(parse_event(ev).is_err());
        let body = br#"{"next_batch":"s","rooms":{"join":{"!a\u0000:x":{},"!ok:x":{"timeline":{"prev_batch":"p\u0000","events":[]}}},"leave":{"!b\u0000:x":{}}}}"#;
        let rooms = parse_sync(body).unwrap().rooms.unwrap();
        assert_eq!(rooms.join.keys().collect::<Vec<_>>(), ["!ok:x"]);
        assert!(rooms.join["!ok:x"].timeline.prev_batch.is_none());
        assert!(rooms.leave.is_empty());
    }

    #[test]
    fn events_without_id_or_membership_are_rejected() {
        assert!(parse_event(br#"{"type":"m.room.message","sender":"@a:x"}"#).is_err());
        assert!(parse_event(br#"{"type":"m.room.member","state_key":"@a:x","event_id":"$1","sender":"@a:x","content":{}}"#).is_err());
        assert!(parse_event(b"[1,2]").is_err());
    }
}
