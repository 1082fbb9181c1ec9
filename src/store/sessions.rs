//! Which access token belongs to which device, as the homeserver last said.
//!
//! Every token is checked with `/whoami` once and then trusted for a while (the session TTL);
//! rejected tokens are remembered for a shorter while so a client retrying a bad token
//! cannot make us hammer the homeserver. Keys are SHA-256 hashes: plaintext tokens are
//! not kept here.
//!
//! Clients choose the tokens, so every map here is bounded, and pruned in O(1) amortized
//! time per insert, never by scanning it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::types::DeviceKey;

/// Accepted tokens remembered; past it the oldest is forgotten (and checked again with
/// the homeserver if it comes back).
const MAX_KNOWN: usize = 100_000;
/// Rejected tokens remembered; past it the oldest is forgotten.
const MAX_REJECTED: usize = 10_000;
/// Distinct tokens checked with the homeserver at once; past it a new token is told to
/// retry, so random tokens cannot queue up `/whoami` calls without bound.
const MAX_CHECKING: usize = 1_000;

pub enum Lookup {
    Known(DeviceKey),
    Rejected,
    Unknown,
}

/// Too many new tokens are being checked at once.
#[derive(Debug)]
pub struct Busy;

pub struct Sessions {
    /// Per token hash being checked with the homeserver right now: concurrent first
    /// requests with one new token make one `/whoami`, not one each.
    checking: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
    known: Expiring<DeviceKey>,
    rejected: Expiring<()>,
}

impl Sessions {
    pub fn new(ttl: Duration, rejected_ttl: Duration) -> Self {
        Self {
            checking: DashMap::new(),
            known: Expiring::new(ttl, MAX_KNOWN),
            rejected: Expiring::new(rejected_ttl, MAX_REJECTED),
        }
    }

    pub fn lookup(&self, token_hash: &str) -> Lookup {
        if let Some(device) = self.known.get(token_hash) {
            return Lookup::Known(device);
        }
        if self.rejected.get(token_hash).is_some() {
            return Lookup::Rejected;
        }
        Lookup::Unknown
    }

    /// Waits until no other request is checking this token; look it up again after.
    /// Refuses a new token while [`MAX_CHECKING`] others are being checked.
    pub async fn check(&self, token_hash: &str) -> Result<CheckGuard<'_>, Busy> {
        // Racing requests can overshoot the bound by a few: it bounds memory and calls,
        // it need not be exact.
        if !self.checking.contains_key(token_hash) && self.checking.len() >= MAX_CHECKING {
            return Err(Busy);
        }
        let lock = Arc::clone(
            self.checking
                .entry(token_hash.to_owned())
                .or_default()
                .value(),
        );
        let guard = lock.lock_owned().await;
        Ok(CheckGuard {
            sessions: self,
            hash: token_hash.to_owned(),
            _guard: Some(guard),
        })
    }

    pub fn accept(&self, token_hash: String, device: DeviceKey) {
        self.rejected.remove(&token_hash);
        self.known.insert(token_hash, device);
    }

    pub fn reject(&self, token_hash: String) {
        self.known.remove(&token_hash);
        self.rejected.insert(token_hash, ());
    }

    /// The homeserver told a poller the token is dead.
    pub fn forget(&self, token_hash: &str) {
        self.known.remove(token_hash);
    }
}

/// A map whose entries expire a fixed time after insertion, holding at most `capacity`.
///
/// Each insert also goes to the back of a queue. With one TTL for all entries, insertion
/// order is expiry order, so an insert prunes from the front: expired entries, and the
/// oldest ones while over capacity. That costs O(1) amortized and never scans the map.
struct Expiring<V> {
    /// Read without `order`'s lock: lookups, the hot path, touch only their shard.
    map: DashMap<String, (V, Instant)>,
    /// Every insert's expiry and key, oldest first. A key inserted again has a newer
    /// place further back; popping its older place leaves it alone (the expiries
    /// differ). Holds at most `capacity` places, so the map holds at most that many keys.
    /// A `parking_lot` mutex, taken only by inserts and never across an `.await`: it
    /// keeps the map and the queue in step.
    order: Mutex<VecDeque<(Instant, String)>>,
    ttl: Duration,
    capacity: usize,
}

impl<V: Clone> Expiring<V> {
    fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            map: DashMap::new(),
            order: Mutex::new(VecDeque::new()),
            ttl,
            capacity,
        }
    }

    fn get(&self, key: &str) -> Option<V> {
        let now = Instant::now();
        self.map
            .get(key)
            .filter(|entry| entry.1 > now)
            .map(|entry| entry.0.clone())
    }

    fn insert(&self, key: String, value: V) {
        self.insert_at(key, value, Instant::now());
    }

    /// [`Self::insert`] at a given time, so tests need no clock.
    fn insert_at(&self, key: String, value: V, now: Instant) {
        let until = now + self.ttl;
        let mut order = self.order.lock();
        self.map.insert(key.clone(), (value, until));
        order.push_back((until, key));
        while let Some((until, _)) = order.front() {
            if *until > now && order.len() <= self.capacity {
                break;
            }
            if let Some((until, key)) = order.pop_front() {
                self.map.remove_if(&key, |_, entry| entry.1 == until);
            }
        }
    }

    fn remove(&self, key: &str) {
        self.map.remove(key);
    }
}

/// Held while a token is checked with the homeserver.
pub struct CheckGuard<'a> {
    sessions: &'a Sessions,
    hash: String,
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for CheckGuard<'_> {
    fn drop(&mut self) {
        self._guard = None;
        // The last one out removes the entry, so the map holds only tokens in flight.
        self.sessions
            .checking
            .remove_if(&self.hash, |_, lock| Arc::strong_count(lock) == 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_replaces_acceptance_and_expires() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_millis(0));
        s.accept("h".into(), DeviceKey::new("@a:x", "D"));
        assert!(matches!(s.lookup("h"), Lookup::Known(d) if &*d.device_id == "D"));
        s.reject("h".into());
        assert!(
            matches!(s.lookup("h"), Lookup::Unknown),
            "a zero TTL rejection is already over"
        );
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(60));
        s.reject("h".into());
        assert!(matches!(s.lookup("h"), Lookup::Rejected));
    }

    #[test]
    fn token_caches_stay_within_their_bounds() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(60));
        for i in 0..MAX_KNOWN + 10 {
            s.accept(format!("k{i}"), DeviceKey::new("@a:x", "D"));
        }
        for i in 0..MAX_REJECTED + 10 {
            s.reject(format!("r{i}"));
        }
        assert_eq!(s.known.map.len(), MAX_KNOWN);
        assert_eq!(s.rejected.map.len(), MAX_REJECTED);
        assert!(matches!(s.lookup("k0"), Lookup::Unknown), "the oldest went");
        let newest = format!("r{}", MAX_REJECTED + 9);
        assert!(matches!(s.lookup(&newest), Lookup::Rejected));
    }

    #[test]
    fn expired_entries_are_pruned_by_later_inserts() {
        let cache = Expiring::new(Duration::from_secs(60), 100);
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        for i in 0..10 {
            cache.insert_at(format!("old{i}"), (), at(0));
        }
        cache.insert_at("again".into(), (), at(0));
        cache.insert_at("again".into(), (), at(30));
        cache.insert_at("new".into(), (), at(61));
        let mut left: Vec<String> = cache.map.iter().map(|e| e.key().clone()).collect();
        left.sort();
        assert_eq!(left, ["again", "new"], "re-inserting renewed 'again'");
        assert_eq!(cache.order.lock().len(), 2);
    }

    #[tokio::test]
    async fn only_so_many_new_tokens_are_checked_at_once() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(60));
        let mut guards = Vec::new();
        for i in 0..MAX_CHECKING {
            guards.push(s.check(&format!("t{i}")).await.unwrap());
        }
        assert!(s.check("one more").await.is_err());
        drop(guards);
        assert!(
            s.checking.is_empty(),
            "finished checks leave nothing behind"
        );
        assert!(s.check("one more").await.is_ok());
    }
}
