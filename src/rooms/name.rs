//! Room names as the room list shows them (Matrix spec "calculating the display name").

use crate::store::room::RoomMeta;

/// Names shown before "and N others".
const NAMED: usize = 5;

/// `m.room.name`, else the canonical alias, else a name made from the members other than
/// the reader.
pub fn display_name(meta: &RoomMeta, reader: &str) -> String {
    if let Some(name) = &meta.name {
        return name.to_string();
    }
    if let Some(alias) = &meta.canonical_alias {
        return alias.to_string();
    }
    let others: Vec<&str> = meta
        .heroes
        .iter()
        .filter(|h| &*h.user_id != reader)
        .map(|h| {
            h.displayname
                .as_deref()
                .filter(|d| !d.is_empty())
                .unwrap_or(&h.user_id)
        })
        .take(NAMED)
        .collect();
    let members = (meta.joined_count + meta.invited_count) as usize;
    let reader_is_member =
        meta.heroes.iter().any(|h| &*h.user_id == reader) || members > others.len();
    let total_others = members
        .saturating_sub(usize::from(reader_is_member))
        .max(others.len());
    match others.as_slice() {
        [] => "Empty Room".to_owned(),
        [a] => (*a).to_owned(),
        [a, b] if total_others == 2 => format!("{a} and {b}"),
        names if total_others <= names.len() => {
            let (last, rest) = names.split_last().expect("non-empty");
            format!("{} and {last}", rest.join(", "))
        }
        names => format!(
            "{} and {} others",
            names.join(", "),
            total_others - names.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::room::Hero;

    fn meta(heroes: &[(&str, Option<&str>)], joined: u32) -> RoomMeta {
        RoomMeta {
            heroes: heroes
                .iter()
                .map(|(u, d)| Hero {
                    user_id: (*u).into(),
                    displayname: d.map(Into::into),
                })
                .collect(),
            joined_count: joined,
            ..RoomMeta::default()
        }
    }

    #[test]
    fn explicit_name_wins_over_alias_and_members() {
        let mut m = meta(&[("@b:x", Some("Bob"))], 2);
        m.canonical_alias = Some("#room:x".into());
        assert_eq!(display_name(&m, "@a:x"), "#room:x");
        m.name = Some("Lounge".into());
        assert_eq!(display_name(&m, "@a:x"), "Lounge");
    }

    #[test]
    fn members_other_than_the_reader_name_the_room() {
        let m = meta(&[("@a:x", Some("Alice")), ("@b:x", Some("Bob"))], 2);
        assert_eq!(display_name(&m, "@a:x"), "Bob");
        let m = meta(&[("@a:x", None), ("@b:x", Some("Bob")), ("@c:x", None)], 3);
        assert_eq!(display_name(&m, "@a:x"), "Bob and @c:x");
        let m = meta(
            &[
                ("@a:x", None),
                ("@b:x", None),
                ("@c:x", None),
                ("@d:x", None),
            ],
            4,
        );
        assert_eq!(display_name(&m, "@a:x"), "@b:x, @c:x and @d:x");
    }

    #[test]
    fn big_rooms_count_the_rest() {
        let heroes: Vec<(String, Option<&str>)> =
            (0..7).map(|i| (format!("@u{i}:x"), None)).collect();
        let refs: Vec<(&str, Option<&str>)> =
            heroes.iter().map(|(u, d)| (u.as_str(), *d)).collect();
        let m = meta(&refs, 20);
        assert_eq!(
            display_name(&m, "@u0:x"),
            "@u1:x, @u2:x, @u3:x, @u4:x, @u5:x and 14 others"
        );
    }

    #[test]
    fn alone_is_an_empty_room() {
        assert_eq!(
            display_name(&meta(&[("@a:x", None)], 1), "@a:x"),
            "Empty Room"
        );
    }
}
