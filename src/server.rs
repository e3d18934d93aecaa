//! The transport: serves any axum `Router` (usually [`Redisse::router`]) on any listener, with
//! the sockets, HTTP settings and graceful shutdown a push server needs.
//!
//! We drive hyper ourselves rather than through `axum::serve` to set what a push server needs:
//! `TCP_NODELAY` on every socket (small frames must not wait for Nagle), keepalive and
//! `TCP_USER_TIMEOUT` (a peer that vanished is found within two minutes; [`Tcp`] sets them), a
//! request-head size limit (431 past it) and a header read timeout against slow-loris clients,
//! and a shutdown that first ends every SSE stream (they would otherwise keep hyper's graceful
//! shutdown waiting forever, tokio-rs/axum#2673), then waits a bounded time for connections to
//! finish. Listeners are axum's [`Listener`] trait, so anything that composes with
//! `axum::serve` (`ListenerExt::tap_io`, a listener of the application's own) serves here too;
//! the peer's address is in every request's extensions as `ConnectInfo<L::Addr>`.
//!
//! On plain connections (TCP without TLS, unix sockets) stream requests are read and answered
//! by `plain`, which writes SSE responses on the bare socket and so keeps no HTTP buffer per
//! idle stream (about 2.5 KiB per stream instead of about 23 KiB under hyper, BENCHMARKS.md);
//! the first request that is not a stream request hands the connection to hyper. TLS
//! connections are served by hyper throughout. Stream requests go through the router and its
//! layers like any other; each request carries a `transport::StreamSink` in which the endpoint
//! leaves the handle of a stream it opens, and the server writes a body of unknown length as
//! chunks.
//!
//! A client that does not read leaves the server blocked on a write, where nobody polls the
//! body. On both paths the server then watches the stream's handle and ends the stream as soon
//! as the client's queue overflowed: over HTTP/1 (the bare socket, or hyper) by closing the
//! connection (`slow`), over HTTP/2 by resetting that stream alone, since the connection's
//! other streams may be read fine (`h2_streams`; a client that reads nothing at all is closed by
//! HTTP/2 PINGs). Refused request heads (too large, too
//! slow, malformed) are counted in the metrics and logged here, since hyper answers them before
//! any service sees a request.

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
mod h2_streams;
mod head;
mod listen;
mod plain;
mod rewind;
mod slow;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
pub use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use self::first_bytes::FirstBytesDeadline;
use self::h2_streams::StreamExecutor;
use self::head::HeadLimits;
#[cfg(fuzzing)]
pub(crate) use self::head::decide as decide_request_head;
#[cfg(unix)]
pub use self::listen::Unix;
pub use self::listen::{LISTEN_BACKLOG, Tcp};
use self::plain::{Handoff, PlainConnection, PlainContext};
use self::slow::SlowStreams;
use crate::instance::Redisse;
use crate::metrics::{Metrics, Refusal};
use crate::refusal::Refused;
#[cfg(feature = "tls")]
use crate::tls::Tls;
use crate::transport::{StreamHandle, StreamSink};

/// What a connection task needs besides the socket and the service.
struct ConnectionContext<'a> {
    builder: Arc<Builder<StreamExecutor>>,
    graceful: &'a GracefulShutdown,
    #[cfg(feature = "tls")]
    tls: Option<Tls>,
    /// The router, the metrics and the head limits; on plain connections, streams are written
    /// on the bare socket with them.
    plain: Arc<PlainContext>,
}

/// Serves `router` (usually [`Redisse::router`]) on `listener` until `shutdown` completes, then
/// ends every stream of `redisse` with a jittered `retry:` and waits at most the configured
/// shutdown timeout for connections to close.
pub async fn serve<L>(
    listener: L,
    redisse: Redisse,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    L: Listener,
    L::Addr: Clone + Send + Sync + 'static,
{
    serve_inner(listener, Secure::Plain, redisse, router, shutdown).await
}

/// [`serve`], with HTTPS when `tls` is given (feature `tls`): the TLS handshake must complete
/// within the header read timeout.
#[cfg(feature = "tls")]
pub async fn serve_with_tls<L>(
    listener: L,
    tls: Option<Tls>,
    redisse: Redisse,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    L: Listener,
    L::Addr: Clone + Send + Sync + 'static,
{
    let secure = match tls {
        Some(tls) => Secure::Tls(tls),
        None => Secure::Plain,
    };
    serve_inner(listener, secure, redisse, router, shutdown).await
}

/// Whether connections are TLS.
enum Secure {
    Plain,
    #[cfg(feature = "tls")]
    Tls(Tls),
}

async fn serve_inner<L>(
    mut listener: L,
    secure: Secure,
    redisse: Redisse,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    L: Listener,
    L::Addr: Clone + Send + Sync + 'static,
{
    let config = redisse.config();
    let mut builder = Builder::new(StreamExecutor);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(8192));
    // A stream that is not read is reset alone (`h2_streams`); a client that reads nothing at
    // all any more answers no PING: after a heartbeat period without a frame from it, one is
    // sent, and without an answer within another the connection closes (even when its socket is
    // full: tests/it/slow_h2_stream.rs checks both).
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(config.max_header_bytes as u32)
        .keep_alive_interval(config.heartbeat)
        .keep_alive_timeout(config.heartbeat);
    let graceful = GracefulShutdown::new();
    let stop = CancellationToken::new();
    let ctx = ConnectionContext {
        builder: Arc::new(builder),
        graceful: &graceful,
        #[cfg(feature = "tls")]
        tls: match secure {
            Secure::Tls(tls) => Some(tls),
            Secure::Plain => None,
        },
        plain: Arc::new(PlainContext {
            router: router.clone(),
            metrics: redisse.shared.metrics.clone(),
            limits: HeadLimits {
                max_bytes: config.max_header_bytes,
                timeout: config.header_read_timeout,
            },
            stop: stop.clone(),
        }),
    };
    #[cfg(not(feature = "tls"))]
    let Secure::Plain = secure;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            (io, addr) = listener.accept() => {
                let peer = ConnectInfo(addr);
                #[cfg(feature = "tls")]
                if let Some(tls) = &ctx.tls {
                    spawn_tls(&ctx, tls, io, peer);
                    continue;
                }
                spawn_plain(&ctx, io, peer);
            }
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
    // A unix socket's file goes with its listener.
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

/// Serves a TLS connection with hyper throughout (HTTP/1 or HTTP/2 by ALPN); the handshake must
/// complete within the header read timeout.
#[cfg(feature = "tls")]
fn spawn_tls<IO, P>(ctx: &ConnectionContext<'_>, tls: &Tls, io: IO, peer: P)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    P: Clone + Send + Sync + 'static,
{
    let conn = Connection::new(ctx.builder.clone(), ctx.graceful.watcher(), &ctx.plain);
    let svc = connection_service(&ctx.plain, peer, &conn.slow);
    let acceptor = tls.acceptor.clone();
    tokio::spawn(async move {
        match tokio::time::timeout(conn.head_timeout, acceptor.accept(io)).await {
            Ok(Ok(stream)) => conn.drive(stream, svc).await,
            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
            Err(_) => Refused::connection(Refusal::HeaderTimeout, "TLS handshake not done in time")
                .record(&conn.metrics),
        }
    });
}

/// Serves a plain (not TLS) connection: its stream requests on the bare socket (`plain`), and
/// from the first other request on, hyper.
fn spawn_plain<IO, P>(ctx: &ConnectionContext<'_>, io: IO, peer: P)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    P: Clone + Send + Sync + 'static,
{
    // Held until the task ends, so that the graceful shutdown waits for it.
    let watcher = ctx.graceful.watcher();
    let builder = ctx.builder.clone();
    let plain = ctx.plain.clone();
    let mut plain_conn = PlainConnection::new(io);
    let task = async move {
        let extend = |ext: &mut http::Extensions| {
            ext.insert(peer.clone());
        };
        match plain_conn.serve(&plain, &extend).await {
            Handoff::Done => {}
            Handoff::Hyper => {
                let conn = Connection::new(builder, watcher, &plain);
                let svc = connection_service(&plain, peer, &conn.slow);
                // Boxed: hyper's connection is large, and most connections never get here.
                Box::pin(conn.drive(plain_conn.into_hyper(), svc)).await;
            }
            Handoff::TooLarge => Box::pin(plain_conn.refuse_too_large(&plain.metrics)).await,
        }
    };
    tokio::spawn(task);
}

/// The router, with the connection's peer in every request's extensions; the handles of the
/// streams it answers are watched for slow clients. A head larger than the limit is answered
/// 431 here: hyper's own limit cannot go below its 8 KiB buffer.
fn connection_service<P: Clone + Send + Sync + 'static>(
    plain: &PlainContext,
    peer: P,
    slow: &SlowStreams,
) -> impl ConnectionService {
    let router = plain.router.clone();
    let metrics = plain.metrics.clone();
    let max_head = plain.limits.max_bytes;
    let slow = slow.clone();
    tower::service_fn(move |mut req: http::Request<Incoming>| {
        let too_large =
            (head::parsed_size(&req) > max_head).then(|| head_too_large(&req, &metrics));
        req.extensions_mut().insert(peer.clone());
        let sink = StreamSink::default();
        req.extensions_mut().insert(sink.clone());
        let slow = slow.clone();
        let response = router.clone().oneshot(req);
        async move {
            if let Some(refused) = too_large {
                return Ok(refused);
            }
            let response = response.await?;
            let handle = sink
                .take()
                .or_else(|| response.extensions().get::<StreamHandle>().cloned());
            // Over HTTP/2 the stream's own task watches it (and resets that stream alone); over
            // HTTP/1 the connection does.
            if let Some(handle) = handle
                && let Err(handle) = h2_streams::adopt(handle)
            {
                slow.watch(handle);
            }
            Ok(response)
        }
    })
}

/// The 431 for a head past the limit, counted and logged like the ones hyper and `plain`
/// answer; an HTTP/1 connection is closed after it (the body, if any, is not read).
fn head_too_large<B>(req: &http::Request<B>, metrics: &Metrics) -> axum::response::Response {
    Refused::connection(Refusal::HeaderTooLarge, "request head too large (431)").record(metrics);
    let mut res = (
        http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "the request head is too large\n",
    )
        .into_response();
    if req.version() < http::Version::HTTP_2 {
        res.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    res
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

/// One connection served by hyper.
struct Connection {
    builder: Arc<Builder<StreamExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    metrics: Arc<Metrics>,
    head_timeout: Duration,
    /// The streams this connection carries, watched for slow clients.
    slow: SlowStreams,
}

impl Connection {
    /// A connection served by hyper; `watcher` keeps the graceful shutdown waiting for it.
    fn new(
        builder: Arc<Builder<StreamExecutor>>,
        watcher: hyper_util::server::graceful::Watcher,
        plain: &PlainContext,
    ) -> Self {
        Connection {
            builder,
            watcher,
            metrics: plain.metrics.clone(),
            head_timeout: plain.limits.timeout,
            slow: SlowStreams::default(),
        }
    }

    /// Serves HTTP on `io` until the client leaves, the server shuts down, or (HTTP/1) its
    /// stream's client falls behind. Over HTTP/2 a stream whose client falls behind is reset by
    /// its own task (`h2_streams`) and the connection goes on.
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
            _ = self.slow.any_slow() => {
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
            Refused::connection(reason, format_args!("{message}: {e}")).record(metrics)
        }
        None => tracing::debug!(error = %e, "connection ended with an error"),
    }
}
