//! One URL for everything: what a client learns about where its homeserver is.
//!
//! matrix-rust-sdk replaces its homeserver URL with `well_known.m.homeserver.base_url`
//! from a `/login` answer, which would lead it past the proxy to a homeserver that may
//! not serve sliding sync at all: that field names slidesync's public URL instead
//! (`SYNCV3_PUBLIC_URL`, else the scheme it serves and the request's `Host`).
//! `/.well-known/matrix/client` is the homeserver's, naming slidesync as its sliding
//! sync proxy (and as the homeserver when the homeserver publishes none).

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use sonic_rs::{JsonValueMutTrait, JsonValueTrait, Value};

use super::{json_response, Api, Body};
use crate::error::MatrixError;
use crate::upstream::{full, Homeserver};
use std::sync::Arc;

/// A login or well-known answer is a few hundred bytes; one larger than this is passed
/// on without looking into it.
const MAX_DISCOVERY_BODY: usize = 64 * 1024;

pub const WELL_KNOWN_PATH: &str = "/.well-known/matrix/client";

/// Paths whose answers carry a `well_known` to rewrite: login and registration, in
/// each client API version a client may use.
pub fn carries_well_known(method: &Method, path: &str) -> bool {
    *method == Method::POST
        && matches!(
            path,
            "/_matrix/client/v3/login"
                | "/_matrix/client/r0/login"
                | "/_matrix/client/v3/register"
                | "/_matrix/client/r0/register"
        )
}

impl Api {
    /// slidesync's URL as this client reaches it, without a trailing slash; `None`
    /// when it is not configured and the request has no usable `Host`.
    pub(super) fn public_url(&self, headers: &HeaderMap, uri: &http::Uri) -> Option<String> {
        if let Some(url) = &self.public_url {
            return Some(url.clone());
        }
        // HTTP/2 puts the host in the URI, HTTP/1.1 in `Host`.
        let host = match uri.authority() {
            Some(a) => a.as_str(),
            None => headers.get(header::HOST)?.to_str().ok()?,
        };
        url_of_host(host, self.https)
    }
}

/// `GET /.well-known/matrix/client`: the homeserver's, with slidesync as the sliding
/// sync proxy; and as the homeserver, when the homeserver names none.
pub(super) async fn well_known(
    upstream: Arc<dyn Homeserver>,
    url: Option<String>,
) -> Result<Response<Body>, MatrixError> {
    let request = Request::get(WELL_KNOWN_PATH)
        .body(full(Bytes::new()))
        .map_err(|e| MatrixError::upstream(e.to_string()))?;
    // Bound first: a temporary in the `match` would live across the read below.
    let fetched = upstream.forward(request).await;
    let mut value = match fetched {
        Ok(resp) if resp.status() == StatusCode::OK => read_json(resp.into_body())
            .await
            .filter(Value::is_object)
            .unwrap_or_else(Value::new_object),
        Ok(_) => Value::new_object(),
        Err(e) => {
            return Err(MatrixError::upstream(format!(
                "Cannot reach the homeserver: {e}"
            )))
        }
    };
    if let Some(url) = url {
        let names_one = value
            .get("m.homeserver")
            .and_then(|h| h.get("base_url"))
            .is_some_and(|u| u.is_str());
        if !names_one {
            set_base_url(&mut value, &url);
        }
        if let Some(obj) = value.as_object_mut() {
            let mut proxy = Value::new_object();
            if let Some(p) = proxy.as_object_mut() {
                p.insert("url", url.as_str());
            }
            obj.insert("org.matrix.msc3575.proxy", proxy);
        }
    }
    let out = sonic_rs::to_vec(&value).map_err(|e| MatrixError::upstream(e.to_string()))?;
    Ok(json_response(StatusCode::OK, out))
}

/// A login or registration answer with its `well_known` pointing at slidesync. Any
/// other answer (an error, an interactive-auth step, one without `well_known`) passes
/// unchanged.
pub(super) async fn rewrite_well_known(
    resp: Response<Body>,
    url: Option<String>,
) -> Response<Body> {
    let Some(url) = url else {
        return resp;
    };
    if resp.status() != StatusCode::OK {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match read_small(body).await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(error = %e, "reading a login answer failed");
            return json_response(
                StatusCode::BAD_GATEWAY,
                MatrixError::upstream("The homeserver's answer could not be read").body(),
            );
        }
    };
    let rewritten = sonic_rs::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|mut v| {
            let has = v.get("well_known").is_some_and(|w| w.is_object());
            has.then(|| {
                if let Some(wk) = v.get_mut("well_known") {
                    set_base_url(wk, &url);
                }
                v
            })
        });
    let out = match rewritten.and_then(|v| sonic_rs::to_vec(&v).ok()) {
        Some(out) => Bytes::from(out),
        None => bytes,
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, full(out))
}

/// `scheme://host[:port]` for a client-given host, or `None` when it is anything more
/// than a host and port: the value goes into JSON clients follow.
fn url_of_host(host: &str, https: bool) -> Option<String> {
    let authority: http::uri::Authority = host.parse().ok()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let scheme = if https { "https" } else { "http" };
    Some(format!("{scheme}://{authority}"))
}

/// Sets `m.homeserver.base_url` in a well-known object, keeping its other fields.
fn set_base_url(well_known: &mut Value, url: &str) {
    let Some(obj) = well_known.as_object_mut() else {
        return;
    };
    if !obj.get(&"m.homeserver").is_some_and(|h| h.is_object()) {
        obj.insert("m.homeserver", Value::new_object());
    }
    if let Some(hs) = obj.get_mut(&"m.homeserver").and_then(|h| h.as_object_mut()) {
        hs.insert("base_url", url);
    }
}

/// A small JSON body, or `None` when it is too large or not JSON.
async fn read_json(body: Body) -> Option<Value> {
    let bytes = read_small(body).await.ok()?;
    sonic_rs::from_slice(&bytes).ok()
}

/// Reads a body of at most [`MAX_DISCOVERY_BODY`] bytes, frame by frame. (Through
/// `Limited` the handler's future stops being `Send` for every lifetime: a known
/// limit of the compiler with boxed error conversions.)
async fn read_small(mut body: Body) -> Result<Bytes, String> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_DISCOVERY_BODY {
                return Err(format!("longer than {MAX_DISCOVERY_BODY} bytes"));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_is_set_and_other_fields_kept() {
        let mut v: Value = sonic_rs::from_str(
            r#"{"m.homeserver":{"base_url":"https://hs","x":1},"m.identity_server":{"base_url":"https://is"}}"#,
        )
        .unwrap();
        set_base_url(&mut v, "https://proxy");
        assert_eq!(
            v["m.homeserver"]["base_url"].as_str(),
            Some("https://proxy")
        );
        assert_eq!(v["m.homeserver"]["x"].as_u64(), Some(1));
        assert_eq!(
            v["m.identity_server"]["base_url"].as_str(),
            Some("https://is")
        );
        let mut odd: Value = sonic_rs::from_str(r#"{"m.homeserver":"nonsense"}"#).unwrap();
        set_base_url(&mut odd, "https://proxy");
        assert_eq!(
            odd["m.homeserver"]["base_url"].as_str(),
            Some("https://proxy")
        );
    }

    #[test]
    fn a_url_is_made_of_a_host_and_port_only() {
        assert_eq!(
            url_of_host("chat.example.org:8448", true).as_deref(),
            Some("https://chat.example.org:8448")
        );
        assert_eq!(
            url_of_host("127.0.0.1:8008", false).as_deref(),
            Some("http://127.0.0.1:8008")
        );
        for bad in ["evil.example/path", "user@evil.example", "", "a b", "x\"y"] {
            assert_eq!(url_of_host(bad, true), None, "{bad}");
        }
    }

    #[test]
    fn only_login_and_register_posts_carry_well_known() {
        assert!(carries_well_known(
            &Method::POST,
            "/_matrix/client/v3/login"
        ));
        assert!(carries_well_known(
            &Method::POST,
            "/_matrix/client/r0/register"
        ));
        assert!(!carries_well_known(
            &Method::GET,
            "/_matrix/client/v3/login"
        ));
        assert!(!carries_well_known(
            &Method::POST,
            "/_matrix/client/v3/register/available"
        ));
    }
}
