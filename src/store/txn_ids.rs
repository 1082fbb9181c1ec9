//! Which device sent which event, under which transaction ID.
//!
//! A homeserver puts `unsigned.transaction_id` only into the sending device's own
//! `/sync`, and clients match their local echo by it. Events are stored once for
//! everyone (whichever poller delivers first), so the shared copy never carries it; this
//! remembers it per device, to be added when that device's connections serve the event.
//!
//! When another poller delivers a user's event first, the sending device's poller may
//! not have reported the ID yet: a connection of one of the user's devices then waits,
//! at most [`WAIT`] after the event arrived, until its device's poller has delivered the
//! user's newest event too (as the Go proxy did).
//!
//! In memory only: the ID matters for the few seconds a local echo waits, and a restart
//! makes every connection start over anyway.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::watch;

use crate::types::{DeviceKey, UserId};

/// Events of its own user remembered per device, newest kept: far more than a client
/// sends between two of its requests.
pub const PER_DEVICE: usize = 64;
/// The longest a connection holds a response back for its device's poller.
pub const WAIT: Duration = Duration::from_secs(1);

/// An event of the device's user its poller delivered, with the transaction ID if this
/// device sent it.
pub type Delivered = (Box<str>, Option<Box<str>>);

/// Shard locks of these maps are held only to push to, scan or bump one entry.
#[derive(Default)]
pub struct TxnIds {
    /// Per device: (event ID, transaction ID if this device sent it) of its user's events
    /// its poller delivered, oldest first.
    by_device: DashMap<DeviceKey, VecDeque<Delivered>>,
    /// Per device: bumped when its poller delivers its user's events.
    delivered: DashMap<DeviceKey, watch::Sender<u64>>,
    /// Per user of this proxy: their newest event, and when it was first applied.
    newest: DashMap<UserId, (Box<str>, Instant)>,
}

impl TxnIds {
    /// Records the events of its own user that `device`'s poller delivered, with the
    /// transaction ID of those it sent.
    /// Called for every response the device's poller applies, events or not: a device
    /// whose poller has applied none is not waited for (its first poll may take long,
    /// and it can hold no local echo of what the proxy served).
    pub fn remember(&self, device: &DeviceKey, events: Vec<Delivered>) {
        if !events.is_empty() {
            let mut ids = self.by_device.entry(device.clone()).or_default();
            for event in events {
                if !ids.iter().any(|(id, _)| *id == event.0) {
                    ids.push_back(event);
                }
            }
            while ids.len() > PER_DEVICE {
                ids.pop_front();
            }
        }
        self.delivered
            .entry(device.clone())
            .or_insert_with(|| watch::channel(0).0)
            .send_modify(|n| *n += 1);
    }

    /// `user` (of this proxy) sent `event_id`, applied just now.
    pub fn sent_by(&self, user: &UserId, event_id: &str) {
        self.newest
            .insert(user.clone(), (event_id.into(), Instant::now()));
    }

    /// The transaction ID `device` sent `event_id` with, if it did.
    pub fn get(&self, device: &DeviceKey, event_id: &str) -> Option<Box<str>> {
        self.find(device, event_id).flatten()
    }

    fn find(&self, device: &DeviceKey, event_id: &str) -> Option<Option<Box<str>>> {
        let ids = self.by_device.get(device)?;
        ids.iter()
            .rev()
            .find(|(id, _)| &**id == event_id)
            .map(|(_, txn)| txn.clone())
    }

    /// Waits until `device`'s poller has delivered its user's newest event, at most until
    /// [`WAIT`] after that event arrived: a response built before would serve the
    /// device's own message without its transaction ID. Returns whether it was
    /// delivered (or there was nothing to wait for).
    pub async fn settle(&self, device: &DeviceKey) -> bool {
        let Some((event_id, at)) = self.newest.get(&device.user_id).map(|e| (e.0.clone(), e.1))
        else {
            return true;
        };
        let deadline = at + WAIT;
        if Instant::now() >= deadline {
            return self.find(device, &event_id).is_some();
        }
        let Some(mut delivered) = self.delivered.get(device).map(|d| d.subscribe()) else {
            return true;
        };
        let arrived = delivered.wait_for(|_| self.find(device, &event_id).is_some());
        let delivered = matches!(
            tokio::time::timeout_at(deadline.into(), arrived).await,
            Ok(Ok(_))
        );
        delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_sending_device_gets_its_transaction_id_and_memory_is_bounded() {
        let ids = TxnIds::default();
        let phone = DeviceKey::new("@a:x", "PHONE");
        let laptop = DeviceKey::new("@a:x", "LAPTOP");
        ids.remember(&phone, vec![("$1".into(), Some("t1".into()))]);
        ids.remember(&laptop, vec![("$1".into(), None)]);
        assert_eq!(ids.get(&phone, "$1").as_deref(), Some("t1"));
        assert_eq!(ids.get(&laptop, "$1"), None);
        for i in 0..PER_DEVICE {
            ids.remember(&phone, vec![(format!("$n{i}").into(), None)]);
        }
        assert_eq!(ids.get(&phone, "$1"), None, "the oldest went first");
        assert_eq!(ids.by_device.get(&phone).unwrap().len(), PER_DEVICE);
    }

    #[tokio::test]
    async fn a_device_waits_for_its_poller_to_deliver_its_users_newest_event() {
        let ids = std::sync::Arc::new(TxnIds::default());
        let phone = DeviceKey::new("@a:x", "PHONE");
        ids.sent_by(&"@a:x".into(), "$0");
        assert!(
            ids.settle(&phone).await,
            "a device not yet polled is not waited for"
        );
        // The phone's poller applied a response.
        ids.remember(&phone, Vec::new());
        ids.sent_by(&"@a:x".into(), "$1");
        let waiting = tokio::spawn({
            let (ids, phone) = (std::sync::Arc::clone(&ids), phone.clone());
            async move { ids.settle(&phone).await }
        });
        ids.remember(&phone, vec![("$1".into(), Some("t1".into()))]);
        assert!(waiting.await.unwrap(), "the wait ends with the delivery");
        ids.sent_by(&"@a:x".into(), "$2");
        assert!(
            !ids.settle(&phone).await,
            "never delivered: given up after the wait"
        );
    }
}
