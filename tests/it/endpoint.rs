//! docs/protocol.md: the order of answers, exact statuses, headers and bodies, and channels from
//! the query.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::header::HeaderMap;

use crate::on_both_brokers;
use crate::support::{Backend, PATIENCE, SseStream, TestServer, sse::client};

on_both_brokers!(
    streams_have_exactly_the_three_headers,
    several_channels_on_one_connection_get_the_right_events_in_order,
    stats_count_connections_events_and_served_streams,
    a_query_item_with_an_equals_sign_is_one_channel,
    plus_and_percent_escapes_are_decoded_in_channel_names,
    a_repeated_channel_delivers_each_event_once,
    empty_channel_names_are_dropped,
    multi_line_data_is_split_on_every_line_break,
    unicode_data_round_trips_byte_exactly,
    every_path_serves_the_endpoint,
);

/// A plain GET with the given `Accept` headers (none when empty); the body is read only when
/// the answer is not a stream.
async fn get(server: &TestServer, path: &str, accept: &[&str]) -> (u16, HeaderMap, String) {
    let mut req = client().get(server.url(path));
    for a in accept {
        req = req.header("accept", *a);
    }
    let res = tokio::time::timeout(PATIENCE, req.send())
        .await
        .expect("answer in time")
        .expect("request");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let is_stream = headers
        .get("content-type")
        .is_some_and(|v| v == "text/event-stream");
    let body = if is_stream {
        String::new()
    } else {
        res.text().await.expect("body")
    };
    (status, headers, body)
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get("content-type")
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

async fn streams_have_exactly_the_three_headers(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let s = server.stream("/?global", &[]).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert_eq!(s.header("cache-control"), Some("no-cache"));
    assert_eq!(s.header("x-accel-buffering"), Some("no"));
    // Besides what HTTP itself needs (date, chunked framing), nothing else: no keep-alive,
    // no CORS, no content-length.
    let names: BTreeSet<&str> = s
        .headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| !matches!(*k, "date" | "transfer-encoding"))
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["cache-control", "content-type", "x-accel-buffering"])
    );
    assert_eq!(s.headers.get_all("content-type").iter().count(), 1);
}

async fn several_channels_on_one_connection_get_the_right_events_in_order(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let mut one = server.live_stream("/?global&channel_1").await;
    let mut two = server.live_stream("/?global&channel_2").await;
    server.publish("global", "foo", "foo_data").await;
    server.publish("channel_1", "bar", "bar_data").await;
    server.publish("channel_2", "baz", "baz_data").await;
    server.publish("channel_1", "qux", "qux_data").await;
    let got: Vec<(String, String)> = one
        .take(3)
        .await
        .into_iter()
        .map(|e| (e.event, e.data))
        .collect();
    assert_eq!(
        got,
        [
            ("foo".into(), "foo_data".into()),
            ("bar".into(), "bar_data".into()),
            ("qux".into(), "qux_data".into())
        ]
    );
    let got: Vec<(String, String)> = two
        .take(2)
        .await
        .into_iter()
        .map(|e| (e.event, e.data))
        .collect();
    assert_eq!(
        got,
        [
            ("foo".into(), "foo_data".into()),
            ("baz".into(), "baz_data".into())
        ]
    );
    one.expect_silence(Duration::from_millis(200)).await;
    two.expect_silence(Duration::from_millis(1)).await;
}

#[tokio::test]
async fn without_accept_event_stream_the_answer_is_406() {
    let server = TestServer::start(Backend::memory().config()).await;
    let res = client().get(server.url("/?global")).send().await.unwrap();
    assert_eq!(res.status(), 406);
    assert_eq!(res.headers()["content-type"], "text/plain");
    assert_eq!(
        res.text().await.unwrap(),
        "406 Not Acceptable\nThis resource can only be represented as text/event-stream.\n"
    );
}

#[tokio::test]
async fn wildcards_and_other_types_are_not_acceptable() {
    let server = TestServer::start(Backend::memory().config()).await;
    for accept in [
        "*/*",
        "text/*",
        "text/html",
        "text/event-streams",
        "text/plain, text/html;q=0.9",
        "text/event-stream;q=0",
    ] {
        let (status, headers, body) = get(&server, "/?global", &[accept]).await;
        assert_eq!(status, 406, "Accept: {accept}");
        assert_eq!(content_type(&headers), "text/plain", "Accept: {accept}");
        assert_eq!(
            body,
            "406 Not Acceptable\nThis resource can only be represented as text/event-stream.\n",
            "Accept: {accept}"
        );
    }
    assert_eq!(server.redisse.stats().connected, 0);
}

#[tokio::test]
async fn event_stream_is_accepted_with_parameters_any_case_and_among_others() {
    let server = TestServer::start(Backend::memory().config()).await;
    for accept in [
        "text/event-stream",
        "TEXT/EVENT-STREAM",
        "Text/Event-Stream; charset=utf-8",
        "text/html, text/event-stream;q=0.5",
        "text/html,text/event-stream",
        // JSON refused with q=0: no stats, a stream.
        "application/json;q=0, text/event-stream",
    ] {
        let (status, headers, _) = get(&server, "/?global", &[accept]).await;
        assert_eq!(status, 200, "Accept: {accept}");
        assert_eq!(
            content_type(&headers),
            "text/event-stream",
            "Accept: {accept}"
        );
    }
    // Two Accept header lines count as one list.
    let (status, _, _) = get(&server, "/?global", &["text/html", "text/event-stream"]).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn stats_answer_application_json_with_exactly_the_gem_keys() {
    let server = TestServer::start(Backend::memory().config()).await;
    for accept in [
        "application/json",
        // Stats win even when a stream is also acceptable, and even with no channel.
        "text/event-stream, application/json",
        "application/json; charset=utf-8",
    ] {
        for path in ["/?global", "/", "/any/path"] {
            let (status, headers, body) = get(&server, path, &[accept]).await;
            assert_eq!(status, 200, "Accept: {accept} {path}");
            assert_eq!(
                content_type(&headers),
                "application/json",
                "Accept: {accept}"
            );
            let value: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            let keys: BTreeSet<&str> = value
                .as_object()
                .expect("an object")
                .keys()
                .map(|k| k.as_str())
                .collect();
            assert_eq!(
                keys,
                BTreeSet::from(["connected", "events", "missing", "served"])
            );
            assert!(
                value.as_object().unwrap().values().all(|v| v.is_u64()),
                "{body}"
            );
        }
    }
    // The exact text, in the gem's order.
    let (_, _, body) = get(&server, "/", &["application/json"]).await;
    assert_eq!(body, r#"{"connected":0,"events":0,"served":0,"missing":0}"#);
}

async fn stats_of(server: &TestServer) -> serde_json::Value {
    let (status, _, body) = get(server, "/", &["application/json"]).await;
    assert_eq!(status, 200);
    serde_json::from_str(&body).expect("JSON")
}

async fn stats_count_connections_events_and_served_streams(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?global").await;
    server.publish("global", "foo", "x").await;
    server.publish("global", "foo", "y").await;
    assert_eq!(s.take(2).await.len(), 2);
    let stats = stats_of(&server).await;
    // lastEventId + two live events, one stream open, none ended, nothing missing.
    assert_eq!(stats["connected"], 1, "{stats}");
    assert_eq!(stats["events"], 3, "{stats}");
    assert_eq!(stats["served"], 0, "{stats}");
    assert_eq!(stats["missing"], 0, "{stats}");
    drop(s);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stats = stats_of(&server).await;
        if stats["served"] == 1 {
            assert_eq!(stats["connected"], 0, "{stats}");
            assert_eq!(stats["events"], 3, "{stats}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream never counted as served: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn no_channel_is_404() {
    let server = TestServer::start(Backend::memory().config()).await;
    for path in [
        "/",
        "/?",
        "/?&&",
        "/?polling",
        "/?polling=1&",
        "/?lastEventId=3",
        "/?lastEventId",
        "/?polling&lastEventId=3&",
        "/some/path",
    ] {
        let (status, headers, body) = get(&server, path, &["text/event-stream"]).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(content_type(&headers), "text/plain", "{path}");
        assert_eq!(body, "404 Not Found\n", "{path}");
    }
    // Content negotiation comes first: no channel and no acceptable type is 406, not 404.
    for path in ["/", "/?", "/?polling"] {
        let (status, _, _) = get(&server, path, &[]).await;
        assert_eq!(status, 406, "{path}");
        let (status, _, _) = get(&server, path, &["text/html"]).await;
        assert_eq!(status, 406, "{path}");
    }
    assert_eq!(server.redisse.stats().connected, 0);
}

#[tokio::test]
async fn only_get_streams_other_methods_get_405() {
    let server = TestServer::start(Backend::memory().config()).await;
    let c = client();
    for (method, path) in [
        (reqwest::Method::POST, "/?global"),
        (reqwest::Method::POST, "/"),
        (reqwest::Method::POST, "/any/path?global"),
        (reqwest::Method::POST, "/metrics"),
        (reqwest::Method::PUT, "/?global"),
        (reqwest::Method::PUT, "/publish/global"),
        (reqwest::Method::PATCH, "/?global"),
        (reqwest::Method::DELETE, "/?global"),
        (reqwest::Method::DELETE, "/publish/global"),
    ] {
        let res = c
            .request(method.clone(), server.url(path))
            .header("accept", "text/event-stream")
            .body("data")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 405, "{method} {path}");
        assert_eq!(res.headers()["content-type"], "text/plain");
        assert_eq!(res.text().await.unwrap(), "405 Method Not Allowed\n");
    }
    // The method is checked before the stats.
    for method in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let res = c
            .request(method.clone(), server.url("/"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 405, "{method} with Accept: application/json");
    }
    // Nothing was published by those requests.
    let mut s = server.live_stream("/?global").await;
    server.publish("global", "check", "").await;
    assert_eq!(s.next().await.event, "check");
}

async fn a_query_item_with_an_equals_sign_is_one_channel(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?a=b").await;
    server.publish("a", "wrong", "a").await;
    server.publish("b", "wrong", "b").await;
    server.publish("a=b", "right", "a=b").await;
    let e = s.next().await;
    assert_eq!((e.event.as_str(), e.data.as_str()), ("right", "a=b"));
    s.expect_silence(Duration::from_millis(100)).await;
}

async fn plus_and_percent_escapes_are_decoded_in_channel_names(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?caf%C3%A9+au+lait&%26amp&a%2Bb").await;
    server.publish("caf%C3%A9+au+lait", "raw", "").await;
    server.publish("café au lait", "one", "").await;
    server.publish("&amp", "two", "").await;
    server.publish("a+b", "three", "").await;
    server.publish("a b", "wrong", "").await;
    let got: Vec<String> = s.take(3).await.into_iter().map(|e| e.event).collect();
    assert_eq!(got, ["one", "two", "three"]);
    s.expect_silence(Duration::from_millis(100)).await;
}

async fn a_repeated_channel_delivers_each_event_once(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?dup&dup&other&dup").await;
    let first = server.publish("dup", "first", "").await;
    let second = server.publish("dup", "second", "").await;
    let got = s.take(2).await;
    assert_eq!(got[0].event, "first");
    assert_eq!(got[0].id, Some(first.to_string()));
    assert_eq!(
        got[1].event, "second",
        "the first event came twice: {got:?}"
    );
    assert_eq!(got[1].id, Some(second.to_string()));
    s.expect_silence(Duration::from_millis(100)).await;
}

async fn empty_channel_names_are_dropped(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?&&x&&").await;
    assert_eq!(server.redisse.subscribed_channels(), 1);
    server.publish("x", "t", "1").await;
    assert_eq!(s.next().await.data, "1");
}

/// Publishes `data` and checks the exact bytes the stream receives for it and what an
/// EventSource makes of them.
async fn check_bytes(
    server: &TestServer,
    s: &mut SseStream,
    data: &str,
    wire_data: &str,
    parsed: &str,
) {
    let before = s.raw.len();
    let id = server.publish("text", "t", data).await;
    let e = s.next().await;
    assert_eq!(e.data, parsed, "published {data:?}");
    let expected = format!("id: {id}\nevent: t\n{wire_data}\n");
    assert_eq!(
        String::from_utf8_lossy(&s.raw[before..]),
        expected,
        "published {data:?}"
    );
}

async fn multi_line_data_is_split_on_every_line_break(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?text").await;
    check_bytes(&server, &mut s, "a\nb", "data: a\ndata: b\n", "a\nb").await;
    check_bytes(&server, &mut s, "a\r\nb", "data: a\ndata: b\n", "a\nb").await;
    check_bytes(&server, &mut s, "a\rb", "data: a\ndata: b\n", "a\nb").await;
    check_bytes(&server, &mut s, "a\n", "data: a\ndata: \n", "a\n").await;
    check_bytes(&server, &mut s, "", "data: \n", "").await;
    check_bytes(
        &server,
        &mut s,
        "x\r\r\ny\n\rz",
        "data: x\ndata: \ndata: y\ndata: \ndata: z\n",
        "x\n\ny\n\nz",
    )
    .await;
    // A would-be field inside the data stays data.
    check_bytes(
        &server,
        &mut s,
        "ok\rid: 999\r\nevent: evil",
        "data: ok\ndata: id: 999\ndata: event: evil\n",
        "ok\nid: 999\nevent: evil",
    )
    .await;
    let e = {
        server.publish("text", "after", "").await;
        s.next().await
    };
    assert_eq!(e.event, "after");
}

async fn unicode_data_round_trips_byte_exactly(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?text").await;
    let data = "héllo wörld — 日本語 🌍🎉 \u{200b}\t\"quoted\" {\"json\": [1, 2]}";
    check_bytes(&server, &mut s, data, &format!("data: {data}\n"), data).await;
    let multi = "première ligne\n第二行\n🌍";
    check_bytes(
        &server,
        &mut s,
        multi,
        "data: première ligne\ndata: 第二行\ndata: 🌍\n",
        multi,
    )
    .await;
}

async fn every_path_serves_the_endpoint(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let mut streams = Vec::new();
    for path in [
        "/any/path?ch",
        "/deeply/nested/path/?ch",
        "/index.html?ch",
        "/metrics?ch",
        "/health?ch",
        "/publish/other?ch",
    ] {
        let s = server.live_stream(path).await;
        assert_eq!(
            s.header("content-type"),
            Some("text/event-stream"),
            "{path}"
        );
        streams.push((path, s));
    }
    server.publish("ch", "hello", "everywhere").await;
    for (path, s) in &mut streams {
        let e = s.next().await;
        assert_eq!(
            (e.event.as_str(), e.data.as_str()),
            ("hello", "everywhere"),
            "{path}"
        );
    }
}
