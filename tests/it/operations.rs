//! What an operator reads: `--log-format json` lines, the one line each stream ends with, `-v`
//! lines that stay one line whatever clients and publishers send, and the internal listener's
//! live status page (`/status`, `/status/events`).

use std::time::Duration;

use tokio::time::Instant;

use crate::support::binary::Redisse;
use crate::support::sse::{Next, client};
use crate::support::{Backend, PATIENCE, SseStream, TestServer};

/// Waits until the binary's log has a line for which `found` holds; fails with the log.
async fn wait_for_line(server: &Redisse, what: &str, found: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !server.log().lines().any(&found) {
        assert!(
            Instant::now() < deadline,
            "no {what} line:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `stream ended` lines of a JSON log, parsed.
fn end_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "stream ended")
        .collect()
}

/// Every line of `--log-format json` is one JSON object with a timestamp, a level and fields,
/// and each stream ends with a line of its own: its channel count, duration, events and bytes,
/// and why it ended (the client left; the server shut down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_all_parse_and_each_stream_ends_with_its_line() {
    let mut server = Redisse::start(&["--log-format", "json", "--heartbeat", "30"]);
    server.publish("warm", String::new()).await;
    let mut s = SseStream::open(&server.url("/?news&sports"), &[]).await;
    assert_eq!(s.next().await.event, "lastEventId");
    server.publish("news", "hello json".into()).await;
    assert_eq!(s.next().await.data, "hello json");
    let received = s.raw.len();
    drop(s);
    wait_for_line(&server, "client_closed end", |l| {
        l.contains("stream ended") && l.contains("client_closed")
    })
    .await;

    let mut held = SseStream::open(&server.url("/?held"), &[]).await;
    assert_eq!(held.next().await.event, "lastEventId");
    server.signal("-TERM");
    assert!(
        server.exit_within(PATIENCE).is_some(),
        "still running:\n{}",
        server.log()
    );
    // The shutdown's `retry:` reached the client before the stream closed.
    let rest = held.until_closed(PATIENCE).await;
    assert!(rest.iter().any(|e| e.retry.is_some()), "{rest:?}");
    wait_for_line(&server, "stopped", |l| l.contains("\"stopped\"")).await;

    let log = server.log();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{log}"));
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(v["level"].is_string(), "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
    }
    let ends = end_lines(&log);
    assert_eq!(ends.len(), 2, "{log}");
    let closed = &ends[0]["fields"];
    assert_eq!(ends[0]["level"], "INFO");
    assert_eq!(closed["reason"], "client_closed", "{closed}");
    assert_eq!(closed["channels"], 2, "{closed}");
    // lastEventId and the event; every byte the client received.
    assert_eq!(closed["events"], 2, "{closed}");
    assert_eq!(closed["bytes"], received as u64, "{closed}");
    assert!(closed["conn"].is_u64(), "{closed}");
    let lasted = closed["duration_seconds"].as_f64().unwrap();
    assert!((0.0..PATIENCE.as_secs_f64()).contains(&lasted), "{closed}");
    // No channel name at info level beyond the count.
    assert!(!closed.to_string().contains("news"), "{closed}");
    let shut = &ends[1]["fields"];
    assert_eq!(shut["reason"], "shutdown", "{shut}");
    assert_eq!(shut["channels"], 1, "{shut}");
}

/// The text format's end line says the same words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_end_is_one_text_line_with_its_reason() {
    let server = Redisse::start(&["--polling-delay", "0.1"]);
    server.publish("warm", String::new()).await;
    // Long polling: the stream ends itself a delay after its first event.
    let mut s = SseStream::open(&server.url("/?poll&polling"), &[]).await;
    assert_eq!(s.next().await.event, "lastEventId");
    server.publish("poll", "once".into()).await;
    assert_eq!(s.next().await.data, "once");
    assert_eq!(s.next_within(PATIENCE).await, Next::Closed);
    wait_for_line(&server, "long_poll_done end", |l| {
        l.contains(" INFO ")
            && l.contains("stream ended")
            && l.contains("reason=\"long_poll_done\"")
            && l.contains("channels=1")
            && l.contains("events=2")
    })
    .await;
}

/// With `-v`, every line of the log stays one line that starts like the server's own, whatever
/// the channel names and data hold (line breaks, CR, terminal escapes, Unicode line
/// separators): each such character is escaped, in the subscription, event and end lines alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbose_lines_stay_one_line_whatever_names_and_data_hold() {
    let server = Redisse::start(&["-v"]);
    let name = "a\nb\r\u{1b}[31mc\u{2028}d";
    let encoded = "a%0Ab%0D%1B%5B31mc%E2%80%A8d";
    server.publish("warm", String::new()).await;
    let mut s = SseStream::open(&server.url(&format!("/?{encoded}&plain")), &[]).await;
    assert_eq!(s.next().await.event, "lastEventId");
    let data = "one\ntwo\r\nthree\u{1b}]0;title\u{7}\u{2029}four";
    server.publish(encoded, data.to_owned()).await;
    assert_eq!(
        s.next().await.data,
        "one\ntwo\nthree\u{1b}]0;title\u{7}\u{2029}four"
    );
    drop(s);
    wait_for_line(&server, "stream ended", |l| l.contains("stream ended")).await;
    wait_for_line(&server, "Unsubscribing", |l| l.contains("Unsubscribing")).await;
    let log = server.log();
    // As Rust escapes them: `a\nb\r\u{1b}[31mc\u{2028}d`.
    let escaped_name = name.escape_default().to_string();
    assert!(
        log.lines()
            .any(|l| l.contains("Subscribing to") && l.contains(&escaped_name)),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("Sending:")
            && l.contains(&escaped_name)
            && l.contains("data: one\\ndata: two")),
        "{log}"
    );
    for line in log.lines() {
        // `2026-12-01T18:00:00.000000Z  INFO ...`: the timestamp the formatter starts with.
        let starts = line.len() > 20
            && line.as_bytes()[..4].iter().all(u8::is_ascii_digit)
            && line.as_bytes()[4] == b'-'
            && line.as_bytes()[10] == b'T';
        assert!(
            starts,
            "a line that is not one of the server's: {line:?}\n{log}"
        );
        assert!(
            !line.contains(['\u{1b}', '\u{7}', '\r', '\u{2028}', '\u{2029}']),
            "an unescaped control character: {line:?}"
        );
    }
}

/// The next status snapshot, parsed.
async fn snapshot(s: &mut SseStream) -> serde_json::Value {
    let e = s.next().await;
    assert_eq!(e.event, "status", "{e:?}");
    serde_json::from_str(&e.data).unwrap_or_else(|err| panic!("{err}: {}", e.data))
}

/// Reads snapshots until `done` holds for one (fails after the test's patience).
async fn snapshot_until(
    s: &mut SseStream,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let snap = snapshot(s).await;
        if done(&snap) {
            return snap;
        }
        assert!(Instant::now() < deadline, "never {what}: last {snap}");
    }
}

/// `/status/events` on the internal listener is an SSE stream of one JSON snapshot a second,
/// whose figures follow the streams opened and the events sent; `/status` is the page that
/// reads it. Neither is on the public listener, and the status stream ends with a shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_stream_follows_streams_and_events() {
    let mut server = TestServer::start(Backend::memory().config()).await;
    let mut status = SseStream::open(&server.internal_url("/status/events"), &[]).await;
    assert_eq!(status.status, 200);
    assert_eq!(status.header("content-type"), Some("text/event-stream"));
    let first = snapshot(&mut status).await;
    assert_eq!(first["streams_open"], 0, "{first}");
    assert_eq!(first["broker"], "in-memory");
    assert_eq!(first["broker_up"], true);
    assert_eq!(first["version"], env!("CARGO_PKG_VERSION"));

    let mut a = server.live_stream("/?one").await;
    let _b = server.live_stream("/?two").await;
    snapshot_until(&mut status, "two streams open", |s| s["streams_open"] == 2).await;
    let sent = first["events_sent"].as_u64().unwrap();
    for i in 0..20 {
        server.publish("one", "m", &format!("e{i}")).await;
    }
    a.take(20).await;
    let busy = snapshot_until(&mut status, "a rate of events", |s| {
        s["events_sent_per_second"].as_f64().unwrap() > 0.0
    })
    .await;
    assert!(busy["events_sent"].as_u64().unwrap() >= sent + 20, "{busy}");
    assert!(busy["published"].as_u64().unwrap() >= 20, "{busy}");
    drop(a);
    let after = snapshot_until(&mut status, "one stream closed", |s| s["streams_open"] == 1).await;
    assert!(after["streams_ended"].as_u64().unwrap() >= 1, "{after}");

    let page = client()
        .get(server.internal_url("/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    assert!(
        html.contains("new EventSource(\"status/events\")"),
        "{html}"
    );
    // On the public listener `/status` is a path of the SSE endpoint like any other.
    let public = client().get(server.url("/status")).send().await.unwrap();
    assert_ne!(public.status(), 200);
    let public = SseStream::open(&server.url("/status/events"), &[]).await;
    assert_eq!(public.status, 404, "no channel: the endpoint's 404");

    let started = Instant::now();
    server.shutdown().await;
    // Ended at the first tick after the shutdown began, not at the shutdown timeout (10 s).
    status.until_closed(PATIENCE).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// At most eight status streams at once: a ninth is refused with 503, and a place freed by one
/// that ends is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_streams_are_bounded() {
    let server = TestServer::start(Backend::memory().config()).await;
    let url = server.internal_url("/status/events");
    let mut open = Vec::new();
    for _ in 0..8 {
        let mut s = SseStream::open(&url, &[]).await;
        assert_eq!(s.status, 200);
        snapshot(&mut s).await;
        open.push(s);
    }
    let refused = client().get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.text().await.unwrap().contains("status streams"));
    drop(open.pop());
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut s = SseStream::open(&url, &[]).await;
        if s.status == 200 {
            snapshot(&mut s).await;
            break;
        }
        assert!(Instant::now() < deadline, "the freed place is never taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
