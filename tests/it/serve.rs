//! The public listener end to end: TLS with HTTP/1.1 and HTTP/2, unix sockets, bind
//! errors, and graceful shutdown.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use slidesync::config::{BindAddr, TlsFiles};
use slidesync::ops::{listen, tls};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;

/// A directory of its own per test, removed afterwards. Paths stay short because unix
/// socket paths are limited to about 100 bytes.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ss-it-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn echo_path(request: Request<Incoming>) -> Response<Full<Bytes>> {
    let text = format!("{:?} {}", request.version(), request.uri().path());
    Response::new(Full::new(Bytes::from(text)))
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header(http::header::HOST, "localhost")
        .body(Empty::new())
        .unwrap()
}

async fn body_text(response: Response<Incoming>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A self-signed certificate for `localhost`, written as PEM files, and a client
/// configuration that trusts exactly that certificate.
struct Certificate {
    files: TlsFiles,
    der: rustls::pki_types::CertificateDer<'static>,
}

impl Certificate {
    fn new(scratch: &Scratch) -> Self {
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let files = TlsFiles {
            cert: scratch.path("cert.pem"),
            key: scratch.path("key.pem"),
        };
        std::fs::write(&files.cert, pair.cert.pem()).unwrap();
        std::fs::write(&files.key, pair.key_pair.serialize_pem()).unwrap();
        Certificate {
            files,
            der: pair.cert.der().clone(),
        }
    }

    fn connector(&self, alpn: &[u8]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        TlsConnector::from(Arc::new(config))
    }
}

/// A running server and the switch that shuts it down.
struct Running {
    addr: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

async fn start<F, Fut>(
    bind: BindAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: F,
) -> Running
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = listen::bind(&bind).await.unwrap();
    let addr = listener.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(listen::serve(listener, tls, handler, async {
        let _ = stopped.await;
    }));
    Running { addr, stop, task }
}

/// An HTTPS echo server and a client connection to it that asked for `alpn`.
async fn tls_echo_server(
    cert: &Certificate,
    alpn: &[u8],
) -> (Running, tokio_rustls::client::TlsStream<TcpStream>) {
    let (config, _) = tls::server_config(&cert.files).unwrap();
    let server = start(
        BindAddr::Tcp("127.0.0.1:0".parse().unwrap()),
        Some(config),
        echo_path,
    )
    .await;
    let tcp = TcpStream::connect(&server.addr).await.unwrap();
    let stream = cert
        .connector(alpn)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    (server, stream)
}

#[tokio::test]
async fn https_serves_http1_to_a_client_that_trusts_the_certificate() {
    let scratch = Scratch::new();
    let cert = Certificate::new(&scratch);
    let (server, stream) = tls_echo_server(&cert, b"http/1.1").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let response = sender.send_request(get("/hello")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_text(response).await, "HTTP/1.1 /hello");

    // Shutdown closes the idle keep-alive connection instead of waiting out the grace.
    server.stop().await;
    conn.await.unwrap().unwrap();
}

#[tokio::test]
async fn https_negotiates_http2_through_alpn() {
    let scratch = Scratch::new();
    let cert = Certificate::new(&scratch);
    let (server, stream) = tls_echo_server(&cert, b"h2").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = Request::get("https://localhost/two")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(body_text(response).await, "HTTP/2.0 /two");
    server.stop().await;
}

#[tokio::test]
async fn a_reloaded_certificate_serves_new_connections_and_keeps_open_ones() {
    let scratch = Scratch::new();
    let old = Certificate::new(&scratch);
    let (config, certificate) = tls::server_config(&old.files).unwrap();
    let server = start(
        BindAddr::Tcp("127.0.0.1:0".parse().unwrap()),
        Some(config),
        echo_path,
    )
    .await;
    let localhost = || ServerName::try_from("localhost").unwrap();
    let tcp = TcpStream::connect(&server.addr).await.unwrap();
    let stream = old
        .connector(b"http/1.1")
        .connect(localhost(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let response = sender.send_request(get("/before")).await.unwrap();
    assert_eq!(body_text(response).await, "HTTP/1.1 /before");

    // Renewed in place, as certbot does, then SIGHUP's reload.
    let renewed = Certificate::new(&scratch);
    certificate.reload().unwrap();

    let response = sender.send_request(get("/after")).await.unwrap();
    assert_eq!(
        body_text(response).await,
        "HTTP/1.1 /after",
        "the open connection goes on"
    );
    let tcp = TcpStream::connect(&server.addr).await.unwrap();
    renewed
        .connector(b"http/1.1")
        .connect(localhost(), tcp)
        .await
        .expect("a new connection gets the renewed certificate");
    let tcp = TcpStream::connect(&server.addr).await.unwrap();
    assert!(old
        .connector(b"http/1.1")
        .connect(localhost(), tcp)
        .await
        .is_err());

    drop(sender);
    server.stop().await;
    let _ = conn.await;
}

#[tokio::test]
async fn a_failed_handshake_does_not_stop_the_server() {
    let scratch = Scratch::new();
    let cert = Certificate::new(&scratch);
    let (config, _) = tls::server_config(&cert.files).unwrap();
    let server = start(
        BindAddr::Tcp("127.0.0.1:0".parse().unwrap()),
        Some(config),
        echo_path,
    )
    .await;

    // Plain HTTP to a TLS port: the handshake fails in that connection's task only.
    let plain = TcpStream::connect(&server.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(plain))
        .await
        .unwrap();
    tokio::spawn(conn);
    assert!(sender.send_request(get("/")).await.is_err());

    let tcp = TcpStream::connect(&server.addr).await.unwrap();
    let stream = cert
        .connector(b"http/1.1")
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(get("/after")).await.unwrap();
    assert_eq!(body_text(response).await, "HTTP/1.1 /after");
    server.stop().await;
}

#[tokio::test]
async fn unix_socket_replaces_a_stale_file_and_is_world_writable() {
    let scratch = Scratch::new();
    let path = scratch.path("proxy.sock");
    // A socket file left behind by a previous run: bound, then dropped without unlinking.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());

    let server = start(BindAddr::Unix(path.clone()), None, echo_path).await;
    assert_eq!(server.addr, path.display().to_string());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o666);

    let stream = UnixStream::connect(&path).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(get("/over/unix")).await.unwrap();
    assert_eq!(body_text(response).await, "HTTP/1.1 /over/unix");
    server.stop().await;
}

#[tokio::test]
async fn a_live_unix_socket_is_in_use_and_a_plain_file_is_left_alone() {
    let scratch = Scratch::new();
    let path = scratch.path("live.sock");
    let server = start(BindAddr::Unix(path.clone()), None, echo_path).await;
    let err = listen::bind(&BindAddr::Unix(path.clone()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("SYNCV3_BINDADDR (--bindaddr) is ") && err.contains("in use"),
        "{err}"
    );
    server.stop().await;

    let file = scratch.path("notes.txt");
    std::fs::write(&file, "keep me").unwrap();
    let err = listen::bind(&BindAddr::Unix(file.clone()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[tokio::test]
async fn a_taken_tcp_port_names_the_setting_and_the_fix() {
    let server = start(
        BindAddr::Tcp("127.0.0.1:0".parse().unwrap()),
        None,
        echo_path,
    )
    .await;
    let err = listen::bind(&BindAddr::Tcp(server.addr.parse().unwrap()))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "SYNCV3_BINDADDR (--bindaddr) is {:?}: address already in use; stop the other \
             process or choose another address",
            server.addr
        )
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish_then_refuses_new_ones() {
    let (entered_tx, entered) = tokio::sync::mpsc::unbounded_channel::<()>();
    let release = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let release = release.clone();
        move |_request: Request<Incoming>| {
            let entered_tx = entered_tx.clone();
            let release = release.clone();
            async move {
                let _ = entered_tx.send(());
                release.notified().await;
                Response::new(Full::new(Bytes::from_static(b"finished")))
            }
        }
    };
    let server = start(BindAddr::Tcp("127.0.0.1:0".parse().unwrap()), None, handler).await;
    let addr = server.addr.clone();

    let tcp = TcpStream::connect(&addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let in_flight = tokio::spawn(async move { sender.send_request(get("/slow")).await });
    let mut entered = entered;
    entered.recv().await.unwrap();

    let _ = server.stop.send(());
    assert!(!server.task.is_finished());
    // `notify_one` stores a permit, so the release holds even if the handler has not
    // reached `notified()` yet.
    release.notify_one();
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(body_text(response).await, "finished");
    server.task.await.unwrap();

    assert!(TcpStream::connect(&addr).await.is_err());
}
