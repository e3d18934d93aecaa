//! Payloads that another Redis client wrote in the gem's layout (PUBLISH on the channel, ZADD to
//! its history) reach subscribers as exactly one well-formed event each, or not at all.
//!
//! A payload is the SSE text of one event, `id: N\nevent: T\ndata: ...\n\n`, and a subscriber
//! gets it as it is. One with a blank line inside it would be several events to a browser, the
//! later ones with ids, types and a `retry:` of the writer's choosing; `\r` alone is a line
//! break too. Such payloads are refused and counted in `redisse_malformed_payloads_total`, as
//! is any with a `retry:` field or a second `id:`; one event written with CR or CRLF line
//! breaks is delivered re-encoded with LF. What a refused payload held is logged on one line.

use std::time::{Duration, Instant};

use crate::support::binary::Redisse;
use crate::support::sse::SseStream;
use crate::support::{Backend, PATIENCE, RedisServer, TestServer};

/// Payloads that are not one event (or carry what no publisher in the gem's layout writes),
/// for the id `id`.
fn refused(id: u64) -> Vec<(&'static str, String)> {
    vec![
        (
            "two events",
            format!(
                "id: {id}\nevent: m\ndata: a\n\nid: 999999\nevent: forged\nretry: 86400000\ndata: b\n\n"
            ),
        ),
        (
            "a retry field",
            format!("id: {id}\nretry: 86400000\nevent: m\ndata: c\n\n"),
        ),
        (
            "two events split by CRs",
            format!("id: {id}\nevent: m\ndata: d\r\rid: 999999\revent: forged\rdata: e\n\n"),
        ),
        (
            "a second id",
            format!("id: {id}\nevent: m\nid: 999999\ndata: f\n\n"),
        ),
        (
            "a blank line, then more",
            format!("id: {id}\nevent: m\ndata: g\n\n\n"),
        ),
    ]
}

/// One event each, with CR or CRLF line breaks: delivered re-encoded (the event, its id, and
/// the bytes a subscriber receives).
fn accepted(id: u64) -> (String, &'static str, &'static str, String) {
    (
        format!("id: {id}\r\nevent: crlf\r\ndata: l1\r\ndata: l2\rdata: l3\n\n"),
        "crlf",
        "l1\nl2\nl3",
        format!("id: {id}\nevent: crlf\ndata: l1\ndata: l2\ndata: l3\n\n"),
    )
}

fn malformed_total(server: &TestServer) -> u64 {
    server.metric("redisse_malformed_payloads_total")
}

/// Checks what `stream` gets from here on: the accepted payload's event, then `last`; nothing
/// of the refused payloads (no forged id or type, no `retry:`).
async fn expect_accepted_then(
    stream: &mut SseStream,
    accepted: (u64, &str, &str, String),
    last: u64,
) {
    let (id, event, data, bytes) = accepted;
    stream.raw = Vec::new();
    let e = stream.next().await;
    assert_eq!(
        (e.id.as_deref(), e.event.as_str(), e.data.as_str(), e.retry),
        (Some(id.to_string().as_str()), event, data, None),
        "raw: {:?}",
        String::from_utf8_lossy(&stream.raw)
    );
    let e = stream.next().await;
    assert_eq!(
        (e.id, e.event.as_str(), e.retry),
        (Some(last.to_string()), "m", None),
        "after the accepted payload comes the last event, nothing else; raw: {:?}",
        String::from_utf8_lossy(&stream.raw)
    );
    let raw = String::from_utf8_lossy(&stream.raw).into_owned();
    assert!(
        raw.starts_with(&bytes),
        "the accepted payload is re-encoded with LF: {raw:?}"
    );
    assert!(!raw.contains("forged") && !raw.contains("retry"), "{raw:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_payloads_are_one_event_each_or_refused() {
    let backend = Backend::redis();
    let redis = backend.redis_server();
    let server = TestServer::start(backend.config()).await;
    let mut stream = server.live_stream("/?raw").await;
    let before = malformed_total(&server);

    let mut count = 0;
    for (_, payload) in refused(redis.next_id()) {
        redis.publish_raw("raw", &payload);
        count += 1;
    }
    let ok = redis.next_id();
    let (payload, event, data, bytes) = accepted(ok);
    redis.publish_raw("raw", &payload);
    let last = server.publish("raw", "m", "last").await;
    expect_accepted_then(&mut stream, (ok, event, data, bytes), last).await;
    assert_eq!(malformed_total(&server) - before, count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_payloads_are_one_event_each_or_refused() {
    let backend = Backend::redis();
    let redis = backend.redis_server();
    let server = TestServer::start(backend.config()).await;
    let first = server.publish("hist", "m", "first").await;
    let mut count = 0;
    for (_, payload) in refused(0) {
        let id = redis.next_id();
        let payload = payload.replacen("id: 0\n", &format!("id: {id}\n"), 1);
        redis.store_raw("hist", id, &payload);
        count += 1;
    }
    let ok = redis.next_id();
    let (payload, event, data, bytes) = accepted(ok);
    redis.store_raw("hist", ok, &payload);
    let last = server.publish("hist", "m", "last").await;
    let before = malformed_total(&server);

    let mut stream = server
        .stream("/?hist", &[("last-event-id", &first.to_string())])
        .await;
    expect_accepted_then(&mut stream, (ok, event, data, bytes), last).await;
    assert_eq!(malformed_total(&server) - before, count);
}

/// A refused payload is logged with its line breaks escaped: what it holds cannot pass for
/// log lines of the server's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_payload_cannot_forge_log_lines() {
    let redis = RedisServer::start();
    let server = Redisse::start(&["--redis", &redis.url()]);
    server.publish("t.warm", String::new()).await;
    let mut stream = SseStream::open(&server.url("/?logged"), &[]).await;
    assert_eq!(stream.next().await.event, "lastEventId");

    let forged = "2030-01-01T00:00:00.000000Z ERROR redisse: FORGED LINE";
    // Several events in one payload, then not an event at all: pub/sub keeps their order, so
    // once the second is logged the first was handled.
    let id = redis.next_id();
    redis.publish_raw(
        "logged",
        &format!("id: {id}\ndata: x\n\n{forged}\r{forged}\n\n"),
    );
    redis.publish_raw("logged", &format!("not an event\n{forged}\n"));
    let deadline = Instant::now() + PATIENCE;
    let log = loop {
        let log = server.log();
        if log.contains("payload=not an event") || log.contains("payload=\"not an event") {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "the refused payloads were not logged:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    for line in log.lines() {
        assert!(
            !line.starts_with("2030-") && !line.contains("\r"),
            "a payload forged a log line: {line:?}\n{log}"
        );
    }
    let logged: Vec<&str> = log.lines().filter(|l| l.contains("skipping")).collect();
    assert_eq!(logged.len(), 2, "both payloads are refused: {log}");
    assert!(
        logged[0].contains("\\n2030-") && logged[0].contains("\\r2030-"),
        "line breaks are escaped: {logged:?}"
    );
    assert!(
        logged[1].contains("not an event\\n2030-") && logged[1].contains("FORGED LINE"),
        "line breaks are escaped: {logged:?}"
    );
}
