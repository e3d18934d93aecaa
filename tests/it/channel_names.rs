//! Channel names are held to one rule on every path: non-empty, at most
//! `Config::max_channel_name_bytes` bytes (1024 by default). A publisher may not publish to a
//! name no client could listen to: `Publisher::publish` on an instance uses the instance's
//! limit, a test publisher (and a Redis one) the default; `POST /publish/<channel>` is refused
//! with 400 and counted as `ChannelNameTooLong`.

use redisse::config::DEFAULT_MAX_CHANNEL_NAME_BYTES;
use redisse::metrics::Refusal;
use redisse::{Event, PublishError, Publisher, Redisse};

use crate::on_both_brokers;
use crate::support::sse::client;
use crate::support::{Backend, TestServer};

on_both_brokers!(
    an_instances_publisher_holds_names_to_the_instances_limit,
    publishing_over_http_to_a_name_too_long_is_a_400_counted_as_such,
);

const LIMIT: usize = 8;

async fn an_instances_publisher_holds_names_to_the_instances_limit(backend: Backend) {
    let mut config = backend.config();
    config.max_channel_name_bytes = LIMIT;
    let redisse = Redisse::new(config).expect("instance");
    let publisher = redisse.publisher();
    let before = publisher
        .publish("before", Event::message("x"))
        .await
        .unwrap();
    for name in [
        "123456789",
        "éééé5",
        &"x".repeat(DEFAULT_MAX_CHANNEL_NAME_BYTES),
    ] {
        match publisher.publish(name, Event::message("x")).await {
            Err(PublishError::ChannelNameTooLong { max }) => assert_eq!(max, LIMIT, "{name:?}"),
            other => panic!("publishing to {name:?} ({} bytes): {other:?}", name.len()),
        }
    }
    match publisher.publish("", Event::message("x")).await {
        Err(PublishError::EmptyChannel) => {}
        other => panic!("publishing to an empty name: {other:?}"),
    }
    // The error says why.
    let e = publisher
        .publish("123456789", Event::message("x"))
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "the channel name is longer than 8 bytes");
    // Exactly the limit, in bytes: fine (and "éééé" is 8 bytes).
    let a = publisher
        .publish("12345678", Event::message("fits"))
        .await
        .expect("an 8-byte name");
    let b = publisher
        .publish("éééé", Event::message("fits too"))
        .await
        .expect("8 bytes in 4 characters");
    // Nothing refused took an id: these are the two events right after the first.
    assert_eq!((a, b), (before + 1, before + 2));
}

#[tokio::test]
async fn a_test_publisher_holds_names_to_the_default_limit() {
    let (publisher, recorder) = Publisher::test();
    let too_long = "n".repeat(DEFAULT_MAX_CHANNEL_NAME_BYTES + 1);
    assert_eq!(too_long.len(), 1025);
    match publisher.publish(&too_long, Event::message("x")).await {
        Err(PublishError::ChannelNameTooLong { max }) => assert_eq!(max, 1024),
        other => panic!("publishing to a 1025-byte name: {other:?}"),
    }
    match publisher.publish("", Event::message("x")).await {
        Err(PublishError::EmptyChannel) => {}
        other => panic!("publishing to an empty name: {other:?}"),
    }
    assert_eq!(recorder.published(), []);
    // The limit itself is fine.
    let longest = "n".repeat(DEFAULT_MAX_CHANNEL_NAME_BYTES);
    publisher
        .publish(&longest, Event::new("t", "d"))
        .await
        .expect("a 1024-byte name");
    let published = recorder.published();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].channel, longest);
    assert_eq!(
        (published[0].event_type.as_str(), published[0].data.as_str()),
        ("t", "d")
    );
}

async fn publishing_over_http_to_a_name_too_long_is_a_400_counted_as_such(backend: Backend) {
    let mut config = backend.config();
    config.max_channel_name_bytes = LIMIT;
    let server = TestServer::start(config).await;
    let refused = |reason| server.redisse.metrics().refusals(reason);
    let post = |path: &str| client().post(server.internal_url(path)).body("data").send();
    // An event before the refusals: the next id after it tells whether they took any.
    let warm = server.publish("t.warm", "warmup", "").await;
    let res = post("/publish/123456789").await.unwrap();
    assert_eq!(res.status(), 400);
    let body = res.text().await.unwrap();
    assert!(body.contains("longer than 8 bytes"), "{body}");
    assert_eq!(refused(Refusal::ChannelNameTooLong), 1);
    // Bytes once percent-decoded: "ééééé" is 10 bytes in 5 characters.
    let res = post("/publish/%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9")
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(refused(Refusal::ChannelNameTooLong), 2);
    // No name at all is a malformed publish, not a name too long.
    let res = post("/publish/").await.unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(refused(Refusal::ChannelNameTooLong), 2);
    assert_eq!(refused(Refusal::BadPublish), 1);
    // Eight bytes are published, and a stream on that name receives it.
    let mut s = server.stream("/?12345678", &[]).await;
    let first = s.next().await;
    assert_eq!(
        (first.event.as_str(), first.id),
        ("lastEventId", Some(warm.to_string()))
    );
    let res = post("/publish/12345678?type=m").await.unwrap();
    assert_eq!(res.status(), 200);
    // The event right after the warm-up: nothing refused took an id.
    assert_eq!(
        res.text().await.unwrap(),
        format!(r#"{{"id":{}}}"#, warm + 1)
    );
    let e = s.next().await;
    assert_eq!((e.event.as_str(), e.data.as_str()), ("m", "data"));
    assert_eq!(refused(Refusal::ChannelNameTooLong), 2);
}
