//! Room names, heroes and avatars as the room list shows them: the Matrix spec's
//! "calculating the display name for a room", in the Go proxy's English strings.
//!
//! A room's summary (`RoomMeta`) keeps its earliest members and latest former members,
//! a handful each, so a name costs a few comparisons per reader: the reader is left out
//! here, not in the summary every reader shares.

use crate::event::InviteFacts;
use crate::store::room::{Hero, RoomMeta, MAX_HEROES};

/// Names shown before "and N others".
const NAMED: usize = 5;

/// A room's name for `reader`, and whether it was made from the heroes (then the
/// heroes go with it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomName {
    pub name: String,
    pub calculated: bool,
}

/// The members `reader`'s name of the room is made of: the earliest members other than
/// the reader or, when nobody else is in the room, those who left last (in the order
/// they left, as Synapse's room summary orders them).
pub fn heroes_for<'a>(meta: &'a RoomMeta, reader: &str) -> Vec<&'a Hero> {
    let others: Vec<&Hero> = meta
        .heroes
        .iter()
        .filter(|h| &*h.user_id != reader)
        .take(MAX_HEROES)
        .collect();
    if !others.is_empty() {
        return others;
    }
    meta.former
        .iter()
        .filter(|h| &*h.user_id != reader)
        .take(MAX_HEROES)
        .collect()
}

/// The name of a room `reader` is joined to.
pub fn display_name(meta: &RoomMeta, reader: &str) -> RoomName {
    calculate(
        meta.name.as_deref(),
        meta.canonical_alias.as_deref(),
        &heroes_for(meta, reader),
        (meta.joined_count + meta.invited_count) as usize,
    )
}

/// The heroes of an invite: the members its stripped state shows.
pub fn invite_heroes(facts: &InviteFacts) -> Vec<Hero> {
    facts.members.iter().take(MAX_HEROES).cloned().collect()
}

/// The name of a room the reader is invited to, from its stripped state alone. As in
/// the Go proxy, an invite counts as one joined member and the invitee, so the room's
/// real size is neither used nor told.
pub fn invite_name(facts: &InviteFacts) -> RoomName {
    let heroes = invite_heroes(facts);
    let heroes: Vec<&Hero> = heroes.iter().collect();
    calculate(
        facts.name.as_deref(),
        facts.canonical_alias.as_deref(),
        &heroes,
        2,
    )
}

/// `m.room.avatar`; else, for a DM with exactly one other member, that member's
/// avatar; else none (a client is told `null`).
pub fn avatar(meta: &RoomMeta, reader: &str, is_dm: bool) -> Option<Box<str>> {
    if meta.avatar.is_some() {
        return meta.avatar.clone();
    }
    let mut others = meta.heroes.iter().filter(|h| &*h.user_id != reader);
    match (others.next(), others.next()) {
        (Some(other), None) if is_dm => other.avatar_url.clone(),
        _ => None,
    }
}

/// [`avatar`] of an invite, from its stripped state.
pub fn invite_avatar(facts: &InviteFacts) -> Option<Box<str>> {
    if facts.avatar.is_some() {
        return facts.avatar.clone();
    }
    match facts.members.as_slice() {
        [other] if facts.is_direct => other.avatar_url.clone(),
        _ => None,
    }
}

/// `m.room.name`, else the canonical alias, else the heroes' names: all of them when
/// they are everyone else ("A, B and C"), else the first few and a count ("A, B and 3
/// others"), and "Empty Room (was ...)" when `members` (joined and invited, the reader
/// included) says the reader is alone.
fn calculate(
    name: Option<&str>,
    alias: Option<&str>,
    heroes: &[&Hero],
    members: usize,
) -> RoomName {
    let given = |text: &str| RoomName {
        name: text.to_owned(),
        calculated: false,
    };
    if let Some(name) = name.filter(|n| !n.is_empty()) {
        return given(name);
    }
    if let Some(alias) = alias.filter(|a| !a.is_empty()) {
        return given(alias);
    }
    if heroes.is_empty() {
        return given("Empty Room");
    }
    let names = disambiguate(heroes);
    let others = members.saturating_sub(1);
    let listed = if names.len() >= others {
        join_names(&names)
    } else {
        let shown = &names[..names.len().min(NAMED)];
        format!(
            "{} and {} others",
            shown.join(", "),
            others.saturating_sub(shown.len())
        )
    };
    RoomName {
        name: if others == 0 {
            format!("Empty Room (was {listed})")
        } else {
            listed
        },
        calculated: true,
    }
}

/// "A", "A and B", "A, B and C".
fn join_names(names: &[String]) -> String {
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => String::new(),
    }
}

/// Each hero's display name (their user ID without one), with the user ID added where
/// two heroes share a name: "Alice (@alice:x)".
fn disambiguate(heroes: &[&Hero]) -> Vec<String> {
    let label = |h: &Hero| -> String {
        h.displayname
            .as_deref()
            .filter(|d| !d.is_empty())
            .unwrap_or(&h.user_id)
            .to_owned()
    };
    let labels: Vec<String> = heroes.iter().map(|h| label(h)).collect();
    labels
        .iter()
        .zip(heroes)
        .map(|(l, h)| {
            if labels.iter().filter(|other| *other == l).count() > 1 {
                format!("{l} ({})", h.user_id)
            } else {
                l.clone()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hero(user: &str, name: Option<&str>) -> Hero {
        Hero {
            user_id: user.into(),
            displayname: name.map(Into::into),
            avatar_url: None,
        }
    }

    fn meta(heroes: &[(&str, Option<&str>)], joined: u32) -> RoomMeta {
        RoomMeta {
            heroes: heroes.iter().map(|(u, d)| hero(u, *d)).collect(),
            joined_count: joined,
            ..RoomMeta::default()
        }
    }

    fn name(m: &RoomMeta, reader: &str) -> String {
        display_name(m, reader).name
    }

    #[test]
    fn explicit_name_wins_over_alias_and_members() {
        let mut m = meta(&[("@a:x", None), ("@b:x", Some("Bob"))], 2);
        m.canonical_alias = Some("#room:x".into());
        assert_eq!(display_name(&m, "@a:x").name, "#room:x");
        assert!(!display_name(&m, "@a:x").calculated);
        m.name = Some("Lounge".into());
        assert_eq!(name(&m, "@a:x"), "Lounge");
    }

    #[test]
    fn members_other_than_the_reader_name_the_room() {
        let m = meta(&[("@a:x", Some("Alice")), ("@b:x", Some("Bob"))], 2);
        assert_eq!(name(&m, "@a:x"), "Bob");
        assert_eq!(name(&m, "@b:x"), "Alice", "each reader sees the others");
        assert!(display_name(&m, "@a:x").calculated);
        let m = meta(&[("@a:x", None), ("@b:x", Some("Bob")), ("@c:x", None)], 3);
        assert_eq!(name(&m, "@a:x"), "Bob and @c:x");
        let four = [
            ("@a:x", None),
            ("@b:x", None),
            ("@c:x", None),
            ("@d:x", None),
        ];
        assert_eq!(name(&meta(&four, 4), "@a:x"), "@b:x, @c:x and @d:x");
    }

    #[test]
    fn big_rooms_name_five_and_count_the_rest() {
        let heroes: Vec<(String, Option<&str>)> =
            (0..7).map(|i| (format!("@u{i}:x"), None)).collect();
        let refs: Vec<(&str, Option<&str>)> =
            heroes.iter().map(|(u, d)| (u.as_str(), *d)).collect();
        assert_eq!(
            name(&meta(&refs, 20), "@u0:x"),
            "@u1:x, @u2:x, @u3:x, @u4:x, @u5:x and 14 others"
        );
        assert_eq!(
            name(&meta(&refs[..3], 3), "@u0:x"),
            "@u1:x and @u2:x",
            "no count when every other member is named"
        );
    }

    #[test]
    fn equal_display_names_get_their_user_ids() {
        let m = meta(
            &[
                ("@me:x", None),
                ("@a:x", Some("Sam")),
                ("@b:x", Some("Sam")),
                ("@c:x", Some("Kim")),
            ],
            4,
        );
        assert_eq!(name(&m, "@me:x"), "Sam (@a:x), Sam (@b:x) and Kim");
    }

    #[test]
    fn alone_is_an_empty_room_named_after_who_left() {
        assert_eq!(name(&meta(&[("@a:x", None)], 1), "@a:x"), "Empty Room");
        let mut m = meta(&[("@a:x", None)], 1);
        m.former = vec![hero("@b:x", Some("Bob")), hero("@c:x", Some("Carol"))];
        assert_eq!(name(&m, "@a:x"), "Empty Room (was Bob and Carol)");
    }

    #[test]
    fn an_invite_is_named_from_its_stripped_state_only() {
        let mut facts = InviteFacts {
            members: vec![Hero {
                user_id: "@inviter:x".into(),
                displayname: Some("Ines".into()),
                avatar_url: Some("mxc://x/i".into()),
            }],
            ..InviteFacts::default()
        };
        assert_eq!(invite_name(&facts).name, "Ines");
        assert_eq!(invite_avatar(&facts), None, "not a DM");
        facts.is_direct = true;
        assert_eq!(invite_avatar(&facts).as_deref(), Some("mxc://x/i"));
        facts.name = Some("Plans".into());
        assert_eq!(invite_name(&facts).name, "Plans");
        assert_eq!(invite_name(&InviteFacts::default()).name, "Empty Room");
    }

    #[test]
    fn a_dm_without_an_avatar_shows_the_other_member() {
        let mut m = meta(&[("@a:x", None), ("@b:x", None)], 2);
        m.heroes[1].avatar_url = Some("mxc://x/b".into());
        assert_eq!(avatar(&m, "@a:x", true).as_deref(), Some("mxc://x/b"));
        assert_eq!(avatar(&m, "@a:x", false), None, "a two-person group");
        m.heroes.push(hero("@c:x", None));
        assert_eq!(avatar(&m, "@a:x", true), None, "more than one other");
        m.avatar = Some("mxc://x/room".into());
        assert_eq!(avatar(&m, "@a:x", true).as_deref(), Some("mxc://x/room"));
    }
}
