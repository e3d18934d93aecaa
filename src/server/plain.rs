//! SSE streams written on the bare socket: the plain-connection path of the server.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for the whole life of an HTTP/1
//! connection (16 KiB more with HTTP/1-or-2 detection), which for an idle SSE stream is nearly
//! all of its memory (BENCHMARKS.md, "Where an idle connection's memory goes"). So the server
//! reads a connection's first request head itself ([`super::head`]) into the buffer that a
//! [`PlainConnection`] keeps beside its socket; a stream request goes through the same router
//! as any other (the endpoint, the application's channel function, every limit and layer). The
//! response head is then written here, and a body of unknown length (a stream's) as HTTP/1.1
//! chunks straight from the frames it yields, which for a stream are the shared, pre-encoded
//! frames: between events a stream holds no buffer at all. While a write is blocked, the
//! stream's handle (`transport::StreamHandle`, left in the request's sink) says when the
//! client became too slow. Refusals (4xx, or `retry:` when full) are written here too, and the
//! connection is kept alive for the next request; anything that is not a stream request goes
//! to hyper with the bytes read so far, and hyper serves the connection from then on.
//!
//! Like hyper, a stream ends when the client closes its side; what a client sends while its
//! stream is open is kept (up to the head limit) as the next pipelined request. Also as with
//! hyper, a kept-alive connection waits for its next request head at most the header read
//! timeout; one that expires idle after a response closes without counting as a refusal.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, header};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::head::{Head, HeadLimits, read_head};
use super::rewind::Rewind;
use crate::headers::wants_close;
use crate::metrics::{Metrics, Refusal};
use crate::refusal::Refused;
use crate::transport::{StreamHandle, StreamSink};

/// What a plain connection needs from its server.
pub(super) struct PlainContext {
    pub router: Router,
    pub metrics: Arc<Metrics>,
    pub limits: HeadLimits,
    /// Cancelled when the server shuts down: idle keep-alive connections close.
    pub stop: CancellationToken,
}

/// How a plain connection goes on once [`PlainConnection::serve`] returns.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Handoff {
    /// Closed, or to be closed.
    Done,
    /// hyper serves the rest.
    Hyper,
    /// The next head is past the limit: answer 431 and close.
    TooLarge,
}

/// Adds a connection's extensions (its peer) to each of its requests.
pub(super) type Extend<'a> = &'a (dyn Fn(&mut http::Extensions) + Send + Sync);

/// A plain connection: the socket, and the bytes read from it that no request took yet.
pub(super) struct PlainConnection<IO> {
    io: IO,
    buf: Vec<u8>,
}

impl<IO> PlainConnection<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    pub fn new(io: IO) -> Self {
        PlainConnection {
            io,
            buf: Vec::new(),
        }
    }

    /// Serves the connection's stream requests until it closes, a request for hyper comes (then
    /// [`PlainConnection::into_hyper`]), or a head is too large (then
    /// [`PlainConnection::refuse_too_large`]).
    ///
    /// What this future keeps while a stream is open is what an idle stream costs besides the
    /// socket, so the head read and the router call are boxed and only the writer's state
    /// lives across that await. It borrows the connection rather than owning it, so that the
    /// connection task does not hold the socket twice.
    pub async fn serve(&mut self, ctx: &PlainContext, extend: Extend<'_>) -> Handoff {
        let mut served = false;
        loop {
            // Boxed too: the timer and the read are only needed until the head is in.
            let head = Box::pin(read_head(
                &mut self.io,
                &mut self.buf,
                ctx.limits,
                &ctx.stop,
            ));
            let (request, len) = match head.await {
                Head::Stream(request, len) => (request, len),
                Head::Other => return Handoff::Hyper,
                Head::Closed => return Handoff::Done,
                Head::TimedOut if served && self.buf.is_empty() => {
                    // A kept-alive connection that stayed idle: it expires, nobody was refused.
                    tracing::debug!("closed an idle keep-alive connection");
                    return Handoff::Done;
                }
                // Answered by the caller, once this future (and the head) are gone.
                Head::TooLarge => return Handoff::TooLarge,
                Head::TimedOut => {
                    Refused::connection(
                        Refusal::HeaderTimeout,
                        "request head not received in time",
                    )
                    .record(&ctx.metrics);
                    return Handoff::Done;
                }
            };
            self.consume(len);
            let close = wants_close(request.headers());
            let Some((head, body, close)) = Box::pin(answer(ctx, request, close, extend)).await
            else {
                return Handoff::Done;
            };
            let finished =
                self.write(head, body, ctx.limits.max_bytes).await == StreamEnd::Finished;
            served = true;
            if !finished || close || ctx.stop.is_cancelled() {
                return Handoff::Done;
            }
        }
    }

    /// Answers a request head past the limit with 431 and `Connection: close`; the connection
    /// is then dropped.
    pub async fn refuse_too_large(mut self, metrics: &Metrics) {
        Refused::connection(Refusal::HeaderTooLarge, "request head too large (431)")
            .record(metrics);
        let answer = b"HTTP/1.1 431 Request Header Fields Too Large\r\n\
            content-type: text/plain\r\nconnection: close\r\n\
            content-length: 30\r\n\r\nthe request head is too large\n";
        let _ = tokio::io::AsyncWriteExt::write_all(&mut self.io, answer).await;
    }

    /// The socket for hyper, with the bytes already read coming first.
    pub fn into_hyper(self) -> Rewind<IO> {
        Rewind::new(self.buf, self.io)
    }

    /// Drops a request head of `len` bytes from the buffer: what follows it is the next
    /// request, and an empty buffer gives its memory back.
    fn consume(&mut self, len: usize) {
        self.buf.drain(..len);
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
    }

    /// Writes a response head and its body as chunks; what the client sends meanwhile is kept
    /// (up to `max_next` bytes) as its next request.
    fn write(
        &mut self,
        head: Bytes,
        body: Option<ChunkedBody>,
        max_next: usize,
    ) -> ChunkedStream<'_, IO> {
        ChunkedStream {
            io: &mut self.io,
            body,
            pending: Some(Chunk::raw(head)),
            last_chunk: false,
            next_request: &mut self.buf,
            max_next,
        }
    }
}

/// Bodies of known length up to this size are written whole, with their head; larger ones as
/// chunks.
const MAX_WHOLE_BODY: u64 = 64 * 1024;

/// A body written as chunks: a stream (with its handle), or whatever another route of the
/// application's router answered without a known length.
struct ChunkedBody {
    body: Body,
    stream: Option<StreamHandle>,
}

impl ChunkedBody {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ()>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx)).map(|f| f.map_err(drop));
        Poll::Ready(frame.map(|f| f.map(|f| f.into_data().unwrap_or_default())))
    }

    /// Whether the stream's client fell behind (never for other bodies).
    fn poll_slow(&mut self, cx: &mut Context<'_>) -> bool {
        self.stream.as_ref().is_some_and(|s| s.poll_slow(cx))
    }
}

/// Runs the request through the router: the response head, the body to write as chunks (a
/// small body of known length, a refusal or `retry:` when full, is written whole, with the head),
/// and whether to close the connection after it (the request or the response asked to).
async fn answer(
    ctx: &PlainContext,
    request: Request<()>,
    close: bool,
    extend: Extend<'_>,
) -> Option<(Bytes, Option<ChunkedBody>, bool)> {
    let mut request = request.map(|()| Body::empty());
    extend(request.extensions_mut());
    let sink = StreamSink::default();
    request.extensions_mut().insert(sink.clone());
    let response: Response<Body> = match ctx.router.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (mut parts, body) = response.into_parts();
    let close = close || wants_close(&parts.headers);
    let stream = sink
        .take()
        .or_else(|| parts.extensions.remove::<StreamHandle>());
    let status = parts.status;
    if status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED
    {
        // Responses that never have a body (RFC 9110, 15.3.5 and 15.4.5).
        let head = encode_head(status, &parts.headers, Framing::None, close);
        return Some((head.into(), None, close));
    }
    if body
        .size_hint()
        .exact()
        .is_none_or(|len| len > MAX_WHOLE_BODY)
    {
        let head = encode_head(status, &parts.headers, Framing::Chunked, close);
        return Some((head.into(), Some(ChunkedBody { body, stream }), close));
    }
    let body = match body.collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            tracing::debug!(error = %e, "response body failed");
            return None;
        }
    };
    let mut out = encode_head(status, &parts.headers, Framing::Length(body.len()), close);
    out.extend_from_slice(&body);
    Some((out.into(), None, close))
}

/// How a response's body is delimited.
#[derive(Clone, Copy, Debug)]
enum Framing {
    Length(usize),
    Chunked,
    /// No body at all (204, 304, 1xx).
    None,
}

/// The response head, in the form hyper writes it: the headers as given, the body's framing,
/// and `date`.
fn encode_head(
    status: http::StatusCode,
    headers: &HeaderMap,
    framing: Framing,
    close: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(len) => {
            out.extend_from_slice(format!("content-length: {len}\r\n").as_bytes());
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None => {}
    }
    if close && !headers.contains_key(header::CONNECTION) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// How a stream written here ended.
#[derive(Debug, PartialEq, Eq)]
enum StreamEnd {
    /// The body ended (long polling, shutdown) and the last chunk was written.
    Finished,
    /// The client left, a write failed, or the client was too slow.
    Broken,
}

/// One chunk being written: its size line, the frame, and the closing CRLF (or bytes as they
/// are: the response head).
struct Chunk {
    size_line: [u8; 18],
    size_len: u8,
    framed: bool,
    data: Bytes,
    /// Bytes of size line + data + CRLF written so far.
    written: usize,
}

impl Chunk {
    fn new(data: Bytes) -> Self {
        let mut size_line = [0u8; 18];
        let mut len = data.len();
        let mut digits = [0u8; 16];
        let mut n = 0;
        loop {
            digits[n] = b"0123456789abcdef"[len & 0xf];
            n += 1;
            len >>= 4;
            if len == 0 {
                break;
            }
        }
        for i in 0..n {
            size_line[i] = digits[n - 1 - i];
        }
        size_line[n] = b'\r';
        size_line[n + 1] = b'\n';
        Chunk {
            size_line,
            size_len: (n + 2) as u8,
            framed: true,
            data,
            written: 0,
        }
    }

    /// Bytes written as they are.
    fn raw(data: Bytes) -> Self {
        Chunk {
            size_line: [0; 18],
            size_len: 0,
            framed: false,
            data,
            written: 0,
        }
    }

    /// The terminating zero-size chunk.
    fn last() -> Self {
        let mut size_line = [0u8; 18];
        size_line[..3].copy_from_slice(b"0\r\n");
        Chunk {
            size_line,
            size_len: 3,
            framed: true,
            data: Bytes::new(),
            written: 0,
        }
    }

    fn crlf(&self) -> &'static [u8] {
        if self.framed { b"\r\n" } else { b"" }
    }

    fn total(&self) -> usize {
        self.size_len as usize + self.data.len() + self.crlf().len()
    }

    /// Writes what is left; `Ready(Ok)` once all of it is written.
    fn poll_write<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.written < self.total() {
            let size = &self.size_line[..self.size_len as usize];
            let (a, b, c) = split_at(self.written, size, &self.data, self.crlf());
            let slices = [IoSlice::new(a), IoSlice::new(b), IoSlice::new(c)];
            let n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// The three parts after skipping `skip` bytes of their concatenation.
fn split_at<'a>(
    skip: usize,
    a: &'a [u8],
    b: &'a [u8],
    c: &'a [u8],
) -> (&'a [u8], &'a [u8], &'a [u8]) {
    let sa = skip.min(a.len());
    let sb = (skip - sa).min(b.len());
    let sc = (skip - sa - sb).min(c.len());
    (&a[sa..], &b[sb..], &c[sc..])
}

/// Writes a stream's body as chunks until it ends or the client leaves.
struct ChunkedStream<'a, IO> {
    io: &'a mut IO,
    /// `None` for a complete response, written as `pending`.
    body: Option<ChunkedBody>,
    pending: Option<Chunk>,
    /// The pending chunk is the last one.
    last_chunk: bool,
    /// Bytes the client sent meanwhile: its next request.
    next_request: &'a mut Vec<u8>,
    max_next: usize,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> ChunkedStream<'_, IO> {
    /// Reads what the client sent, to see it leave: `Ready` when it closed or sent more than a
    /// request head can hold.
    fn poll_client_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut scratch = [0u8; 512];
        loop {
            let mut read = ReadBuf::new(&mut scratch);
            match Pin::new(&mut *self.io).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) if read.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {
                    if self.next_request.len() + read.filled().len() > self.max_next {
                        return Poll::Ready(());
                    }
                    self.next_request.extend_from_slice(read.filled());
                }
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Future for ChunkedStream<'_, IO> {
    type Output = StreamEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<StreamEnd> {
        let this = self.get_mut();
        loop {
            if let Some(chunk) = &mut this.pending {
                match chunk.poll_write(this.io, cx) {
                    Poll::Ready(Ok(())) => this.pending = None,
                    Poll::Ready(Err(_)) => return Poll::Ready(StreamEnd::Broken),
                    Poll::Pending => {
                        // A client that does not read is closed as soon as its queue is full,
                        // not when it reads again.
                        let slow = this.body.as_mut().is_some_and(|b| b.poll_slow(cx));
                        if slow {
                            tracing::info!("slow client: closing its connection");
                        }
                        if slow || this.poll_client_gone(cx).is_ready() {
                            return Poll::Ready(StreamEnd::Broken);
                        }
                        return Poll::Pending;
                    }
                }
                if this.last_chunk {
                    return Poll::Ready(StreamEnd::Finished);
                }
            }
            let Some(body) = &mut this.body else {
                return Poll::Ready(StreamEnd::Finished);
            };
            match body.poll_frame(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    if !data.is_empty() {
                        this.pending = Some(Chunk::new(data));
                    }
                }
                Poll::Ready(Some(Err(_))) => return Poll::Ready(StreamEnd::Broken),
                Poll::Ready(None) => {
                    this.pending = Some(Chunk::last());
                    this.last_chunk = true;
                }
                Poll::Pending => {
                    if this.poll_client_gone(cx).is_ready() {
                        return Poll::Ready(StreamEnd::Broken);
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_lines_are_hex() {
        for (len, line) in [
            (0usize, "0\r\n"),
            (9, "9\r\n"),
            (26, "1a\r\n"),
            (4096, "1000\r\n"),
        ] {
            let c = Chunk::new(Bytes::from(vec![b'x'; len]));
            assert_eq!(&c.size_line[..c.size_len as usize], line.as_bytes());
        }
    }

    #[test]
    fn a_partly_written_chunk_goes_on_where_it_stopped() {
        let (a, b, c) = split_at(5, b"3\r\n", b"abc", b"\r\n");
        assert_eq!((a, b, c), (&b""[..], &b"c"[..], &b"\r\n"[..]));
        let (a, b, c) = split_at(1, b"3\r\n", b"abc", b"\r\n");
        assert_eq!((a, b, c), (&b"\r\n"[..], &b"abc"[..], &b"\r\n"[..]));
    }

    /// What an idle stream's connection task holds besides the socket is this future (and the
    /// task's header): printed for BENCHMARKS.md (`cargo test --lib per_stream_state --
    /// --nocapture`), bounded so that it stays small.
    #[test]
    fn per_stream_state_of_a_plain_connection() {
        let ctx = PlainContext {
            router: Router::new(),
            metrics: Arc::new(Metrics::default()),
            limits: HeadLimits {
                max_bytes: 1024,
                timeout: std::time::Duration::from_secs(1),
            },
            stop: CancellationToken::new(),
        };
        let (_client, server) = tokio::io::duplex(64);
        let extend = |_: &mut http::Extensions| {};
        let mut conn = PlainConnection::new(server);
        let serve = conn.serve(&ctx, &extend);
        let size = std::mem::size_of_val(&serve);
        println!("plain connection future (PlainConnection::serve) {size} B");
        assert!(size <= 512, "PlainConnection::serve is {size} B");
    }

    #[tokio::test]
    async fn frames_are_written_as_chunks_then_the_last_chunk() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let mut next = Vec::new();
        let write = ChunkedStream {
            io: &mut server,
            body: Some(ChunkedBody {
                body: Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
                    [Ok::<_, std::convert::Infallible>(http_body::Frame::data(
                        Bytes::from_static(b"data: hi\n\n"),
                    ))],
                ))),
                stream: None,
            }),
            pending: Some(Chunk::raw(Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n"))),
            last_chunk: false,
            next_request: &mut next,
            max_next: 1024,
        };
        assert_eq!(write.await, StreamEnd::Finished);
        drop(server);
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut client, &mut out)
            .await
            .unwrap();
        assert_eq!(out, "HTTP/1.1 200 OK\r\n\r\na\r\ndata: hi\n\n\r\n0\r\n\r\n");
    }
}
