//! The HTTP surface: routing, body limits, CORS, authentication, and the wire dialects
//! over the one engine in `conn`.

pub mod auth;
pub mod body;
pub mod discovery;
pub mod json;
pub mod metrics;
pub mod msc3575;
pub mod msc4186;
pub mod response;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use sonic_rs::JsonValueMutTrait;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::conn::request::Dialect;
use crate::conn::{ConnKey, Conns, Wait};
use crate::error::MatrixError;
use crate::ingest::pollers::Pollers;
use crate::ops::metrics::Held;
use crate::store::persist::Persist;
use crate::store::sessions::Sessions;
use crate::store::tokens::TokenCipher;
use crate::store::Store;
use crate::upstream::{full, Homeserver};

use self::metrics::{ApiMetrics, SLOW_REQUEST};

pub const MSC3575_PATH: &str = "/_matrix/client/unstable/org.matrix.msc3575/sync";
pub const MSC4186_PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
/// Request bodies larger than this get 413: a sliding sync request is a few KiB.
pub const MAX_BODY: usize = 1024 * 1024;
/// Long-poll time when an MSC3575 request gives none (the Go proxy's), and the most a
/// request may ask for. MSC4186 answers at once by default, as Synapse does.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_TIMEOUT: Duration = Duration::from_secs(120);

pub use crate::upstream::Body;

pub struct Api {
    pub store: Arc<Store>,
    pub conns: Arc<Conns>,
    pub sessions: Arc<Sessions>,
    pub pollers: Arc<Pollers>,
    pub upstream: Arc<dyn Homeserver>,
    pub persist: Arc<dyn Persist>,
    pub cipher: TokenCipher,
    /// `SYNCV3_SERVER` as shown in `/client/server.json`.
    pub server: String,
    /// `SYNCV3_PUBLIC_URL` (see `discovery`).
    pub public_url: Option<String>,
    /// Whether the public listener serves HTTPS.
    pub https: bool,
    /// A request body must have arrived whole by then, else 408: a client trickling its
    /// body would otherwise hold a task and a buffer for as long as it likes.
    pub body_timeout: Duration,
    /// The longest a request waits for its device's first poll (then 504; the poll goes
    /// on and a retry waits for the same one).
    pub first_sync_wait: Duration,
    pub metrics: ApiMetrics,
}

/// Where a sync request's time went, handed from the handler to the access line.
#[derive(Clone, Copy)]
struct Timing {
    setup: Duration,
    processing: Duration,
    /// The long-poll time the request allowed: waiting that long is not slowness.
    wait: Duration,
}

impl Api {
    pub async fn handle<B>(self: Arc<Self>, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        // One access-log line per request with the Go proxy's field names; the sync
        // handler fills in who and where.
        let span = tracing::info_span!(
            "request",
            u = tracing::field::Empty,
            dev = tracing::field::Empty,
            c = tracing::field::Empty,
            p = tracing::field::Empty,
            q = tracing::field::Empty,
            t = tracing::field::Empty,
            r = tracing::field::Empty,
            l = tracing::field::Empty,
        );
        // A caller's W3C trace context (`traceparent`) makes this request part of its
        // trace; without SYNCV3_OTLP_URL the propagator is a no-op.
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&opentelemetry_http::HeaderExtractor(req.headers()))
        });
        let _ = span.set_parent(parent);
        // A bug must cost one request a 500, not the connection or the process.
        let routed = std::panic::AssertUnwindSafe(self.route(req).instrument(span.clone()))
            .catch_unwind()
            .await;
        let _entered = span.enter();
        let resp = match routed {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => error_response(&e),
            Err(_) => {
                tracing::error!(%method, %path, "request handler panicked");
                error_response(&MatrixError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "M_UNKNOWN",
                    "Internal error; the proxy logged it",
                ))
            }
        };
        let total = started.elapsed();
        let timing = resp.extensions().get::<Timing>().copied();
        if is_slow(total, timing.map_or(Duration::ZERO, |t| t.wait)) {
            self.metrics.slow_requests.inc();
            tracing::warn!(%method, %path, duration_secs = total.as_secs_f64(), "slow request");
        }
        if method != Method::OPTIONS {
            // "total(setup+processing)" seconds, as the Go proxy wrote it.
            let duration = match timing {
                Some(t) => format!(
                    "{:.3}({:.3}+{:.3})",
                    total.as_secs_f64(),
                    t.setup.as_secs_f64(),
                    t.processing.as_secs_f64()
                ),
                None => format!("{:.3}", total.as_secs_f64()),
            };
            let size = http_body::Body::size_hint(resp.body()).exact();
            let status = resp.status().as_u16();
            if path == MSC3575_PATH || path == MSC4186_PATH {
                tracing::info!(status, size, %duration, "request");
            } else {
                tracing::info!(%method, %path, status, size, %duration, "request");
            }
        }
        with_cors(resp)
    }

    async fn route<B>(&self, req: Request<B>) -> Result<Response<Body>, MatrixError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path();
        if req.method() == Method::OPTIONS {
            return Ok(Response::new(full(Bytes::new())));
        }
        match path {
            MSC3575_PATH | MSC4186_PATH => {
                if req.method() != Method::POST {
                    return Err(MatrixError::method_not_allowed());
                }
                let dialect = if path == MSC3575_PATH {
                    Dialect::Msc3575
                } else {
                    Dialect::Msc4186
                };
                self.sliding_sync(req, dialect).await
            }
            "/_matrix/client/versions" => self.versions().await,
            discovery::WELL_KNOWN_PATH => {
                if req.method() != Method::GET {
                    return Err(MatrixError::method_not_allowed());
                }
                let url = self.public_url(req.headers(), req.uri());
                discovery::well_known(Arc::clone(&self.upstream), url).await
            }
            "/client/server.json" => {
                let mut w = json::JsonWriter::default();
                w.begin_object()
                    .key("server")
                    .str(&self.server)
                    .key("version")
                    .str(env!("CARGO_PKG_VERSION"))
                    .end_object();
                Ok(json_response(StatusCode::OK, w.finish()))
            }
            // Everything else a client sends the homeserver goes through unchanged, so
            // the proxy can be the client's homeserver URL.
            p if p.starts_with("/_matrix/") => {
                let login = discovery::carries_well_known(req.method(), p)
                    .then(|| self.public_url(req.headers(), req.uri()));
                let req = req.map(|b| b.map_err(Into::into).boxed_unsync());
                let resp = self.upstream.forward(req).await.map_err(|e| {
                    tracing::warn!(error = %e, "passing a request through failed");
                    MatrixError::upstream(format!("Cannot reach the homeserver: {e}"))
                })?;
                Ok(match login {
                    Some(url) => discovery::rewrite_well_known(resp, url).await,
                    None => resp,
                })
            }
            _ => Err(MatrixError::not_found()),
        }
    }

    async fn sliding_sync<B>(
        &self,
        req: Request<B>,
        dialect: Dialect,
    ) -> Result<Response<Body>, MatrixError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let arrived = Instant::now();
        let (parts, body) = req.into_parts();
        let mut query = parse_query(parts.uri.query());
        let token = auth::token(&parts.headers, &query)?.to_owned();
        let token = token.as_str();
        // Who asks is known before the body is read, so an unknown token holds no body
        // for the body's deadline; the body is dropped once parsed.
        let device = self.authenticate(token).await?;
        let raw = read_body(body, self.body_timeout).await?;
        let (request, default_timeout) = match dialect {
            Dialect::Msc3575 => (msc3575::parse(&raw)?, DEFAULT_TIMEOUT),
            Dialect::Msc4186 => {
                let parsed = msc4186::parse(&raw)?;
                // The MSC's text sends these in the body; they win over the query's.
                if let Some(pos) = parsed.pos {
                    query.insert("pos".into(), pos);
                }
                if let Some(timeout) = parsed.timeout_ms {
                    query.insert("timeout".into(), timeout.to_string());
                }
                (parsed.request, Duration::ZERO)
            }
        };
        let (pos, timeout) = sync_params(&query, default_timeout)?;
        let key = ConnKey {
            device: device.clone(),
            conn_id: request.conn_id.clone().unwrap_or_default(),
        };
        // A client that must start over learns it now, not after a first poll.
        if pos.is_some() && !self.conns.exists(&key) {
            return Err(MatrixError::unknown_pos());
        }
        let span = tracing::Span::current();
        span.record("u", &*device.user_id);
        span.record("dev", &*device.device_id);
        span.record("c", key.conn_id.as_str());
        if let Some(pos) = pos {
            span.record("p", pos);
        }
        if let Some(txn_id) = &request.txn_id {
            span.record("t", txn_id.as_str());
        }
        if !request.lists.is_empty() {
            span.record("l", request.lists.len());
        }
        let user = self.ready_user(&device, token).await?;
        let setup = arrived.elapsed();
        let initial = ApiMetrics::initial(pos);
        self.metrics
            .setup_duration
            .get_or_create(&initial)
            .observe(setup.as_secs_f64());
        let computing = Instant::now();
        let resp = {
            let _parked = Held::new(&self.metrics.parked);
            self.conns
                .sync(key, pos, request, Wait { timeout }, &user, &self.store)
                .await?
        };
        let processing = computing.elapsed();
        // Only requests that cannot long-poll: a long-poll's time is mostly waiting.
        if pos.is_none() || timeout.is_zero() {
            self.metrics
                .process_duration
                .get_or_create(&initial)
                .observe(processing.as_secs_f64());
        }
        span.record("q", resp.pos.as_str());
        span.record("r", resp.rooms.len());
        let out = match dialect {
            Dialect::Msc3575 => msc3575::serialize(&resp),
            Dialect::Msc4186 => msc4186::serialize(&resp),
        };
        let mut response = json_response(StatusCode::OK, out);
        response.extensions_mut().insert(Timing {
            setup,
            processing,
            wait: timeout,
        });
        Ok(response)
    }

    /// The homeserver's `/versions`, advertising sliding sync.
    async fn versions(&self) -> Result<Response<Body>, MatrixError> {
        let body = self
            .upstream
            .versions()
            .await
            .map_err(|e| MatrixError::upstream(format!("Cannot reach the homeserver: {e}")))?;
        let mut value: sonic_rs::Value = sonic_rs::from_slice(&body)
            .map_err(|_| MatrixError::upstream("The homeserver's /versions is not JSON"))?;
        if let Some(obj) = value.as_object_mut() {
            if obj.get(&"unstable_features").is_none() {
                obj.insert("unstable_features", sonic_rs::Value::new_object());
            }
            if let Some(features) = obj
                .get_mut(&"unstable_features")
                .and_then(|f| f.as_object_mut())
            {
                features.insert("org.matrix.msc3575", true);
                features.insert("org.matrix.simplified_msc3575", true);
            }
        }
        let out = sonic_rs::to_vec(&value).map_err(|e| MatrixError::upstream(e.to_string()))?;
        Ok(json_response(StatusCode::OK, out))
    }
}

/// A request is slow when it took [`SLOW_REQUEST`] longer than the long-poll time it
/// asked for.
fn is_slow(total: Duration, wait: Duration) -> bool {
    total >= wait + SLOW_REQUEST
}

async fn read_body<B>(body: B, deadline: Duration) -> Result<Bytes, MatrixError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let read = tokio::time::timeout(deadline, Limited::new(body, MAX_BODY).collect());
    let Ok(read) = read.await else {
        return Err(MatrixError::new(
            StatusCode::REQUEST_TIMEOUT,
            "M_UNKNOWN",
            format!(
                "The request body did not arrive within {} seconds",
                deadline.as_secs_f64()
            ),
        ));
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(MatrixError::too_large(MAX_BODY))
        }
        Err(e) => Err(MatrixError::bad_json(format!(
            "Cannot read the request body: {e}"
        ))),
    }
}

/// Query parameters, percent-decoded. Later duplicates win.
pub fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// A sync request's `pos` and long-poll `timeout` from its query parameters, with
/// the dialect's `default_timeout`.
pub fn sync_params(
    query: &HashMap<String, String>,
    default_timeout: Duration,
) -> Result<(Option<u64>, Duration), MatrixError> {
    let pos = match query.get("pos") {
        // A `pos` we cannot read is one we never gave out.
        Some(p) => Some(p.parse::<u64>().map_err(|_| MatrixError::unknown_pos())?),
        None => None,
    };
    let timeout = match query.get("timeout") {
        Some(t) => Duration::from_millis(t.parse::<u64>().map_err(|_| {
            MatrixError::invalid_param("timeout must be a whole number of milliseconds")
        })?),
        None => default_timeout,
    }
    .min(MAX_TIMEOUT);
    Ok((pos, timeout))
}

pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

pub fn error_response(e: &MatrixError) -> Response<Body> {
    json_response(e.status, e.body())
}

fn with_cors(mut resp: Response<Body>) -> Response<Body> {
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        header::HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        header::HeaderValue::from_static(
            "Origin, X-Requested-With, Content-Type, Accept, Authorization",
        ),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_slow_only_past_its_long_poll_time() {
        let secs = Duration::from_secs;
        assert!(!is_slow(secs(49), Duration::ZERO));
        assert!(is_slow(secs(50), Duration::ZERO));
        assert!(!is_slow(secs(120), secs(120)));
        assert!(!is_slow(secs(169), secs(120)));
        assert!(is_slow(secs(170), secs(120)));
    }

    #[test]
    fn query_parameters_are_decoded() {
        let q = parse_query(Some(
            "pos=12&timeout=30000&access_token=a%2Bb%3D&bad=%zz&end=%4",
        ));
        assert_eq!(q["pos"], "12");
        assert_eq!(q["access_token"], "a+b=");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q["end"], "%4");
    }
}
