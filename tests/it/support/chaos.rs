//! A TCP fault proxy: forwards a loopback port to a target and breaks the link on
//! demand, the way a network or a restarting server does.
//!
//! Between slidesync and Postgres or the homeserver, it can reset every open connection
//! ([`Chaos::cut`]), make the target unreachable (reset open and new connections,
//! [`Chaos::refuse`]), or hang it (no byte passes either way, new connections wait,
//! [`Chaos::stall`]), and then [`Chaos::restore`] the link. The target itself is never
//! touched: the shared Postgres server keeps serving every other test.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Forward,
    /// New connections are reset at once.
    Refuse,
    /// Nothing passes; new connections are held until the link changes.
    Stall,
}

/// What every connection task watches. A cut bumps `generation`: connections accepted
/// under an older one are reset.
#[derive(Clone, Copy, Debug)]
struct Link {
    mode: Mode,
    generation: u64,
}

pub struct Chaos {
    pub addr: SocketAddr,
    link: watch::Sender<Link>,
    /// Connections accepted, and those reset because the link was refused: tests wait on
    /// them to know a client has really tried.
    accepted: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl Chaos {
    /// Starts forwarding a free loopback port to `target`.
    pub async fn start(target: SocketAddr) -> Chaos {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind chaos");
        let addr = listener.local_addr().unwrap();
        let (link, watcher) = watch::channel(Link {
            mode: Mode::Forward,
            generation: 0,
        });
        let accepted = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let counters = (Arc::clone(&accepted), Arc::clone(&refused));
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counters.0.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(
                    client,
                    target,
                    watcher.clone(),
                    Arc::clone(&counters.1),
                ));
            }
        });
        Chaos {
            addr,
            link,
            accepted,
            refused,
            accept,
        }
    }

    /// A fault proxy in front of the Postgres server of a database URL
    /// (`postgres://user@host:port/name`), and the URL of the same database through it.
    pub async fn before_postgres(db_url: &str) -> (Chaos, String) {
        let (scheme, rest) = db_url.split_once("://").expect("a URL with a scheme");
        let (authority, database) = rest.split_once('/').expect("a URL with a database");
        let (user, host_port) = match authority.rsplit_once('@') {
            Some((user, host_port)) => (format!("{user}@"), host_port),
            None => (String::new(), authority),
        };
        let target = std::net::ToSocketAddrs::to_socket_addrs(host_port)
            .ok()
            .and_then(|mut addrs| addrs.next())
            .unwrap_or_else(|| panic!("cannot resolve the test Postgres server {host_port}"));
        let chaos = Chaos::start(target).await;
        let url = format!("{scheme}://{user}{}/{database}", chaos.addr);
        (chaos, url)
    }

    /// Resets every open connection; new ones pass.
    pub fn cut(&self) {
        self.link.send_modify(|l| l.generation += 1);
    }

    /// Resets every open connection and every new one until [`Self::restore`]: the
    /// target is down.
    pub fn refuse(&self) {
        self.link.send_modify(|l| {
            l.generation += 1;
            l.mode = Mode::Refuse;
        });
    }

    /// Lets no byte through on open connections and holds new ones until
    /// [`Self::restore`]: the target hangs.
    pub fn stall(&self) {
        self.link.send_modify(|l| l.mode = Mode::Stall);
    }

    /// Forwards again; held connections go through.
    pub fn restore(&self) {
        self.link.send_modify(|l| l.mode = Mode::Forward);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections reset so far because the link was refused.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        self.accept.abort();
        // Open connections end too: their tasks see the link's sender go away.
    }
}

async fn serve(
    client: TcpStream,
    target: SocketAddr,
    mut link: watch::Receiver<Link>,
    refused: Arc<AtomicUsize>,
) {
    let generation = link.borrow().generation;
    // A connection accepted while stalled waits for the link to change.
    let mode = loop {
        let now = *link.borrow_and_update();
        if now.generation != generation {
            return reset(&client);
        }
        if now.mode != Mode::Stall {
            break now.mode;
        }
        if link.changed().await.is_err() {
            return reset(&client);
        }
    };
    if mode == Mode::Refuse {
        refused.fetch_add(1, Ordering::Relaxed);
        return reset(&client);
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return reset(&client);
    };
    let (mut client, mut server) = (client, server);
    let cut = {
        let (mut client_rx, mut client_tx) = client.split();
        let (mut server_rx, mut server_tx) = server.split();
        tokio::select! {
            _ = async {
                tokio::join!(
                    pump(&mut client_rx, &mut server_tx, link.clone()),
                    pump(&mut server_rx, &mut client_tx, link.clone()),
                )
            } => false,
            _ = until_cut(link.clone(), generation) => true,
        }
    };
    if cut {
        reset(&client);
        reset(&server);
    }
}

/// Copies one direction until end of stream, pausing while the link is stalled.
async fn pump(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    mut link: watch::Receiver<Link>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while link.borrow_and_update().mode == Mode::Stall {
            if link.changed().await.is_err() {
                return;
            }
        }
        // `read` is cancel safe: a change of the link while waiting loses no bytes.
        let n = tokio::select! {
            n = from.read(&mut buf) => n,
            changed = link.changed() => match changed {
                Ok(()) => continue,
                Err(_) => return,
            },
        };
        match n {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Resolves when connections of `generation` must be reset (or the proxy is gone).
async fn until_cut(mut link: watch::Receiver<Link>, generation: u64) {
    while link.borrow_and_update().generation == generation {
        if link.changed().await.is_err() {
            return;
        }
    }
}

/// Closes with RST rather than FIN, as a lost link looks to the peer.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}
