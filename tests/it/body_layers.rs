//! A layer of the application's router that rewrites response bodies sees a stream's real body,
//! on both of the server's paths: the bare socket (a connection whose first request is a stream
//! request) and hyper (after another request on the same connection).
//!
//! The layer here is an `axum::middleware::map_response` that wraps every `text/event-stream`
//! body so that each data frame it yields is prefixed with the comment `: seen\n`. Each event is
//! published once the previous one arrived, so that each goes out as a frame of its own, and the
//! client must see `: seen` before every event.

use axum::body::Body;
use axum::middleware;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use redisse::Redisse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use crate::on_both_brokers;
use crate::support::raw::stream_request;
use crate::support::{Backend, PATIENCE, TestServer};

on_both_brokers!(
    a_body_rewriting_layer_sees_each_frame_of_a_stream_on_the_bare_socket,
    a_body_rewriting_layer_sees_each_frame_of_a_stream_under_hyper,
);

const SEEN: &[u8] = b": seen\n";

/// The application's layer: prefixes each frame of an event stream with `: seen\n`.
async fn mark_frames(res: Response) -> Response {
    let is_stream = res
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "text/event-stream");
    if !is_stream {
        return res;
    }
    let (parts, body) = res.into_parts();
    let marked = body.into_data_stream().map(|frame| {
        frame.map(|data| {
            let mut out = Vec::with_capacity(SEEN.len() + data.len());
            out.extend_from_slice(SEEN);
            out.extend_from_slice(&data);
            Bytes::from(out)
        })
    });
    Response::from_parts(parts, Body::from_stream(marked))
}

async fn start(backend: &Backend) -> TestServer {
    let redisse = Redisse::new(backend.config()).expect("instance");
    let router = redisse
        .router()
        .layer(middleware::map_response(mark_frames));
    TestServer::start_router(redisse, router).await
}

/// Splits a stream's body into frames at `: seen\n`; fails unless the body starts with one.
fn frames_after_marks(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    let rest = text.strip_prefix(": seen\n").unwrap_or_else(|| {
        panic!("the stream's body does not start with the layer's comment: {text:?}")
    });
    rest.split(": seen\n").map(str::to_owned).collect()
}

async fn a_body_rewriting_layer_sees_each_frame_of_a_stream_on_the_bare_socket(backend: Backend) {
    let server = start(&backend).await;
    server.publish("t.warm", "warmup", "").await;
    // The connection's first request is a stream request: written on the bare socket.
    let mut s = server.stream("/?news", &[]).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    let first = s.next().await;
    assert_eq!(first.event, "lastEventId");
    let mut ids = Vec::new();
    for data in ["one", "two", "three"] {
        let id = server.publish("news", "m", data).await;
        let e = s.next().await;
        assert_eq!((e.id, e.data.as_str()), (Some(id.to_string()), data));
        ids.push(id);
    }
    let expected: Vec<String> = std::iter::once(format!(
        "id: {}\nevent: lastEventId\ndata: \n\n",
        first.id.as_deref().unwrap()
    ))
    .chain(
        ids.iter()
            .zip(["one", "two", "three"])
            .map(|(id, data)| format!("id: {id}\nevent: m\ndata: {data}\n\n")),
    )
    .collect();
    assert_eq!(frames_after_marks(&s.raw), expected);
    assert_eq!(s.comments, ["seen"; 4]);
    // The stream is still the instance's: counted, and gone when the client leaves.
    assert_eq!(server.redisse.connections(), 1);
    drop(s);
    server.wait_connections(0).await;
}

/// Reads `tcp` into `buf` until `buf` contains `needle` (fails the test after [`PATIENCE`]).
async fn read_until(tcp: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) {
    let deadline = Instant::now() + PATIENCE;
    let mut chunk = [0u8; 4096];
    while !buf.windows(needle.len()).any(|w| w == needle) {
        match timeout_at(deadline, tcp.read(&mut chunk)).await {
            Err(_) => panic!(
                "no {:?} in time; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(buf)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => panic!(
                "closed before {:?}; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(buf)
            ),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The data of an HTTP/1.1 chunked body, from the bytes after the response head (the chunks
/// received so far; a partial last chunk is left out).
fn dechunk(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = bytes.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&bytes[..eol]).expect("chunk size line");
        let size = usize::from_str_radix(size, 16).expect("hex chunk size");
        let start = eol + 2;
        if bytes.len() < start + size + 2 {
            return out;
        }
        out.extend_from_slice(&bytes[start..start + size]);
        assert_eq!(&bytes[start + size..start + size + 2], b"\r\n");
        bytes = &bytes[start + size + 2..];
    }
}

async fn a_body_rewriting_layer_sees_each_frame_of_a_stream_under_hyper(backend: Backend) {
    let server = start(&backend).await;
    // `/health` below must answer 200: the subscriber connects a few milliseconds after start.
    let deadline = Instant::now() + PATIENCE;
    while !server.redisse.is_broker_up() {
        assert!(Instant::now() < deadline, "the broker never came up");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    server.publish("t.warm", "warmup", "").await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    // A first request that is not a stream request: hyper serves the connection from now on.
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    read_until(&mut tcp, &mut buf, b"\r\n\r\nok\n").await;
    assert!(buf.starts_with(b"HTTP/1.1 200 OK\r\n"), "{buf:?}");
    buf.clear();
    tcp.write_all(&stream_request("/?news", &[])).await.unwrap();
    read_until(&mut tcp, &mut buf, b"event: lastEventId\n").await;
    server.wait_connections(1).await;
    let mut ids = Vec::new();
    for data in ["one", "two"] {
        let id = server.publish("news", "m", data).await;
        read_until(&mut tcp, &mut buf, format!("data: {data}\n\n").as_bytes()).await;
        ids.push(id);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    let frames = frames_after_marks(&dechunk(body.as_bytes()));
    assert_eq!(frames.len(), 3, "{frames:?}");
    assert!(frames[0].contains("event: lastEventId\n"), "{frames:?}");
    assert_eq!(
        frames[1..],
        [
            format!("id: {}\nevent: m\ndata: one\n\n", ids[0]),
            format!("id: {}\nevent: m\ndata: two\n\n", ids[1]),
        ]
    );
    drop(tcp);
    server.wait_connections(0).await;
}
