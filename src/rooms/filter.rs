//! MSC3575 list filters: predicates over what the store knows of a room and of the
//! user's place in it. All given fields must hold (AND); an absent field filters
//! nothing.

use crate::types::RoomId;

/// A list's filters, sticky as a whole: a request that states `filters` replaces them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Filters {
    pub is_encrypted: Option<bool>,
    pub is_invite: Option<bool>,
    pub is_tombstoned: Option<bool>,
    /// Rooms whose `m.room.create` type is one of these; `None` is a room without a
    /// type.
    pub room_types: Option<Vec<Option<String>>>,
    /// Rooms whose type is none of these; wins over `room_types`.
    pub not_room_types: Vec<Option<String>>,
    /// A case-insensitive substring of the name as the user sees it, lower-cased.
    pub room_name_like: Option<String>,
    /// From `m.direct`, or `is_direct` on an invite.
    pub is_dm: Option<bool>,
    /// Rooms with at least one of these tags (`m.tag`); empty filters nothing.
    pub tags: Vec<String>,
    /// Rooms with none of these tags; wins over `tags`.
    pub not_tags: Vec<String>,
    /// Direct children (`m.space.child`) of any of these spaces; empty filters nothing.
    pub spaces: Vec<RoomId>,
}

/// What a filter may ask about a room, for one user.
pub struct RoomFacts<'a> {
    pub name: &'a str,
    pub encrypted: bool,
    pub tombstoned: bool,
    pub room_type: Option<&'a str>,
    pub invite: bool,
    pub dm: bool,
    pub tags: &'a [Box<str>],
    /// The spaces listing the room that the user is joined to.
    pub parents: &'a [RoomId],
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        *self == Filters::default()
    }

    pub fn matches(&self, room: &RoomFacts<'_>) -> bool {
        let flag = |want: Option<bool>, have: bool| want.is_none_or(|w| w == have);
        let room_type = room.room_type.map(str::to_owned);
        let tagged = |tags: &[String]| room.tags.iter().any(|t| tags.iter().any(|w| **t == **w));
        flag(self.is_encrypted, room.encrypted)
            && flag(self.is_invite, room.invite)
            && flag(self.is_tombstoned, room.tombstoned)
            && flag(self.is_dm, room.dm)
            && (self.tags.is_empty() || tagged(&self.tags))
            && !tagged(&self.not_tags)
            && (self.spaces.is_empty() || self.spaces.iter().any(|s| room.parents.contains(s)))
            && self
                .room_types
                .as_ref()
                .is_none_or(|types| types.contains(&room_type))
            && !self.not_room_types.contains(&room_type)
            && self
                .room_name_like
                .as_ref()
                .is_none_or(|like| room.name.to_lowercase().contains(like.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room<'a>(name: &'a str, room_type: Option<&'a str>) -> RoomFacts<'a> {
        RoomFacts {
            name,
            encrypted: false,
            tombstoned: false,
            room_type,
            invite: false,
            dm: false,
            tags: &[],
            parents: &[],
        }
    }

    #[test]
    fn every_given_filter_must_hold_and_absent_ones_filter_nothing() {
        let plain = room("Coffee Club", None);
        assert!(Filters::default().matches(&plain));
        let encrypted_only = Filters {
            is_encrypted: Some(true),
            ..Filters::default()
        };
        assert!(!encrypted_only.matches(&plain));
        let named = Filters {
            room_name_like: Some("coffee".into()),
            is_invite: Some(false),
            ..Filters::default()
        };
        assert!(named.matches(&plain));
        assert!(!named.matches(&RoomFacts {
            invite: true,
            ..room("Coffee Club", None)
        }));
    }

    #[test]
    fn room_types_match_the_create_type_and_null_means_untyped() {
        let space = room("S", Some("m.space"));
        let untyped = room("R", None);
        let untyped_only = Filters {
            room_types: Some(vec![None]),
            ..Filters::default()
        };
        assert!(untyped_only.matches(&untyped) && !untyped_only.matches(&space));
        let not_spaces = Filters {
            room_types: Some(vec![Some("m.space".into()), None]),
            not_room_types: vec![Some("m.space".into())],
            ..Filters::default()
        };
        assert!(!not_spaces.matches(&space), "not_room_types wins");
        assert!(not_spaces.matches(&untyped));
    }

    #[test]
    fn tags_match_any_and_not_tags_win() {
        let tags: Vec<Box<str>> = vec!["m.favourite".into(), "u.work".into()];
        let tagged = RoomFacts {
            tags: &tags,
            ..room("R", None)
        };
        let favourites = Filters {
            tags: vec!["m.favourite".into(), "m.lowpriority".into()],
            ..Filters::default()
        };
        assert!(favourites.matches(&tagged));
        assert!(!favourites.matches(&room("R", None)));
        let not_work = Filters {
            not_tags: vec!["u.work".into()],
            ..favourites
        };
        assert!(!not_work.matches(&tagged));
        assert!(not_work.matches(&RoomFacts {
            tags: &tags[..1],
            ..room("R", None)
        }));
    }

    #[test]
    fn spaces_match_children_of_any_given_space_and_is_dm_the_flag() {
        let parents: Vec<RoomId> = vec!["!space:x".into()];
        let child = RoomFacts {
            parents: &parents,
            dm: true,
            ..room("R", None)
        };
        let in_space = Filters {
            spaces: vec!["!other:x".into(), "!space:x".into()],
            ..Filters::default()
        };
        assert!(in_space.matches(&child) && !in_space.matches(&room("R", None)));
        let not_dm = Filters {
            is_dm: Some(false),
            ..Filters::default()
        };
        assert!(!not_dm.matches(&child) && not_dm.matches(&room("R", None)));
    }
}
