//! `slidesync import-go`: moves an operator from the Go proxy without their users losing
//! sessions or room keys.
//!
//! What is imported, per device: the newest access token (its ciphertext as is: the
//! format and `SYNCV3_SECRET` are the Go proxy's), the unacknowledged to-device messages
//! at their Go positions, the position the client was handed last, the device-list
//! changes in both buckets, and the one-time-key counts and fallback key types.
//!
//! # Why a device's `since` is not resumed
//!
//! Rooms are not imported (slidesync keeps them in its own form), so a device's first
//! poll must be an initial `/sync`, or its rooms would be those changed since the switch
//! only. The device row is therefore stored without a `since`. No to-device message is
//! lost by that: Synapse deletes a device's to-device messages only when the device
//! syncs with a `since` past them, and the Go proxy polled with a `since` only after it
//! had stored the messages of the response that returned it. So every message Synapse
//! deleted is either in `syncv3_to_device_messages` (imported here) or was acknowledged
//! by the client, and every message Synapse still holds comes again in the initial
//! `/sync`. Messages Synapse had not deleted yet arrive twice (once imported, once
//! again), which clients tolerate (Olm rejects a replayed message, room keys are
//! idempotent); a lost one would mean an undecryptable room.
//!
//! An initial `/sync` reports no device-list changes, though, so a user whose devices
//! changed after the Go proxy's last poll would never be reported to the device. The Go
//! `since` is therefore kept as the device's device-list catch-up point
//! ([`Write::DeviceListsCatchUp`]): after the device's first poll, its poller asks the
//! homeserver's `/keys/changes` from there to its new `since`, adds the answer to the
//! device's device-list changes, and then forgets the point (see `ingest::pollers`).
//!
//! # Positions
//!
//! Clients send the to-device `since` the Go proxy gave them, so imported messages keep
//! their Go positions, and the Go `unack_pos` (the newest position the client was
//! handed) is stored as the device's delivered position: a `since` up to it
//! acknowledges, one beyond it acknowledges no further, and slidesync hands out new
//! positions only above both (see `store::devices`).
//!
//! Running the import again changes nothing: a device slidesync already has data or a
//! token for is left as it is (it may have moved on since), and each device's data is
//! written in one transaction, so an interrupted run leaves whole devices.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use crate::app::{open_store, store_error, StartupError};
use crate::config::{redact_db_url, ImportConfig};
use crate::store::devices::KeyRequest;
use crate::store::go::{GoDb, GoDevice, GoError, GoToken};
use crate::store::persist::Write;
use crate::store::tokens::{token_hash, TokenCipher};
use crate::types::DeviceKey;
use crate::upstream::wire::parse_to_device;

/// How often progress is logged while devices are imported.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Why the import stopped. Nothing is half-written: a device is imported whole or not.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("SYNCV3_IMPORT_FROM (--from) is {url:?}: {error}")]
    Go { url: String, error: GoError },
    #[error(transparent)]
    Store(StartupError),
    /// No stored token decrypts: the secret is not the Go proxy's.
    #[error("SYNCV3_SECRET (--secret) decrypts none of the Go proxy's {tokens} access tokens: set it to the secret the Go proxy ran with; nothing was imported")]
    WrongSecret { tokens: usize },
}

/// What the import did, for the closing line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Go token rows read.
    pub tokens_read: usize,
    /// Rows that do not decrypt with the secret (or whose hash does not match).
    pub tokens_undecryptable: usize,
    /// Devices whose newest token was stored.
    pub tokens_imported: usize,
    /// Devices slidesync already had a token for (left as they are).
    pub tokens_present: usize,
    /// Devices the Go database names.
    pub devices: usize,
    /// Of those, devices whose data was stored.
    pub devices_imported: usize,
    /// Devices slidesync already had data for (left as they are).
    pub devices_present: usize,
    /// Devices the Go proxy had polled: each starts over with an initial `/sync`.
    pub initial_syncs: usize,
    pub to_device_messages: usize,
    pub device_list_changes: usize,
    /// Devices with one-time-key counts or fallback key types.
    pub device_keys: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "imported {} of {} devices ({} already present), {} to-device messages, \
             {} device-list changes, key data of {} devices; tokens: {} imported, \
             {} already present, {} of {} rows undecryptable; {} devices start with an \
             initial sync",
            self.devices_imported,
            self.devices,
            self.devices_present,
            self.to_device_messages,
            self.device_list_changes,
            self.device_keys,
            self.tokens_imported,
            self.tokens_present,
            self.tokens_undecryptable,
            self.tokens_read,
            self.initial_syncs,
        )
    }
}

/// Imports the Go database `config.from` into the store `config.db`.
pub async fn run(config: &ImportConfig) -> Result<Summary, ImportError> {
    let go_error = |error| ImportError::Go {
        url: redact_db_url(&config.from),
        error,
    };
    let store_err = |error| ImportError::Store(store_error(&config.db, error));
    let mut go = GoDb::connect(&config.from).await.map_err(go_error)?;
    for table in go.missing() {
        tracing::warn!(
            table,
            "the Go database has no such table (an older Go proxy version); importing without it"
        );
    }
    let persist = open_store(&config.db, config.max_db_conn)
        .await
        .map_err(store_err)?;
    let cipher = TokenCipher::new(&config.secret);
    let mut summary = Summary::default();

    // Tokens first: a wrong secret stops the import before anything is written.
    let tokens = newest_tokens(&mut go, &cipher, &mut summary)
        .await
        .map_err(go_error)?;
    if summary.tokens_read > 0 && tokens.is_empty() {
        return Err(ImportError::WrongSecret {
            tokens: summary.tokens_read,
        });
    }
    let with_token: HashSet<DeviceKey> = persist
        .devices()
        .await
        .map_err(store_err)?
        .into_iter()
        .map(|d| d.device)
        .collect();
    for token in tokens {
        if with_token.contains(&token.device) {
            summary.tokens_present += 1;
            continue;
        }
        persist
            .insert_token(&token.token_hash, &token.token_encrypted, &token.device)
            .await
            .map_err(store_err)?;
        summary.tokens_imported += 1;
    }

    let with_data: HashSet<DeviceKey> = persist
        .load_device_data()
        .await
        .map_err(store_err)?
        .into_iter()
        .map(|d| d.device)
        .collect();
    let devices = go.devices().await.map_err(go_error)?;
    summary.devices = devices.len();
    tracing::info!(devices = devices.len(), "importing devices");
    let mut logged = Instant::now();
    for (done, (device, since)) in devices.into_iter().enumerate() {
        if logged.elapsed() >= PROGRESS_EVERY {
            tracing::info!(done, of = summary.devices, "importing devices");
            logged = Instant::now();
        }
        if with_data.contains(&device) {
            summary.devices_present += 1;
            continue;
        }
        summary.initial_syncs += usize::from(since.is_some());
        let data = go.device(&device).await.map_err(go_error)?;
        let mut writes = device_writes(&device, data, &mut summary);
        if let Some(from) = since {
            writes.push(Write::DeviceListsCatchUp {
                device: device.clone(),
                from: Some(from),
            });
        }
        if writes.is_empty() {
            continue;
        }
        persist.write(&writes).await.map_err(store_err)?;
        summary.devices_imported += 1;
    }
    tracing::info!(%summary, "import-go done");
    Ok(summary)
}

/// Each device's newest token that decrypts and matches its hash.
async fn newest_tokens(
    go: &mut GoDb,
    cipher: &TokenCipher,
    summary: &mut Summary,
) -> Result<Vec<GoToken>, GoError> {
    let mut newest: BTreeMap<DeviceKey, GoToken> = BTreeMap::new();
    go.tokens(|token| {
        summary.tokens_read += 1;
        let readable = cipher
            .decrypt(&token.token_encrypted)
            .is_ok_and(|plain| token_hash(&plain) == token.token_hash);
        if !readable {
            summary.tokens_undecryptable += 1;
            return;
        }
        // Rows come newest first per device.
        newest.entry(token.device.clone()).or_insert(token);
    })
    .await?;
    Ok(newest.into_values().collect())
}

/// One device's data as writes, committed together.
fn device_writes(device: &DeviceKey, data: GoDevice, summary: &mut Summary) -> Vec<Write> {
    let mut writes = Vec::new();
    for (position, json) in data.to_device {
        // Only a request still pending can be cancelled; Go's `unique_key` is not reused
        // because slidesync names requests its own way.
        let key_request = match parse_to_device(&json).and_then(|m| m.key_request) {
            Some(KeyRequest::Request(key)) => Some(key),
            _ => None,
        };
        writes.push(Write::ToDevice {
            device: device.clone(),
            position,
            json,
            key_request,
        });
        summary.to_device_messages += 1;
    }
    if data.unack_pos > 0 {
        writes.push(Write::ToDeviceDelivered {
            device: device.clone(),
            position: data.unack_pos,
        });
    }
    if data.keys.otk_counts.is_some() || data.keys.fallback_types.is_some() {
        writes.push(Write::DeviceKeys {
            device: device.clone(),
            otk_counts: data.keys.otk_counts,
            fallback_types: data.keys.fallback_types,
        });
        summary.device_keys += 1;
    }
    if data.unknown_list_states > 0 {
        tracing::warn!(%device, skipped = data.unknown_list_states, "device-list rows with an unknown state skipped");
    }
    summary.device_list_changes += data.lists_sent.len() + data.lists_new.len();
    let list_writes = |lists: BTreeMap<_, _>| {
        lists
            .into_iter()
            .map(|(user_id, change)| Write::DeviceListChange {
                device: device.clone(),
                user_id,
                change,
            })
            .collect::<Vec<_>>()
    };
    // Delivered last: stored as undelivered, then marked delivered, before the new ones.
    if !data.lists_sent.is_empty() {
        writes.extend(list_writes(data.lists_sent));
        writes.push(Write::DeviceListsDelivered {
            device: device.clone(),
        });
    }
    writes.extend(list_writes(data.lists_new));
    writes
}
