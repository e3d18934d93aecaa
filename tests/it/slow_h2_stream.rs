//! Over HTTP/2 one connection carries many streams (a browser shares one per origin between all
//! its tabs): a stream whose client stops reading is reset alone, and the other streams of its
//! connection keep receiving. A client that stops reading the whole connection is still
//! disconnected.
//!
//! The client is the `h2` crate over plain TCP with prior knowledge (h2c), which the server
//! hands to hyper; an HTTPS connection that chose `h2` by ALPN is served by the same code
//! (`server::Connection::drive`). HTTP/2 flow control is what makes one stream slow and not the
//! others: the client gives the server a window of [`WINDOW`] bytes per stream and gives back
//! (releases) what it reads only on the streams it reads, so the server can send nothing more
//! on the stream it does not, and that stream's queue grows past `--max-queue-bytes`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use h2::client::{self, SendRequest};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use crate::support::raw::connect_small;
use crate::support::sse::SseStream;
use crate::support::{Backend, PATIENCE, TestServer};

/// Per-stream queue bound: small, so that the stream nobody reads trips it quickly.
const QUEUE: usize = 64 * 1024;
/// Size of each event's data.
const EVENT: usize = 8 * 1024;
/// The client's flow-control window per stream (HTTP/2's default).
const WINDOW: u32 = 65_535;
/// The connection's window: many streams' worth, so that the bytes of the stream that is not
/// read never hold up the others.
const CONNECTION_WINDOW: u32 = 16 << 20;
/// Events published: 1 MiB, far more than a stream's window, hyper's buffer and the queue hold.
const EVENTS: usize = 128;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_is_not_read_is_reset_alone_and_its_siblings_keep_up() {
    let mut config = Backend::memory().config();
    config.max_queue_bytes = QUEUE;
    let server = TestServer::start(config).await;
    // The counter exists, so each stream's first event is `lastEventId`, sent once it is live.
    server.publish("t.warm", "warmup", "").await;
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let (h2, _connection) = handshake(tcp).await;

    let mut reader = reading(request(&h2, "/?big").await);
    assert_eq!(reader.status, 200);
    assert_eq!(reader.next().await.event, "lastEventId");
    let stalled = request(&h2, "/?big").await;
    assert_eq!(stalled.status(), 200);
    let mut stalled = stalled.into_body();
    let first = read_unreleased(&mut stalled, b"\n\n").await;
    assert!(
        first.starts_with(b"id: ") && first.ends_with(b"event: lastEventId\ndata: \n\n"),
        "{:?}",
        String::from_utf8_lossy(&first)
    );
    server.wait_connections(2).await;

    let data = "x".repeat(EVENT);
    for _ in 0..EVENTS {
        let id = server.publish("big", "big", &data).await;
        let e = reader.next().await;
        assert_eq!(
            e.id,
            Some(id.to_string()),
            "the reading stream lost an event"
        );
        assert_eq!(e.data.len(), EVENT);
        reader.raw = Vec::new();
    }
    // The stream that was not read is reset: what it can still read is what the server sent
    // within its window, then RST_STREAM.
    let end = timeout(PATIENCE, end_unreleased(&mut stalled))
        .await
        .expect("the stalled stream ends in time");
    match end {
        Err(e) => assert!(
            e.is_reset(),
            "the stalled stream ended with {e}, not a reset"
        ),
        Ok(read) => panic!("the stalled stream ended without a reset after {read} bytes"),
    }
    server.wait_connections(1).await;
    assert_eq!(server.redisse.metrics().slow_disconnects(), 1);
    // The connection is still up: its other stream still receives, and it takes a new one.
    let id = server.publish("big", "after", "x").await;
    let e = reader.next().await;
    assert_eq!((e.id, e.event), (Some(id.to_string()), "after".to_owned()));
    let mut third = reading(request(&h2, "/?big").await);
    assert_eq!(third.status, 200);
    assert_eq!(third.next().await.event, "lastEventId");
    assert_eq!(server.redisse.metrics().slow_disconnects(), 1);
}

/// A client that reads nothing at all any more (its socket, not one stream) while events keep
/// coming: its streams end, and the server closes the connection in bounded time (an
/// unanswered PING), although its socket is full (a small receive buffer), so that nothing the
/// server writes on it, not even the GOAWAY it closes with, gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_is_not_read_at_all_is_closed() {
    let mut config = Backend::memory().config();
    config.max_queue_bytes = QUEUE;
    // HTTP/2 PINGs and the write-stall bound follow the heartbeat period.
    config.heartbeat = Duration::from_millis(500);
    let server = TestServer::start(config).await;
    let (gate, tcp, h2) = paused_later(&server).await;
    let _streams = open_two(&server, &h2).await;

    gate.store(true, Ordering::SeqCst);
    let data = "x".repeat(EVENT);
    for _ in 0..EVENTS {
        server.publish("big", "big", &data).await;
    }
    server.wait_connections(0).await;
    wait_closed(&tcp).await;
}

/// A client that reads nothing and is sent nothing but heartbeats (its socket never fills, no
/// stream overflows): the PING it leaves unanswered closes its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_that_answers_no_ping_is_closed() {
    let mut config = Backend::memory().config();
    config.heartbeat = Duration::from_millis(500);
    let server = TestServer::start(config).await;
    let (gate, tcp, h2) = paused_later(&server).await;
    let _streams = open_two(&server, &h2).await;

    gate.store(true, Ordering::SeqCst);
    server.wait_connections(0).await;
    wait_closed(&tcp).await;
    assert_eq!(server.redisse.metrics().slow_disconnects(), 0);
}

/// An HTTP/2 connection with a small receive buffer whose reading stops when the flag is set.
async fn paused_later(
    server: &TestServer,
) -> (Arc<AtomicBool>, Arc<TcpStream>, SendRequest<Bytes>) {
    // The counter exists, so each stream's first event is `lastEventId`, sent once it is live.
    server.publish("t.warm", "warmup", "").await;
    let tcp = Arc::new(connect_small(server.addr).await);
    let paused = Arc::new(AtomicBool::new(false));
    let gate = Gate {
        tcp: tcp.clone(),
        paused: paused.clone(),
    };
    let (h2, _connection) = handshake(gate).await;
    (paused, tcp, h2)
}

/// Two live streams on `h2`, read and released.
async fn open_two(server: &TestServer, h2: &SendRequest<Bytes>) -> Vec<SseStream> {
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut stream = reading(request(h2, "/?big").await);
        assert_eq!(stream.status, 200);
        assert_eq!(stream.next().await.event, "lastEventId");
        streams.push(stream);
    }
    server.wait_connections(2).await;
    streams
}

/// Waits until the server has closed its end of the connection. The client's end cannot tell:
/// a server's FIN waits behind the bytes a client that reads nothing left in its buffers, so
/// the server's end is read from the kernel's table of TCP sockets (Linux's `/proc/net/tcp`):
/// it must leave ESTABLISHED (it goes to FIN_WAIT1, or away).
async fn wait_closed(tcp: &TcpStream) {
    let client = tcp.local_addr().expect("client address");
    let server = tcp.peer_addr().expect("server address");
    let deadline = Instant::now() + PATIENCE;
    loop {
        match tcp_state(server, client) {
            Some(ESTABLISHED) => {}
            _ => return,
        }
        assert!(
            Instant::now() < deadline,
            "the server did not close the connection of a client that reads nothing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The state code of an established TCP socket in `/proc/net/tcp`.
const ESTABLISHED: u8 = 0x01;

/// The state of the IPv4 TCP socket from `local` to `remote`, `None` when there is none.
fn tcp_state(local: std::net::SocketAddr, remote: std::net::SocketAddr) -> Option<u8> {
    let table = std::fs::read_to_string("/proc/net/tcp")
        .expect("/proc/net/tcp (these tests read socket states on Linux)");
    let hex = |addr: std::net::SocketAddr| match addr {
        std::net::SocketAddr::V4(a) => {
            format!(
                "{:08X}:{:04X}",
                u32::from_le_bytes(a.ip().octets()),
                a.port()
            )
        }
        std::net::SocketAddr::V6(_) => panic!("an IPv4 address expected: {addr}"),
    };
    let (local, remote) = (hex(local), hex(remote));
    table.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace().skip(1);
        let (l, r, st) = (fields.next()?, fields.next()?, fields.next()?);
        (l == local && r == remote).then(|| u8::from_str_radix(st, 16).ok())?
    })
}

/// The HTTP/2 handshake, with the windows above; the connection runs on a task of its own.
async fn handshake<IO>(io: IO) -> (SendRequest<Bytes>, tokio::task::JoinHandle<()>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) = client::Builder::new()
        .initial_window_size(WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake(io)
        .await
        .expect("HTTP/2 handshake");
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (send, task)
}

/// Opens a stream on the connection: `GET path` with `Accept: text/event-stream`.
async fn request(h2: &SendRequest<Bytes>, path: &str) -> http::Response<RecvStream> {
    let req = http::Request::get(format!("http://localhost{path}"))
        .header("accept", "text/event-stream")
        .body(())
        .expect("request");
    let mut send = timeout(PATIENCE, h2.clone().ready())
        .await
        .expect("the connection takes a new stream in time")
        .expect("the connection takes a new stream");
    let (response, _) = send.send_request(req, true).expect("send the request");
    timeout(PATIENCE, response)
        .await
        .expect("the response head in time")
        .expect("the response head")
}

/// A stream read as events come, each chunk released (the server may send as much again).
fn reading(response: http::Response<RecvStream>) -> SseStream {
    let (parts, body) = response.into_parts();
    let chunks = futures_util::stream::unfold(body, |mut body| async move {
        let chunk = body.data().await?.map_err(|e| e.to_string());
        if let Ok(chunk) = &chunk {
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        Some((chunk, body))
    });
    SseStream::from_parts(parts.status, parts.headers, chunks)
}

/// Reads without releasing anything until what was read ends with `end`.
async fn read_unreleased(body: &mut RecvStream, end: &[u8]) -> Vec<u8> {
    let mut read = Vec::new();
    while !read.ends_with(end) {
        let chunk = timeout(PATIENCE, body.data())
            .await
            .expect("data in time")
            .expect("the stream goes on")
            .expect("the stream is not reset");
        read.extend_from_slice(&chunk);
    }
    read
}

/// Reads without releasing anything until the stream ends: the bytes read, or how it failed.
async fn end_unreleased(body: &mut RecvStream) -> Result<usize, h2::Error> {
    let mut read = 0;
    while let Some(chunk) = body.data().await {
        read += chunk?.len();
    }
    Ok(read)
}

/// A socket whose reading the test can stop for good (writing goes on).
#[derive(Clone)]
struct Gate {
    tcp: Arc<TcpStream>,
    paused: Arc<AtomicBool>,
}

impl AsyncRead for Gate {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.paused.load(Ordering::SeqCst) {
            // Never woken: reading stops for good.
            return Poll::Pending;
        }
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            match self.tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Gate {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.tcp.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
