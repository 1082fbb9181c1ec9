//! [`Homeserver`] over HTTP: a keep-alive pooled hyper client, TCP with rustls for
//! `https`, or a unix socket when `SYNCV3_SERVER` is a path.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{full, Body, Homeserver, MessagesCall, SyncCall, UpstreamError, WhoAmI};

/// Sent on every upstream request so homeserver logs show where the polling comes from.
const USER_AGENT: &str = concat!("slidesync/", env!("CARGO_PKG_VERSION"));

/// The longest error body we keep for a log line.
const ERROR_BODY_LIMIT: usize = 512;

/// Where the homeserver listens.
#[derive(Clone, Debug)]
pub enum Target {
    /// `http://` or `https://` base URL without a trailing slash.
    Url(Uri),
    /// A unix socket path.
    Unix(PathBuf),
}

enum Transport {
    Tcp(Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>),
    Unix(Client<hyperlocal::UnixConnector, Body>, PathBuf),
}

pub struct HttpHomeserver {
    transport: Transport,
    base: String,
    /// Timeout of calls other than `/sync` (whoami, versions).
    timeout: Duration,
}

/// HTTP or HTTPS (rustls), HTTP/1.1 or HTTP/2. Native roots let operators trust a
/// private CA; machines without a CA store fall back to the bundled web PKI roots.
pub fn https_connector() -> hyper_rustls::HttpsConnector<HttpConnector> {
    match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
        Ok(b) => b,
        Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots(),
    }
    .https_or_http()
    .enable_http1()
    .enable_http2()
    .build()
}

impl HttpHomeserver {
    pub fn new(target: Target, timeout: Duration) -> Self {
        let (transport, base) = match target {
            Target::Url(uri) => {
                let client = Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .build(https_connector());
                let base = uri.to_string().trim_end_matches('/').to_owned();
                (Transport::Tcp(client), base)
            }
            Target::Unix(path) => {
                let client = Client::builder(TokioExecutor::new()).build(hyperlocal::UnixConnector);
                (Transport::Unix(client, path), String::new())
            }
        };
        Self {
            transport,
            base,
            timeout,
        }
    }

    fn uri(&self, path_and_query: &str) -> Result<Uri, UpstreamError> {
        match &self.transport {
            Transport::Tcp(..) => format!("{}{}", self.base, path_and_query)
                .parse()
                .map_err(|e| UpstreamError::Invalid(format!("bad upstream URI: {e}"))),
            Transport::Unix(_, path) => Ok(hyperlocal::Uri::new(path, path_and_query).into()),
        }
    }

    /// Sends one request and returns the whole body, mapping statuses to errors.
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        token: Option<&str>,
        deadline: Duration,
    ) -> Result<Bytes, UpstreamError> {
        let mut req = Request::builder()
            .method(method)
            .uri(self.uri(path_and_query)?)
            .header(http::header::USER_AGENT, USER_AGENT);
        if let Some(token) = token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(full(Bytes::new()))
            .map_err(|e| UpstreamError::Invalid(e.to_string()))?;
        let exchange = async {
            let resp = self.send(req).await?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| UpstreamError::Transport(e.to_string()))?
                .to_bytes();
            Ok::<_, UpstreamError>((status, body))
        };
        let (status, body) = tokio::time::timeout(deadline, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout(deadline))??;
        match status {
            StatusCode::OK => Ok(body),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(UpstreamError::Unauthorized),
            other => Err(UpstreamError::Status {
                status: other.as_u16(),
                body: String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY_LIMIT)])
                    .into_owned(),
            }),
        }
    }
}

impl HttpHomeserver {
    async fn send(
        &self,
        req: Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, UpstreamError> {
        match &self.transport {
            Transport::Tcp(c) => c.request(req).await,
            Transport::Unix(c, _) => c.request(req).await,
        }
        .map_err(|e| UpstreamError::Transport(error_chain(&e)))
    }
}

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1), and
/// `Host`, which the client sets for the homeserver.
const HOP_BY_HOP: [http::header::HeaderName; 8] = [
    http::header::CONNECTION,
    http::header::HeaderName::from_static("keep-alive"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
}

/// hyper's errors hide the cause (connection refused, DNS) one level down.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Everything but RFC 3986 unreserved characters is escaped in a query value.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub fn encode_query(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, QUERY_VALUE).to_string()
}

#[async_trait]
impl Homeserver for HttpHomeserver {
    async fn whoami(&self, token: &str) -> Result<WhoAmI, UpstreamError> {
        let body = self
            .call(
                Method::GET,
                "/_matrix/client/v3/account/whoami",
                Some(token),
                self.timeout,
            )
            .await?;
        #[derive(serde::Deserialize)]
        struct Body {
            user_id: String,
            device_id: Option<String>,
        }
        let parsed: Body =
            sonic_rs::from_slice(&body).map_err(|e| UpstreamError::Invalid(e.to_string()))?;
        // Appservice and some admin tokens have no device; they cannot be polled per
        // device, so they are refused like an unknown token.
        let device_id = parsed.device_id.ok_or(UpstreamError::Unauthorized)?;
        Ok(WhoAmI {
            user_id: parsed.user_id,
            device_id,
        })
    }

    async fn sync(&self, call: SyncCall<'_>) -> Result<Bytes, UpstreamError> {
        let mut path = format!(
            "/_matrix/client/v3/sync?timeout={}&set_presence=offline&filter={}",
            call.timeout_ms,
            encode_query(call.filter)
        );
        if let Some(since) = call.since {
            path.push_str("&since=");
            path.push_str(&encode_query(since));
        }
        self.call(Method::GET, &path, Some(call.token), call.deadline)
            .await
    }

    async fn versions(&self) -> Result<Bytes, UpstreamError> {
        self.call(Method::GET, "/_matrix/client/versions", None, self.timeout)
            .await
    }

    async fn messages(&self, call: MessagesCall<'_>) -> Result<Bytes, UpstreamError> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&from={}&limit={}",
            encode_query(call.room_id),
            encode_query(call.from),
            call.limit
        );
        self.call(Method::GET, &path, Some(call.token), self.timeout)
            .await
    }

    async fn keys_changes(
        &self,
        token: &str,
        from: &str,
        to: &str,
    ) -> Result<Bytes, UpstreamError> {
        let path = format!(
            "/_matrix/client/v3/keys/changes?from={}&to={}",
            encode_query(from),
            encode_query(to)
        );
        self.call(Method::GET, &path, Some(token), self.timeout)
            .await
    }

    async fn forward(&self, req: Request<Body>) -> Result<http::Response<Body>, UpstreamError> {
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = self.uri(path)?;
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(http::header::HOST);
        // Only the response head is bounded: a media download may stream for longer.
        let resp = tokio::time::timeout(self.timeout, self.send(Request::from_parts(parts, body)))
            .await
            .map_err(|_| UpstreamError::Timeout(self.timeout))??;
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(http::Response::from_parts(
            parts,
            body.map_err(Into::into).boxed_unsync(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode_query("{\"a\":1}"), "%7B%22a%22%3A1%7D");
        assert_eq!(encode_query("s72_1~x.y"), "s72_1~x.y");
    }
}
