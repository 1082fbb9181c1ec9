//! The v2 `/sync` wire format: parsed once with sonic-rs, events kept as raw bytes and
//! only the fields we index read out of them.

use std::borrow::Cow;
use std::collections::HashMap;

use bytes::Bytes;
use serde::Deserialize;
use sonic_rs::{JsonContainerTrait, JsonValueMutTrait, JsonValueTrait, LazyValue};

use crate::event::{
    AccountEvent, AccountMeaning, Decoder, Event, EventError, InviteFacts, Member, Membership,
    Receipt,
};
use crate::store::devices::{IncomingToDevice, KeyRequest};
use crate::types::{RoomId, UserId};

/// How the store reads back what it stored: this format's parsers, handed over at
/// startup.
pub const DECODER: Decoder = Decoder {
    event: parse_event,
    invite: invite_facts,
    account: parse_account,
    prev_membership,
};

#[derive(Deserialize)]
pub struct SyncResponse<'a> {
    pub next_batch: String,
    #[serde(borrow, default)]
    pub rooms: Option<Rooms<'a>>,
    /// Global account data.
    #[serde(borrow, default)]
    pub account_data: Events<'a>,
    #[serde(borrow, default)]
    pub to_device: Option<Events<'a>>,
    #[serde(borrow, default)]
    pub device_lists: Option<DeviceLists<'a>>,
    #[serde(borrow, default)]
    pub device_one_time_keys_count: Option<LazyValue<'a>>,
    #[serde(borrow, default)]
    pub device_unused_fallback_key_types: Option<LazyValue<'a>>,
    /// The name Synapse also sends, from before MSC2732 was merged.
    #[serde(
        borrow,
        default,
        rename = "org.matrix.msc2732.device_unused_fallback_key_types"
    )]
    pub unstable_fallback_key_types: Option<LazyValue<'a>>,
}

/// User IDs are read lazily: an entry that is not a string is skipped, not a reason to
/// refuse the response (and wedge the poller on it).
#[derive(Deserialize, Default)]
pub struct DeviceLists<'a> {
    #[serde(borrow, default)]
    pub changed: Vec<LazyValue<'a>>,
    #[serde(borrow, default)]
    pub left: Vec<LazyValue<'a>>,
}

impl DeviceLists<'_> {
    /// (changed, left): the user IDs storage can hold.
    pub fn users(&self) -> (Vec<UserId>, Vec<UserId>) {
        let ids = |values: &[LazyValue<'_>]| -> Vec<UserId> {
            values
                .iter()
                .filter_map(|v| v.as_str())
                .filter(|u| storable(u))
                .map(Into::into)
                .collect()
        };
        (ids(&self.changed), ids(&self.left))
    }
}

impl SyncResponse<'_> {
    /// `device_one_time_keys_count` as sent, if it is a JSON object of counts.
    pub fn otk_counts(&self) -> Option<Bytes> {
        let raw = self.device_one_time_keys_count.as_ref()?.as_raw_str();
        sonic_rs::from_str::<HashMap<String, u64>>(raw).ok()?;
        Some(Bytes::copy_from_slice(raw.as_bytes()))
    }

    /// The unused fallback key types as sent, if a JSON array of strings. An empty array
    /// is a value (the fallback key was used), unlike an absent field.
    pub fn fallback_key_types(&self) -> Option<Bytes> {
        let value = self
            .device_unused_fallback_key_types
            .as_ref()
            .or(self.unstable_fallback_key_types.as_ref())?;
        let raw = value.as_raw_str();
        sonic_rs::from_str::<Vec<String>>(raw).ok()?;
        Some(Bytes::copy_from_slice(raw.as_bytes()))
    }
}

/// One to-device event: kept whole, with what a room key request or its cancellation
/// names read out. `None` if it is not an event object.
pub fn parse_to_device(raw: &[u8]) -> Option<IncomingToDevice> {
    #[derive(Deserialize)]
    struct ToDevice<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(borrow, default)]
        sender: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        content: Option<KeyRequestContent<'a>>,
    }
    #[derive(Deserialize)]
    struct KeyRequestContent<'a> {
        #[serde(borrow, default)]
        action: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        request_id: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        requesting_device_id: Option<Cow<'a, str>>,
    }
    let ev: ToDevice = sonic_rs::from_slice(raw).ok()?;
    let key_request = match (&*ev.kind, &ev.sender, &ev.content) {
        ("m.room_key_request", Some(sender), Some(content)) => {
            match (&content.request_id, &content.requesting_device_id) {
                (Some(request), Some(device)) => {
                    let key: Box<str> = format!("{sender}|{device}|{request}").into();
                    match content.action.as_deref() {
                        Some("request") => Some(KeyRequest::Request(key)),
                        Some("request_cancellation") => Some(KeyRequest::Cancellation(key)),
                        _ => None,
                    }
                }
                _ => None,
            }
        }
        _ => None,
    };
    Some(IncomingToDevice {
        json: Bytes::copy_from_slice(raw),
        key_request,
    })
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

/// One page of `/rooms/{room_id}/messages`: events newest first (the page goes
/// backwards), and where the next page starts, absent at the room's beginning.
#[derive(Deserialize)]
pub struct MessagesPage<'a> {
    #[serde(borrow, default)]
    pub chunk: Vec<LazyValue<'a>>,
    #[serde(default)]
    pub end: Option<String>,
}

/// Parses a `/messages` page, after the same clamping as a `/sync` body.
pub fn parse_messages(body: &[u8]) -> Result<MessagesPage<'_>, sonic_rs::Error> {
    sonic_rs::from_slice(body)
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
    #[serde(borrow, default)]
    pub account_data: Events<'a>,
    /// `m.typing` and `m.receipt`.
    #[serde(borrow, default)]
    pub ephemeral: Events<'a>,
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
    /// The redacted event, at the top level of a redaction before room version 11.
    #[serde(borrow, default)]
    redacts: Option<Cow<'a, str>>,
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
    parse_sent_event(raw).map(|(ev, _)| ev)
}

/// [`parse_event`], and the `unsigned.transaction_id` it removed: only the sending
/// device's own `/sync` carries it.
pub fn parse_sent_event(raw: &[u8]) -> Result<(Event, Option<Box<str>>), EventError> {
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
        "m.room.history_visibility" => field("history_visibility"),
        // A child without servers to join it through is no child (the spec's rule for
        // removing one); the first server stands for "listed".
        "m.space.child" => f.content.as_ref().and_then(|c| {
            let via = c.get("via")?;
            let server = via.get(0)?;
            server.as_str().map(Into::into)
        }),
        // In `content` from room version 11 on.
        "m.room.redaction" => f
            .redacts
            .as_deref()
            .map(Into::into)
            .or_else(|| field("redacts")),
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
    let transaction_id = f
        .unsigned
        .as_ref()
        .and_then(|u| u.get("transaction_id"))
        .and_then(|t| t.as_str().map(Into::into));
    let event = Event {
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
    };
    Ok((event, transaction_id))
}

/// The room version a room's `m.room.create` event states ("1" when it states none).
pub fn room_version(create: &[u8]) -> String {
    sonic_rs::get(create, &["content", "room_version"])
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "1".to_owned())
}

/// `event` redacted by `redaction` under the redaction algorithm of `room_version`
/// (client-server spec, "Redactions"): only the keys the version keeps, and the redaction
/// in `unsigned.redacted_because`, as a homeserver serves a redacted event. `None` if
/// `event` is not a JSON object.
pub fn redact(event: &[u8], room_version: &str, redaction: &[u8]) -> Option<Bytes> {
    let mut v: sonic_rs::Value = sonic_rs::from_slice(event).ok()?;
    let kind = v
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or("")
        .to_owned();
    // Versions are digits up to now; anything else is taken as the newest rules.
    let version: u32 = room_version.parse().unwrap_or(11);
    let mut top = vec![
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "auth_events",
        "origin_server_ts",
    ];
    if version < 11 {
        top.extend(["prev_state", "origin", "membership"]);
    }
    let content: &[&str] = match kind.as_str() {
        "m.room.member" if version >= 11 => &[
            "membership",
            "join_authorised_via_users_server",
            "third_party_invite",
        ],
        "m.room.member" if version >= 9 => &["membership", "join_authorised_via_users_server"],
        "m.room.member" => &["membership"],
        "m.room.create" if version >= 11 => &[],
        "m.room.create" => &["creator"],
        "m.room.join_rules" if version >= 8 => &["join_rule", "allow"],
        "m.room.join_rules" => &["join_rule"],
        "m.room.power_levels" if version >= 11 => &[
            "ban",
            "events",
            "events_default",
            "invite",
            "kick",
            "redact",
            "state_default",
            "users",
            "users_default",
        ],
        "m.room.power_levels" => &[
            "ban",
            "events",
            "events_default",
            "kick",
            "redact",
            "state_default",
            "users",
            "users_default",
        ],
        "m.room.aliases" if version <= 5 => &["aliases"],
        "m.room.history_visibility" => &["history_visibility"],
        "m.room.redaction" if version >= 11 => &["redacts"],
        _ => &[],
    };
    let keep_all_content = kind == "m.room.create" && version >= 11;
    let obj = v.as_object_mut()?;
    obj.retain(|k, _| top.contains(&k));
    if let Some(c) = obj.get_mut(&"content").and_then(|c| c.as_object_mut()) {
        if !keep_all_content {
            c.retain(|k, _| content.contains(&k));
        }
        // Third-party invites keep only their signed part.
        if let Some(invite) = c
            .get_mut(&"third_party_invite")
            .and_then(|i| i.as_object_mut())
        {
            invite.retain(|k, _| k == "signed");
        }
    }
    let because: sonic_rs::Value = sonic_rs::from_slice(redaction).ok()?;
    let mut unsigned = sonic_rs::Object::new();
    unsigned.insert(&"redacted_because", because);
    obj.insert(&"unsigned", unsigned);
    sonic_rs::to_vec(&v).ok().map(Bytes::from)
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

/// Reads an account data event (`{type, content}`) and what the room lists need of it.
/// Content of the wrong shape means nothing (no DMs, tags or ignored users), as for the
/// homeserver's own clients.
pub fn parse_account(raw: &[u8]) -> Option<AccountEvent> {
    #[derive(Deserialize)]
    struct Account<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(borrow, default)]
        content: Option<LazyValue<'a>>,
    }
    let a: Account = sonic_rs::from_slice(raw).ok()?;
    if a.kind.is_empty() || !storable(&a.kind) {
        return None;
    }
    let content: Option<sonic_rs::Value> = match &a.content {
        Some(c) if matches!(&*a.kind, "m.direct" | "m.tag" | "m.ignored_user_list") => {
            sonic_rs::from_str(c.as_raw_str()).ok()
        }
        _ => None,
    };
    let keys = |v: Option<&sonic_rs::Value>| -> Vec<Box<str>> {
        v.and_then(|v| v.as_object())
            .map(|o| {
                o.iter()
                    .map(|(k, _)| k)
                    .filter(|k| storable(k))
                    .map(Into::into)
                    .collect()
            })
            .unwrap_or_default()
    };
    let meaning = match &*a.kind {
        "m.direct" => {
            let mut rooms: Vec<RoomId> = content
                .as_ref()
                .and_then(|c| c.as_object())
                .map(|users| {
                    users
                        .iter()
                        .filter_map(|(_, rooms)| rooms.as_array())
                        .flat_map(|rooms| rooms.iter().filter_map(|r| r.as_str()))
                        .filter(|r| storable(r))
                        .map(RoomId::from)
                        .collect()
                })
                .unwrap_or_default();
            rooms.sort_unstable();
            rooms.dedup();
            AccountMeaning::Direct(rooms)
        }
        "m.tag" => AccountMeaning::Tags(keys(content.as_ref().and_then(|c| c.get("tags")))),
        "m.ignored_user_list" => AccountMeaning::Ignored(
            keys(content.as_ref().and_then(|c| c.get("ignored_users")))
                .into_iter()
                .map(UserId::from)
                .collect(),
        ),
        _ => AccountMeaning::Other,
    };
    Some(AccountEvent {
        kind: a.kind.as_ref().into(),
        json: Bytes::copy_from_slice(raw),
        meaning,
    })
}

/// The receipts of an `m.receipt` EDU (`content: {event_id: {receipt_type: {user_id:
/// {ts, thread_id}}}}`); only `m.read` and `m.read.private` are understood, as in the Go
/// proxy. `None` when the EDU is not a receipt.
pub fn parse_receipts(raw: &[u8]) -> Option<Vec<Receipt>> {
    let v: sonic_rs::Value = sonic_rs::from_slice(raw).ok()?;
    if v.get("type").and_then(|t| t.as_str()) != Some("m.receipt") {
        return None;
    }
    let mut out = Vec::new();
    let Some(content) = v.get("content").and_then(|c| c.as_object()) else {
        return Some(out);
    };
    for (event_id, kinds) in content.iter() {
        if event_id.is_empty() || !storable(event_id) {
            continue;
        }
        let Some(kinds) = kinds.as_object() else {
            continue;
        };
        for (kind, users) in kinds.iter() {
            let private = match kind {
                "m.read" => false,
                "m.read.private" => true,
                _ => continue,
            };
            let Some(users) = users.as_object() else {
                continue;
            };
            for (user_id, receipt) in users.iter() {
                if !storable(user_id) {
                    continue;
                }
                let thread_id = receipt
                    .get("thread_id")
                    .and_then(|t| t.as_str())
                    .filter(|t| !t.is_empty() && storable(t))
                    .map(Into::into);
                out.push(Receipt {
                    event_id: event_id.into(),
                    user_id: user_id.into(),
                    private,
                    thread_id,
                    ts: receipt.get("ts").and_then(|t| t.as_u64()).unwrap_or(0),
                });
            }
        }
    }
    Some(out)
}

/// The users an `m.typing` EDU says are typing; `None` when the EDU is not typing.
pub fn parse_typing(raw: &[u8]) -> Option<Vec<UserId>> {
    let v: sonic_rs::Value = sonic_rs::from_slice(raw).ok()?;
    if v.get("type").and_then(|t| t.as_str()) != Some("m.typing") {
        return None;
    }
    let users = v
        .get("content")
        .and_then(|c| c.get("user_ids"))
        .and_then(|u| u.as_array())
        .map(|users| {
            users
                .iter()
                .filter_map(|u| u.as_str())
                .filter(|u| storable(u))
                .map(UserId::from)
                .collect()
        })
        .unwrap_or_default();
    Some(users)
}

/// The membership a member event replaced, as the homeserver's `unsigned.prev_content`
/// says.
pub fn prev_membership(event: &[u8]) -> Option<Membership> {
    let value = sonic_rs::get(event, ["unsigned", "prev_content", "membership"]).ok()?;
    Membership::parse(value.as_str()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonic_rs::JsonContainerTrait;

    #[test]
    fn a_member_events_previous_membership_is_read_from_unsigned() {
        let kick = br#"{"type":"m.room.member","state_key":"@a:x","sender":"@m:x","content":{"membership":"leave"},"unsigned":{"prev_content":{"membership":"join"}}}"#;
        assert_eq!(prev_membership(kick), Some(Membership::Join));
        assert_eq!(prev_membership(br#"{"type":"m.room.member"}"#), None);
        assert_eq!(prev_membership(b"not json"), None);
    }

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
    fn redaction_keeps_only_what_the_room_version_allows() {
        let redaction = br#"{"type":"m.room.redaction","event_id":"$r","sender":"@a:x","redacts":"$1","content":{}}"#;
        let (ev, _) = parse_sent_event(redaction).unwrap();
        assert_eq!(
            ev.text.as_deref(),
            Some("$1"),
            "the target, before version 11"
        );
        let v11 = br#"{"type":"m.room.redaction","event_id":"$r","sender":"@a:x","content":{"redacts":"$2"}}"#;
        assert_eq!(parse_event(v11).unwrap().text.as_deref(), Some("$2"));

        let message = br#"{"type":"m.room.message","event_id":"$1","sender":"@b:x","origin_server_ts":5,"content":{"body":"secret"},"unsigned":{"age":1}}"#;
        let out = redact(message, "10", redaction).unwrap();
        let v: sonic_rs::Value = sonic_rs::from_slice(&out).unwrap();
        assert!(v["content"].as_object().unwrap().is_empty());
        assert_eq!(v["event_id"].as_str(), Some("$1"));
        assert_eq!(v["origin_server_ts"].as_u64(), Some(5));
        assert_eq!(
            v["unsigned"]["redacted_because"]["event_id"].as_str(),
            Some("$r")
        );
        assert!(v["unsigned"].get("age").is_none());

        let member = br#"{"type":"m.room.member","state_key":"@b:x","event_id":"$m","sender":"@b:x","membership":"join","content":{"membership":"join","displayname":"Bob","join_authorised_via_users_server":"@c:x"}}"#;
        let v8: sonic_rs::Value =
            sonic_rs::from_slice(&redact(member, "8", redaction).unwrap()).unwrap();
        assert_eq!(v8["content"].as_object().unwrap().len(), 1);
        assert_eq!(
            v8["membership"].as_str(),
            Some("join"),
            "kept before version 11"
        );
        let v11: sonic_rs::Value =
            sonic_rs::from_slice(&redact(member, "11", redaction).unwrap()).unwrap();
        assert_eq!(
            v11["content"]["join_authorised_via_users_server"].as_str(),
            Some("@c:x")
        );
        assert!(v11.get("membership").is_none());

        let create = br#"{"type":"m.room.create","state_key":"","event_id":"$c","sender":"@a:x","content":{"creator":"@a:x","room_version":"11","type":"m.space"}}"#;
        let c11: sonic_rs::Value =
            sonic_rs::from_slice(&redact(create, "11", redaction).unwrap()).unwrap();
        assert_eq!(c11["content"]["type"].as_str(), Some("m.space"));
        assert_eq!(room_version(create), "11");
        assert_eq!(room_version(br#"{"content":{}}"#), "1");
    }

    #[test]
    fn transaction_id_is_stripped_from_the_shared_copy() {
        let raw = br#"{"type":"m.room.message","event_id":"$1","sender":"@a:x","content":{"body":"hi"},"unsigned":{"transaction_id":"t1","age":3}}"#;
        let (ev, txn) = parse_sent_event(raw).unwrap();
        assert_eq!(
            txn.as_deref(),
            Some("t1"),
            "kept apart for the sending device"
        );
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
    fn account_data_says_which_rooms_are_dms_tagged_and_who_is_ignored() {
        let direct = parse_account(
            br#"{"type":"m.direct","content":{"@b:x":["!1:x","!2:x"],"@c:x":["!2:x"],"@d:x":"nonsense"}}"#,
        )
        .unwrap();
        assert_eq!(
            direct.meaning,
            AccountMeaning::Direct(vec!["!1:x".into(), "!2:x".into()])
        );
        let tags =
            parse_account(br#"{"type":"m.tag","content":{"tags":{"m.favourite":{"order":0.5}}}}"#)
                .unwrap();
        assert_eq!(
            tags.meaning,
            AccountMeaning::Tags(vec!["m.favourite".into()])
        );
        let untagged = parse_account(br#"{"type":"m.tag","content":{}}"#).unwrap();
        assert_eq!(untagged.meaning, AccountMeaning::Tags(vec![]));
        let ignored = parse_account(
            br#"{"type":"m.ignored_user_list","content":{"ignored_users":{"@spam:x":{}}}}"#,
        )
        .unwrap();
        assert_eq!(
            ignored.meaning,
            AccountMeaning::Ignored(vec!["@spam:x".into()])
        );
        let other = parse_account(br#"{"type":"m.push_rules","content":{"global":{}}}"#).unwrap();
        assert_eq!(other.meaning, AccountMeaning::Other);
        assert_eq!(
            &other.json[..],
            br#"{"type":"m.push_rules","content":{"global":{}}}"#
        );
        assert!(parse_account(br#"{"content":{}}"#).is_none());
    }

    #[test]
    fn receipts_are_read_per_user_kind_and_thread() {
        let edu = br#"{"type":"m.receipt","content":{"$e:x":{"m.read":{"@a:x":{"ts":5},"@b:x":{"ts":6,"thread_id":"$t:x"}},"m.read.private":{"@a:x":{"ts":7}},"m.fully_read":{"@a:x":{}}}}}"#;
        let mut receipts = parse_receipts(edu).unwrap();
        receipts.sort_by(|a, b| (&a.user_id, a.private).cmp(&(&b.user_id, b.private)));
        assert_eq!(receipts.len(), 3, "only m.read and m.read.private");
        assert_eq!(
            receipts[0],
            Receipt {
                event_id: "$e:x".into(),
                user_id: "@a:x".into(),
                private: false,
                thread_id: None,
                ts: 5,
            }
        );
        assert!(receipts[1].private);
        assert_eq!(receipts[2].thread_id.as_deref(), Some("$t:x"));
        assert!(parse_receipts(br#"{"type":"m.typing","content":{}}"#).is_none());
    }

    #[test]
    fn typing_and_invite_dm_flags_are_read() {
        assert_eq!(
            parse_typing(br#"{"type":"m.typing","content":{"user_ids":["@a:x",5]}}"#),
            Some(vec![UserId::from("@a:x")])
        );
        assert_eq!(
            parse_typing(br#"{"type":"m.typing","content":{}}"#),
            Some(vec![])
        );
        let invite = br#"[{"type":"m.room.member","state_key":"@me:x","sender":"@b:x","content":{"membership":"invite","is_direct":true}}]"#;
        assert!(invite_facts(invite, "@me:x").is_direct);
        assert!(!invite_facts(invite, "@other:x").is_direct);
        assert!(!invite_facts(b"[]", "@me:x").is_direct);
    }

    #[test]
    fn a_space_child_counts_only_with_a_server_to_join_through() {
        let child = |content: &str| {
            let raw = format!(
                r#"{{"type":"m.space.child","state_key":"!c:x","event_id":"$s","sender":"@a:x","content":{content}}}"#
            );
            parse_event(raw.as_bytes()).unwrap().text
        };
        assert_eq!(child(r#"{"via":["x"]}"#).as_deref(), Some("x"));
        assert_eq!(child(r#"{"via":[]}"#), None);
        assert_eq!(child("{}"), None);
    }

    #[test]
    fn events_without_id_or_membership_are_rejected() {
        assert!(parse_event(br#"{"type":"m.room.message","sender":"@a:x"}"#).is_err());
        assert!(parse_event(br#"{"type":"m.room.member","state_key":"@a:x","event_id":"$1","sender":"@a:x","content":{}}"#).is_err());
        assert!(parse_event(b"[1,2]").is_err());
    }
}
