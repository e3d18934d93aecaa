//! The accept loop: sockets, HTTP settings, and graceful shutdown.
//!
//! We drive hyper ourselves rather than through `axum::serve` to set what a push server needs:
//! `TCP_NODELAY` on every socket (small frames must not wait for Nagle), a request-head size
//! limit (431 past it) and a header read timeout against slow-loris clients, and a shutdown that
//! first ends every SSE stream (they would otherwise keep hyper's graceful shutdown waiting
//! forever, tokio-rs/axum#2673), then waits a bounded time for connections to finish.
//!
//! On plain connections (TCP without TLS, unix sockets) stream requests are read and answered
//! by `streams`, which writes SSE responses on the bare socket and so keeps no HTTP buffer per
//! idle stream (about 2.5 KiB per stream instead of about 23 KiB under hyper, BENCHMARKS.md);
//! the first request that is not a stream request hands the connection to hyper. TLS
//! connections are served by hyper throughout. Stream requests still go through the router and
//! its layers, which may change the response head; a layer that rewrites response bodies does
//! not see a stream's body, which the endpoint hands to the server directly.
//!
//! Each hyper connection also carries a `ConnectionCloser` in its requests' extensions: when its
//! stream falls behind, the SSE queue cancels it and the connection task drops the socket at
//! once, because hyper, blocked writing to a client that does not read, would never poll the
//! body to see it end. Refused request heads (too large, too slow, malformed) are counted in
//! the metrics and logged here, since hyper answers them before any service sees a request.

/// `AsyncWrite` for an IO wrapper whose `io` field does the writing: the wrappers here
/// (`first_bytes`, `rewind`) only change how a connection is read.
macro_rules! forward_async_write {
    ($wrapper:ident) => {
        impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<IO> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
            }
        }
    };
}

mod first_bytes;
mod head;
mod rewind;
mod streams;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, UnixListener};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use self::first_bytes::FirstBytesDeadline;
use self::head::HeadLimits;
#[cfg(fuzzing)]
pub(crate) use self::head::decide as decide_request_head;
use self::rewind::Rewind;
use self::streams::{Handoff, StreamsContext};
use crate::instance::Redisse;
use crate::metrics::{Metrics, Refusal};
use crate::routes::UnixPeer;
use crate::tls::Tls;

/// Closes one client connection when cancelled; found in the extensions of every request the
/// standalone server passes on.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionCloser(pub CancellationToken);

/// What a connection task needs besides the socket and the service.
struct ConnectionContext<'a> {
    builder: Arc<Builder<TokioExecutor>>,
    graceful: &'a GracefulShutdown,
    tls: Option<Tls>,
    /// The router, the metrics and the head limits; on plain connections, streams are written
    /// on the bare socket with them.
    streams: Arc<StreamsContext>,
}

/// Connections the kernel queues before they are accepted. The standard library's 128 drops
/// SYNs when hundreds of clients connect at once (a reconnect storm after a restart), and each
/// dropped SYN costs its client a one-second retransmission; the kernel caps this value at
/// `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: u32 = 1024;

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
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        // As `TcpListener::bind` does, so a restarted server can bind at once.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        Ok(Listener::Tcp(socket.listen(LISTEN_BACKLOG)?))
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
    serve_with_tls(listener, None, redisse, router, shutdown).await
}

/// [`serve`], with HTTPS when `tls` is given: the TLS handshake must complete within the header
/// read timeout.
pub async fn serve_with_tls(
    listener: Listener,
    tls: Option<Tls>,
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
    let stop = CancellationToken::new();
    let ctx = ConnectionContext {
        builder: Arc::new(builder),
        graceful: &graceful,
        tls,
        streams: Arc::new(StreamsContext {
            router: router.clone(),
            metrics: redisse.shared.metrics.clone(),
            limits: HeadLimits {
                max_bytes: config.max_header_bytes,
                timeout: config.header_read_timeout,
            },
            stop: stop.clone(),
        }),
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept(&listener) => match accepted {
                Ok(Accepted::Tcp(stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    match &ctx.tls {
                        Some(tls) => spawn_tls(&ctx, tls, stream, ConnectInfo(peer)),
                        None => spawn_plain(&ctx, stream, ConnectInfo(peer)),
                    }
                }
                Ok(Accepted::Unix(stream)) => spawn_plain(&ctx, stream, UnixPeer),
                Err(e) => {
                    // Out of file descriptors, mostly: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(ctx);
    // Idle keep-alive connections close; streams end below.
    stop.cancel();
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

/// Serves a TLS connection with hyper throughout (HTTP/1 or HTTP/2 by ALPN); the handshake must
/// complete within the header read timeout.
fn spawn_tls<P>(ctx: &ConnectionContext<'_>, tls: &Tls, io: tokio::net::TcpStream, peer: P)
where
    P: Clone + Send + Sync + 'static,
{
    let conn = Connection::new(ctx.builder.clone(), ctx.graceful.watcher(), &ctx.streams);
    let svc = connection_service(&ctx.streams.router, peer, &conn.closer);
    let acceptor = tls.acceptor.clone();
    tokio::spawn(async move {
        match tokio::time::timeout(conn.head_timeout, acceptor.accept(io)).await {
            Ok(Ok(stream)) => conn.drive(stream, svc).await,
            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
            Err(_) => {
                conn.metrics.refused(Refusal::HeaderTimeout);
                tracing::info!("refused a connection: TLS handshake not done in time");
            }
        }
    });
}

/// Serves a plain (not TLS) connection: its stream requests on the bare socket
/// (`streams`), and from the first other request on, hyper.
fn spawn_plain<IO, P>(ctx: &ConnectionContext<'_>, mut io: IO, peer: P)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    P: Clone + Send + Sync + 'static,
{
    // Held until the task ends, so that the graceful shutdown waits for it.
    let watcher = ctx.graceful.watcher();
    let builder = ctx.builder.clone();
    let streams = ctx.streams.clone();
    let task = async move {
        let extend = |ext: &mut http::Extensions| {
            ext.insert(peer.clone());
        };
        if let Handoff::Hyper(read) = streams::serve(&mut io, &streams, &extend).await {
            let conn = Connection::new(builder, watcher, &streams);
            let svc = connection_service(&streams.router, peer, &conn.closer);
            // Boxed: hyper's connection is large, and most connections never get here.
            Box::pin(conn.drive(Rewind::new(read, io), svc)).await;
        }
    };
    tokio::spawn(task);
}

/// The router, with the connection's peer and closer in every request's extensions.
fn connection_service<P: Clone + Send + Sync + 'static>(
    router: &Router,
    peer: P,
    closer: &CancellationToken,
) -> impl ConnectionService {
    let router = router.clone();
    let closer = ConnectionCloser(closer.clone());
    tower::service_fn(move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(peer.clone());
        req.extensions_mut().insert(closer.clone());
        router.clone().oneshot(req)
    })
}

/// The service a connection runs: the router with the connection's extensions.
trait ConnectionService:
    tower::Service<
        http::Request<Incoming>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> ConnectionService for S where
    S: tower::Service<
            http::Request<Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// One accepted connection's task state.
struct Connection {
    builder: Arc<Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    metrics: Arc<Metrics>,
    head_timeout: Duration,
    closer: CancellationToken,
}

impl Connection {
    /// A connection served by hyper; `watcher` keeps the graceful shutdown waiting for it.
    fn new(
        builder: Arc<Builder<TokioExecutor>>,
        watcher: hyper_util::server::graceful::Watcher,
        streams: &StreamsContext,
    ) -> Self {
        Connection {
            builder,
            watcher,
            metrics: streams.metrics.clone(),
            head_timeout: streams.limits.timeout,
            closer: CancellationToken::new(),
        }
    }

    /// Serves HTTP on `io` until the client leaves, the server shuts down, or the stream
    /// falls behind (the closer is cancelled).
    async fn drive<IO, S>(self, io: IO, svc: S)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: ConnectionService,
    {
        let io = FirstBytesDeadline::new(io, self.head_timeout);
        let conn = self
            .builder
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(svc));
        let conn = self.watcher.watch(conn.into_owned());
        tokio::select! {
            ended = conn => {
                if let Err(e) = ended {
                    connection_error(&self.metrics, &*e);
                }
            }
            _ = self.closer.cancelled() => {
                tracing::debug!("closed the connection of a slow client");
            }
        }
    }
}

/// Counts and logs the request heads hyper refused before any service saw them.
fn connection_error(metrics: &Metrics, e: &(dyn std::error::Error + 'static)) {
    let refusal = if let Some(e) = e.downcast_ref::<hyper::Error>() {
        if e.is_parse_too_large() {
            Some((Refusal::HeaderTooLarge, "request head too large (431)"))
        } else if e.is_timeout() {
            Some((Refusal::HeaderTimeout, "request head not received in time"))
        } else if e.is_parse() {
            Some((Refusal::BadRequest, "malformed request head (400)"))
        } else {
            None
        }
    } else if e
        .downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)
    {
        Some((Refusal::HeaderTimeout, "request head not received in time"))
    } else {
        None
    };
    match refusal {
        Some((reason, message)) => {
            metrics.refused(reason);
            tracing::info!(error = %e, "refused a connection: {message}");
        }
        None => tracing::debug!(error = %e, "connection ended with an error"),
    }
}
