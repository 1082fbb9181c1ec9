//! Sliding sync request bodies, what both dialects read the same way: the framing, the limits on
//! what one request may ask for, and the fields whose wire form they share (ranges,
//! `[type, state_key]` pairs, room IDs, filters). Each dialect's file reads its own
//! shapes and calls these, so a limit is checked in one place for both.

use std::collections::HashMap;

use serde::Deserialize;

use crate::conn::request::{Dialect, Filters, ListParams, Range, RoomSubscription, SyncRequest};
use crate::error::MatrixError;

/// Limits on what one request may ask for; past them a request is refused with a message
/// naming the field, so memory per connection stays bounded. The list and subscription
/// limits are the engine's, since MSC3575's are sticky across requests.
pub use crate::conn::{MAX_LISTS, MAX_SUBSCRIPTIONS};
/// Matrix IDs are at most 255 bytes.
pub const MAX_ROOM_ID: usize = 255;
pub const MAX_LIST_NAME: usize = 64;
pub const MAX_RANGES: usize = 16;
pub const MAX_REQUIRED_STATE: usize = 100;
/// Larger `timeline_limit`s are lowered to this, as the Go proxy did.
pub const MAX_TIMELINE_LIMIT: u64 = 50;
pub const MAX_CONN_ID: usize = 16;
pub const MAX_TXN_ID: usize = 64;
/// Deepest nesting of arrays and objects a body may have (see `nesting`).
pub const MAX_DEPTH: usize = 64;
/// Entries one filter array may hold.
pub const MAX_FILTER_ENTRIES: usize = 100;
/// `room_name_like` is matched against names: longer than a name is nonsense.
pub const MAX_NAME_LIKE: usize = 255;
/// A tag name in `tags` / `not_tags`, like a Matrix ID, is at most this long.
pub const MAX_TAG: usize = 255;

/// Reads a request body into the dialect's wire type; `None` for an empty body (an
/// empty request). The first problem is reported with the path of the field.
pub fn read<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<Option<T>, MatrixError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Ok(None),
        // Serde would read an array as the struct's fields in order.
        Some(b'{') => {}
        Some(_) => return Err(MatrixError::bad_json("request body must be a JSON object")),
    }
    if crate::nesting::nests_deeper_than(body, MAX_DEPTH) {
        return Err(MatrixError::bad_json(format!(
            "request body nests arrays or objects deeper than {MAX_DEPTH} levels"
        )));
    }
    let mut de = sonic_rs::Deserializer::from_slice(body);
    let wire: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            MatrixError::bad_json(format!(
                "request body is not a valid sliding sync request: {inner}"
            ))
        } else {
            MatrixError::bad_json(format!("field '{path}' is invalid: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| MatrixError::bad_json(format!("data after the request object: {e}")))?;
    Ok(Some(wire))
}

/// A struct that must come as a JSON object: serde's derive also reads an array as the
/// fields in order, which would make `{"a": [[[0, 5]]]}` a list with ranges.
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
            .map(Object)
    }
}

/// What both dialects' bodies have, as read into their own wire types.
pub struct Common<L, S> {
    pub conn_id: Option<String>,
    pub txn_id: Option<String>,
    pub lists: Option<HashMap<String, Object<L>>>,
    pub room_subscriptions: Option<HashMap<String, Object<S>>>,
}

/// The request both dialects build alike from their bodies: IDs and counts checked,
/// each list read by `list` (with its name) and each subscription by `subscription`
/// (with its field name for errors, `room_subscriptions.ROOM`).
pub fn request<L, S>(
    dialect: Dialect,
    wire: Common<L, S>,
    list: impl Fn(&str, L) -> Result<ListParams, MatrixError>,
    subscription: impl Fn(&str, S) -> Result<RoomSubscription, MatrixError>,
) -> Result<SyncRequest, MatrixError> {
    ids(wire.conn_id.as_deref(), wire.txn_id.as_deref())?;
    let mut req = SyncRequest {
        dialect,
        conn_id: wire.conn_id,
        txn_id: wire.txn_id,
        ..SyncRequest::default()
    };
    let lists = wire.lists.unwrap_or_default();
    list_names(lists.keys())?;
    for (name, Object(l)) in lists {
        let params = list(&name, l)?;
        req.lists.insert(name, params);
    }
    let subscriptions = wire.room_subscriptions.unwrap_or_default();
    room_count("room_subscriptions", subscriptions.len())?;
    for (room_id, Object(sub)) in subscriptions {
        let field = format!("room_subscriptions.{}", room_field(&room_id)?);
        req.room_subscriptions
            .insert(room_id.into(), subscription(&field, sub)?);
    }
    Ok(req)
}

/// `conn_id` and `txn_id`, refused when longer than their limits.
fn ids(conn_id: Option<&str>, txn_id: Option<&str>) -> Result<(), MatrixError> {
    if conn_id.is_some_and(|c| c.len() > MAX_CONN_ID) {
        return Err(MatrixError::invalid_param(format!(
            "conn_id is longer than {MAX_CONN_ID} bytes"
        )));
    }
    if txn_id.is_some_and(|t| t.len() > MAX_TXN_ID) {
        return Err(MatrixError::invalid_param(format!(
            "txn_id is longer than {MAX_TXN_ID} bytes"
        )));
    }
    Ok(())
}

/// How many lists one request names, and how long their names are.
fn list_names<'a>(names: impl ExactSizeIterator<Item = &'a String>) -> Result<(), MatrixError> {
    if names.len() > MAX_LISTS {
        return Err(MatrixError::invalid_param(format!(
            "lists: at most {MAX_LISTS} lists are allowed"
        )));
    }
    for name in names {
        if name.len() > MAX_LIST_NAME {
            return Err(MatrixError::invalid_param(format!(
                "lists: list name is longer than {MAX_LIST_NAME} bytes"
            )));
        }
    }
    Ok(())
}

/// How many rooms one request names in `field`.
pub fn room_count(field: &str, count: usize) -> Result<(), MatrixError> {
    if count > MAX_SUBSCRIPTIONS {
        return Err(MatrixError::invalid_param(format!(
            "{field}: at most {MAX_SUBSCRIPTIONS} rooms are allowed"
        )));
    }
    Ok(())
}

/// A room ID as a field name in errors, refused when longer than an ID can be.
pub fn room_field(room_id: &str) -> Result<&str, MatrixError> {
    if room_id.len() > MAX_ROOM_ID {
        return Err(MatrixError::invalid_param(format!(
            "room IDs are at most {MAX_ROOM_ID} bytes"
        )));
    }
    Ok(room_id)
}

/// Larger limits are lowered to [`MAX_TIMELINE_LIMIT`], as the Go proxy did.
pub fn timeline_limit(limit: Option<u64>) -> Option<usize> {
    limit.map(|l| l.min(MAX_TIMELINE_LIMIT) as usize)
}

/// `required_state` pairs of a list or subscription named by `field` in errors.
pub fn required_state(
    field: &str,
    entries: Option<Vec<Vec<String>>>,
) -> Result<Option<Vec<(String, String)>>, MatrixError> {
    let Some(entries) = entries else {
        return Ok(None);
    };
    let bad = |msg: String| MatrixError::invalid_param(format!("{field}.required_state: {msg}"));
    if entries.len() > MAX_REQUIRED_STATE {
        return Err(bad(format!(
            "at most {MAX_REQUIRED_STATE} entries are allowed"
        )));
    }
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        match <[String; 2]>::try_from(entry) {
            Ok([t, k]) => out.push((t, k)),
            Err(_) => return Err(bad("each entry must be [event_type, state_key]".into())),
        }
    }
    Ok(Some(out))
}

/// A list's ranges (`field` names them in errors): at most [`MAX_RANGES`], each
/// starting at or before its end, none overlapping. Any index is valid: the engine
/// clamps ranges to the list, as the Go proxy did.
pub fn ranges(field: &str, ranges: &[[u64; 2]]) -> Result<Vec<Range>, MatrixError> {
    let bad = |msg: String| MatrixError::invalid_param(format!("{field}: {msg}"));
    if ranges.len() > MAX_RANGES {
        return Err(bad(format!("at most {MAX_RANGES} ranges are allowed")));
    }
    let mut sorted: Vec<(u64, u64)> = ranges.iter().map(|r| (r[0], r[1])).collect();
    for &(s, e) in &sorted {
        if s > e {
            return Err(bad(format!("range [{s}, {e}] starts after it ends")));
        }
    }
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[1].0 <= w[0].1) {
        return Err(bad(format!(
            "ranges [{}, {}] and [{}, {}] overlap",
            w[0].0, w[0].1, w[1].0, w[1].1
        )));
    }
    let index = |i: u64| usize::try_from(i).unwrap_or(usize::MAX);
    Ok(ranges.iter().map(|r| (index(r[0]), index(r[1]))).collect())
}

/// List filters as both dialects send them.
#[derive(Deserialize)]
pub struct WireFilters {
    #[serde(default)]
    is_encrypted: Option<bool>,
    /// MSC4186's text calls it `is_invited`.
    #[serde(default, alias = "is_invited")]
    is_invite: Option<bool>,
    #[serde(default)]
    is_tombstoned: Option<bool>,
    #[serde(default)]
    room_types: Option<Vec<Option<String>>>,
    #[serde(default)]
    not_room_types: Option<Vec<Option<String>>>,
    #[serde(default)]
    room_name_like: Option<String>,
    #[serde(default)]
    is_dm: Option<bool>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    not_tags: Option<Vec<String>>,
    #[serde(default)]
    spaces: Option<Vec<String>>,
}

/// Validates the filters of the list named `list`.
pub fn filters(list: &str, f: WireFilters) -> Result<Filters, MatrixError> {
    let bad = |field: &str, msg: String| {
        MatrixError::invalid_param(format!("lists.{list}.filters.{field}: {msg}"))
    };
    let count = |v: &Option<Vec<String>>| v.as_ref().map_or(0, Vec::len);
    let lengths = [
        ("room_types", f.room_types.as_ref().map_or(0, Vec::len)),
        (
            "not_room_types",
            f.not_room_types.as_ref().map_or(0, Vec::len),
        ),
        ("tags", count(&f.tags)),
        ("not_tags", count(&f.not_tags)),
        ("spaces", count(&f.spaces)),
    ];
    for (field, len) in lengths {
        if len > MAX_FILTER_ENTRIES {
            return Err(bad(
                field,
                format!("at most {MAX_FILTER_ENTRIES} entries are allowed"),
            ));
        }
    }
    for (field, entries, max) in [
        ("tags", &f.tags, MAX_TAG),
        ("not_tags", &f.not_tags, MAX_TAG),
        ("spaces", &f.spaces, MAX_ROOM_ID),
    ] {
        if entries.iter().flatten().any(|e| e.len() > max) {
            return Err(bad(field, format!("entries are at most {max} bytes")));
        }
    }
    if f.room_name_like
        .as_ref()
        .is_some_and(|l| l.len() > MAX_NAME_LIKE)
    {
        return Err(bad(
            "room_name_like",
            format!("at most {MAX_NAME_LIKE} bytes"),
        ));
    }
    Ok(Filters {
        is_encrypted: f.is_encrypted,
        is_invite: f.is_invite,
        is_tombstoned: f.is_tombstoned,
        room_types: f.room_types,
        not_room_types: f.not_room_types.unwrap_or_default(),
        room_name_like: f.room_name_like.map(|l| l.to_lowercase()),
        is_dm: f.is_dm,
        tags: f.tags.unwrap_or_default(),
        not_tags: f.not_tags.unwrap_or_default(),
        spaces: f
            .spaces
            .unwrap_or_default()
            .into_iter()
            .map(Into::into)
            .collect(),
    })
}

/// Random byte edits of valid requests: every outcome of `parse` is a request or a
/// Matrix error with a 4xx status, never a panic.
#[cfg(test)]
pub fn mangled_bodies_never_panic<T>(
    seeds: &[&[u8]],
    seed: u64,
    parse: impl Fn(&[u8]) -> Result<T, MatrixError>,
) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in 0..20_000 {
        let mut body = seeds[i % seeds.len()].to_vec();
        for _ in 0..rng.gen_range(1..6) {
            let at = rng.gen_range(0..=body.len());
            match rng.gen_range(0..3) {
                0 if at < body.len() => {
                    body.remove(at);
                }
                1 => body.insert(at, b"{}[]\",:-09azE\\\x00\xff"[rng.gen_range(0..16)]),
                _ if at < body.len() => body[at] = rng.gen(),
                _ => {}
            }
        }
        if let Err(e) = parse(&body) {
            assert!(e.status.is_client_error(), "{e}");
        }
    }
}
