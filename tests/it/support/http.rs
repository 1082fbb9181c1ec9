//! A small JSON-over-HTTP client for tests: plain `http://` only, one call per request,
//! failures panic with the server's answer.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// Long enough for a slow CI machine, short enough that a hang fails the test instead of
/// stalling the job until its global timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A JSON HTTP client.
///
/// Pooled connections are driven by tasks on the runtime that opened them, and each
/// `#[tokio::test]` has its own runtime: make one client per test, never share one
/// through a `static`. Its timeout runs on tokio's clock: under a paused clock
/// (`start_paused`) it fires as soon as the runtime waits on the network, so tests that
/// talk to real servers keep the real clock.
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

/// A response with its whole body read.
pub struct TestResponse {
    pub status: StatusCode,
    pub body: Bytes,
}

impl HttpClient {
    pub fn new() -> Self {
        Self {
            inner: Client::builder(TokioExecutor::new()).build_http(),
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// Sends one request (JSON `body` if given, `Authorization: Bearer` if `token` is)
    /// and reads the whole response. Panics if the server cannot be reached or does not
    /// answer within the timeout; any HTTP status is returned as is.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
        body: Option<&sonic_rs::Value>,
    ) -> TestResponse {
        let what = format!("{method} {url}");
        match self.try_request(method, url, token, body).await {
            Ok(response) => response,
            Err(err) => panic!("{what}: {err}"),
        }
    }

    /// [`Self::request`] with more headers.
    pub async fn request_with_headers(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
        body: Option<&sonic_rs::Value>,
        headers: &[(&str, &str)],
    ) -> TestResponse {
        let what = format!("{method} {url}");
        match self.send(method, url, token, body, headers).await {
            Ok(response) => response,
            Err(err) => panic!("{what}: {err}"),
        }
    }

    /// Like [`Self::request`], but a transport failure or timeout is an `Err` (for
    /// polling a server that is still starting).
    pub async fn try_request(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
        body: Option<&sonic_rs::Value>,
    ) -> Result<TestResponse, String> {
        self.send(method, url, token, body, &[]).await
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
        body: Option<&sonic_rs::Value>,
        headers: &[(&str, &str)],
    ) -> Result<TestResponse, String> {
        let mut builder = Request::builder()
            .method(method)
            .uri(url)
            .header(header::ACCEPT, "application/json");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if let Some(token) = token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let payload = match body {
            Some(value) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(sonic_rs::to_vec(value).map_err(|e| format!("encode body: {e}"))?)
            }
            None => Bytes::new(),
        };
        let request = builder
            .body(Full::new(payload))
            .map_err(|e| format!("build request: {e}"))?;

        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| format!("send: {e:?}"))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("read body: {e}"))?
                .to_bytes();
            Ok(TestResponse { status, body })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no complete answer within {:?}", self.timeout))?
    }
}

/// Percent-encodes a URL path segment or query value: room ids hold `!` and `:`, user
/// ids `@`, filters `{`.
pub fn encode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl TestResponse {
    /// The body as JSON; panics with the body text if it is not JSON.
    pub fn json(&self) -> sonic_rs::Value {
        sonic_rs::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {self:?}"))
    }

    /// The body as text, lossily, for assertion messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl fmt::Debug for TestResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.text())
    }
}
