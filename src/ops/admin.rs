//! The operator's listener (`SYNCV3_PROM`): `/metrics` for Prometheus and `/health` for
//! container health checks and load balancers. Never served on the public listener: the
//! metrics name users' activity, and scrapers belong on an internal network.
//!
//! It starts before the store is loaded, so `/health` can say "not yet" (503) while a
//! big database is read, and 200 from then on.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::listen::{self, Listener};
use super::metrics::{render, CONTENT_TYPE};
use crate::ingest::pollers::Pollers;

/// An operator listener's address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error(
    "{setting} is \"{addr}\": cannot listen ({source}); choose a free port this process may bind"
)]
pub struct BindError {
    pub setting: &'static str,
    pub addr: SocketAddr,
    pub source: io::Error,
}

/// Binds an operator listener (metrics or profiling) at `addr`, named by its setting.
pub async fn bind(setting: &'static str, addr: SocketAddr) -> Result<Listener, BindError> {
    TcpListener::bind(addr)
        .await
        .map(Listener::Tcp)
        .map_err(|source| BindError {
            setting,
            addr,
            source,
        })
}

/// What the listener serves once the store is loaded.
struct Loaded {
    registry: Arc<Registry>,
    /// Weak: the listener stops last, and a strong handle would keep the pollers, and
    /// through them the store and its write queue, alive through the shutdown.
    pollers: std::sync::Weak<Pollers>,
}

/// The listener's state: empty until [`Admin::loaded`].
#[derive(Default)]
pub struct Admin {
    /// Set once, read by every request without a lock.
    loaded: OnceLock<Loaded>,
}

impl Admin {
    /// The store is loaded: `/health` answers 200 and `/metrics` serves `registry`.
    pub fn loaded(&self, registry: Arc<Registry>, pollers: Arc<Pollers>) {
        let pollers = Arc::downgrade(&pollers);
        let _ = self.loaded.set(Loaded { registry, pollers });
    }

    fn respond(&self, req: &Request<impl Sized>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
        }
        let loaded = self.loaded.get();
        match (req.uri().path(), loaded) {
            ("/metrics", Some(loaded)) => {
                reply(StatusCode::OK, CONTENT_TYPE, render(&loaded.registry))
            }
            ("/health", Some(loaded)) => reply(
                StatusCode::OK,
                "application/json",
                format!(
                    "{{\"status\":\"ok\",\"pollers_catching_up\":{}}}\n",
                    loaded.pollers.upgrade().map_or(0, |p| p.catching_up())
                ),
            ),
            ("/metrics" | "/health", None) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                "{\"status\":\"loading\"}\n",
            ),
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: this listener serves /metrics and /health\n",
            ),
        }
    }
}

/// A whole response of one content type.
pub(super) fn reply(
    status: StatusCode,
    kind: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
    resp
}

/// Serves `admin` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: Listener,
    admin: Arc<Admin>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let handler = move |req: Request<hyper::body::Incoming>| {
        let resp = admin.respond(&req);
        async move { resp }
    };
    listen::serve(listener, None, handler, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_and_metrics_answer_503_until_the_store_is_loaded() {
        let admin = Admin::default();
        for path in ["/health", "/metrics"] {
            let resp = admin.respond(&Request::get(path).body(()).unwrap());
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        }
        let resp = admin.respond(&Request::get("/debug/pprof/profile").body(()).unwrap());
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
}
