//! The standalone server writes stream responses on the bare socket (plain TCP and unix
//! sockets) and hands anything else to hyper: these tests check that path at the byte level with
//! raw sockets. A connection carries several requests in turn (keep-alive after a long-polling
//! stream or a refusal, then a publish that hyper serves, then a stream served by hyper);
//! requests pipelined behind a stream are answered after it; `Connection: close` is honoured;
//! a client that leaves is unregistered at once; idle keep-alive connections close at shutdown;
//! another route's body of unknown length is streamed, not buffered; an idle kept-alive connection
//! expires after the header read timeout without counting as a refused slow-loris; a seeded
//! random mix of streams and refusals, pipelined and split mid-head, is answered in order.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use crate::support::raw::{read_to_close, stream_request};
use crate::support::server::TestServer;
use crate::support::{Backend, PATIENCE};

/// One HTTP/1.1 response read from a raw connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    /// Header lines, names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads HTTP/1.1 responses from one connection, keeping what follows for the next.
struct RawReader {
    buf: Vec<u8>,
}

impl RawReader {
    fn new() -> Self {
        RawReader { buf: Vec::new() }
    }

    async fn fill(&mut self, tcp: &mut TcpStream, deadline: Instant) {
        let mut chunk = [0u8; 4096];
        match timeout_at(deadline, tcp.read(&mut chunk)).await {
            Err(_) => panic!(
                "no complete response in time; got {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => panic!(
                "connection closed mid-response; got {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
            Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
        }
    }

    async fn line(&mut self, tcp: &mut TcpStream, deadline: Instant) -> String {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buf[..end].to_vec()).expect("UTF-8 line");
                self.buf.drain(..end + 2);
                return line;
            }
            self.fill(tcp, deadline).await;
        }
    }

    async fn take(&mut self, tcp: &mut TcpStream, n: usize, deadline: Instant) -> Vec<u8> {
        while self.buf.len() < n {
            self.fill(tcp, deadline).await;
        }
        self.buf.drain(..n).collect()
    }

    /// Reads one whole response (by `content-length` or chunks).
    async fn response(&mut self, tcp: &mut TcpStream) -> RawResponse {
        let deadline = Instant::now() + PATIENCE;
        let status_line = self.line(tcp, deadline).await;
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line(tcp, deadline).await;
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header line");
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        let mut res = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if let Some(len) = res.header("content-length") {
            let len: usize = len.parse().expect("content-length");
            res.body = self.take(tcp, len, deadline).await;
            return res;
        }
        assert_eq!(res.header("transfer-encoding"), Some("chunked"), "{res:?}");
        loop {
            let size = self.line(tcp, deadline).await;
            let size = usize::from_str_radix(&size, 16).expect("chunk size");
            let data = self.take(tcp, size + 2, deadline).await;
            assert_eq!(&data[size..], b"\r\n", "chunk not closed by CRLF");
            if size == 0 {
                return res;
            }
            res.body.extend_from_slice(&data[..size]);
        }
    }
}

/// A publish on the public router, with the publish token of [`with_token`].
const POST_BYE: &[u8] = b"POST /publish/a HTTP/1.1\r\nHost: localhost\r\n\
    Authorization: Bearer s3cret\r\nContent-Length: 3\r\n\r\nbye";

/// A server whose public router publishes with `Authorization: Bearer s3cret`.
async fn with_token() -> TestServer {
    let mut config = Backend::memory().config();
    config.publish_token = Some("s3cret".into());
    TestServer::start(config).await
}

#[tokio::test]
async fn one_connection_carries_streams_refusals_and_a_publish_in_turn() {
    let server = with_token().await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut reader = RawReader::new();

    // A long-polling stream, written on the bare socket: chunks, then the last chunk.
    tcp.write_all(&stream_request("/?a&polling", &[]))
        .await
        .unwrap();
    server.wait_connections(1).await;
    let hello = server.publish("a", "message", "hello").await;
    let res = reader.response(&mut tcp).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), Some("text/event-stream"));
    assert_eq!(res.header("cache-control"), Some("no-cache"));
    assert_eq!(res.header("x-accel-buffering"), Some("no"));
    assert!(res.header("date").is_some(), "{res:?}");
    assert_eq!(
        String::from_utf8(res.body).unwrap(),
        format!("id: {hello}\nevent: message\ndata: hello\n\n")
    );
    server.wait_connections(0).await;

    // A refusal keeps the connection.
    tcp.write_all(&stream_request("/", &[])).await.unwrap();
    let res = reader.response(&mut tcp).await;
    assert_eq!(res.status, 404);
    assert_eq!(res.body, b"404 Not Found\n");

    // A publish: hyper takes the connection from here.
    tcp.write_all(POST_BYE).await.unwrap();
    let res = reader.response(&mut tcp).await;
    let bye = hello + 1;
    assert_eq!(
        (res.status, String::from_utf8(res.body).unwrap()),
        (200, format!(r#"{{"id":{bye}}}"#))
    );

    // And serves the next stream the same way.
    let last = format!("Last-Event-ID: {hello}");
    tcp.write_all(&stream_request("/?a&polling", &[&last]))
        .await
        .unwrap();
    let res = reader.response(&mut tcp).await;
    assert_eq!(res.status, 200);
    assert_eq!(
        String::from_utf8(res.body).unwrap(),
        format!("id: {bye}\nevent: message\ndata: bye\n\n")
    );
}

#[tokio::test]
async fn requests_pipelined_behind_a_stream_are_answered_after_it() {
    let server = with_token().await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut reader = RawReader::new();
    // The second request comes with the first, the third while the stream is open.
    let mut both = stream_request("/?a&polling", &[]);
    both.extend_from_slice(&stream_request("/", &[]));
    tcp.write_all(&both).await.unwrap();
    server.wait_connections(1).await;
    tcp.write_all(POST_BYE).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.redisse.connections(), 1, "the stream is still open");
    let first_id = server.publish("a", "message", "first").await;
    let first = reader.response(&mut tcp).await;
    assert_eq!(first.status, 200);
    assert!(
        String::from_utf8(first.body)
            .unwrap()
            .contains("data: first\n")
    );
    assert_eq!(reader.response(&mut tcp).await.status, 404);
    let third = reader.response(&mut tcp).await;
    assert_eq!(third.status, 200);
    // The publish waited behind the stream: its id is the next one.
    assert_eq!(
        String::from_utf8(third.body).unwrap(),
        format!(r#"{{"id":{}}}"#, first_id + 1)
    );
}

#[tokio::test]
async fn connection_close_is_honoured_after_a_stream_and_after_a_refusal() {
    let server = TestServer::start(Backend::memory().config()).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&stream_request("/?a&polling", &["Connection: close"]))
        .await
        .unwrap();
    server.wait_connections(1).await;
    server.publish("a", "message", "last").await;
    let all = String::from_utf8(read_to_close(&mut tcp, PATIENCE).await).unwrap();
    assert!(all.contains("\r\nconnection: close\r\n"), "{all}");
    assert!(all.ends_with("data: last\n\n\r\n0\r\n\r\n"), "{all}");

    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&stream_request("/", &["Connection: close"]))
        .await
        .unwrap();
    let all = String::from_utf8(read_to_close(&mut tcp, PATIENCE).await).unwrap();
    assert!(all.starts_with("HTTP/1.1 404 Not Found\r\n"), "{all}");
    assert!(all.ends_with("\r\n\r\n404 Not Found\n"), "{all}");
}

#[tokio::test]
async fn a_client_leaving_an_idle_stream_is_unregistered_at_once() {
    let server = TestServer::start(Backend::memory().config()).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(&stream_request(&format!("/?c{i}"), &[]))
            .await
            .unwrap();
        clients.push(tcp);
    }
    server.wait_connections(20).await;
    // Nothing is published: only the closed sockets can tell the server.
    let started = Instant::now();
    clients.truncate(5);
    server.wait_connections(5).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    drop(clients);
    server.wait_connections(0).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_closes_at_shutdown() {
    let mut server = TestServer::start(Backend::memory().config()).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut reader = RawReader::new();
    tcp.write_all(&stream_request("/", &[])).await.unwrap();
    assert_eq!(reader.response(&mut tcp).await.status, 404);
    let started = Instant::now();
    tokio::time::timeout(PATIENCE, server.shutdown())
        .await
        .expect("the server waited for an idle connection");
    assert!(read_to_close(&mut tcp, PATIENCE).await.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn another_route_answering_a_stream_request_with_its_own_body_is_streamed_as_it_comes() {
    use axum::body::Body;
    use futures_util::StreamExt as _;

    let redisse = redisse::Redisse::new(Backend::memory().config()).unwrap();
    // An application's own route, streaming a body that never ends: buffering it whole would
    // send nothing.
    let app = redisse.router().route(
        "/ticks",
        axum::routing::get(|| async {
            let parts = futures_util::stream::iter(["tick 1\n", "tick 2\n"])
                .map(Ok::<_, std::io::Error>)
                .chain(futures_util::stream::pending());
            Body::from_stream(parts)
        }),
    );
    let server = TestServer::start_router(redisse, app).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&stream_request("/ticks", &[])).await.unwrap();
    let mut reader = RawReader::new();
    let deadline = Instant::now() + PATIENCE;
    assert_eq!(reader.line(&mut tcp, deadline).await, "HTTP/1.1 200 OK");
    let mut chunked = false;
    loop {
        let line = reader.line(&mut tcp, deadline).await;
        if line.is_empty() {
            break;
        }
        chunked |= line.eq_ignore_ascii_case("transfer-encoding: chunked");
    }
    assert!(chunked, "a body of unknown length goes as chunks");
    for tick in ["tick 1\n", "tick 2\n"] {
        assert_eq!(reader.line(&mut tcp, deadline).await, "7");
        assert_eq!(
            reader.take(&mut tcp, 9, deadline).await,
            format!("{tick}\r\n").as_bytes()
        );
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_expires_without_counting_a_refusal() {
    let mut config = Backend::memory().config();
    config.header_read_timeout = Duration::from_millis(300);
    let server = TestServer::start(config).await;
    let timeouts = || {
        server
            .redisse
            .metrics()
            .refusals(redisse::metrics::Refusal::HeaderTimeout)
    };
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut reader = RawReader::new();
    tcp.write_all(&stream_request("/", &[])).await.unwrap();
    assert_eq!(reader.response(&mut tcp).await.status, 404);
    let started = Instant::now();
    assert!(read_to_close(&mut tcp, PATIENCE).await.is_empty());
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(250) && idle < Duration::from_secs(2),
        "closed after {idle:?}"
    );
    assert_eq!(timeouts(), 0, "an idle keep-alive expiry is not a refusal");
    // A connection that never sends a head still is one.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    assert!(read_to_close(&mut silent, PATIENCE).await.is_empty());
    assert_eq!(timeouts(), 1);
}

#[tokio::test]
async fn a_bodyless_status_from_another_route_gets_no_length_and_no_body() {
    let redisse = redisse::Redisse::new(Backend::memory().config()).unwrap();
    let app = redisse.router().route(
        "/nothing",
        axum::routing::get(|| async { http::StatusCode::NO_CONTENT }),
    );
    let server = TestServer::start_router(redisse, app).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&stream_request("/nothing", &[]))
        .await
        .unwrap();
    let mut reader = RawReader::new();
    let deadline = Instant::now() + PATIENCE;
    assert_eq!(
        reader.line(&mut tcp, deadline).await,
        "HTTP/1.1 204 No Content"
    );
    loop {
        let line = reader.line(&mut tcp, deadline).await;
        if line.is_empty() {
            break;
        }
        let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
        assert!(
            name != "content-length" && name != "transfer-encoding",
            "a 204 with {line:?}"
        );
    }
    // Nothing follows the head but the next response.
    tcp.write_all(&stream_request("/", &[])).await.unwrap();
    assert_eq!(reader.response(&mut tcp).await.status, 404);
}

#[tokio::test]
async fn a_random_mix_of_requests_pipelined_or_not_is_answered_in_order_on_one_connection() {
    let mut config = Backend::memory().config();
    config.polling_delay = Duration::from_millis(5);
    let server = TestServer::start(config).await;
    let before = server.publish("r", "message", "before").await;
    let id = server.publish("r", "message", "kept").await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut reader = RawReader::new();
    // A small fixed-seed generator: the sequence is the same on every run.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let replay = "/?r&polling";
    let last = format!("Last-Event-ID: {before}");
    let mut sent = 0;
    while sent < 60 {
        // One to three requests written at once, each a replayed polling stream or a refusal.
        let batch = 1 + (next() % 3) as usize;
        let mut bytes = Vec::new();
        let mut kinds = Vec::new();
        for _ in 0..batch {
            let stream = next() % 2 == 0;
            kinds.push(stream);
            bytes.extend_from_slice(&if stream {
                stream_request(replay, &[&last])
            } else {
                stream_request("/", &[])
            });
        }
        // Sometimes split the batch mid-head, as TCP may.
        let cut = (next() as usize) % bytes.len();
        tcp.write_all(&bytes[..cut]).await.unwrap();
        tcp.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(next() % 3)).await;
        tcp.write_all(&bytes[cut..]).await.unwrap();
        for stream in kinds {
            let res = reader.response(&mut tcp).await;
            if stream {
                assert_eq!(res.status, 200, "request {sent}: {res:?}");
                assert_eq!(
                    String::from_utf8(res.body).unwrap(),
                    format!("id: {id}\nevent: message\ndata: kept\n\n"),
                    "request {sent}"
                );
            } else {
                assert_eq!(res.status, 404, "request {sent}: {res:?}");
            }
            sent += 1;
        }
    }
    server.wait_connections(0).await;
}

#[tokio::test]
async fn conflicting_lengths_on_a_stream_request_are_refused_not_taken_as_a_next_request() {
    let server = TestServer::start(Backend::memory().config()).await;
    let mut request = stream_request("/?a", &["Content-Length: 0", "Content-Length: 5"]);
    request.extend_from_slice(&stream_request("/?b", &[]));
    let answer = crate::support::raw::exchange(server.addr, &request, PATIENCE).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
    assert_eq!(server.redisse.connections(), 0);
}
