//! Graceful shutdown: SIGTERM ends streams with retry and exits 0 (docs/protocol.md, `retry:`).
//!
//! The real binary runs in-memory on a free port (`-p 0`; the port is read from its first log
//! line). With 200 open streams, SIGTERM must make it exit 0 quickly, every stream having
//! received a `retry:` frame before its end; a second signal must end it at once, even while a
//! client that never reads holds a stream with a long `--shutdown-timeout`. The same graceful
//! shutdown is also checked in process through `TestServer::shutdown`.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::on_both_brokers;
use crate::support::binary::Redisse;
use crate::support::raw::{connect_small, stream_request};
use crate::support::{Backend, PATIENCE, SseStream, TestServer};

on_both_brokers!(in_process_shutdown_ends_every_stream_with_retry);

/// The `retry:` value that ends `raw`, which must be the last frame.
fn final_retry(raw: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(raw);
    let last = text
        .trim_end_matches('\n')
        .rsplit("\n\n")
        .next()
        .unwrap_or_default();
    assert!(
        text.ends_with("\n\n"),
        "the stream ended mid-frame: {text:?}"
    );
    last.strip_prefix("retry: ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the last frame is not a retry: {last:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_every_stream_with_a_retry_and_exits_0() {
    let mut server = Redisse::start(&["--shutdown-timeout", "30"]);
    server.publish("warm", String::new()).await;
    let mut streams = Vec::new();
    for i in 0..200 {
        let mut s = SseStream::open(&server.url(&format!("/?s{}&all", i % 10)), &[]).await;
        assert_eq!(s.status, 200);
        assert_eq!(s.next().await.event, "lastEventId");
        streams.push(s);
    }
    server.publish("all", "before".into()).await;
    let signalled = Instant::now();
    server.signal("-TERM");
    let status = server
        .exit_within(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("still running 5 s after SIGTERM:\n{}", server.log()));
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", server.log());
    println!("shutdown: 200 streams, exit 0 after {took:?}");
    for (i, s) in streams.iter_mut().enumerate() {
        let events = s.until_closed(Duration::from_secs(5)).await;
        assert_eq!(events[0].data, "before", "stream {i}");
        let retry = final_retry(&s.raw);
        assert!(
            (1000..=10_000).contains(&retry),
            "stream {i}: retry {retry}"
        );
    }
    let distinct: std::collections::HashSet<u64> =
        streams.iter().map(|s| final_retry(&s.raw)).collect();
    assert!(
        distinct.len() > 50,
        "the retry values are not jittered: {distinct:?}"
    );
    let log = server.log();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_while_a_stream_is_stuck() {
    let mut server = Redisse::start(&["--shutdown-timeout", "60", "--max-queue-bytes", "67108864"]);
    let addr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let mut stuck = connect_small(addr).await;
    stuck
        .write_all(&stream_request("/?stuck", &[]))
        .await
        .unwrap();
    // Fill the socket buffers: the stream cannot take its final retry frame.
    let chunk = "x".repeat(64 * 1024);
    for _ in 0..160 {
        server.publish("stuck", chunk.clone()).await;
    }
    server.signal("-TERM");
    assert!(
        server.exit_within(Duration::from_millis(1500)).is_none(),
        "exited although a stream was stuck:\n{}",
        server.log()
    );
    let signalled = Instant::now();
    server.signal("-TERM");
    let status = server
        .exit_within(Duration::from_secs(2))
        .unwrap_or_else(|| panic!("a second SIGTERM did not end it:\n{}", server.log()));
    println!(
        "second signal: exit {status} after {:?}",
        signalled.elapsed()
    );
    assert!(!status.success(), "a forced exit reports a failure");
    assert!(server.log().contains("second signal"), "{}", server.log());
    drop(stuck);
}

async fn in_process_shutdown_ends_every_stream_with_retry(backend: Backend) {
    let mut config = backend.config();
    config.retry_range = (Duration::from_millis(3000), Duration::from_millis(3500));
    let mut server = TestServer::start(config).await;
    let mut streams = Vec::new();
    for i in 0..20 {
        streams.push(server.live_stream(&format!("/?s{}", i % 3)).await);
    }
    // One more whose setup may still be under way.
    let mut fresh = server.stream("/?s0", &[]).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), server.shutdown())
        .await
        .expect("the server stopped in time");
    assert!(started.elapsed() < Duration::from_secs(5));
    for s in streams.iter_mut().chain(Some(&mut fresh)) {
        s.until_closed(Duration::from_secs(5)).await;
        let retry = final_retry(&s.raw);
        assert!((3000..=3500).contains(&retry), "retry {retry}");
    }
    assert_eq!(server.redisse.connections(), 0);
    assert!(
        tokio::net::TcpStream::connect(server.addr).await.is_err(),
        "still accepting after shutdown"
    );
}

/// A SIGTERM as soon as the binary says it listens (a service manager stopping what it just
/// started) is a clean shutdown: exit 0 and the pid file removed, never the default action of
/// the signal. (Seen failing in CI: the handlers were installed after the listening line, and
/// the pid file stayed behind.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_right_after_the_listening_line_is_a_clean_shutdown() {
    for round in 0..20 {
        let dir = tempfile::tempdir().expect("temp dir");
        let pid = dir.path().join("redisse.pid");
        let mut server = Redisse::start(&["--pid", &pid.display().to_string()]);
        server.signal("-TERM");
        let status = server
            .exit_within(PATIENCE)
            .expect("the binary exits after SIGTERM");
        assert!(
            status.success(),
            "round {round}: SIGTERM right after the listening line: {status:?}; log:\n{}",
            server.log()
        );
        assert!(!pid.exists(), "round {round}: the pid file was left behind");
    }
}
