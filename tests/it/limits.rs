//! Every bound reached and answered as stated (docs/limits.md).
//!
//! Total connections (200 with a `retry:` in the configured range and an immediate close),
//! channels per connection and channel name length (400), request head size (431), header read
//! timeout (the connection is closed), publish body size (413). Each refusal has a clear status
//! and body, a log line (captured on the test's thread: these tests run on a current-thread
//! runtime, where the server's tasks run too) and a `redisse_refused_total` reason.

use std::time::Duration;

use redisse::metrics::Refusal;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::logs::Logs;
use crate::support::raw::{exchange, read_to_close, status_of, stream_request};
use crate::support::sse::client;
use crate::support::{Backend, PATIENCE, TestServer};

fn refusals(server: &TestServer, reason: Refusal) -> u64 {
    server.redisse.metrics().refusals(reason)
}

#[tokio::test]
async fn past_the_connection_limit_a_stream_gets_a_retry_and_is_closed() {
    let (logs, _guard) = Logs::capture();
    let mut config = Backend::memory().config();
    config.max_connections = 3;
    config.retry_range = (Duration::from_millis(2000), Duration::from_millis(4000));
    let server = TestServer::start(config).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(server.live_stream("/?a").await);
    }
    for _ in 0..5 {
        let mut refused = server.stream("/?a", &[]).await;
        assert_eq!(refused.status, 200);
        assert_eq!(refused.header("content-type"), Some("text/event-stream"));
        refused.until_closed(Duration::from_secs(2)).await;
        let raw = String::from_utf8(refused.raw.clone()).unwrap();
        let retry: u64 = raw
            .strip_prefix("retry: ")
            .and_then(|r| r.strip_suffix("\n\n"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("the body is not one retry frame: {raw:?}"));
        assert!((2000..=4000).contains(&retry), "retry {retry} out of range");
    }
    // The connection itself is closed too, so that refused clients do not keep sockets open
    // (a kept-alive one would stay open for the header read timeout, 10 s).
    let answer = exchange(
        server.addr,
        &stream_request("/?a", &[]),
        Duration::from_secs(2),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.contains("\r\nconnection: close\r\n"),
        "{answer}"
    );
    assert_eq!(refusals(&server, Refusal::MaxConnections), 6);
    assert!(
        logs.has_line(&["connection limit reached"]),
        "{}",
        logs.text()
    );
    // Room again once a stream ends.
    drop(open.pop());
    server.wait_connections(2).await;
    let mut again = server.stream("/?a", &[]).await;
    assert_eq!(again.next().await.event, "lastEventId");
}

#[tokio::test]
async fn more_channels_than_allowed_is_a_400() {
    let (logs, _guard) = Logs::capture();
    let mut config = Backend::memory().config();
    config.max_channels = 3;
    let server = TestServer::start(config).await;
    let s = server.stream("/?a&b&c&d", &[]).await;
    assert_eq!(s.status, 400);
    let body = client()
        .get(server.url("/?a&b&c&d"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(body.headers()["content-type"], "text/plain");
    let text = body.text().await.unwrap();
    assert!(text.contains("more than 3 channels"), "{text}");
    assert_eq!(refusals(&server, Refusal::MaxChannels), 2);
    assert!(logs.has_line(&["refused a stream request", "more than 3 channels"]));
    // Repeated names count once: three distinct channels are fine.
    let mut ok = server.live_stream("/?a&b&c&a&b").await;
    server.publish("c", "m", "fine").await;
    assert_eq!(ok.next().await.data, "fine");
}

#[tokio::test]
async fn a_channel_name_longer_than_allowed_is_a_400() {
    let (logs, _guard) = Logs::capture();
    let mut config = Backend::memory().config();
    config.max_channel_name_bytes = 8;
    let server = TestServer::start(config).await;
    let res = client()
        .get(server.url("/?ok&123456789"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("longer than 8 bytes"));
    assert_eq!(refusals(&server, Refusal::ChannelNameTooLong), 1);
    assert!(logs.has_line(&["refused a stream request", "longer than 8 bytes"]));
    // Bytes, not characters: "ééééé" is 10 bytes.
    let s = server.stream("/?%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9", &[]).await;
    assert_eq!(s.status, 400);
    // Publishing on such a channel is refused too.
    let res = client()
        .post(server.internal_url("/publish/123456789"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(refusals(&server, Refusal::ChannelNameTooLong), 3);
    let mut ok = server.live_stream("/?12345678").await;
    server.publish("12345678", "m", "fits").await;
    assert_eq!(ok.next().await.data, "fits");
}

#[tokio::test]
async fn a_request_head_larger_than_allowed_is_a_431() {
    let (logs, _guard) = Logs::capture();
    let mut config = Backend::memory().config();
    config.max_header_bytes = 16 * 1024;
    let server = TestServer::start(config).await;
    let big = format!("X-Big: {}", "b".repeat(20 * 1024));
    let res = exchange(server.addr, &stream_request("/?a", &[&big]), PATIENCE).await;
    assert_eq!(status_of(&res), 431, "{}", String::from_utf8_lossy(&res));
    assert_eq!(refusals(&server, Refusal::HeaderTooLarge), 1);
    assert!(
        logs.has_line(&["refused a connection", "too large"]),
        "{}",
        logs.text()
    );
    // Many small headers add up the same way.
    let many: Vec<String> = (0..150)
        .map(|i| format!("X-H{i}: {}", "v".repeat(150)))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let res = exchange(server.addr, &stream_request("/?a", &many), PATIENCE).await;
    assert_eq!(status_of(&res), 431);
    // Under the limit, a large head is served.
    let fine = format!("X-Big: {}", "b".repeat(8 * 1024));
    let mut s = server.stream("/?a", &[("x-big", &fine[7..])]).await;
    assert_eq!(s.status, 200);
    server.publish("a", "m", "ok").await;
    assert_eq!(s.next().await.data, "ok");
}

#[tokio::test]
async fn a_slow_loris_is_disconnected_after_the_header_read_timeout() {
    let (logs, _guard) = Logs::capture();
    let mut config = Backend::memory().config();
    config.header_read_timeout = Duration::from_millis(300);
    let server = TestServer::start(config).await;
    let partial_heads: [&[u8]; 4] = [
        b"GET /?a HTTP/1.1\r\nHost: localhost\r\nAccept: text/ev",
        b"",
        b"G",
        b"PRI * HTTP/2.0\r\n",
    ];
    for (i, head) in partial_heads.iter().enumerate() {
        let started = Instant::now();
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(head).await.unwrap();
        let answer = read_to_close(&mut tcp, Duration::from_secs(3)).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(2),
            "head {i} {:?}: closed after {took:?}",
            String::from_utf8_lossy(head)
        );
        assert!(
            answer.is_empty() || status_of(&answer) == 408,
            "head {i}: unexpected answer {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert_eq!(refusals(&server, Refusal::HeaderTimeout), 4);
    assert!(
        logs.has_line(&["refused a connection", "in time"]),
        "{}",
        logs.text()
    );
    // A stream that is slower to come than the timeout is not cut: the timeout is for heads.
    let mut s = server.live_stream("/?a").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    server.publish("a", "m", "still here").await;
    assert_eq!(s.next().await.data, "still here");
}

#[tokio::test]
async fn a_publish_body_larger_than_allowed_is_a_413() {
    let (logs, _guard) = Logs::capture();
    let mut config = Backend::memory().config();
    config.max_publish_bytes = 1024;
    let server = TestServer::start(config).await;
    let mut s = server.live_stream("/?a").await;
    // Declared too large.
    let res = client()
        .post(server.internal_url("/publish/a"))
        .body("x".repeat(1025))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert!(res.text().await.unwrap().contains("larger than 1024 bytes"));
    // Chunked, so only counting tells.
    let chunks: Vec<Result<String, std::io::Error>> =
        vec![Ok("y".repeat(800)), Ok("y".repeat(800))];
    let res = client()
        .post(server.internal_url("/publish/a"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(refusals(&server, Refusal::PublishTooLarge), 2);
    assert!(logs.has_line(&["refused a publish request", "larger than 1024"]));
    // Exactly the limit is fine, and nothing refused was published.
    let res = client()
        .post(server.internal_url("/publish/a"))
        .body("z".repeat(1024))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let e = s.next().await;
    assert_eq!(e.data, "z".repeat(1024));
    s.expect_silence(Duration::from_millis(100)).await;
}

/// The channel subscriptions of all open streams together are bounded: past the bound, a new
/// stream is told to come back later (200 with `retry:`, as past the connection limit), the
/// refusal is counted and logged, and the gauge says how many are held; room comes back as
/// streams end.
#[tokio::test]
async fn past_the_subscription_bound_a_stream_gets_a_retry() {
    let (logs, _guard) = Logs::capture();
    let mut config = Backend::memory().config();
    config.max_subscriptions = 5;
    let server = TestServer::start(config).await;
    let first = server.live_stream("/?a&b&c").await;
    let _second = server.live_stream("/?a&d").await;
    let gauge = |server: &TestServer| {
        let text = server.redisse.metrics().render_prometheus();
        text.lines()
            .find_map(|l| l.strip_prefix("redisse_stream_subscriptions "))
            .map(str::to_owned)
    };
    assert_eq!(gauge(&server).as_deref(), Some("5"));
    // One more channel would pass the bound, even on a channel already subscribed.
    let mut refused = server.stream("/?a", &[]).await;
    assert_eq!(refused.status, 200);
    refused.until_closed(Duration::from_secs(2)).await;
    let raw = String::from_utf8(refused.raw.clone()).unwrap();
    assert!(raw.starts_with("retry: "), "not a retry: {raw:?}");
    assert_eq!(refusals(&server, Refusal::MaxSubscriptions), 1);
    assert_eq!(refusals(&server, Refusal::MaxConnections), 0);
    assert!(
        logs.has_line(&["subscription limit reached", "5 channel subscriptions"]),
        "{}",
        logs.text()
    );
    assert_eq!(server.redisse.connections(), 2);
    // Room again once a stream ends: 2 held, 3 free.
    drop(first);
    server.wait_connections(1).await;
    assert_eq!(gauge(&server).as_deref(), Some("2"));
    let mut again = server.live_stream("/?x&y&z").await;
    server.publish("z", "m", "in").await;
    assert_eq!(again.next().await.data, "in");
    assert_eq!(gauge(&server).as_deref(), Some("5"));
}

/// A head limit below hyper's 8 KiB buffer is still the limit: a 5 KB stream request head with
/// `max_header_bytes` 2048 is a 431 (it was served, hyper allowing 8 KiB).
#[tokio::test]
async fn a_head_limit_below_8_kib_is_enforced() {
    let mut config = Backend::memory().config();
    config.max_header_bytes = 2048;
    let server = TestServer::start(config).await;
    let big = format!("X-Big: {}", "b".repeat(5000));
    let res = exchange(server.addr, &stream_request("/?a", &[&big]), PATIENCE).await;
    assert_eq!(status_of(&res), 431, "{}", String::from_utf8_lossy(&res));
    assert_eq!(refusals(&server, Refusal::HeaderTooLarge), 1);
    // A head within the limit is served as before.
    let mut ok = server.live_stream("/?a").await;
    server.publish("a", "m", "fits").await;
    assert_eq!(ok.next().await.data, "fits");
}

/// The same limit on requests hyper serves: after a first request that is not a stream (the
/// connection then belongs to hyper), a 5 KB head with `max_header_bytes` 2048 is a 431 too (it
/// was served: hyper's buffer is at least 8 KiB).
#[tokio::test]
async fn a_head_limit_below_8_kib_is_enforced_on_requests_hyper_serves() {
    let mut config = Backend::memory().config();
    config.max_header_bytes = 2048;
    let server = TestServer::start(config).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0u8; 1024];
    let n = tokio::time::timeout(
        PATIENCE,
        tokio::io::AsyncReadExt::read(&mut tcp, &mut first),
    )
    .await
    .expect("an answer to the first request")
    .unwrap();
    assert_eq!(status_of(&first[..n]), 200);
    let big = format!(
        "GET /livez HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "b".repeat(5000)
    );
    tcp.write_all(big.as_bytes()).await.unwrap();
    let res = read_to_close(&mut tcp, PATIENCE).await;
    assert_eq!(status_of(&res), 431, "{}", String::from_utf8_lossy(&res));
    assert_eq!(refusals(&server, Refusal::HeaderTooLarge), 1);
    // Just under the limit is served.
    let fits = format!(
        "GET /livez HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Fits: {}\r\n\r\n",
        "f".repeat(1900)
    );
    let res = exchange(server.addr, fits.as_bytes(), PATIENCE).await;
    assert_eq!(status_of(&res), 200, "{}", String::from_utf8_lossy(&res));
}

/// Bytes that can never start an HTTP/1 request (a TLS hello on the plain port, garbage without a
/// line break) are refused at once with 400, not after the whole header read timeout.
#[tokio::test]
async fn garbage_without_a_line_break_is_refused_at_once() {
    let mut config = Backend::memory().config();
    config.header_read_timeout = Duration::from_secs(10);
    let server = TestServer::start(config).await;
    for bytes in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"\x00\x01garbage",
    ] {
        let started = std::time::Instant::now();
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut tcp, bytes)
            .await
            .unwrap();
        let res = read_to_close(&mut tcp, Duration::from_secs(5)).await;
        assert_eq!(status_of(&res), 400, "{:?}", String::from_utf8_lossy(&res));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "refused after {:?}",
            started.elapsed()
        );
    }
}
