//! One user's account data: the newest event of each type, global and per room, and
//! what the room lists and timelines derive from it (DMs, tags, ignored users).

use std::sync::Arc;

use bytes::Bytes;
use imbl::{HashMap, HashSet};

use crate::event::{AccountEvent, AccountMeaning};
use crate::types::{RoomId, UserId};

/// Global account data types kept per user. The homeserver holds whatever its clients
/// set, so this bounds what one account can make the proxy keep; real accounts have a
/// few dozen types.
pub const MAX_GLOBAL_TYPES: usize = 1024;
/// Account data types kept per room of a user (real rooms have `m.fully_read`, `m.tag`
/// and a few more).
pub const MAX_ROOM_TYPES: usize = 64;

/// One stored event and the change number it was set at.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub json: Bytes,
    pub seq: u64,
}

/// Part of a published `UserData`: persistent maps, so a version costs little to copy.
#[derive(Clone, Debug, Default)]
pub struct AccountData {
    pub global: HashMap<Box<str>, Entry>,
    pub rooms: HashMap<RoomId, HashMap<Box<str>, Entry>>,
    /// Counts changes; an entry's `seq` says which change set it, so a connection that
    /// sent everything up to some `seq` sends only the entries after it.
    pub seq: u64,
    /// Rooms `m.direct` lists.
    direct: HashSet<RoomId>,
    tags: HashMap<RoomId, Arc<[Box<str>]>>,
    ignored: HashSet<UserId>,
}

/// What one new account data event changed.
#[derive(Debug, Default, PartialEq)]
pub struct Changed {
    /// Rooms whose DM flag or tags changed: their place in filtered lists may change.
    pub rooms: Vec<RoomId>,
}

impl AccountData {
    pub fn is_dm(&self, room: &str) -> bool {
        self.direct.contains(room)
    }

    pub fn tags(&self, room: &str) -> &[Box<str>] {
        self.tags.get(room).map_or(&[], |t| t)
    }

    pub fn ignores(&self, user: &str) -> bool {
        self.ignored.contains(user)
    }

    pub fn ignores_anyone(&self) -> bool {
        !self.ignored.is_empty()
    }

    /// Keeps `ev` as the newest of its type (of `room`, or global). `None` when nothing
    /// changed: several devices of a user deliver the same data, and a type past the
    /// limits is not kept.
    pub fn set(&mut self, room: Option<&RoomId>, ev: &AccountEvent) -> Option<Changed> {
        let entries = match room {
            None => &mut self.global,
            Some(room) => self.rooms.entry(room.clone()).or_default(),
        };
        let limit = if room.is_some() {
            MAX_ROOM_TYPES
        } else {
            MAX_GLOBAL_TYPES
        };
        match entries.get(&ev.kind) {
            Some(e) if e.json == ev.json => return None,
            None if entries.len() >= limit => {
                tracing::warn!(kind = %ev.kind, room = ?room, "account data type past the limit; not kept");
                return None;
            }
            _ => {}
        }
        self.seq += 1;
        entries.insert(
            ev.kind.clone(),
            Entry {
                json: ev.json.clone(),
                seq: self.seq,
            },
        );
        let mut changed = Changed::default();
        match (&ev.meaning, room) {
            (AccountMeaning::Direct(rooms), None) => {
                let now: HashSet<RoomId> = rooms.iter().cloned().collect();
                changed.rooms = now
                    .iter()
                    .filter(|r| !self.direct.contains(*r))
                    .chain(self.direct.iter().filter(|r| !now.contains(*r)))
                    .cloned()
                    .collect();
                self.direct = now;
            }
            (AccountMeaning::Ignored(users), None) => {
                self.ignored = users.iter().cloned().collect();
            }
            (AccountMeaning::Tags(tags), Some(room)) => {
                if self.tags(room) != &tags[..] {
                    changed.rooms.push(room.clone());
                }
                if tags.is_empty() {
                    self.tags.remove(room);
                } else {
                    self.tags.insert(room.clone(), tags.clone().into());
                }
            }
            _ => {}
        }
        Some(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: &str, json: &str, meaning: AccountMeaning) -> AccountEvent {
        AccountEvent {
            kind: kind.into(),
            json: Bytes::copy_from_slice(json.as_bytes()),
            meaning,
        }
    }

    #[test]
    fn the_same_event_again_changes_nothing() {
        let mut a = AccountData::default();
        let e = ev("m.push_rules", "{}", AccountMeaning::Other);
        assert!(a.set(None, &e).is_some());
        assert!(a.set(None, &e).is_none(), "another device delivered it too");
        assert_eq!(a.seq, 1);
    }

    #[test]
    fn a_new_m_direct_reports_the_rooms_that_became_or_stopped_being_dms() {
        let mut a = AccountData::default();
        let direct = |rooms: &[&str], json: &str| {
            ev(
                "m.direct",
                json,
                AccountMeaning::Direct(rooms.iter().map(|r| RoomId::from(*r)).collect()),
            )
        };
        a.set(None, &direct(&["!a", "!b"], "1"));
        let mut changed = a.set(None, &direct(&["!b", "!c"], "2")).unwrap().rooms;
        changed.sort();
        assert_eq!(changed, [RoomId::from("!a"), RoomId::from("!c")]);
        assert!(a.is_dm("!c") && !a.is_dm("!a"));
    }

    #[test]
    fn room_types_past_the_limit_are_not_kept() {
        let mut a = AccountData::default();
        let room: RoomId = "!r".into();
        for i in 0..MAX_ROOM_TYPES + 5 {
            a.set(
                Some(&room),
                &ev(&format!("t{i}"), "{}", AccountMeaning::Other),
            );
        }
        assert_eq!(a.rooms[&room].len(), MAX_ROOM_TYPES);
    }
}
