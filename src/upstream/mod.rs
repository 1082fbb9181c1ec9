//! The homeserver: the only code that talks to it.
//!
//! [`Homeserver`] is one of the two trait seams (the other is the store): production uses
//! [`http::HttpHomeserver`], tests script a fake.

pub mod http;
pub mod wire;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

/// A streamed HTTP body, for requests and responses passed through unchanged.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body that is already in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Why an upstream call failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The homeserver rejected the access token (401 or 403): the token is dead.
    #[error("the homeserver rejected the access token")]
    Unauthorized,
    /// The homeserver answered with another error status.
    #[error("the homeserver answered {status}: {body}")]
    Status { status: u16, body: String },
    /// The request did not complete in time.
    #[error("the homeserver did not answer within {0:?}")]
    Timeout(Duration),
    /// Connecting or talking to the homeserver failed.
    #[error("cannot reach the homeserver: {0}")]
    Transport(String),
    /// The homeserver's answer was not what the spec says.
    #[error("the homeserver sent an invalid response: {0}")]
    Invalid(String),
}

/// Who a token belongs to, from `/whoami`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhoAmI {
    pub user_id: String,
    pub device_id: String,
}

/// One `/sync` v2 call.
#[derive(Clone, Debug)]
pub struct SyncCall<'a> {
    pub token: &'a str,
    pub since: Option<&'a str>,
    /// The long-poll `timeout` query parameter in milliseconds.
    pub timeout_ms: u64,
    /// The `filter` query parameter (inline JSON).
    pub filter: &'a str,
    /// How long to wait for the whole answer.
    pub deadline: Duration,
}

/// One backwards page of a room's history: `/rooms/{room_id}/messages?dir=b`.
#[derive(Clone, Debug)]
pub struct MessagesCall<'a> {
    pub token: &'a str,
    pub room_id: &'a str,
    /// Where to start: a `prev_batch` or an earlier page's `end`.
    pub from: &'a str,
    pub limit: usize,
}

#[async_trait]
pub trait Homeserver: Send + Sync + 'static {
    /// `GET /_matrix/client/v3/account/whoami`.
    async fn whoami(&self, token: &str) -> Result<WhoAmI, UpstreamError>;
    /// `GET /_matrix/client/v3/sync`: the raw JSON body.
    async fn sync(&self, call: SyncCall<'_>) -> Result<Bytes, UpstreamError>;
    /// `GET /_matrix/client/versions`: the raw JSON body.
    async fn versions(&self) -> Result<Bytes, UpstreamError>;
    /// `GET /_matrix/client/v3/rooms/{room_id}/messages` backwards: the raw JSON body.
    async fn messages(&self, call: MessagesCall<'_>) -> Result<Bytes, UpstreamError>;
    /// `GET /_matrix/client/v3/keys/changes?from=&to=`: the raw JSON body (`changed`
    /// and `left`, as a `/sync` `device_lists`).
    async fn keys_changes(&self, token: &str, from: &str, to: &str)
        -> Result<Bytes, UpstreamError>;
    /// Passes a client request through unchanged (but for hop-by-hop headers) and
    /// streams the answer back.
    async fn forward(
        &self,
        req: ::http::Request<Body>,
    ) -> Result<::http::Response<Body>, UpstreamError>;
}
