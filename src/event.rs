//! The parsed event: raw JSON bytes plus the few fields we index. `upstream::wire`
//! builds it from the homeserver's JSON, `store` keeps it, `conn` and `api` serve it;
//! none of them imports another for it.

use bytes::Bytes;

use crate::types::{Position, RoomId, UserId};

/// A member event's `content.membership`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Membership {
    Join = 1,
    Invite = 2,
    Leave = 3,
    Ban = 4,
    Knock = 5,
}

impl Membership {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "join" => Membership::Join,
            "invite" => Membership::Invite,
            "leave" => Membership::Leave,
            "ban" => Membership::Ban,
            "knock" => Membership::Knock,
            _ => return None,
        })
    }

    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Membership::Join,
            2 => Membership::Invite,
            3 => Membership::Leave,
            4 => Membership::Ban,
            5 => Membership::Knock,
            _ => return None,
        })
    }

    /// Counts towards a room's members (joined or invited) for names and heroes.
    pub fn is_member(self) -> bool {
        matches!(self, Membership::Join | Membership::Invite)
    }
}

/// One event with its indexed fields. `json` is served byte for byte.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub event_id: Box<str>,
    pub kind: Box<str>,
    pub state_key: Option<Box<str>>,
    pub sender: Box<str>,
    /// `origin_server_ts`, which the store clamps to when it received the event: any
    /// federated server can date an event in the future, and recency sorts by this.
    pub origin_server_ts: u64,
    /// For member events, `content.membership`.
    pub membership: Option<Membership>,
    /// The one content field the room summary needs from this event type:
    /// `m.room.name` name, `m.room.canonical_alias` alias, `m.room.avatar` url,
    /// `m.room.create` type, `m.room.tombstone` replacement room, `m.room.member`
    /// displayname, `m.space.child` the first `via` server (absent: not a child).
    pub text: Option<Box<str>>,
    /// The second content field the summary needs: `m.room.member` avatar_url (for
    /// heroes and a DM's avatar), `m.room.create` predecessor room (for old rooms).
    pub detail: Option<Box<str>>,
    /// The v2 `prev_batch` of the chunk this event starts, for back-pagination.
    pub prev_batch: Option<Box<str>>,
    /// The homeserver left out events just before this one (first event of a `limited`
    /// v2 timeline that was new to us).
    pub gap_before: bool,
    /// Given when the store accepts the event; 0 before.
    pub position: Position,
    /// Where the event sits in its room's timeline when that is not where its position
    /// puts it: an event filled into a gap is older than the event after the gap, but
    /// was given a later position. It takes that event's order and a lower second key.
    pub filled_order: Option<TimelineOrder>,
    pub json: Bytes,
}

/// A room's timeline is ordered by this key.
pub type TimelineOrder = (Position, i32);

impl Event {
    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }

    pub fn timeline_order(&self) -> TimelineOrder {
        self.filled_order.unwrap_or((self.position, 0))
    }
}

/// Why an event was dropped.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Not a JSON object with `event_id`, `type` and `sender`.
    #[error("malformed event: {0}")]
    Malformed(String),
}

/// Members an invite's facts keep: enough to name the room as heroes do.
pub const INVITE_MEMBERS: usize = 6;

/// What an invite's stripped state says of the room: all an invitee may know of it, so
/// the invitee's lists place and name the invite from this alone.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InviteFacts {
    /// When the invite was sent (the invitee's own member event).
    pub ts: Option<u64>,
    pub name: Option<Box<str>>,
    pub canonical_alias: Option<Box<str>>,
    pub avatar: Option<Box<str>>,
    pub encrypted: bool,
    pub room_type: Option<Box<str>>,
    /// The invitee's member event says `is_direct`.
    pub is_direct: bool,
    /// Members of the stripped state other than the invitee (the inviter, usually), in
    /// the order given.
    pub members: Vec<Member>,
}

/// A room member as names, heroes and avatars show them.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub user_id: Box<str>,
    pub displayname: Option<Box<str>>,
    pub avatar_url: Option<Box<str>>,
}

/// One account data event (`{type, content}`, global or of a room), kept as the
/// homeserver sent it, with what the room lists derive from it.
#[derive(Clone, Debug, PartialEq)]
pub struct AccountEvent {
    pub kind: Box<str>,
    pub json: Bytes,
    pub meaning: AccountMeaning,
}

/// What an account data event means to the room lists and timelines.
#[derive(Clone, Debug, PartialEq)]
pub enum AccountMeaning {
    /// `m.direct`: every room listed under any user is a DM.
    Direct(Vec<RoomId>),
    /// `m.tag` of a room: its tag names.
    Tags(Vec<Box<str>>),
    /// `m.ignored_user_list`: whose messages the user does not see.
    Ignored(Vec<UserId>),
    /// Anything else: only passed on.
    Other,
}

/// One read receipt from a room's `m.receipt` EDU: the latest per (user, private,
/// thread) counts.
#[derive(Clone, Debug, PartialEq)]
pub struct Receipt {
    pub event_id: Box<str>,
    pub user_id: UserId,
    /// `m.read.private`: only its owner may see it.
    pub private: bool,
    /// `None` for an unthreaded receipt.
    pub thread_id: Option<Box<str>>,
    pub ts: u64,
}

/// Turns stored JSON back into events at startup. The store never reads the
/// homeserver's format itself: `app` hands it `upstream::wire::DECODER`.
pub struct Decoder {
    pub event: fn(&[u8]) -> Result<Event, EventError>,
    /// What an invite's stripped state says, for the user invited.
    pub invite: fn(&[u8], &str) -> InviteFacts,
    /// A stored account data event.
    pub account: fn(&[u8]) -> Option<AccountEvent>,
    /// A member event's previous membership (`unsigned.prev_content`), if it says.
    pub prev_membership: fn(&[u8]) -> Option<Membership>,
}
