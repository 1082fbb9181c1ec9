//! The Go proxy's database (matrix-org/sliding-sync), read once by `slidesync import-go`.
//!
//! Only what a device needs to keep its sessions and room keys is read: tokens, and per
//! device the unacknowledged to-device messages, the acknowledged position, device-list
//! changes and the CBOR device data. Room tables are not read (see `ops::import_go` for
//! why). Nothing here writes to the Go database.
//!
//! Older Go versions lack tables newer ones have (`syncv3_device_list_updates` came in
//! 2024; before that the changes sat in the CBOR device data under `dl`): a missing table
//! reads as empty, and [`GoDb::missing`] names it so the caller can say so.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures_util::TryStreamExt;
use serde::Deserialize;
use sqlx::postgres::PgConnection;
use sqlx::Row;

use super::devices::ListChange;
use super::pg::{connect_once, redact};
use crate::types::{DeviceKey, Position, UserId};

/// Tables without which the database is not a Go proxy's.
const REQUIRED: [&str; 2] = ["syncv3_sync2_tokens", "syncv3_sync2_devices"];
/// Per-device tables read when they exist.
const OPTIONAL: [&str; 4] = [
    "syncv3_to_device_messages",
    "syncv3_to_device_ack_pos",
    "syncv3_device_data",
    "syncv3_device_list_updates",
];

/// Why the Go database could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GoError {
    #[error("cannot connect to the Go proxy's database: {0}")]
    Connect(String),
    #[error("the database has no table {0}: it is not a Go sliding sync proxy's database")]
    NotGo(&'static str),
    #[error("reading the Go proxy's database failed: {0}")]
    Query(String),
    /// A value the Go proxy would not have written (a negative position).
    #[error("the Go proxy's database holds {0}")]
    Corrupt(String),
}

/// One row of `syncv3_sync2_tokens`.
#[derive(Debug, Clone, PartialEq)]
pub struct GoToken {
    pub device: DeviceKey,
    pub token_hash: String,
    pub token_encrypted: String,
}

/// What the Go database holds for one device.
#[derive(Debug, Default, PartialEq)]
pub struct GoDevice {
    /// Unacknowledged to-device messages: (position, event JSON), oldest first.
    pub to_device: Vec<(Position, Bytes)>,
    /// `syncv3_to_device_ack_pos.unack_pos`: the newest position handed to the client.
    pub unack_pos: Position,
    pub keys: DeviceKeys,
    /// Device-list changes not yet delivered (bucket 1).
    pub lists_new: BTreeMap<UserId, ListChange>,
    /// Device-list changes delivered last (bucket 2).
    pub lists_sent: BTreeMap<UserId, ListChange>,
    /// Device-list rows with a state neither 1 (changed) nor 2 (left); skipped.
    pub unknown_list_states: usize,
}

/// The key data of the CBOR device data, as the e2ee extension serves it (JSON).
#[derive(Debug, Default, PartialEq)]
pub struct DeviceKeys {
    /// `device_one_time_keys_count`: a JSON object; `None` when never reported.
    pub otk_counts: Option<Bytes>,
    /// `device_unused_fallback_key_types`: a JSON array; `None` when never reported,
    /// `[]` when the fallback key was used up.
    pub fallback_types: Option<Bytes>,
}

/// A Go database, open for reading.
pub struct GoDb {
    conn: PgConnection,
    url: String,
    /// Optional tables this database does not have.
    missing: Vec<&'static str>,
    /// The highest to-device position the Go proxy ever gave out (its sequence's last
    /// value): a device's `unack_pos` is the client's own `since`, which a client can
    /// set to anything, so it is trusted only up to this.
    handed_out: Position,
}

impl GoDb {
    pub async fn connect(url: &str) -> Result<GoDb, GoError> {
        let (_, mut conn) = connect_once(url).await.map_err(GoError::Connect)?;
        let mut missing = Vec::new();
        for table in REQUIRED.into_iter().chain(OPTIONAL) {
            let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(table)
                .fetch_one(&mut conn)
                .await
                .map_err(|e| GoError::Query(redact(&e.to_string(), url)))?;
            if !exists {
                if REQUIRED.contains(&table) {
                    return Err(GoError::NotGo(table));
                }
                missing.push(table);
            }
        }
        let handed_out = if missing.contains(&"syncv3_to_device_messages") {
            0
        } else {
            // The sequence may be gone in a hand-made database: the highest stored
            // position is then the best known bound.
            let last: Option<i64> =
                sqlx::query_scalar("SELECT last_value FROM syncv3_to_device_messages_seq")
                    .fetch_optional(&mut conn)
                    .await
                    .ok()
                    .flatten();
            let last = match last {
                Some(last) => last,
                None => sqlx::query_scalar(
                    "SELECT COALESCE(MAX(position), 0) FROM syncv3_to_device_messages",
                )
                .fetch_one(&mut conn)
                .await
                .map_err(|e| GoError::Query(redact(&e.to_string(), url)))?,
            };
            Position::try_from(last).unwrap_or(0)
        };
        Ok(GoDb {
            conn,
            url: url.to_owned(),
            missing,
            handed_out,
        })
    }

    /// Optional tables this Go version did not have; they read as empty.
    pub fn missing(&self) -> &[&'static str] {
        &self.missing
    }

    fn has(&self, table: &str) -> bool {
        !self.missing.contains(&table)
    }

    fn error(&self, e: sqlx::Error) -> GoError {
        GoError::Query(redact(&e.to_string(), &self.url))
    }

    /// Every token, each device's newest (`last_seen`) first, streamed to `each`: the
    /// table holds one row per token ever seen.
    pub async fn tokens(&mut self, mut each: impl FnMut(GoToken)) -> Result<(), GoError> {
        let url = self.url.clone();
        let mut rows = sqlx::query(
            "SELECT token_hash, token_encrypted, user_id, device_id FROM syncv3_sync2_tokens \
             WHERE user_id IS NOT NULL AND device_id IS NOT NULL \
             ORDER BY user_id, device_id, last_seen DESC NULLS LAST",
        )
        .fetch(&mut self.conn);
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(|e| GoError::Query(redact(&e.to_string(), &url)))?
        {
            let text = |name: &str| -> Result<String, GoError> {
                row.try_get(name)
                    .map_err(|e| GoError::Query(redact(&e.to_string(), &url)))
            };
            each(GoToken {
                device: DeviceKey::new(text("user_id")?, text("device_id")?),
                token_hash: text("token_hash")?,
                token_encrypted: text("token_encrypted")?,
            });
        }
        Ok(())
    }

    /// Every device any per-device table (or `syncv3_sync2_devices`) names, with its
    /// `since` if it had one (it had been polled).
    pub async fn devices(&mut self) -> Result<Vec<(DeviceKey, Option<String>)>, GoError> {
        let mut sql = String::from(
            "SELECT user_id, device_id, MAX(since) AS since FROM ( \
             SELECT user_id, device_id, NULLIF(since, '') AS since \
             FROM syncv3_sync2_devices",
        );
        for table in OPTIONAL.into_iter().filter(|t| self.has(t)) {
            sql.push_str(&format!(
                " UNION ALL SELECT DISTINCT user_id, device_id, NULL FROM {table}"
            ));
        }
        sql.push_str(") d GROUP BY user_id, device_id ORDER BY user_id, device_id");
        let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(&sql)
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(rows
            .into_iter()
            .map(|(user, device, since)| (DeviceKey::new(user, device), since))
            .collect())
    }

    /// What the per-device tables hold for `device`.
    pub async fn device(&mut self, device: &DeviceKey) -> Result<GoDevice, GoError> {
        let mut out = GoDevice::default();
        let (user_id, device_id) = (&*device.user_id, &*device.device_id);
        if self.has("syncv3_to_device_messages") {
            let rows: Vec<(i64, String)> = sqlx::query_as(
                "SELECT position, message FROM syncv3_to_device_messages \
                 WHERE user_id = $1 AND device_id = $2 ORDER BY position",
            )
            .bind(user_id)
            .bind(device_id)
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
            for (position, message) in rows {
                match go_position(position) {
                    Ok(position) => out.to_device.push((position, Bytes::from(message))),
                    Err(e) => {
                        tracing::warn!(%device, error = %e, "skipping a to-device message the Go proxy could not have stored");
                    }
                }
            }
        }
        if self.has("syncv3_to_device_ack_pos") {
            let pos: Option<i64> = sqlx::query_scalar(
                "SELECT unack_pos FROM syncv3_to_device_ack_pos \
                 WHERE user_id = $1 AND device_id = $2",
            )
            .bind(user_id)
            .bind(device_id)
            .fetch_optional(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
            // What the client sent as its `since`, as Go stored it: within what was
            // handed out, or it could let a `since` acknowledge messages never sent, or
            // push every later position out of range.
            let newest = out.to_device.last().map_or(0, |m| m.0);
            out.unack_pos = pos
                .and_then(|p| Position::try_from(p).ok())
                .unwrap_or(0)
                .min(self.handed_out.max(newest));
        }
        if self.has("syncv3_device_data") {
            let data: Option<Vec<u8>> = sqlx::query_scalar(
                "SELECT data FROM syncv3_device_data WHERE user_id = $1 AND device_id = $2",
            )
            .bind(user_id)
            .bind(device_id)
            .fetch_optional(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
            // Key counts come again with the device's next sync; a blob that does not
            // decode must not stop everyone else's import.
            match data.map(|data| decode_device_data(&data)) {
                Some(Err(e)) => {
                    tracing::warn!(%device, error = %e, "device data that is not the Go proxy's CBOR; importing the device without its key data");
                }
                Some(Ok(decoded)) => {
                    out.keys = decoded.keys;
                    // Only a Go version without the table kept the changes in the blob.
                    if !self.has("syncv3_device_list_updates") {
                        out.lists_new = decoded.lists_new;
                        out.lists_sent = decoded.lists_sent;
                        out.unknown_list_states = decoded.unknown_list_states;
                    }
                }
                None => {}
            }
        }
        if self.has("syncv3_device_list_updates") {
            let rows: Vec<(String, i16, i16)> = sqlx::query_as(
                "SELECT target_user_id, target_state, bucket FROM syncv3_device_list_updates \
                 WHERE user_id = $1 AND device_id = $2",
            )
            .bind(user_id)
            .bind(device_id)
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
            for (target, state, bucket) in rows {
                let Some(change) = list_change(i64::from(state)) else {
                    out.unknown_list_states += 1;
                    continue;
                };
                let lists = if bucket == 2 {
                    &mut out.lists_sent
                } else {
                    &mut out.lists_new
                };
                lists.insert(UserId::from(target), change);
            }
        }
        Ok(out)
    }
}

fn go_position(position: i64) -> Result<Position, GoError> {
    Position::try_from(position)
        .map_err(|_| GoError::Corrupt(format!("a negative to-device position {position}")))
}

/// Go's `DeviceListChanged` (1) and `DeviceListLeft` (2).
fn list_change(state: i64) -> Option<ListChange> {
    match state {
        1 => Some(ListChange::Changed),
        2 => Some(ListChange::Left),
        _ => None,
    }
}

/// What a `syncv3_device_data` blob holds.
#[derive(Debug, Default, PartialEq)]
pub struct DecodedDeviceData {
    pub keys: DeviceKeys,
    /// From `dl`, which only rows older than the device-list table have.
    pub lists_new: BTreeMap<UserId, ListChange>,
    pub lists_sent: BTreeMap<UserId, ListChange>,
    pub unknown_list_states: usize,
}

/// Decodes the CBOR the Go proxy writes (fxamacker/cbor with the `json` tags as keys).
/// `c`, the bits of what changed since the client's last read, is not kept: every
/// connection to slidesync is new, and a new connection's first e2ee read returns the
/// current counts and types anyway. Unknown keys (`UserID`, `DeviceID`) are ignored.
pub fn decode_device_data(cbor: &[u8]) -> Result<DecodedDeviceData, String> {
    #[derive(Deserialize)]
    struct Blob {
        #[serde(default)]
        otk: Option<BTreeMap<String, i64>>,
        #[serde(default)]
        fallback: Option<Vec<String>>,
        #[serde(default)]
        dl: Option<Lists>,
    }
    #[derive(Deserialize)]
    struct Lists {
        #[serde(default)]
        n: Option<BTreeMap<String, i64>>,
        #[serde(default)]
        s: Option<BTreeMap<String, i64>>,
    }
    let blob: Blob = ciborium::de::from_reader(cbor).map_err(|e| e.to_string())?;
    let mut out = DecodedDeviceData {
        keys: DeviceKeys {
            otk_counts: blob.otk.as_ref().map(to_json).transpose()?,
            fallback_types: blob.fallback.as_ref().map(to_json).transpose()?,
        },
        ..DecodedDeviceData::default()
    };
    if let Some(lists) = blob.dl {
        for (from, into) in [
            (lists.n, &mut out.lists_new),
            (lists.s, &mut out.lists_sent),
        ] {
            for (user, state) in from.unwrap_or_default() {
                match list_change(state) {
                    Some(change) => {
                        into.insert(UserId::from(user), change);
                    }
                    None => out.unknown_list_states += 1,
                }
            }
        }
    }
    Ok(out)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Bytes, String> {
    sonic_rs::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use ciborium::Value;

    use super::*;

    fn cbor(entries: Vec<(&str, Value)>) -> Vec<u8> {
        let map = Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Value::Text(k.to_owned()), v))
                .collect(),
        );
        let mut out = Vec::new();
        ciborium::ser::into_writer(&map, &mut out).unwrap();
        out
    }

    fn int_map(entries: &[(&str, i64)]) -> Value {
        Value::Map(
            entries
                .iter()
                .map(|(k, v)| (Value::Text((*k).to_owned()), Value::Integer((*v).into())))
                .collect(),
        )
    }

    fn text(bytes: &Option<Bytes>) -> Option<&str> {
        bytes.as_deref().map(|b| std::str::from_utf8(b).unwrap())
    }

    #[test]
    fn counts_and_fallback_types_become_the_json_the_extension_serves() {
        let decoded = decode_device_data(&cbor(vec![
            (
                "otk",
                int_map(&[("signed_curve25519", 50), ("curve25519", 0)]),
            ),
            (
                "fallback",
                Value::Array(vec![Value::Text("signed_curve25519".into())]),
            ),
            ("c", Value::Integer(3.into())),
        ]))
        .unwrap();
        assert_eq!(
            text(&decoded.keys.otk_counts),
            Some(r#"{"curve25519":0,"signed_curve25519":50}"#)
        );
        assert_eq!(
            text(&decoded.keys.fallback_types),
            Some(r#"["signed_curve25519"]"#)
        );
        assert!(decoded.lists_new.is_empty() && decoded.lists_sent.is_empty());
    }

    #[test]
    fn a_null_fallback_is_never_reported_and_an_empty_one_is_used_up() {
        let null = decode_device_data(&cbor(vec![("fallback", Value::Null)])).unwrap();
        assert_eq!(null.keys.fallback_types, None);
        assert_eq!(null.keys.otk_counts, None, "absent otk is never reported");
        let used = decode_device_data(&cbor(vec![("fallback", Value::Array(vec![]))])).unwrap();
        assert_eq!(text(&used.keys.fallback_types), Some("[]"));
    }

    #[test]
    fn old_rows_give_their_device_lists_and_unknown_keys_are_ignored() {
        let decoded = decode_device_data(&cbor(vec![
            ("UserID", Value::Text("@a:x".into())),
            ("DeviceID", Value::Text("D".into())),
            ("otk", Value::Null),
            (
                "dl",
                Value::Map(vec![
                    (
                        Value::Text("n".into()),
                        int_map(&[("@b:x", 1), ("@c:x", 2), ("@d:x", 7)]),
                    ),
                    (Value::Text("s".into()), int_map(&[("@e:x", 1)])),
                ]),
            ),
        ]))
        .unwrap();
        assert_eq!(decoded.keys, DeviceKeys::default());
        let new: Vec<_> = decoded.lists_new.iter().map(|(u, c)| (&**u, *c)).collect();
        assert_eq!(
            new,
            [("@b:x", ListChange::Changed), ("@c:x", ListChange::Left)]
        );
        assert_eq!(decoded.unknown_list_states, 1);
        assert_eq!(decoded.lists_sent.len(), 1);
    }

    #[test]
    fn bytes_that_are_not_the_go_shape_are_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"\xff\xff",
            b"{\"otk\":{}}",
            &cbor(vec![("otk", Value::Text("many".into()))]),
            &cbor(vec![("fallback", Value::Integer(1.into()))]),
        ] {
            assert!(decode_device_data(bad).is_err(), "{bad:?}");
        }
    }
}
