//! Interoperability with Ruby applications, through Ruby's own `redis` gem against the test's
//! `redis-server`: events that Ruby publishes in the Redisse gem's layout (tests/ruby/publish.rb:
//! `INCR`, `PUBLISH`, `ZADD`, `ZREMRANGEBYRANK`, one command after the other) reach the
//! binary's streams with the ids Ruby took, are replayed on resume, and a trim by the gem past
//! a client's id gives `missedevents`; what the binary publishes (over HTTP and with
//! `redisse publish --redis`) is what the gem's server would read (tests/ruby/read.rb: the
//! pub/sub payloads received by a Ruby `SUBSCRIBE`, the counter, the history and its scores,
//! and the gem's resume of it).
//!
//! `ruby` and the `redis` gem must be installed (Debian: `apt-get install ruby ruby-redis`);
//! without them the tests fail and say so.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::binary::Redisse;
use crate::support::{PATIENCE, RedisServer, SseEvent, SseStream};

const RUBY_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ruby");

/// `ruby`, checked to load the `redis` gem.
fn ruby() -> &'static str {
    let ok = Command::new("ruby")
        .args(["-e", "require 'redis'"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "`ruby` with the `redis` gem is needed by this test: apt-get install ruby ruby-redis"
    );
    "ruby"
}

/// Publishes `events` (channel, type, data) in the gem's layout from Ruby; their ids.
fn ruby_publish(redis: &RedisServer, events: &[(&str, &str, &str)]) -> Vec<u64> {
    let mut child = Command::new(ruby())
        .arg(format!("{RUBY_DIR}/publish.rb"))
        .arg(redis.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ruby");
    let mut stdin = child.stdin.take().unwrap();
    for (channel, event_type, data) in events {
        let line = json!({"channel": channel, "type": event_type, "data": data});
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "publish.rb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<u64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().expect("publish.rb prints ids"))
        .collect();
    assert_eq!(ids.len(), events.len());
    ids
}

/// The binary on `redis`.
fn binary_on(redis: &RedisServer) -> Redisse {
    Redisse::start(&["--redis", &redis.url()])
}

/// A stream of the binary that is live: a warm-up event makes the counter exist, so its first
/// event is `lastEventId`, sent once live events flow.
async fn live_stream(server: &Redisse, query: &str) -> SseStream {
    server.publish("t.warm", String::new()).await;
    let mut stream = SseStream::open(&server.url(query), &[]).await;
    assert_eq!(stream.status, 200);
    let first = stream.next().await;
    assert_eq!(first.event, "lastEventId", "{first:?}");
    stream
}

fn summary(events: &[SseEvent]) -> Vec<(Option<String>, String, String)> {
    events
        .iter()
        .map(|e| (e.id.clone(), e.event.clone(), e.data.clone()))
        .collect()
}

fn some(id: u64) -> Option<String> {
    Some(id.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_ruby_publishes_in_the_gems_layout_reach_the_binarys_streams() {
    let redis = RedisServer::start();
    let server = binary_on(&redis);
    let mut stream = live_stream(&server, "/?global&channel_1").await;

    let ids = ruby_publish(
        &redis,
        &[
            ("global", "foo", "bar"),
            ("channel_1", "baz", "hello\nworld\n!"),
            ("other", "message", "not followed"),
            ("global", "message", "é 🌍"),
        ],
    );
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "one counter: {ids:?}"
    );
    let got = stream.take(3).await;
    assert_eq!(
        summary(&got),
        [
            (some(ids[0]), "foo".into(), "bar".into()),
            (some(ids[1]), "baz".into(), "hello\nworld\n!".into()),
            (some(ids[3]), "message".into(), "é 🌍".into()),
        ]
    );
    stream.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_replays_what_ruby_published_with_its_ids_then_goes_live() {
    let redis = RedisServer::start();
    let server = binary_on(&redis);
    let ids = ruby_publish(
        &redis,
        &[
            ("global", "foo", "seen"),
            ("global", "foo", "hist_1"),
            ("channel_1", "bar", "hist_2"),
            ("other", "message", "not followed"),
        ],
    );
    // As a browser that saw the first event comes back.
    let mut stream = SseStream::open(
        &server.url("/?global&channel_1"),
        &[("Last-Event-ID", &ids[0].to_string())],
    )
    .await;
    assert_eq!(stream.status, 200);
    let replayed = stream.take(2).await;
    assert_eq!(
        summary(&replayed),
        [
            (some(ids[1]), "foo".into(), "hist_1".into()),
            (some(ids[2]), "bar".into(), "hist_2".into()),
        ],
        "the replay, in id order, without missedevents"
    );
    // Live events flow once the replay is done: the next id is past every replayed one.
    let live = ruby_publish(&redis, &[("channel_1", "baz", "live")]);
    let next = stream.next().await;
    assert_eq!(
        (next.id, next.event.as_str(), next.data.as_str()),
        (some(live[0]), "baz", "live")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trim_by_the_gem_past_a_resumed_id_gives_missedevents() {
    let redis = RedisServer::start();
    let server = binary_on(&redis);
    // The gem keeps the newest 100: the client saw the first event; the second, which it did
    // not see, is trimmed by the 102nd. (Had only the seen one been trimmed, nothing would be
    // lost, and redisse would say nothing, unlike the gem.)
    let mut events = vec![
        ("global", "foo", "seen".to_string()),
        ("global", "foo", "missed".into()),
        ("global", "foo", "first".into()),
    ];
    events.extend((0..98).map(|i| ("global", "foo", format!("n{i}"))));
    events.push(("global", "foo", "last straw".into()));
    let borrowed: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|(c, t, d)| (*c, *t, d.as_str()))
        .collect();
    let ids = ruby_publish(&redis, &borrowed);
    let len: u64 = redis::cmd("ZCARD")
        .arg("global")
        .query(&mut redis.con())
        .unwrap();
    assert_eq!(len, 100, "the gem's trim ran");

    let mut stream = SseStream::open(
        &server.url("/?global"),
        &[("Last-Event-ID", &ids[0].to_string())],
    )
    .await;
    let first = stream.next().await;
    assert_eq!(
        (first.id.as_deref(), first.event.as_str()),
        (None, "missedevents")
    );
    let replayed = stream.take(100).await;
    let replayed_ids: Vec<Option<String>> = replayed.iter().map(|e| e.id.clone()).collect();
    let expected: Vec<Option<String>> = ids[2..].iter().map(|&id| some(id)).collect();
    assert_eq!(
        replayed_ids, expected,
        "every retained event, with Ruby's ids"
    );
    assert_eq!(replayed[0].data, "first");
    assert_eq!(replayed[99].data, "last straw");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gem_trim_of_only_the_seen_event_gives_no_missedevents() {
    let redis = RedisServer::start();
    let server = binary_on(&redis);
    // The seen event and 100 after it: the gem trims the seen one only. The gem's server would
    // send `missedevents` here (its oldest retained id is not the client's); nothing was lost.
    let mut events = vec![("global", "foo", "seen".to_string())];
    events.extend((0..100).map(|i| ("global", "foo", format!("n{i}"))));
    let borrowed: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|(c, t, d)| (*c, *t, d.as_str()))
        .collect();
    let ids = ruby_publish(&redis, &borrowed);

    let mut stream = SseStream::open(
        &server.url("/?global"),
        &[("Last-Event-ID", &ids[0].to_string())],
    )
    .await;
    let replayed = stream.take(100).await;
    let replayed_ids: Vec<Option<String>> = replayed.iter().map(|e| e.id.clone()).collect();
    let expected: Vec<Option<String>> = ids[1..].iter().map(|&id| some(id)).collect();
    assert_eq!(
        replayed_ids, expected,
        "the 100 retained events, and nothing before them"
    );
}

/// Starts tests/ruby/read.rb on `channel` for `count` messages and waits for its subscription;
/// the receiver gets its final JSON line.
fn ruby_reader(redis: &RedisServer, channel: &str, count: usize) -> mpsc::Receiver<Value> {
    let mut child = Command::new(ruby())
        .arg(format!("{RUBY_DIR}/read.rb"))
        .arg(redis.url())
        .arg(channel)
        .arg(count.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start ruby");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (subscribed_tx, subscribed_rx) = mpsc::channel();
    let (result_tx, result_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut last = String::new();
        for line in stdout.lines().map_while(Result::ok) {
            if line == "subscribed" {
                let _ = subscribed_tx.send(());
            } else {
                last = line;
            }
        }
        let status = child.wait().expect("wait for ruby");
        assert!(status.success(), "read.rb failed: {status}");
        let _ = result_tx.send(serde_json::from_str(&last).expect("read.rb's JSON line"));
    });
    subscribed_rx
        .recv_timeout(PATIENCE)
        .expect("read.rb did not subscribe");
    result_rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_reads_what_the_binary_published_as_the_gem_would() {
    let redis = RedisServer::start();
    let server = binary_on(&redis);
    let result = ruby_reader(&redis, "news", 2);

    // Over HTTP (the internal listener), then with `redisse publish --redis`.
    let res = crate::support::sse::client()
        .post(server.internal_url("/publish/news?type=greeting"))
        .body("line one\nline two")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    let a = body["id"].as_u64().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_redisse"))
        .args(["publish", "news", "plain", "--redis", &redis.url()])
        .env_remove("REDISSE_SERVER")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b: u64 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let got = tokio::task::spawn_blocking(move || result.recv_timeout(PATIENCE))
        .await
        .unwrap()
        .expect("read.rb's result");
    let text_a = format!("id: {a}\nevent: greeting\ndata: line one\ndata: line two\n\n");
    let text_b = format!("id: {b}\nevent: message\ndata: plain\n\n");
    assert_eq!(
        got["messages"],
        json!([text_a, text_b]),
        "the pub/sub payloads, byte for byte the gem's"
    );
    assert_eq!(got["counter"], json!(b.to_string()));
    assert_eq!(
        got["history"],
        json!([[text_a, a], [text_b, b]]),
        "the history: the same texts, scored by their ids"
    );
    assert_eq!(
        got["resume_from_first"],
        json!({"missedevents": false, "events": [[b, text_b]]}),
        "the gem's server resuming from the first id"
    );
}
