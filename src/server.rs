//! The accept loop: sockets, HTTP settings, and graceful shutdown.
//!
//! We drive hyper ourselves rather than through `axum::serve` to set what a push server needs:
//! `TCP_NODELAY` on every socket (small frames must not wait for Nagle), a request-head size
//! limit (431 past it) and a header read timeout against slow-loris clients, and a shutdown that
//! first ends every SSE stream (they would otherwise keep hyper's graceful shutdown waiting
//! forever, tokio-rs/axum#2673), then waits a bounded time for connections to finish.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tower::ServiceExt;

use crate::instance::Redisse;
use crate::routes::UnixPeer;

/// Where the server listens.
#[derive(Debug)]
pub enum Listener {
    /// A TCP socket.
    Tcp(TcpListener),
    /// A unix domain socket, and its path (removed on shutdown).
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds a TCP address.
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        Ok(Listener::Tcp(TcpListener::bind(addr).await?))
    }

    /// Binds a unix socket at `path`, replacing a stale socket file.
    pub fn bind_unix(path: impl Into<PathBuf>) -> io::Result<Self> {
        let path = path.into();
        if std::fs::metadata(&path).is_ok_and(|m| !m.is_dir()) {
            std::fs::remove_file(&path)?;
        }
        Ok(Listener::Unix(UnixListener::bind(&path)?, path))
    }

    /// The TCP address, when listening on TCP (useful after binding port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }
}

/// Serves `router` (usually [`Redisse::router`]) until `shutdown` completes, then ends every
/// stream of `redisse` with a jittered `retry:` and waits at most the configured shutdown timeout
/// for connections to close.
pub async fn serve(
    listener: Listener,
    redisse: Redisse,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let config = redisse.config();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(config.max_header_bytes as u32);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept(&listener) => match accepted {
                Ok(Accepted::Tcp(stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let router = router.clone();
                    let svc = tower::service_fn(move |mut req: http::Request<Incoming>| {
                        req.extensions_mut().insert(ConnectInfo(peer));
                        router.clone().oneshot(req)
                    });
                    spawn_connection(&builder, &graceful, stream, svc);
                }
                Ok(Accepted::Unix(stream)) => {
                    let router = router.clone();
                    let svc = tower::service_fn(move |mut req: http::Request<Incoming>| {
                        req.extensions_mut().insert(UnixPeer);
                        router.clone().oneshot(req)
                    });
                    spawn_connection(&builder, &graceful, stream, svc);
                }
                Err(e) => {
                    // Out of file descriptors, mostly: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    tracing::info!(
        streams = redisse.connections(),
        "shutting down: ending streams"
    );
    redisse.shutdown();
    if let Listener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
    drop(listener);
    let timeout = config.shutdown_timeout;
    if tokio::time::timeout(timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?timeout,
            "connections still open after the shutdown timeout; closing them"
        );
    }
    Ok(())
}

enum Accepted {
    Tcp(tokio::net::TcpStream, SocketAddr),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> io::Result<Accepted> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, a)| Accepted::Tcp(s, a)),
        Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}

fn spawn_connection<S, IO>(
    builder: &Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    io: IO,
    svc: S,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            http::Request<Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(svc));
    let conn = graceful.watch(conn.into_owned());
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    });
}
