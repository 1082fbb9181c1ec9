//! Events as the store keeps them: raw JSON bytes plus the few fields we index.

use bytes::Bytes;

use crate::types::Position;

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
    pub origin_server_ts: u64,
    /// For member events, `content.membership`.
    pub membership: Option<Membership>,
    /// The one content field the room summary needs from this event type:
    /// `m.room.name` name, `m.room.canonical_alias` alias, `m.room.avatar` url,
    /// `m.room.create` type, `m.room.tombstone` replacement room, `m.room.member`
    /// displayname.
    pub text: Option<Box<str>>,
    /// The v2 `prev_batch` of the chunk this event starts, for back-pagination.
    pub prev_batch: Option<Box<str>>,
    /// The homeserver left out events just before this one (first event of a `limited`
    /// v2 timeline that was new to us).
    pub gap_before: bool,
    /// Given when the store accepts the event; 0 before.
    pub position: Position,
    pub json: Bytes,
}

impl Event {
    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }
}
