//! Bad input gets a clear answer, loses nothing, never panics (docs/protocol.md, docs/limits.md).
//!
//! One table of bad requests, run on both brokers. A stream opened before the first case must
//! receive, in order and without a gap, the marker event published after each case; after each
//! case a fresh stream opens normally. A panic in a connection task would show up as a lost
//! stream or a missing answer. On Redis, payloads that another client writes into a channel
//! with a raw `PUBLISH` or `ZADD` are skipped (and logged), and the streams go on.

use std::time::Duration;

use crate::on_both_brokers;
use crate::support::raw::{exchange, status_of};
use crate::support::sse::client;
use crate::support::{Backend, PATIENCE, SseStream, TestServer};

on_both_brokers!(after_every_bad_request_the_server_still_works_and_loses_nothing);

/// One bad request and what it must get.
enum Bad {
    /// A stream request: 400 with a text body.
    Query(&'static str),
    /// A stream with this `Last-Event-ID` header opens, and its first event has this type.
    LastEventIdHeader(&'static str, &'static str),
    /// The same with the `lastEventId` query parameter.
    LastEventIdQuery(&'static str, &'static str),
    /// `POST` to this path and query on the internal router (which needs no credential) with
    /// this body: 400.
    Publish(&'static str, &'static [u8]),
    /// These raw bytes on a new connection get this status, then the connection closes.
    Raw(&'static [u8], u16),
    /// (Redis) `PUBLISH a <payload>` by another client: skipped.
    RedisPublish(&'static [u8]),
    /// (Redis) `ZADD a <last id> <payload>` by another client: skipped when replayed.
    RedisZadd(&'static [u8]),
}

const CASES: &[(&str, Bad)] = &[
    ("bad escape", Bad::Query("/?a&%zz")),
    ("short escape", Bad::Query("/?a&%4")),
    ("escape at the end", Bad::Query("/?a&b%")),
    ("not UTF-8", Bad::Query("/?a&%ff")),
    ("truncated UTF-8", Bad::Query("/?%C3&a")),
    ("id letters", Bad::LastEventIdHeader("abc", "missedevents")),
    ("id negative", Bad::LastEventIdHeader("-5", "missedevents")),
    (
        "id huge",
        Bad::LastEventIdHeader("99999999999999999999", "missedevents"),
    ),
    (
        "id past i64",
        Bad::LastEventIdHeader("9223372036854775808", "missedevents"),
    ),
    (
        "id inner space",
        Bad::LastEventIdHeader("1 2", "missedevents"),
    ),
    ("id float", Bad::LastEventIdHeader("1.5", "missedevents")),
    ("id blank", Bad::LastEventIdHeader("   ", "lastEventId")),
    (
        "query id letters",
        Bad::LastEventIdQuery("x1", "missedevents"),
    ),
    (
        "query id negative",
        Bad::LastEventIdQuery("-1", "missedevents"),
    ),
    ("query id plus", Bad::LastEventIdQuery("+1", "missedevents")),
    ("type LF", Bad::Publish("/publish/a?type=x%0Ay", b"data")),
    ("type CR", Bad::Publish("/publish/a?type=x%0Dy", b"data")),
    (
        "type bad escape",
        Bad::Publish("/publish/a?type=%zz", b"data"),
    ),
    (
        "body not UTF-8",
        Bad::Publish("/publish/a", b"\xff\xfe\x00"),
    ),
    ("channel bad escape", Bad::Publish("/publish/%zz", b"data")),
    ("empty channel", Bad::Publish("/publish/", b"data")),
    (
        "method FOO",
        Bad::Raw(
            b"FOO /?a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            405,
        ),
    ),
    (
        "method PUT",
        Bad::Raw(
            b"PUT /?a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            405,
        ),
    ),
    (
        "method DELETE on publish",
        Bad::Raw(
            b"DELETE /publish/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            405,
        ),
    ),
    (
        "garbage line",
        Bad::Raw(b"\x00\x01\x02 garbage\r\n\r\n", 400),
    ),
    ("no version", Bad::Raw(b"GET\r\n\r\n", 400)),
    (
        "bad version",
        Bad::Raw(b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 400),
    ),
    (
        "header without colon",
        Bad::Raw(b"GET /?a HTTP/1.1\r\nHost x\r\n\r\n", 400),
    ),
    ("redis garbage", Bad::RedisPublish(b"garbage")),
    (
        "redis no id",
        Bad::RedisPublish(b"event: message\ndata: x\n\n"),
    ),
    (
        "redis id letters",
        Bad::RedisPublish(b"id: abc\nevent: message\ndata: x\n\n"),
    ),
    (
        "redis id zero",
        Bad::RedisPublish(b"id: 0\nevent: message\ndata: x\n\n"),
    ),
    (
        "redis unterminated",
        Bad::RedisPublish(b"id: 7\nevent: message\ndata: x"),
    ),
    (
        "redis not UTF-8",
        Bad::RedisPublish(b"id: 8\nevent: message\ndata: \xff\n\n"),
    ),
    ("redis empty", Bad::RedisPublish(b"")),
    ("zadd garbage", Bad::RedisZadd(b"garbage")),
    (
        "zadd id letters",
        Bad::RedisZadd(b"id: x\nevent: m\ndata: y\n\n"),
    ),
    (
        "zadd not UTF-8",
        Bad::RedisZadd(b"id: 3\nevent: m\ndata: \xc3\n\n"),
    ),
];

async fn after_every_bad_request_the_server_still_works_and_loses_nothing(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let mut live = server.live_stream("/?a").await;
    let mut last_id = server.publish("a", "marker", "start").await;
    assert_eq!(live.next().await.id, Some(last_id.to_string()));
    let redis = matches!(backend, Backend::Redis(_));
    let mut ran = 0;
    for (name, bad) in CASES {
        match bad {
            Bad::RedisPublish(_) | Bad::RedisZadd(_) if !redis => continue,
            _ => {}
        }
        check_case(&server, &backend, name, bad, last_id).await;
        ran += 1;
        // Nothing lost: the marker published now is the next event of the old stream.
        let id = server.publish("a", "marker", name).await;
        let e = live.next().await;
        assert_eq!(
            (e.id, e.event.as_str(), e.data.as_str()),
            (Some(id.to_string()), "marker", *name),
            "after case {name:?}"
        );
        assert_eq!(
            id,
            last_id + 1,
            "after case {name:?}: an id was used by a bad request"
        );
        last_id = id;
        // And a new stream works.
        let mut fresh = server.stream("/?a", &[]).await;
        assert_eq!(fresh.status, 200, "after case {name:?}");
        assert_eq!(
            fresh.next().await.event,
            "lastEventId",
            "after case {name:?}"
        );
    }
    assert!(ran >= 28, "only {ran} cases ran");
    live.expect_silence(Duration::from_millis(100)).await;
}

async fn check_case(server: &TestServer, backend: &Backend, name: &str, bad: &Bad, last_id: u64) {
    match bad {
        Bad::Query(path) => {
            let res = client()
                .get(server.url(path))
                .header("accept", "text/event-stream")
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 400, "{name}");
            assert_eq!(res.headers()["content-type"], "text/plain", "{name}");
            let text = res.text().await.unwrap();
            assert!(text.starts_with("400 Bad Request\n"), "{name}: {text:?}");
        }
        Bad::LastEventIdHeader(value, first) => {
            let mut s = server.stream("/?a", &[("last-event-id", value)]).await;
            expect_first(&mut s, name, first).await;
        }
        Bad::LastEventIdQuery(value, first) => {
            let mut s = server
                .stream(&format!("/?a&lastEventId={value}"), &[])
                .await;
            expect_first(&mut s, name, first).await;
        }
        Bad::Publish(path, body) => {
            let res = client()
                .post(server.internal_url(path))
                .body(body.to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 400, "{name}");
            assert!(!res.text().await.unwrap().is_empty(), "{name}: empty body");
        }
        Bad::Raw(bytes, status) => {
            let res = exchange(server.addr, bytes, PATIENCE).await;
            assert_eq!(
                status_of(&res),
                *status,
                "{name}: {:?}",
                String::from_utf8_lossy(&res)
            );
        }
        Bad::RedisPublish(payload) => {
            let receivers: i64 = redis::cmd("PUBLISH")
                .arg("a")
                .arg(*payload)
                .query(&mut backend.redis_server().con())
                .unwrap();
            assert_eq!(receivers, 1, "{name}: our subscriber got it");
        }
        Bad::RedisZadd(payload) => {
            let _: i64 = redis::cmd("ZADD")
                .arg("a")
                .arg(last_id)
                .arg(*payload)
                .query(&mut backend.redis_server().con())
                .unwrap();
            // Replaying from just before the last event reads the garbage beside it.
            let before = (last_id - 1).to_string();
            let mut s = server.stream("/?a", &[("last-event-id", &before)]).await;
            let e = s.next().await;
            assert_eq!(e.id, Some(last_id.to_string()), "{name}: {e:?}");
            s.expect_silence(Duration::from_millis(100)).await;
        }
    }
}

async fn expect_first(s: &mut SseStream, name: &str, first: &str) {
    assert_eq!(
        s.status, 200,
        "{name}: an unusable id still opens the stream"
    );
    let e = s.next().await;
    assert_eq!(e.event, first, "{name}: {e:?}");
    if first == "missedevents" {
        assert_eq!((e.id, e.data.as_str()), (None, ""), "{name}");
    }
}
