//! The public listener: TCP or a unix socket, plain or TLS, HTTP/1.1 and HTTP/2, with a
//! graceful shutdown.
//!
//! Task layout: one accept loop (inside [`serve`]) that only accepts and spawns; one task
//! per connection that does the TLS handshake and then runs hyper. A slow or hostile
//! client can therefore hold up only its own task, never the accept loop.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::config::BindAddr;

/// How long open connections get to finish their requests once shutdown starts; after it
/// they are cut, so a stuck long-poll cannot hold a restart hostage.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A client that has not finished its TLS handshake by then is dropped; without a bound,
/// idle half-open connections would pile up until file descriptors run out.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Likewise for request headers on HTTP/1.1.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause after an accept error that is not about one connection (out of file descriptors
/// or memory): retrying at once would spin, and waiting lets open connections close.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(250);

/// A bound listening socket.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        path: PathBuf,
    },
}

/// Why the proxy cannot listen. Each message names `SYNCV3_BINDADDR` and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another socket holds the address.
    #[error("SYNCV3_BINDADDR (--bindaddr) is {addr:?}: address already in use; stop the other process or choose another address")]
    InUse { addr: String },
    /// The proxy's user may not bind there.
    #[error("SYNCV3_BINDADDR (--bindaddr) is {addr:?}: permission denied; use a port above 1023, or a socket path in a directory the proxy's user may write to")]
    PermissionDenied { addr: String },
    /// No interface of this machine has the address.
    #[error("SYNCV3_BINDADDR (--bindaddr) is {addr:?}: no interface of this machine has that address; use 0.0.0.0:PORT or one of this machine's addresses")]
    AddrNotAvailable { addr: String },
    /// The socket path's directory does not exist.
    #[error("SYNCV3_BINDADDR (--bindaddr) is {addr:?}: the directory does not exist; create it or choose another path")]
    NoDirectory { addr: String },
    /// Something that is not a socket sits at the unix socket path; it is not ours to delete.
    #[error("SYNCV3_BINDADDR (--bindaddr) is {addr:?}: a file that is not a socket is in the way; remove it or choose another path")]
    NotASocket { addr: String },
    /// Anything else the operating system refused.
    #[error(
        "SYNCV3_BINDADDR (--bindaddr) is {addr:?}: cannot listen ({source}); check the address"
    )]
    Other { addr: String, source: io::Error },
}

impl ListenError {
    fn from_io(addr: &BindAddr, source: io::Error) -> Self {
        let addr = addr.to_string();
        match source.kind() {
            io::ErrorKind::AddrInUse => ListenError::InUse { addr },
            io::ErrorKind::PermissionDenied => ListenError::PermissionDenied { addr },
            io::ErrorKind::AddrNotAvailable => ListenError::AddrNotAvailable { addr },
            io::ErrorKind::NotFound => ListenError::NoDirectory { addr },
            _ => ListenError::Other { addr, source },
        }
    }
}

/// Binds `addr`. A unix socket left behind by an earlier run is replaced; one that a live
/// process still answers on is "in use". The socket is made world-writable (0o666) so a
/// reverse proxy running as another user can connect: access control is the directory's.
pub async fn bind(addr: &BindAddr) -> Result<Listener, ListenError> {
    match addr {
        BindAddr::Tcp(socket) => TcpListener::bind(socket)
            .await
            .map(Listener::Tcp)
            .map_err(|e| ListenError::from_io(addr, e)),
        BindAddr::Unix(path) => {
            remove_stale_socket(addr, path).await?;
            let listener = UnixListener::bind(path).map_err(|e| ListenError::from_io(addr, e))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
                .map_err(|e| ListenError::from_io(addr, e))?;
            Ok(Listener::Unix {
                listener,
                path: path.clone(),
            })
        }
    }
}

async fn remove_stale_socket(addr: &BindAddr, path: &Path) -> Result<(), ListenError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ListenError::from_io(addr, e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ListenError::NotASocket {
            addr: addr.to_string(),
        });
    }
    if UnixStream::connect(path).await.is_ok() {
        return Err(ListenError::InUse {
            addr: addr.to_string(),
        });
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ListenError::from_io(addr, e)),
    }
}

impl Listener {
    /// Where it listens, for logs and tests: `ip:port` with the real port when bound to
    /// port 0, or the socket path.
    pub fn local_addr(&self) -> String {
        match self {
            Listener::Tcp(listener) => listener
                .local_addr()
                .map_or_else(|e| format!("<unknown: {e}>"), |a| a.to_string()),
            Listener::Unix { path, .. } => path.display().to_string(),
        }
    }

    async fn accept(&self) -> io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                // Responses are written whole; Nagle would only delay the last segment.
                let _ = stream.set_nodelay(true);
                Ok((Stream::Tcp(stream), peer.to_string()))
            }
            Listener::Unix { listener, path } => {
                let (stream, _) = listener.accept().await?;
                Ok((Stream::Unix(stream), path.display().to_string()))
            }
        }
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Serves `handler` on `listener` until `shutdown` completes, then stops accepting and
/// gives open connections [`SHUTDOWN_GRACE`] to finish before cutting them.
///
/// With `tls`, every connection is TLS (ALPN picks HTTP/2 or HTTP/1.1); without it, the
/// protocol is read from the first bytes (HTTP/1.1, or HTTP/2 with prior knowledge).
pub async fn serve<F, Fut, B>(
    listener: Listener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: F,
    shutdown: impl Future<Output = ()> + Send,
) where
    F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<B>> + Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let acceptor = tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    // Owns every connection task so that, after the grace period, dropping it cuts them.
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);

    tracing::info!(addr = %listener.local_addr(), tls = acceptor.is_some(), "listening");
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection(
                        stream,
                        peer,
                        acceptor.clone(),
                        builder.clone(),
                        handler.clone(),
                        // Taken here, not in the task: a connection accepted just before
                        // shutdown must still be told about it.
                        graceful.watcher(),
                    ));
                }
                Err(e) if is_per_connection(&e) => {
                    tracing::debug!(error = %e, "accept failed for one connection");
                }
                Err(e) => {
                    tracing::error!(error = %e, "accept failed; pausing before the next one");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                    }
                }
            },
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "connection task failed");
                }
            }
        }
    }

    drop(listener);
    tracing::info!(
        open = connections.len(),
        "stopped accepting; waiting for open connections"
    );
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            grace_secs = SHUTDOWN_GRACE.as_secs(),
            "connections still open after the grace period; closing them"
        );
    }
    connections.shutdown().await;
}

/// Errors that concern only the connection being accepted; the listener is fine.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

async fn connection<F, Fut, B>(
    stream: Stream,
    peer: String,
    acceptor: Option<TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    handler: F,
    watcher: Watcher,
) where
    F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<B>> + Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match stream {
        Stream::Tcp(io) => handshake(io, &peer, acceptor, &builder, handler, watcher).await,
        Stream::Unix(io) => handshake(io, &peer, acceptor, &builder, handler, watcher).await,
    }
}

async fn handshake<S, F, Fut, B>(
    io: S,
    peer: &str,
    acceptor: Option<TlsAcceptor>,
    builder: &auto::Builder<TokioExecutor>,
    handler: F,
    watcher: Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<B>> + Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(acceptor) = acceptor else {
        return run_http(TokioIo::new(io), peer, builder, handler, watcher).await;
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
        Ok(Ok(tls)) => run_http(TokioIo::new(tls), peer, builder, handler, watcher).await,
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

async fn run_http<I, F, Fut, B>(
    io: I,
    peer: &str,
    builder: &auto::Builder<TokioExecutor>,
    handler: F,
    watcher: Watcher,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<B>> + Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service = hyper::service::service_fn(move |request| {
        let response = handler(request);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let conn = builder.serve_connection(io, service);
    if let Err(e) = watcher.watch(conn).await {
        // Clients hanging up mid-request land here; that is routine, not an incident.
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
