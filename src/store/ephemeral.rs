//! A room's read receipts and typing users: data about the room that is not in its
//! timeline, changes often, and is read per viewer (private receipts).
//!
//! Kept apart from [`super::room::RoomSnapshot`] so a receipt does not copy the room's
//! summary; published the same way (an immutable version behind an atomic pointer,
//! written under the room's writer lock).

use std::sync::Arc;

use imbl::{HashMap, Vector};

use crate::event::Receipt;
use crate::types::{DeviceKey, UserId};

/// Receipt changes remembered per room: a connection further behind gets the receipts
/// of the events it is shown instead of every change.
const RECEIPT_LOG: usize = 256;
/// Threads with a receipt kept per user and room, per kind (public, private): the
/// homeserver passes on any thread ID a user sends, so this bounds what one user can
/// make the proxy keep. Receipts for further threads are not kept.
pub const MAX_THREADS: usize = 16;

/// (user, private, thread): one receipt each; the newest wins.
pub type ReceiptKey = (UserId, bool, Option<Box<str>>);

#[derive(Clone, Debug, Default)]
pub struct RoomEphemeral {
    pub receipts: Receipts,
    pub typing: Typing,
    /// Counts this room's changes; receipts and typing carry the value they changed at.
    pub seq: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Receipts {
    latest: HashMap<ReceiptKey, (Arc<Receipt>, u64)>,
    /// Event ID → the receipts on it: initial receipts are those on the events shown.
    by_event: HashMap<Box<str>, Vector<ReceiptKey>>,
    /// (user, private) → their threaded receipts' threads, at most [`MAX_THREADS`].
    threads: HashMap<(UserId, bool), Vector<Box<str>>>,
    /// (seq, key) of the newest changes, oldest first.
    log: Vector<(u64, ReceiptKey)>,
    /// The log holds every change after this seq.
    log_start: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Typing {
    pub users: Arc<[UserId]>,
    /// The room's `seq` when `users` last changed (0: never).
    pub seq: u64,
    /// The poller this room takes typing from (see [`RoomEphemeral::set_typing`]).
    pub owner: Option<DeviceKey>,
}

impl RoomEphemeral {
    /// Keeps `receipt` if it is newer than the one of its key. Returns whether it was.
    pub fn set_receipt(&mut self, receipt: Receipt) -> bool {
        let key: ReceiptKey = (
            receipt.user_id.clone(),
            receipt.private,
            receipt.thread_id.clone(),
        );
        let r = &mut self.receipts;
        match r.latest.get(&key) {
            // A lagging poller may deliver a receipt the user has moved on from.
            Some((old, _)) if old.event_id == receipt.event_id || old.ts > receipt.ts => {
                return false
            }
            Some((old, _)) => {
                let old_event = old.event_id.clone();
                if let Some(keys) = r.by_event.get_mut(&old_event) {
                    keys.retain(|k| *k != key);
                    if keys.is_empty() {
                        r.by_event.remove(&old_event);
                    }
                }
            }
            None => {
                if let Some(thread) = &receipt.thread_id {
                    let threads = r.threads.entry((key.0.clone(), key.1)).or_default();
                    if threads.len() >= MAX_THREADS {
                        return false;
                    }
                    threads.push_back(thread.clone());
                }
            }
        }
        self.seq += 1;
        r.by_event
            .entry(receipt.event_id.clone())
            .or_default()
            .push_back(key.clone());
        r.latest.insert(key.clone(), (Arc::new(receipt), self.seq));
        r.log.push_back((self.seq, key));
        if r.log.len() > RECEIPT_LOG {
            if let Some((seq, _)) = r.log.pop_front() {
                r.log_start = seq;
            }
        }
        true
    }

    /// Takes typing from `device` when the room has no typing source yet or it is that
    /// device: a lagging poller's old typing would otherwise make typing flicker.
    /// Returns whether the typing users changed.
    pub fn set_typing(&mut self, device: &DeviceKey, users: Vec<UserId>) -> bool {
        match &self.typing.owner {
            Some(owner) if owner != device => return false,
            Some(_) => {}
            None => self.typing.owner = Some(device.clone()),
        }
        if *self.typing.users == users[..] {
            return false;
        }
        self.seq += 1;
        self.typing.users = users.into();
        self.typing.seq = self.seq;
        true
    }

    /// Forgets the typing source if it is one of `user`'s devices (it left, or its
    /// poller stopped), with what it reported: nobody reports that typing ends anymore.
    /// Returns whether the typing users changed.
    pub fn release_typing(&mut self, owner: impl Fn(&DeviceKey) -> bool) -> bool {
        if !self.typing.owner.as_ref().is_some_and(owner) {
            return false;
        }
        self.typing.owner = None;
        if self.typing.users.is_empty() {
            return false;
        }
        self.seq += 1;
        self.typing.users = Arc::new([]);
        self.typing.seq = self.seq;
        true
    }
}

impl Receipts {
    fn visible(viewer: &str, r: &Receipt) -> bool {
        !r.private || *r.user_id == *viewer
    }

    /// The receipts `viewer` may see on these events, plus all of the viewer's own.
    pub fn initial<'a>(
        &self,
        events: impl IntoIterator<Item = &'a str>,
        viewer: &str,
    ) -> Vec<Arc<Receipt>> {
        let mut keys: std::collections::HashSet<&ReceiptKey> = std::collections::HashSet::new();
        for event in events {
            keys.extend(self.by_event.get(event).into_iter().flatten());
        }
        let own: Vec<ReceiptKey> = [false, true]
            .into_iter()
            .flat_map(|private| {
                let threads = self.threads.get(&(viewer.into(), private));
                std::iter::once(None)
                    .chain(threads.into_iter().flatten().cloned().map(Some))
                    .map(move |t| (UserId::from(viewer), private, t))
            })
            .collect();
        keys.extend(own.iter());
        let mut out: Vec<Arc<Receipt>> = keys
            .into_iter()
            .filter_map(|key| self.latest.get(key))
            .filter(|(r, _)| Self::visible(viewer, r))
            .map(|(r, _)| Arc::clone(r))
            .collect();
        // Deterministic output for the same state (retransmits compare responses).
        out.sort_by(|a, b| {
            (&a.event_id, &a.user_id, a.private, &a.thread_id).cmp(&(
                &b.event_id,
                &b.user_id,
                b.private,
                &b.thread_id,
            ))
        });
        out
    }

    /// The receipts `viewer` may see that changed after `seq`, or `None` when the log no
    /// longer reaches back that far.
    pub fn since(&self, seq: u64, viewer: &str) -> Option<Vec<Arc<Receipt>>> {
        if seq < self.log_start {
            return None;
        }
        let mut out: Vec<Arc<Receipt>> = Vec::new();
        for (at, key) in self.log.iter().rev().take_while(|(at, _)| *at > seq) {
            let Some((r, set_at)) = self.latest.get(key) else {
                continue;
            };
            // A key changed twice appears twice in the log; its newest entry says it.
            if set_at == at && Self::visible(viewer, r) {
                out.push(Arc::clone(r));
            }
        }
        out.reverse();
        Some(out)
    }

    /// Every receipt, for tests and for nothing else (it is O(room)).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.latest.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(user: &str, event: &str, private: bool, thread: Option<&str>, ts: u64) -> Receipt {
        Receipt {
            event_id: event.into(),
            user_id: user.into(),
            private,
            thread_id: thread.map(Into::into),
            ts,
        }
    }

    fn events(rs: &[Arc<Receipt>]) -> Vec<(String, String)> {
        rs.iter()
            .map(|r| (r.user_id.to_string(), r.event_id.to_string()))
            .collect()
    }

    #[test]
    fn the_newest_receipt_per_user_kind_and_thread_wins() {
        let mut room = RoomEphemeral::default();
        assert!(room.set_receipt(receipt("@a", "$1", false, None, 1)));
        assert!(room.set_receipt(receipt("@a", "$2", false, None, 2)));
        assert!(
            !room.set_receipt(receipt("@a", "$1", false, None, 1)),
            "a lagging poller's older receipt"
        );
        assert!(room.set_receipt(receipt("@a", "$1", false, Some("$t"), 3)));
        assert_eq!(room.receipts.len(), 2);
        assert!(room.receipts.initial(["$1"], "@b").len() == 1);
        assert!(room.receipts.by_event.get("$1").unwrap().len() == 1);
    }

    #[test]
    fn private_receipts_show_only_to_their_owner() {
        let mut room = RoomEphemeral::default();
        room.set_receipt(receipt("@a", "$1", true, None, 1));
        room.set_receipt(receipt("@b", "$1", false, None, 1));
        assert_eq!(
            events(&room.receipts.initial(["$1"], "@b")),
            [("@b".into(), "$1".into())]
        );
        assert_eq!(room.receipts.initial(["$1"], "@a").len(), 2);
        assert_eq!(room.receipts.since(0, "@c").unwrap().len(), 1);
        assert_eq!(room.receipts.since(0, "@a").unwrap().len(), 2);
    }

    #[test]
    fn own_receipts_come_even_off_the_shown_events() {
        let mut room = RoomEphemeral::default();
        room.set_receipt(receipt("@a", "$old", false, None, 1));
        room.set_receipt(receipt("@a", "$older", false, Some("$t"), 1));
        room.set_receipt(receipt("@b", "$old", false, None, 1));
        let own = events(&room.receipts.initial(["$new"], "@a"));
        assert_eq!(
            own,
            [("@a".into(), "$old".into()), ("@a".into(), "$older".into())]
        );
    }

    #[test]
    fn the_log_gives_changes_once_and_gives_up_when_truncated() {
        let mut room = RoomEphemeral::default();
        room.set_receipt(receipt("@a", "$1", false, None, 1));
        let seen = room.seq;
        room.set_receipt(receipt("@a", "$2", false, None, 2));
        room.set_receipt(receipt("@a", "$3", false, None, 3));
        assert_eq!(
            events(&room.receipts.since(seen, "@x").unwrap()),
            [("@a".into(), "$3".into())]
        );
        for i in 0..RECEIPT_LOG as u64 + 1 {
            room.set_receipt(receipt("@b", &format!("${i}"), false, None, 10 + i));
        }
        assert!(room.receipts.since(seen, "@x").is_none());
    }

    #[test]
    fn threads_per_user_are_bounded() {
        let mut room = RoomEphemeral::default();
        for i in 0..MAX_THREADS + 3 {
            room.set_receipt(receipt("@a", "$1", false, Some(&format!("$t{i}")), 1));
        }
        assert_eq!(room.receipts.len(), MAX_THREADS);
    }

    #[test]
    fn typing_comes_from_its_first_poller_until_released() {
        let mut room = RoomEphemeral::default();
        let (a, b) = (DeviceKey::new("@a", "A"), DeviceKey::new("@b", "B"));
        assert!(room.set_typing(&a, vec!["@x".into()]));
        assert!(!room.set_typing(&b, vec![]), "b lags behind");
        assert_eq!(&*room.typing.users, [UserId::from("@x")]);
        assert!(room.release_typing(|d| *d == a));
        assert!(room.typing.users.is_empty());
        assert!(room.set_typing(&b, vec!["@y".into()]), "b took over");
    }
}
