//! Long polling and heartbeats, on tokio's paused clock where possible.
//!
//! The endpoint is called in-process (`Redisse::router` as a tower service) on the in-memory
//! broker inside `#[tokio::test(start_paused = true)]`: time only moves when every task waits, and
//! then jumps to the next timer, so a 15 s heartbeat takes no real time and every instant is
//! exact. One short real-time check over TCP completes the set.

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt;
use redisse::{Config, Event, Redisse};
use tokio::time::{Instant, timeout};
use tower::ServiceExt;

use crate::on_both_brokers;
use crate::support::{Backend, TestServer};

// The same behaviour with real time, over TCP, with short delays, on both brokers.
on_both_brokers!(
    long_polling_over_tcp_closes_after_the_delay,
    heartbeats_over_tcp_come_at_the_period,
);

/// What the next body frame was.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Bytes(String),
    End,
    Nothing,
}

fn heartbeat() -> Got {
    Got::Bytes(": hb\n".into())
}

fn instance(polling_delay: Duration, heartbeat: Duration) -> Redisse {
    let mut config = Config::default();
    config.polling_delay = polling_delay;
    config.heartbeat = heartbeat;
    Redisse::new(config).expect("in-memory instance")
}

async fn open(redisse: &Redisse, path: &str) -> Body {
    let req = http::Request::get(path)
        .header("accept", "text/event-stream")
        .body(Body::empty())
        .unwrap();
    let res = redisse.router().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200, "{path}");
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    res.into_body()
}

/// The next frame of `body` within `wait` (of paused time).
async fn next(body: &mut Body, wait: Duration) -> Got {
    match timeout(wait, body.frame()).await {
        Err(_) => Got::Nothing,
        Ok(None) => Got::End,
        Ok(Some(Err(e))) => panic!("body error: {e}"),
        Ok(Some(Ok(frame))) => {
            let data: Bytes = frame.into_data().expect("a data frame");
            Got::Bytes(String::from_utf8(data.to_vec()).unwrap())
        }
    }
}

async fn publish(redisse: &Redisse, channel: &str, data: &str) -> u64 {
    redisse
        .publisher()
        .publish(channel, Event::new("t", data))
        .await
        .unwrap()
}

fn event(id: u64, data: &str) -> Got {
    Got::Bytes(format!("id: {id}\nevent: t\ndata: {data}\n\n"))
}

const LONG: Duration = Duration::from_secs(3600);

#[tokio::test(start_paused = true)]
async fn long_polling_closes_the_delay_after_the_first_real_event() {
    let redisse = instance(Duration::from_secs(1), Duration::from_secs(15));
    let warm = publish(&redisse, "elsewhere", "").await;
    let mut body = open(&redisse, "/?ch&polling").await;
    assert_eq!(
        next(&mut body, LONG).await,
        Got::Bytes(format!("id: {warm}\nevent: lastEventId\ndata: \n\n"))
    );
    // The lastEventId event does not start the delay.
    assert_eq!(next(&mut body, Duration::from_secs(5)).await, Got::Nothing);
    let t0 = Instant::now();
    let a = publish(&redisse, "ch", "first").await;
    assert_eq!(next(&mut body, LONG).await, event(a, "first"));
    // Events within the delay are sent too, and do not push the end back.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let b = publish(&redisse, "ch", "second").await;
    assert_eq!(next(&mut body, LONG).await, event(b, "second"));
    assert_eq!(next(&mut body, LONG).await, Got::End);
    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(1),
        "closed exactly the delay after the first event"
    );
    // Once the server drops the ended body, the connection is gone from the stats.
    assert_eq!(redisse.connections(), 1);
    drop(body);
    let stats = redisse.stats();
    assert_eq!((stats.connected, stats.served), (0, 1), "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn long_polling_uses_the_configured_delay() {
    let redisse = instance(Duration::from_millis(2500), Duration::from_secs(15));
    publish(&redisse, "elsewhere", "").await;
    let mut body = open(&redisse, "/?ch&polling=yes").await;
    assert!(
        matches!(next(&mut body, LONG).await, Got::Bytes(s) if s.contains("event: lastEventId"))
    );
    let t0 = Instant::now();
    let a = publish(&redisse, "ch", "x").await;
    assert_eq!(next(&mut body, LONG).await, event(a, "x"));
    assert_eq!(next(&mut body, LONG).await, Got::End);
    assert_eq!(t0.elapsed(), Duration::from_millis(2500));
}

#[tokio::test(start_paused = true)]
async fn heartbeats_do_not_start_the_long_polling_delay() {
    let redisse = instance(Duration::from_secs(1), Duration::from_secs(2));
    let start = Instant::now();
    // No counter yet: no lastEventId event, the first frame is a heartbeat.
    let mut body = open(&redisse, "/?ch&polling").await;
    for k in 1..=5u32 {
        assert_eq!(next(&mut body, LONG).await, heartbeat());
        assert_eq!(start.elapsed(), Duration::from_secs(2) * k);
    }
    // Still open 10 s in; an event now closes it 1 s later.
    let a = publish(&redisse, "ch", "now").await;
    let t0 = Instant::now();
    assert_eq!(next(&mut body, LONG).await, event(a, "now"));
    assert_eq!(next(&mut body, LONG).await, Got::End);
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn long_polling_without_events_stays_open_with_heartbeats() {
    let redisse = instance(Duration::from_secs(1), Duration::from_secs(15));
    publish(&redisse, "elsewhere", "").await;
    let start = Instant::now();
    let mut body = open(&redisse, "/?ch&polling").await;
    assert!(
        matches!(next(&mut body, LONG).await, Got::Bytes(s) if s.contains("event: lastEventId"))
    );
    let mut frames = Vec::new();
    while start.elapsed() < Duration::from_secs(61) {
        let left = Duration::from_secs(61) - start.elapsed();
        match next(&mut body, left).await {
            Got::Nothing => break,
            got => frames.push((got, start.elapsed())),
        }
    }
    let expected: Vec<(Got, Duration)> = (1..=4u64)
        .map(|k| (heartbeat(), Duration::from_secs(15 * k)))
        .collect();
    assert_eq!(frames, expected);
    assert_eq!(redisse.connections(), 1);
    // Heartbeats are not events in the stats: only the lastEventId event counts.
    assert_eq!(redisse.stats().events, 1);
}

#[tokio::test(start_paused = true)]
async fn a_replayed_event_starts_the_long_polling_delay() {
    let redisse = instance(Duration::from_secs(1), Duration::from_secs(15));
    let a = publish(&redisse, "ch", "old").await;
    let b = publish(&redisse, "ch", "missed").await;
    let t0 = Instant::now();
    let mut body = open(&redisse, &format!("/?ch&polling&lastEventId={a}")).await;
    assert_eq!(next(&mut body, LONG).await, event(b, "missed"));
    assert_eq!(next(&mut body, LONG).await, Got::End);
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn without_polling_a_stream_stays_open_after_events() {
    let redisse = instance(Duration::from_secs(1), Duration::from_secs(15));
    publish(&redisse, "elsewhere", "").await;
    let mut body = open(&redisse, "/?ch").await;
    assert!(
        matches!(next(&mut body, LONG).await, Got::Bytes(s) if s.contains("event: lastEventId"))
    );
    let a = publish(&redisse, "ch", "x").await;
    assert_eq!(next(&mut body, LONG).await, event(a, "x"));
    let start = Instant::now();
    assert_eq!(next(&mut body, LONG).await, heartbeat());
    assert!(start.elapsed() <= Duration::from_secs(15));
    assert_eq!(next(&mut body, LONG).await, heartbeat());
    assert_eq!(redisse.connections(), 1);
}

#[tokio::test(start_paused = true)]
async fn heartbeats_arrive_at_the_configured_period() {
    let period = Duration::from_secs(5);
    let redisse = instance(Duration::from_secs(1), period);
    // Opened in the middle of a period: the first heartbeat within one period, then one per
    // period, each exactly `: hb\n`, between events too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let opened = Instant::now();
    let mut body = open(&redisse, "/?ch").await;
    assert_eq!(next(&mut body, LONG).await, heartbeat());
    let first = opened.elapsed();
    assert!(
        first > Duration::ZERO && first <= period,
        "first heartbeat after {first:?}"
    );
    let mut last = Instant::now();
    for k in 0..4 {
        if k == 2 {
            let id = publish(&redisse, "ch", "between").await;
            assert_eq!(next(&mut body, LONG).await, event(id, "between"));
        }
        assert_eq!(next(&mut body, LONG).await, heartbeat());
        assert_eq!(last.elapsed(), period);
        last = Instant::now();
    }
    // Nothing but heartbeats in between.
    assert_eq!(
        next(&mut body, period - Duration::from_millis(1)).await,
        Got::Nothing
    );
}

#[tokio::test(start_paused = true)]
async fn a_short_heartbeat_period_is_honoured() {
    let redisse = instance(Duration::from_secs(1), Duration::from_millis(250));
    let start = Instant::now();
    let mut body = open(&redisse, "/?ch").await;
    for k in 1..=8u32 {
        assert_eq!(next(&mut body, LONG).await, heartbeat());
        assert_eq!(start.elapsed(), Duration::from_millis(250) * k);
    }
}

async fn long_polling_over_tcp_closes_after_the_delay(backend: Backend) {
    let mut config = backend.config();
    config.polling_delay = Duration::from_millis(200);
    let server = TestServer::start(config).await;
    let mut s = server.live_stream("/?ch&polling").await;
    // The lastEventId event did not start the delay.
    s.expect_silence(Duration::from_millis(400)).await;
    let t0 = std::time::Instant::now();
    server.publish("ch", "t", "first").await;
    let events = s.until_closed(Duration::from_secs(3)).await;
    let elapsed = t0.elapsed();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].data, "first");
    assert!(
        elapsed >= Duration::from_millis(190) && elapsed < Duration::from_millis(1500),
        "closed after {elapsed:?}"
    );
}

async fn heartbeats_over_tcp_come_at_the_period(backend: Backend) {
    let mut config = backend.config();
    config.heartbeat = Duration::from_millis(100);
    let server = TestServer::start(config).await;
    let mut s = server.live_stream("/?ch").await;
    let wait_for = async |s: &mut crate::support::SseStream, n: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while s.comments.len() < n {
            assert!(std::time::Instant::now() < deadline, "no heartbeat {n}");
            // Short slices, so the time a heartbeat arrives is known within 5 ms.
            assert_eq!(
                s.next_within(Duration::from_millis(5)).await,
                crate::support::sse::Next::Timeout,
                "only heartbeats are expected"
            );
        }
        std::time::Instant::now()
    };
    let before = s.comments.len();
    let first = wait_for(&mut s, before + 1).await;
    let fourth = wait_for(&mut s, before + 4).await;
    let span = fourth - first;
    // Three periods, give or take scheduling.
    assert!(
        span >= Duration::from_millis(250) && span < Duration::from_millis(1000),
        "three heartbeats took {span:?}"
    );
    assert!(s.comments.iter().all(|c| c == "hb"), "{:?}", s.comments);
    assert!(String::from_utf8_lossy(&s.raw).contains("\n: hb\n"));
}

/// An event published after the 200 response but before the stream's history snapshot was read
/// reaches the client: the client was connected, so the event is new to it. The stream then
/// starts as a resume from just before that event, so the event comes first, without a
/// `lastEventId` hint (whose id, the counter, would otherwise precede an event with no higher id).
#[tokio::test(start_paused = true)]
async fn an_event_published_while_the_stream_starts_is_delivered() {
    let redisse = instance(Duration::from_secs(1), LONG);
    publish(&redisse, "other", "before").await;
    let mut body = open(&redisse, "/?news").await;
    // The setup task has not run yet: no snapshot has been read.
    let id = publish(&redisse, "news", "racing").await;
    let expected = format!("id: {id}\nevent: t\ndata: racing\n\n");
    let mut got = String::new();
    while got.len() < expected.len() {
        match next(&mut body, Duration::from_secs(1)).await {
            Got::Bytes(b) => got.push_str(&b),
            other => panic!("expected {expected:?}, got {got:?} then {other:?}"),
        }
    }
    assert_eq!(got, expected);
}
