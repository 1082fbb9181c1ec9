//! Who is asking: the access token, checked with the homeserver.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;

use super::Api;
use crate::error::MatrixError;
use crate::ingest::pollers::PollState;
use crate::ops::metrics::Held;
use crate::store::sessions::Lookup;
use crate::store::tokens::token_hash;
use crate::store::users::UserState;
use crate::types::DeviceKey;
use crate::upstream::UpstreamError;

/// The token from `Authorization: Bearer` or, failing that, `?access_token=`.
pub fn token<'a>(
    headers: &'a HeaderMap,
    query: &'a HashMap<String, String>,
) -> Result<&'a str, MatrixError> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| MatrixError::unknown_token())?;
        return match value.strip_prefix("Bearer ") {
            Some(t) if !t.trim().is_empty() => Ok(t.trim()),
            _ => Err(MatrixError::missing_token()),
        };
    }
    match query.get("access_token") {
        Some(t) if !t.is_empty() => Ok(t),
        _ => Err(MatrixError::missing_token()),
    }
}

/// Requests of one user that may wait for the user's first poll at once.
const MAX_FIRST_POLL_WAITERS: usize = 32;

impl Api {
    /// Maps a token to its device: from the cache, else by asking `/whoami` once.
    pub async fn authenticate(&self, token: &str) -> Result<DeviceKey, MatrixError> {
        let hash = token_hash(token);
        if let Some(known) = self.cached(&hash) {
            return known;
        }
        let _checking = self.sessions.check(&hash).await.map_err(|_| {
            MatrixError::new(
                http::StatusCode::TOO_MANY_REQUESTS,
                "M_LIMIT_EXCEEDED",
                "Too many new access tokens are being checked with the homeserver; retry shortly",
            )
        })?;
        // Another request may have checked it while this one waited.
        if let Some(known) = self.cached(&hash) {
            return known;
        }
        match self.upstream.whoami(token).await {
            Ok(who) => {
                let device = DeviceKey::new(who.user_id, who.device_id);
                self.persist
                    .insert_token(&hash, &self.cipher.encrypt(token), &device)
                    .await
                    .map_err(|e| {
                        tracing::error!(error = %e, "cannot store an access token");
                        MatrixError::new(
                            http::StatusCode::SERVICE_UNAVAILABLE,
                            "M_UNKNOWN",
                            "The proxy's database is unavailable; try again shortly",
                        )
                    })?;
                self.sessions.accept(hash, device.clone());
                Ok(device)
            }
            Err(UpstreamError::Unauthorized) => {
                self.sessions.reject(hash);
                Err(MatrixError::unknown_token())
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot check an access token");
                Err(MatrixError::upstream(format!(
                    "Cannot verify the access token with the homeserver: {e}"
                )))
            }
        }
    }

    fn cached(&self, token_hash: &str) -> Option<Result<DeviceKey, MatrixError>> {
        match self.sessions.lookup(token_hash) {
            Lookup::Known(device) => Some(Ok(device)),
            Lookup::Rejected => Some(Err(MatrixError::unknown_token())),
            Lookup::Unknown => None,
        }
    }

    /// Makes sure the device is polled and its user's rooms are known. A new device of a
    /// user whose rooms are known is answered at once; the first device of a user waits
    /// for its first poll, at most [`Api::first_sync_wait`].
    pub async fn ready_user(
        &self,
        device: &DeviceKey,
        token: &str,
    ) -> Result<Arc<UserState>, MatrixError> {
        let user = self.store.user_or_insert(&device.user_id);
        let mut state = self.pollers.ensure(device, token);
        if user.is_ready() {
            return Ok(user);
        }
        let Some(_waiting) = user.wait_slot(MAX_FIRST_POLL_WAITERS) else {
            return Err(MatrixError::new(
                http::StatusCode::TOO_MANY_REQUESTS,
                "M_LIMIT_EXCEEDED",
                "Too many requests are waiting for this account's first sync; retry once \
                 one of them is answered",
            ));
        };
        self.metrics
            .payloads
            .get_or_create(&[("payload_type", "V3EnsurePolling")])
            .inc();
        let _pending = Held::new(&self.metrics.pending_ensure_polling);
        let first_poll = async {
            let polled = state.wait_for(|s| *s != PollState::Starting).await;
            polled.map(|s| *s)
        };
        match tokio::time::timeout(self.first_sync_wait, first_poll).await {
            Ok(Ok(s)) => match s {
                PollState::Running => Ok(Arc::clone(&user)),
                PollState::Expired => Err(MatrixError::unknown_token()),
                PollState::Failed => Err(MatrixError::upstream(
                    "The homeserver could not be synced: every /sync for this device failed \
                     for too long. Try again later",
                )),
                PollState::Starting => unreachable!("waited for another state"),
            },
            // The poller is gone without a word: its token was dropped.
            Ok(Err(_)) => Err(MatrixError::unknown_token()),
            Err(_) => Err(MatrixError::new(
                http::StatusCode::GATEWAY_TIMEOUT,
                "M_UNKNOWN",
                "The homeserver has not finished this device's first sync yet; it goes on \
                 in the background, try again shortly",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_wins_and_a_missing_token_is_reported() {
        let mut headers = HeaderMap::new();
        let mut query = HashMap::new();
        assert_eq!(
            token(&headers, &query).unwrap_err().errcode,
            "M_MISSING_TOKEN"
        );
        query.insert("access_token".to_owned(), "q".to_owned());
        assert_eq!(token(&headers, &query).unwrap(), "q");
        headers.insert(http::header::AUTHORIZATION, "Bearer h".parse().unwrap());
        assert_eq!(token(&headers, &query).unwrap(), "h");
        headers.insert(http::header::AUTHORIZATION, "Basic xyz".parse().unwrap());
        assert_eq!(
            token(&headers, &query).unwrap_err().errcode,
            "M_MISSING_TOKEN"
        );
    }
}
