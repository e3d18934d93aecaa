//! An event that no subscriber's queue can hold is refused when it is published, on every path,
//! instead of disconnecting every listener as slow; one that arrives from Redis anyway (written
//! by another publisher) is skipped and counted, and the listeners stay.

use std::time::Duration;

use redisse::metrics::Refusal;
use redisse::{Event, PublishError, Publisher};

use crate::on_both_brokers;
use crate::support::sse::client;
use crate::support::{Backend, TestServer};

on_both_brokers!(
    an_event_too_large_for_a_queue_is_refused_and_nobody_is_disconnected,
    over_http_such_an_event_is_a_413,
);

const QUEUE: usize = 1024;

fn config(backend: &Backend) -> redisse::Config {
    let mut config = backend.config();
    config.max_queue_bytes = QUEUE;
    config
}

async fn an_event_too_large_for_a_queue_is_refused_and_nobody_is_disconnected(backend: Backend) {
    let server = TestServer::start(config(&backend)).await;
    let mut s = server.live_stream("/?a").await;
    let publisher = server.redisse.publisher();
    // Plain data past the queue, and line breaks that grow sevenfold once encoded
    // (`data: \n` each): 200 bytes of them encode past 1 KiB.
    for data in ["x".repeat(QUEUE), "\n".repeat(200)] {
        let err = publisher
            .publish("a", Event::message(data.clone()))
            .await
            .expect_err("an event larger than the queue");
        match err {
            PublishError::EventTooLarge { size, max } => {
                assert_eq!(max, QUEUE);
                assert_eq!(
                    size,
                    Event::message(data).encode(redisse::MAX_EVENT_ID).len()
                );
            }
            other => panic!("unexpected error: {other}"),
        }
    }
    // The listener is still there and gets what fits, with the next id (none was taken).
    let id = server.publish("a", "m", &"y".repeat(QUEUE - 100)).await;
    assert_eq!(s.next().await.id, Some(id.to_string()));
    assert_eq!(server.redisse.metrics().slow_disconnects(), 0);
    assert_eq!(server.redisse.connections(), 1);
}

async fn over_http_such_an_event_is_a_413(backend: Backend) {
    let server = TestServer::start(config(&backend)).await;
    let mut s = server.live_stream("/?a").await;
    let res = client()
        .post(server.internal_url("/publish/a"))
        .body("\n".repeat(200))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let text = res.text().await.unwrap();
    assert!(
        text.contains("more than a subscriber's queue holds (1024 bytes)"),
        "{text}"
    );
    assert_eq!(
        server.redisse.metrics().refusals(Refusal::PublishTooLarge),
        1
    );
    let res = client()
        .post(server.internal_url("/publish/a"))
        .body("fits")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(s.next().await.data, "fits");
    assert_eq!(server.redisse.metrics().slow_disconnects(), 0);
}

/// Publishers without an instance hold events to the default queue size, or to the one given.
#[tokio::test]
async fn publishers_without_an_instance_use_the_default_queue_or_the_one_given() {
    let (publisher, recorder) = Publisher::test();
    let big = "x".repeat(redisse::config::DEFAULT_MAX_QUEUE_BYTES);
    let err = publisher.publish("a", big).await.expect_err("too large");
    assert!(matches!(err, PublishError::EventTooLarge { .. }), "{err}");
    let small = publisher.clone().with_max_event_bytes(64);
    let err = small
        .publish("a", "z".repeat(64))
        .await
        .expect_err("too large for 64");
    assert!(
        matches!(err, PublishError::EventTooLarge { max: 64, .. }),
        "{err}"
    );
    small.publish("a", "ok").await.expect("fits in 64");
    assert_eq!(recorder.published().len(), 1);
}

/// An event too large for the queue, written to Redis by another publisher, is skipped and
/// counted; the listeners stay and get the next event.
#[tokio::test]
async fn an_oversized_event_from_redis_is_skipped_not_fatal() {
    let backend = Backend::redis();
    let server = TestServer::start(config(&backend)).await;
    let mut s = server.live_stream("/?a").await;
    let payload = format!("id: 999\nevent: m\ndata: {}\n\n", "x".repeat(QUEUE));
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg("a")
        .arg(&payload)
        .query(&mut backend.redis_server().con())
        .unwrap();
    assert_eq!(receivers, 1, "our subscriber got it");
    let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
    while server.redisse.metrics().oversized_events() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = server.redisse.metrics().render_prometheus();
    assert!(text.contains("redisse_oversized_events_total 1"), "{text}");
    assert_eq!(server.redisse.metrics().slow_disconnects(), 0);
    let id = server.publish("a", "m", "after").await;
    let e = s.next().await;
    assert_eq!((e.id, e.data.as_str()), (Some(id.to_string()), "after"));
}
