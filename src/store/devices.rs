//! Per-device data: the to-device queue, device-list changes, one-time-key counts and
//! fallback key types, and the wake-up a device's connections park on.
//!
//! DESIGN invariant 2: what a device's poller delivered is queued for storage before
//! that poller's `since` (ingest queues both in that order), and what a client
//! acknowledged is deleted through the same queue after the rows it deletes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use imbl::{OrdMap, Vector};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::persist::{LoadedDevice, Write};
use crate::types::{DeviceKey, Position, UserId};

/// Unacknowledged to-device messages a device keeps in memory. A client that never
/// acknowledges would otherwise grow memory without bound: past this, messages are only
/// stored, and read back in order as the client acknowledges what memory holds.
pub const TO_DEVICE_IN_MEMORY: usize = 1_000;

/// One to-device message as queued for a device.
#[derive(Clone, Debug, PartialEq)]
pub struct ToDeviceMessage {
    /// The client-visible `next_batch` of the message; increasing per device, and never
    /// handed out twice, across restarts too.
    pub position: Position,
    pub json: Bytes,
    /// For an `m.room_key_request` asking for a key: what a cancellation names.
    pub key_request: Option<Box<str>>,
}

/// A to-device message as the poller read it.
#[derive(Clone, Debug, PartialEq)]
pub struct IncomingToDevice {
    pub json: Bytes,
    pub key_request: Option<KeyRequest>,
}

/// An `m.room_key_request`: a request for a room key, or the cancellation of one. Both
/// carry the same key: sender, requesting device and request ID.
#[derive(Clone, Debug, PartialEq)]
pub enum KeyRequest {
    Request(Box<str>),
    Cancellation(Box<str>),
}

/// How a user's devices changed, as a device-list update reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListChange {
    Changed,
    Left,
}

impl ListChange {
    pub fn as_str(self) -> &'static str {
        match self {
            ListChange::Changed => "changed",
            ListChange::Left => "left",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "changed" => Some(ListChange::Changed),
            "left" => Some(ListChange::Left),
            _ => None,
        }
    }
}

/// One published version of a device's data: persistent collections, so publishing a
/// change clones pointers, not messages.
#[derive(Clone, Debug, Default)]
pub struct DeviceData {
    /// Unacknowledged messages, oldest first, at most [`TO_DEVICE_IN_MEMORY`].
    pub to_device: Vector<ToDeviceMessage>,
    /// The newest position of a message only storage holds (it arrived while memory was
    /// full, or before a restart); 0 when memory holds them all.
    pub stored_up_to: Position,
    /// The write that queued that message (see [`super::writer::WriteQueue::push`]):
    /// once it is committed, storage can hand the message back.
    pub stored_write: u64,
    /// Messages up to here were acknowledged and deleted.
    pub acked: Position,
    /// The newest message handed to a client (at least `acked`): a client's `since`
    /// acknowledges no further, so a `since` from before a restart or from another
    /// database never deletes what this device was not sent. Storage keeps it only when
    /// the device came from the Go proxy (see [`Write::ToDeviceDelivered`]).
    pub delivered: Position,
    /// The newest `device_one_time_keys_count` (a JSON object as the homeserver sent it).
    pub otk_counts: Option<Bytes>,
    /// The newest `device_unused_fallback_key_types` (a JSON array). `Some("[]")` means
    /// the fallback key was used, which differs from never reported.
    pub fallback_types: Option<Bytes>,
    /// Which of the two changed since a client last read them.
    pub otk_changed: bool,
    pub fallback_changed: bool,
    /// Device-list changes not yet delivered; a later change of a user replaces an
    /// earlier one.
    pub lists_new: OrdMap<UserId, ListChange>,
    /// The changes delivered last: sent again to a new connection (its client may not
    /// have processed them), dropped at the next read.
    pub lists_sent: OrdMap<UserId, ListChange>,
    /// The Go proxy's `since` of a device imported from it: the device-list changes
    /// after it are still to be asked of the homeserver (see
    /// [`Write::DeviceListsCatchUp`]).
    pub lists_catch_up: Option<Box<str>>,
    version: u64,
}

impl DeviceData {
    pub fn version(&self) -> u64 {
        self.version
    }

    /// A device as storage holds it: its messages stay there until a client asks.
    pub fn from_loaded(loaded: &LoadedDevice) -> Self {
        let mut data = DeviceData {
            stored_up_to: if loaded.to_device_max > loaded.acked {
                loaded.to_device_max
            } else {
                0
            },
            acked: loaded.acked,
            delivered: loaded.acked.max(loaded.delivered),
            otk_counts: loaded.otk_counts.clone(),
            fallback_types: loaded.fallback_types.clone(),
            lists_catch_up: loaded.lists_catch_up.clone(),
            ..DeviceData::default()
        };
        for (user, change, sent) in &loaded.lists {
            let bucket = if *sent {
                &mut data.lists_sent
            } else {
                &mut data.lists_new
            };
            bucket.insert(user.clone(), *change);
        }
        data
    }
}

pub struct DeviceState {
    pub key: DeviceKey,
    /// Swapped whole by writers; readers keep an `Arc` of one version and never wait.
    data: ArcSwap<DeviceData>,
    /// Serializes writers, and keeps queue order equal to the order changes are made.
    /// Held for one change, never across `.await`.
    write: Mutex<()>,
    /// Bumped by every change, so the device's parked long-polls wake: per device, not
    /// per user, as another device's messages are nothing to them.
    wake: watch::Sender<u64>,
}

impl DeviceState {
    pub fn new(key: DeviceKey, data: DeviceData) -> Self {
        Self {
            key,
            data: ArcSwap::from_pointee(data),
            write: Mutex::new(()),
            wake: watch::channel(0).0,
        }
    }

    pub fn read(&self) -> Arc<DeviceData> {
        self.data.load_full()
    }

    /// Applies a change to a copy and publishes it; wakes the device's connections if
    /// `f` says it changed something a client may want.
    pub fn update<R>(&self, f: impl FnOnce(&mut DeviceData) -> (R, bool)) -> R {
        let (out, version) = {
            let _writer = self.write.lock();
            let mut data = DeviceData::clone(&self.data.load());
            let (out, wake) = f(&mut data);
            if wake {
                data.version += 1;
            }
            let version = wake.then_some(data.version);
            self.data.store(Arc::new(data));
            (out, version)
        };
        if let Some(version) = version {
            self.wake.send_replace(version);
        }
        out
    }

    /// Subscribe before reading, as for a user's wake-up.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }
}

/// A device's e2ee data as a non-initial read takes it: what changed since the last one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeysUpdate {
    pub otk_counts: Option<Bytes>,
    pub fallback_types: Option<Bytes>,
    pub lists: OrdMap<UserId, ListChange>,
}

impl super::Store {
    /// The device's data, created empty for a device not seen before.
    pub fn device(&self, key: &DeviceKey) -> Arc<DeviceState> {
        if let Some(device) = self.devices.get(key) {
            return Arc::clone(&device);
        }
        Arc::clone(
            &self
                .devices
                .entry(key.clone())
                .or_insert_with(|| Arc::new(DeviceState::new(key.clone(), DeviceData::default()))),
        )
    }

    /// Queues to-device messages a poller received, in order, each with the next
    /// position. A cancellation of a key request not yet handed to the client drops that
    /// request and is dropped itself (the Go proxy's rule); otherwise it is queued like
    /// any message. Past [`TO_DEVICE_IN_MEMORY`] messages go to storage only.
    pub fn add_to_device(&self, device: &DeviceState, messages: Vec<IncomingToDevice>) {
        if messages.is_empty() {
            return;
        }
        device.update(|d| {
            let mut writes = Vec::with_capacity(messages.len());
            let mut spilled = None;
            for message in messages {
                let key_request = match message.key_request {
                    Some(KeyRequest::Cancellation(key)) => {
                        let pending = d.to_device.iter().position(|m| {
                            m.position > d.delivered && m.key_request.as_deref() == Some(&*key)
                        });
                        if let Some(at) = pending {
                            let cancelled = d.to_device.remove(at);
                            writes.push(Write::ToDeviceDrop {
                                device: device.key.clone(),
                                position: cancelled.position,
                            });
                            continue;
                        }
                        None
                    }
                    Some(KeyRequest::Request(key)) => Some(key),
                    None => None,
                };
                let position = self.next_to_device.fetch_add(1, Ordering::Relaxed);
                writes.push(Write::ToDevice {
                    device: device.key.clone(),
                    position,
                    json: message.json.clone(),
                    key_request: key_request.clone(),
                });
                // Order is kept: once one message is only stored, later ones follow it.
                if d.stored_up_to > 0 || d.to_device.len() >= TO_DEVICE_IN_MEMORY {
                    d.stored_up_to = position;
                    spilled = Some(());
                } else {
                    d.to_device.push_back(ToDeviceMessage {
                        position,
                        json: message.json,
                        key_request,
                    });
                }
            }
            let queued = self.queue.push(writes);
            if spilled.is_some() {
                d.stored_write = queued;
            }
            ((), true)
        });
    }

    /// The client acknowledged messages up to `since`: they are deleted, in memory and
    /// (behind) in storage. Never past what the device was handed. Its one write takes no
    /// credits: a request queues at most this and a device-list delivery, so what
    /// requests queue is bounded by the requests in flight.
    pub fn ack_to_device(&self, device: &DeviceState, since: Position) {
        let upto = since.min(device.read().delivered);
        if upto <= device.read().acked {
            return;
        }
        device.update(|d| {
            let upto = since.min(d.delivered);
            if upto <= d.acked {
                return ((), false);
            }
            while d.to_device.front().is_some_and(|m| m.position <= upto) {
                d.to_device.pop_front();
            }
            d.acked = upto;
            self.queue.push([Write::ToDeviceAck {
                device: device.key.clone(),
                position: upto,
            }]);
            ((), false)
        });
    }

    /// Reads back, in order, messages only storage holds once memory runs low (after a
    /// restart, or for a client that let [`TO_DEVICE_IN_MEMORY`] pile up). Waits for
    /// them to be committed first. A failed read is logged and tried at the next request.
    pub async fn refill_to_device(&self, device: &DeviceState) {
        let now = device.read();
        if now.stored_up_to == 0 || now.to_device.len() >= TO_DEVICE_IN_MEMORY / 2 {
            return;
        }
        if self.queue.committed() < now.stored_write {
            self.queue.flush().await;
        }
        let after = now.to_device.back().map_or(now.acked, |m| m.position);
        let want = TO_DEVICE_IN_MEMORY - now.to_device.len();
        let read = match self
            .queue
            .persist()
            .to_device_after(&device.key, after, want)
            .await
        {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(device = %device.key, error = %e, "cannot read stored to-device messages; trying again at the next request");
                return;
            }
        };
        device.update(|d| {
            // Another connection of the device may have acknowledged meanwhile.
            let mut tail = d
                .to_device
                .back()
                .map_or(d.acked, |m| m.position)
                .max(d.acked);
            let before = d.to_device.len();
            for m in read {
                if m.position <= tail || m.position > d.stored_up_to {
                    continue;
                }
                if d.to_device.len() >= TO_DEVICE_IN_MEMORY {
                    break;
                }
                tail = m.position;
                d.to_device.push_back(ToDeviceMessage {
                    position: m.position,
                    json: m.json,
                    key_request: m.key_request,
                });
            }
            if tail >= d.stored_up_to {
                d.stored_up_to = 0;
            }
            ((), d.to_device.len() > before)
        });
    }

    /// Messages up to `position` were handed to the device's client.
    pub fn to_device_delivered(&self, device: &DeviceState, position: Position) {
        if device.read().delivered >= position {
            return;
        }
        device.update(|d| {
            d.delivered = d.delivered.max(position);
            ((), false)
        });
    }

    /// The newest one-time-key counts and unused fallback key types a poller received
    /// (`None`: the response did not carry them). Only a change is stored and wakes.
    pub fn set_device_keys(
        &self,
        device: &DeviceState,
        otk_counts: Option<Bytes>,
        fallback_types: Option<Bytes>,
    ) {
        let current = device.read();
        let otk = otk_counts.filter(|o| current.otk_counts.as_ref() != Some(o));
        let fallback = fallback_types.filter(|f| current.fallback_types.as_ref() != Some(f));
        if otk.is_none() && fallback.is_none() {
            return;
        }
        device.update(|d| {
            if let Some(otk) = otk {
                d.otk_counts = Some(otk);
                d.otk_changed = true;
            }
            if let Some(fallback) = fallback {
                d.fallback_types = Some(fallback);
                d.fallback_changed = true;
            }
            self.queue.push([Write::DeviceKeys {
                device: device.key.clone(),
                otk_counts: d.otk_counts.clone(),
                fallback_types: d.fallback_types.clone(),
            }]);
            ((), true)
        });
    }

    /// Device-list changes a poller received; a later one about a user replaces an
    /// earlier one not yet delivered (`left` after `changed` in one response wins, as in
    /// the Go proxy).
    pub fn add_device_lists(&self, device: &DeviceState, changed: Vec<UserId>, left: Vec<UserId>) {
        if changed.is_empty() && left.is_empty() {
            return;
        }
        device.update(|d| {
            let changes = changed
                .into_iter()
                .map(|u| (u, ListChange::Changed))
                .chain(left.into_iter().map(|u| (u, ListChange::Left)));
            let mut writes = Vec::new();
            for (user_id, change) in changes {
                if d.lists_new.get(&user_id) == Some(&change) {
                    continue;
                }
                d.lists_new.insert(user_id.clone(), change);
                writes.push(Write::DeviceListChange {
                    device: device.key.clone(),
                    user_id,
                    change,
                });
            }
            let wake = !writes.is_empty();
            self.queue.push(writes);
            ((), wake)
        });
    }

    /// The device-list changes the homeserver reported since the device's catch-up
    /// point, added as a poller's are; the point is then forgotten, queued after them,
    /// so a crash in between asks again rather than loses them.
    pub fn caught_up_device_lists(
        &self,
        device: &DeviceState,
        changed: Vec<UserId>,
        left: Vec<UserId>,
    ) {
        self.add_device_lists(device, changed, left);
        device.update(|d| {
            if d.lists_catch_up.take().is_some() {
                self.queue.push([Write::DeviceListsCatchUp {
                    device: device.key.clone(),
                    from: None,
                }]);
            }
            ((), false)
        });
    }

    /// An initial e2ee read: the current key data (which counts as delivered) and the
    /// device-list changes delivered last, which stay as they are.
    pub fn current_keys(&self, device: &DeviceState) -> KeysUpdate {
        let now = device.read();
        let current = |d: &DeviceData| KeysUpdate {
            otk_counts: d.otk_counts.clone(),
            fallback_types: d.fallback_types.clone(),
            lists: d.lists_sent.clone(),
        };
        if !now.otk_changed && !now.fallback_changed {
            return current(&now);
        }
        device.update(|d| {
            d.otk_changed = false;
            d.fallback_changed = false;
            (current(d), false)
        })
    }

    /// A non-initial e2ee read: the key data that changed since the last one, and the
    /// device-list changes not yet delivered, which become the ones delivered last
    /// (those delivered before are dropped).
    pub fn take_keys_update(&self, device: &DeviceState) -> KeysUpdate {
        let now = device.read();
        if !now.otk_changed
            && !now.fallback_changed
            && now.lists_new.is_empty()
            && now.lists_sent.is_empty()
        {
            return KeysUpdate::default();
        }
        device.update(|d| {
            let update = KeysUpdate {
                otk_counts: d.otk_changed.then(|| d.otk_counts.clone()).flatten(),
                fallback_types: d
                    .fallback_changed
                    .then(|| d.fallback_types.clone())
                    .flatten(),
                lists: d.lists_new.clone(),
            };
            d.otk_changed = false;
            d.fallback_changed = false;
            if !d.lists_new.is_empty() || !d.lists_sent.is_empty() {
                d.lists_sent = std::mem::take(&mut d.lists_new);
                self.queue.push([Write::DeviceListsDelivered {
                    device: device.key.clone(),
                }]);
            }
            (update, false)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::store;

    fn messages(from: u64, to: u64) -> Vec<IncomingToDevice> {
        (from..to)
            .map(|n| IncomingToDevice {
                json: Bytes::from(format!(r#"{{"type":"m.test","content":{{"n":{n}}}}}"#)),
                key_request: None,
            })
            .collect()
    }

    fn positions(device: &DeviceState) -> Vec<Position> {
        device.read().to_device.iter().map(|m| m.position).collect()
    }

    #[tokio::test]
    async fn memory_holds_so_many_messages_and_storage_the_rest_in_order() {
        let store = store();
        let device = store.device(&DeviceKey::new("@a:x", "D"));
        store.add_to_device(&device, messages(0, 1_500));
        let held = positions(&device);
        assert_eq!(held.len(), TO_DEVICE_IN_MEMORY, "memory is bounded");
        let last_held = *held.last().unwrap();
        assert!(device.read().stored_up_to > last_held);

        // Nothing is read back while memory holds enough.
        store.refill_to_device(&device).await;
        assert_eq!(positions(&device).len(), TO_DEVICE_IN_MEMORY);

        let acked = held[699];
        store.to_device_delivered(&device, last_held);
        store.ack_to_device(&device, acked);
        assert_eq!(positions(&device).len(), 300);
        store.refill_to_device(&device).await;
        let after = positions(&device);
        assert_eq!(after.len(), 800, "the stored 500 came back");
        assert!(after.windows(2).all(|w| w[0] < w[1]), "in order");
        assert_eq!(after[0], acked + 1);
        assert_eq!(device.read().stored_up_to, 0, "memory holds them all again");

        // New messages go to memory again.
        store.add_to_device(&device, messages(1_500, 1_501));
        assert_eq!(positions(&device).len(), 801);
    }

    #[tokio::test]
    async fn a_since_never_acknowledges_what_was_not_handed_out() {
        let store = store();
        let device = store.device(&DeviceKey::new("@a:x", "D"));
        store.add_to_device(&device, messages(0, 3));
        let held = positions(&device);
        store.ack_to_device(&device, u64::MAX);
        assert_eq!(positions(&device), held, "nothing was handed out yet");
        store.to_device_delivered(&device, held[0]);
        store.ack_to_device(&device, u64::MAX);
        assert_eq!(positions(&device), held[1..], "only the one handed out");
        assert_eq!(device.read().acked, held[0]);
    }

    #[tokio::test]
    async fn a_cancellation_drops_an_undelivered_request_and_is_kept_for_a_delivered_one() {
        let store = store();
        let device = store.device(&DeviceKey::new("@a:x", "D"));
        let request = |key: &str, cancel: bool| IncomingToDevice {
            json: Bytes::from_static(b"{}"),
            key_request: Some(if cancel {
                KeyRequest::Cancellation(key.into())
            } else {
                KeyRequest::Request(key.into())
            }),
        };
        store.add_to_device(&device, vec![request("k1", false), request("k2", false)]);
        let first = positions(&device);
        store.to_device_delivered(&device, first[0]);
        store.add_to_device(&device, vec![request("k1", true), request("k2", true)]);
        let keys: Vec<Option<Box<str>>> = device
            .read()
            .to_device
            .iter()
            .map(|m| m.key_request.clone())
            .collect();
        assert_eq!(
            keys,
            [Some("k1".into()), None],
            "k1 was delivered: it stays and its cancellation is queued; k2 and its \
             cancellation are both gone"
        );
    }
}
