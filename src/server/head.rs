//! Reading one request head from a plain connection, to decide who serves it.
//!
//! The server writes SSE streams on the bare socket itself (`server::plain`), so that an
//! idle stream keeps no HTTP read or write buffer; hyper serves everything else. This module
//! reads until the first request head is complete and sorts it: a plain HTTP/1.1 `GET` that
//! asks for `text/event-stream` and carries no body is a [`Head::Stream`]; anything else (other
//! methods, bodies, upgrades, `Expect`, HTTP/1.0, the HTTP/2 preface, a head hyper would refuse
//! as malformed or too large) is [`Head::Other`], and hyper takes the connection with the bytes
//! read so far, answering exactly as before. The head must be complete within the header read
//! timeout (slow-loris clients are closed), and a server shutdown ends the wait.

use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use crate::headers::Accepts;

/// The HTTP/2 connection preface (h2c with prior knowledge goes to hyper).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Headers parsed on the stack; a head with more goes to hyper (which allows 100).
const MAX_HEADERS: usize = 64;

/// The first read's buffer; it doubles up to the configured head limit.
const FIRST_READ: usize = 2048;

/// What the head read decided.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // returned once per request, from a boxed future
pub(super) enum Head {
    /// A stream request, and the length of its head in the buffer.
    Stream(Request<()>, usize),
    /// Anything else: hyper serves the connection from the buffered bytes on.
    Other,
    /// The client closed the connection (or the read failed) before a complete head, or the
    /// server is shutting down.
    Closed,
    /// The head was not complete within the header read timeout.
    TimedOut,
    /// The head is larger than the limit (431): refused here, since hyper's own limit cannot
    /// go below its 8 KiB buffer.
    TooLarge,
}

/// Limits of a head read.
#[derive(Clone, Copy, Debug)]
pub(super) struct HeadLimits {
    pub max_bytes: usize,
    pub timeout: Duration,
}

/// Reads into `buf` (which may already hold pipelined bytes) until a head is decided.
pub(super) async fn read_head<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut Vec<u8>,
    limits: HeadLimits,
    stop: &CancellationToken,
) -> Head {
    let read = async {
        // Parsing starts over from the first byte each time, so after the first read (which
        // catches garbage and TLS hellos at once) it waits for the end of a head: a client
        // trickling a large head byte by byte then costs linear time, not quadratic.
        let mut scanned: usize = 0;
        let mut first = true;
        loop {
            let ended = head_end(&buf[scanned.saturating_sub(3)..]);
            scanned = buf.len();
            if (first || ended)
                && let Some(head) = sort(buf)
            {
                return head;
            }
            // The first bytes read are sorted as soon as they arrive (garbage and TLS hellos
            // are refused at once), only then does parsing wait for the end of a head.
            first = buf.is_empty();
            if buf.len() >= limits.max_bytes {
                return Head::TooLarge;
            }
            if buf.capacity() == buf.len() {
                let more = buf.len().max(FIRST_READ).min(limits.max_bytes - buf.len());
                buf.reserve_exact(more);
            }
            let room = buf.capacity().min(limits.max_bytes) - buf.len();
            match (&mut *io).take(room as u64).read_buf(buf).await {
                Ok(0) | Err(_) => return Head::Closed,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        head = tokio::time::timeout(limits.timeout, read) => head.unwrap_or(Head::TimedOut),
        _ = stop.cancelled() => Head::Closed,
    }
}

/// Whether `bytes` hold the blank line that ends a head (CRLF CRLF, or bare LFs as httparse
/// accepts them; the HTTP/2 preface has one too).
fn head_end(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n")
}

/// Sorts the buffered bytes: `None` while the head is incomplete.
fn sort(buf: &[u8]) -> Option<Head> {
    if buf.is_empty() {
        return None;
    }
    if H2_PREFACE.starts_with(buf) && buf.len() < H2_PREFACE.len() {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => None,
        Ok(httparse::Status::Complete(len)) => Some(match stream_request(&req) {
            Some(request) => Head::Stream(request, len),
            None => Head::Other,
        }),
        Err(_) => Some(Head::Other),
    }
}

/// The request, if it is one the server streams itself.
fn stream_request(req: &httparse::Request<'_, '_>) -> Option<Request<()>> {
    if req.method != Some("GET") || req.version != Some(1) {
        return None;
    }
    let uri = Uri::try_from(req.path?).ok()?;
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = Method::GET;
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    let map = &mut parts.headers;
    map.reserve(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        map.append(name, value);
    }
    // Any framing header, even `Content-Length: 0`, goes to hyper, which validates it (several
    // or conflicting lengths are a 400 there, not a body taken for the next request).
    let map = &parts.headers;
    let has_body =
        map.contains_key(header::CONTENT_LENGTH) || map.contains_key(header::TRANSFER_ENCODING);
    if has_body || map.contains_key(header::UPGRADE) || map.contains_key(header::EXPECT) {
        return None;
    }
    // Parsed once: the endpoint reads it back from the extensions.
    if !Accepts::keep(&mut parts.extensions, &parts.headers).event_stream {
        return None;
    }
    Some(Request::from_parts(parts, ()))
}

/// For the fuzz target: `None` while the head is incomplete, `Some(None)` for hyper, and
/// `Some(Some(len))` for a stream request whose head is `len` bytes.
#[cfg(fuzzing)]
pub(crate) fn decide(buf: &[u8]) -> Option<Option<usize>> {
    sort(buf).map(|head| match head {
        Head::Stream(_, len) => Some(len),
        _ => None,
    })
}

/// The size of a request's head as hyper parsed it, written the shortest way HTTP/1.1 allows:
/// request line, each header as `name: value` and CRLFs. Hyper cannot refuse a head smaller
/// than its 8 KiB read buffer, so the server compares this with a lower limit itself; the bytes
/// on the wire are at least as many (optional whitespace, folded lines), never fewer.
pub(super) fn parsed_size<B>(req: &Request<B>) -> usize {
    let target = match req.uri().path_and_query() {
        // Origin form (`/path?query`), as HTTP/1 clients send it; HTTP/2 requests carry the
        // scheme and the authority in pseudo-headers of about the same size.
        Some(pq) if req.uri().scheme().is_none() => pq.as_str().len(),
        _ => req.uri().to_string().len(),
    };
    // `GET /path HTTP/1.1\r\n`
    let line = req.method().as_str().len() + 1 + target + 1 + "HTTP/1.1".len() + 2;
    let headers: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    line + headers + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parsed_head_counts_as_its_shortest_http_1_1_form() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n";
        let req = Request::builder()
            .uri("/a?b=1")
            .header("Host", "x")
            .header("Accept", "text/event-stream")
            .body(())
            .unwrap();
        assert_eq!(parsed_size(&req), raw.len());
        // An absolute URI (HTTP/2, or a proxy's absolute form) counts whole.
        let req = Request::builder()
            .method("POST")
            .uri("https://example.com/p")
            .body(())
            .unwrap();
        assert_eq!(
            parsed_size(&req),
            "POST https://example.com/p HTTP/1.1\r\n\r\n".len()
        );
    }

    fn sorted(bytes: &[u8]) -> &'static str {
        match sort(bytes) {
            None => "partial",
            Some(Head::Stream(..)) => "stream",
            Some(Head::Other) => "other",
            Some(Head::Closed | Head::TimedOut | Head::TooLarge) => unreachable!(),
        }
    }

    #[test]
    fn stream_requests_are_served_here_and_the_rest_by_hyper() {
        let stream = b"GET /?a HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
        assert_eq!(sorted(stream), "stream");
        assert_eq!(sorted(&stream[..20]), "partial");
        assert_eq!(sorted(b"GET /?a HTTP/1.1\r\nHost: x\r\n\r\n"), "other");
        assert_eq!(
            sorted(b"GET /?a HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n"),
            "other"
        );
        assert_eq!(
            sorted(b"POST /publish/a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"),
            "other"
        );
        assert_eq!(
            sorted(b"GET / HTTP/1.1\r\nAccept: text/event-stream\r\nContent-Length: 2\r\n\r\n"),
            "other"
        );
        assert_eq!(
            sorted(b"GET / HTTP/1.1\r\nAccept: text/event-stream\r\nUpgrade: h2c\r\n\r\n"),
            "other"
        );
        assert_eq!(
            sorted(b"GET /?a HTTP/1.1\r\nAccept: text/event-stream\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nGET /x"),
            "other"
        );
        assert_eq!(sorted(b"GARBAGE\r\n\r\n"), "other");
        assert_eq!(sorted(b"PRI * HTTP/2.0\r\n"), "partial");
        assert_eq!(sorted(H2_PREFACE), "other");
    }

    proptest::proptest! {
        /// Whatever a client sends, sorting never panics; a stream request's head ends within
        /// the bytes and is decided the same without what follows it.
        #[test]
        fn any_bytes_are_sorted_and_a_head_does_not_depend_on_what_follows(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..50),
        ) {
            if let Some(Head::Stream(req, len)) = sort(&bytes) {
                proptest::prop_assert!(len <= bytes.len());
                proptest::prop_assert_eq!(req.method(), Method::GET);
                let again = sort(&bytes[..len]);
                proptest::prop_assert!(matches!(again, Some(Head::Stream(_, l)) if l == len));
                let mut longer = bytes.clone();
                longer.extend_from_slice(&tail);
                let longer = sort(&longer);
                proptest::prop_assert!(matches!(longer, Some(Head::Stream(_, l)) if l == len));
            }
        }

        /// A well-formed stream request is a stream request, with or without bytes after it.
        #[test]
        fn generated_stream_requests_are_recognised(
            path in "/[a-z0-9?&=.%-]{0,40}",
            extra in proptest::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,12}", "[ -~]{0,30}"), 0..5),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..50),
        ) {
            let mut head = format!("GET {path} HTTP/1.1\r\nAccept: text/event-stream\r\n");
            for (name, value) in &extra {
                let lower = name.to_ascii_lowercase();
                if ["content-length", "transfer-encoding", "upgrade", "expect", "accept"]
                    .contains(&lower.as_str())
                {
                    continue;
                }
                head.push_str(&format!("{name}: {}\r\n", value.trim()));
            }
            head.push_str("\r\n");
            let mut bytes = head.clone().into_bytes();
            bytes.extend_from_slice(&tail);
            let sorted = sort(&bytes);
            proptest::prop_assert!(
                matches!(sorted, Some(Head::Stream(_, len)) if len == head.len()),
                "{head:?} sorted as {sorted:?}"
            );
        }
    }

    #[test]
    fn the_end_of_a_head_is_found_across_reads() {
        assert!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\n"));
        assert!(head_end(b"\n\r\n"));
        assert!(head_end(b"GET / HTTP/1.1\nA: b\n\n"));
        assert!(!head_end(b"GET / HTTP/1.1\r\nA: b\r\n"));
        // The caller searches from three bytes before the new ones, so a terminator split
        // between two reads is found.
        let head = b"GET / HTTP/1.1\r\nA: b\r\n\r\n";
        for cut in 1..head.len() {
            let found = head_end(&head[..cut]) || head_end(&head[cut.saturating_sub(3)..]);
            assert!(found, "cut at {cut}");
        }
    }

    #[test]
    fn the_request_keeps_its_headers_and_query() {
        let bytes = b"GET /x?a&b HTTP/1.1\r\nAccept: text/event-stream\r\nLast-Event-ID: 7\r\nConnection: keep-alive, close\r\n\r\nGET";
        let Some(Head::Stream(req, len)) = sort(bytes) else {
            panic!("not a stream request")
        };
        assert_eq!(len, bytes.len() - 3);
        assert_eq!(req.uri().query(), Some("a&b"));
        assert_eq!(req.headers()["last-event-id"], "7");
        assert!(crate::headers::wants_close(req.headers()));
    }
}
