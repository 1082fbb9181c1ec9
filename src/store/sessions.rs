//! Which access token belongs to which device, as the homeserver last said.
//!
//! Every token is checked with `/whoami` once and then trusted for [`Sessions::ttl`];
//! rejected tokens are remembered for a shorter while so a client retrying a bad token
//! cannot make us hammer the homeserver. Keys are SHA-256 hashes: plaintext tokens are
//! not kept here.

use std::time::{Duration, Instant};

use std::sync::Arc;

use dashmap::DashMap;

use crate::types::DeviceKey;

/// Rejected hashes kept before expired ones are swept, so random tokens cannot grow the
/// map without bound.
const MAX_REJECTED: usize = 10_000;

pub enum Lookup {
    Known(DeviceKey),
    Rejected,
    Unknown,
}

pub struct Sessions {
    /// Per token hash being checked with the homeserver right now: concurrent first
    /// requests with one new token make one `/whoami`, not one each.
    checking: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
    known: DashMap<String, (DeviceKey, Instant)>,
    rejected: DashMap<String, Instant>,
    ttl: Duration,
    rejected_ttl: Duration,
}

impl Sessions {
    pub fn new(ttl: Duration, rejected_ttl: Duration) -> Self {
        Self {
            checking: DashMap::new(),
            known: DashMap::new(),
            rejected: DashMap::new(),
            ttl,
            rejected_ttl,
        }
    }

    pub fn lookup(&self, token_hash: &str) -> Lookup {
        let now = Instant::now();
        if let Some(entry) = self.known.get(token_hash) {
            if entry.1 > now {
                return Lookup::Known(entry.0.clone());
            }
        }
        if let Some(until) = self.rejected.get(token_hash) {
            if *until > now {
                return Lookup::Rejected;
            }
        }
        Lookup::Unknown
    }

    /// Waits until no other request is checking this token; look it up again after.
    pub async fn check(&self, token_hash: &str) -> CheckGuard<'_> {
        let lock = Arc::clone(
            self.checking
                .entry(token_hash.to_owned())
                .or_default()
                .value(),
        );
        let guard = lock.lock_owned().await;
        CheckGuard {
            sessions: self,
            hash: token_hash.to_owned(),
            _guard: Some(guard),
        }
    }

    pub fn accept(&self, token_hash: String, device: DeviceKey) {
        self.rejected.remove(&token_hash);
        self.known
            .insert(token_hash, (device, Instant::now() + self.ttl));
    }

    pub fn reject(&self, token_hash: String) {
        let now = Instant::now();
        if self.rejected.len() >= MAX_REJECTED {
            self.rejected.retain(|_, until| *until > now);
        }
        if self.rejected.len() < MAX_REJECTED {
            self.rejected
                .insert(token_hash.clone(), now + self.rejected_ttl);
        }
        self.known.remove(&token_hash);
    }

    /// The homeserver told a poller the token is dead.
    pub fn forget(&self, token_hash: &str) {
        self.known.remove(token_hash);
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
}
