//! OpenTelemetry traces over OTLP/HTTP (`SYNCV3_OTLP_URL`), as the Go proxy sent them:
//! service `sliding-sync`, so existing trace queries keep working.
//!
//! `tracing` spans become OpenTelemetry spans through `tracing-opentelemetry`; the spans
//! worth following are the request (`api`), the poll (`ingest`) and the batch commit
//! (`store`). The SDK's batch processor exports from its own thread and blocks on each
//! export; the export itself runs on the proxy's runtime, over the same rustls client
//! stack the homeserver client uses, so no second HTTP or TLS stack is linked in.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

use crate::upstream::http::https_connector;

/// The Go proxy's service name.
const SERVICE_NAME: &str = "sliding-sync";
/// How long one export may take before it is given up (the batch is dropped: traces are
/// best effort and must never hold the proxy up).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// A collector answering with more than this is not a collector.
const MAX_RESPONSE: usize = 1 << 20;

/// Where traces go, from `SYNCV3_OTLP_URL` and the optional basic-auth pair.
#[derive(Clone, PartialEq, Eq)]
pub struct OtlpTarget {
    /// Scheme and authority only, as the Go proxy required; `/v1/traces` is appended.
    pub base: String,
    /// `SYNCV3_OTLP_USERNAME` and `SYNCV3_OTLP_PASSWORD`, never printed.
    pub basic_auth: Option<(String, String)>,
}

impl std::fmt::Debug for OtlpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpTarget")
            .field("base", &self.base)
            .field(
                "basic_auth",
                &self.basic_auth.as_ref().map(|(u, _)| (u, "***")),
            )
            .finish()
    }
}

/// Sends each export on `runtime`, from whichever thread the SDK calls it on.
#[derive(Debug)]
struct RuntimeClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
}

#[async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let exchange = async move {
            let response = client.request(request.map(Full::new)).await?;
            let (parts, body) = response.into_parts();
            let body = http_body_util::Limited::new(body, MAX_RESPONSE)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        // The timer is made inside the task: the SDK's thread has no runtime of its own.
        let exchange = async move { tokio::time::timeout(EXPORT_TIMEOUT, exchange).await };
        match self.runtime.spawn(exchange).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("the trace collector did not answer in time".into()),
            Err(e) => Err(Box::new(e)),
        }
    }
}

/// Builds the exporter and its batch processor. Nothing is sent until spans end.
pub fn provider(
    target: &OtlpTarget,
    runtime: tokio::runtime::Handle,
) -> Result<SdkTracerProvider, String> {
    let client = RuntimeClient {
        client: Client::builder(TokioExecutor::new()).build(https_connector()),
        runtime,
    };
    let mut headers = std::collections::HashMap::new();
    if let Some((user, password)) = &target.basic_auth {
        use base64::Engine;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        headers.insert("Authorization".to_owned(), format!("Basic {encoded}"));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/traces", target.base))
        .with_timeout(EXPORT_TIMEOUT)
        .with_headers(headers)
        .with_http_client(client)
        .build()
        .map_err(|e| e.to_string())?;
    // As the Go proxy: a caller's W3C trace context and baggage continue in our spans.
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(SERVICE_NAME).build())
        .build())
}
