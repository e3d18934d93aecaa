//! SPEC 4: the order of answers, exact statuses, headers and bodies, and channels from the query.

use std::time::Duration;

use crate::on_both_brokers;
use crate::support::{Backend, SseEvent, TestServer, sse::client};

on_both_brokers!(
    streams_have_exactly_the_three_headers,
    several_channels_on_one_connection_get_the_right_events_in_order,
);

async fn streams_have_exactly_the_three_headers(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let s = server.stream("/?global", &[]).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert_eq!(s.header("cache-control"), Some("no-cache"));
    assert_eq!(s.header("x-accel-buffering"), Some("no"));
}

async fn several_channels_on_one_connection_get_the_right_events_in_order(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let mut one = server.live_stream("/?global&channel_1").await;
    let mut two = server.live_stream("/?global&channel_2").await;
    server.publish("global", "foo", "foo_data").await;
    server.publish("channel_1", "bar", "bar_data").await;
    server.publish("channel_2", "baz", "baz_data").await;
    let got: Vec<(String, String)> = one.take(2).await.into_iter().map(|e| (e.event, e.data)).collect();
    assert_eq!(got, [("foo".into(), "foo_data".into()), ("bar".into(), "bar_data".into())]);
    let got: Vec<(String, String)> = two.take(2).await.into_iter().map(|e| (e.event, e.data)).collect();
    assert_eq!(got, [("foo".into(), "foo_data".into()), ("baz".into(), "baz_data".into())]);
    one.expect_silence(Duration::from_millis(200)).await;
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
    let _ = SseEvent::default();
}
