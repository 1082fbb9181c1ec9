//! Which device sent which event, under which transaction ID.
//!
//! A homeserver puts `unsigned.transaction_id` only into the sending device's own
//! `/sync`, and clients match their local echo by it. Events are stored once for
//! everyone (whichever poller delivers first), so the shared copy never carries it; this
//! remembers it per device, to be added when that device's connections serve the event.
//!
//! In memory only: the ID matters for the few seconds a local echo waits, and a restart
//! makes every connection start over anyway.

use std::collections::VecDeque;

use dashmap::DashMap;

use crate::types::DeviceKey;

/// Transaction IDs remembered per device, newest kept: far more than a client sends
/// between two of its requests.
pub const PER_DEVICE: usize = 64;

#[derive(Default)]
pub struct TxnIds {
    /// Shard locks are held only to push or scan one device's short queue.
    by_device: DashMap<DeviceKey, VecDeque<(Box<str>, Box<str>)>>,
}

impl TxnIds {
    /// Remembers that `device` sent these (event ID, transaction ID) pairs.
    pub fn remember(&self, device: &DeviceKey, sent: Vec<(Box<str>, Box<str>)>) {
        if sent.is_empty() {
            return;
        }
        let mut ids = self.by_device.entry(device.clone()).or_default();
        for pair in sent {
            if !ids.iter().any(|(event, _)| *event == pair.0) {
                ids.push_back(pair);
            }
        }
        while ids.len() > PER_DEVICE {
            ids.pop_front();
        }
    }

    /// The transaction ID `device` sent `event_id` with, if it did.
    pub fn get(&self, device: &DeviceKey, event_id: &str) -> Option<Box<str>> {
        let ids = self.by_device.get(device)?;
        ids.iter()
            .rev()
            .find(|(event, _)| &**event == event_id)
            .map(|(_, txn)| txn.clone())
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
        ids.remember(&phone, vec![("$1".into(), "t1".into())]);
        assert_eq!(ids.get(&phone, "$1").as_deref(), Some("t1"));
        assert_eq!(ids.get(&laptop, "$1"), None);
        for i in 0..PER_DEVICE {
            ids.remember(&phone, vec![(format!("$n{i}").into(), "t".into())]);
        }
        assert_eq!(ids.get(&phone, "$1"), None, "the oldest went first");
        assert_eq!(ids.by_device.get(&phone).unwrap().len(), PER_DEVICE);
    }
}
