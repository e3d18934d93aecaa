//! Events lost from history are never lost silently: whatever size a publisher trims a channel
//! to (smaller than the server's, or 0), across a restart of the in-memory broker, and in the
//! Redis subscriber's refill after a pub/sub outage, a client that resumes from before the loss
//! gets `missedevents`, and one that resumes from after it does not.

use std::process::Command;
use std::time::Duration;

use redisse::{Event, Publisher};

use crate::on_both_brokers;
use crate::support::sse::client;
use crate::support::{Backend, PATIENCE, SseEvent, SseStream, TestServer, binary};

const QUIET: Duration = Duration::from_millis(300);

on_both_brokers!(
    a_publisher_trimming_below_the_servers_size_gives_missedevents_exactly,
    a_history_size_of_zero_gives_missedevents_across_any_event,
);

fn id_of(e: &SseEvent) -> u64 {
    e.id.as_deref().expect("id").parse().expect("numeric id")
}

fn ids(events: &[SseEvent]) -> Vec<u64> {
    events.iter().map(id_of).collect()
}

async fn resume(url: &str, id: u64) -> SseStream {
    let s = SseStream::open(url, &[("last-event-id", &id.to_string())]).await;
    assert_eq!(s.status, 200);
    s
}

/// A server keeping the default 100 events per channel and a publisher that trims to `size`: on
/// Redis a standalone publisher with its own history size (as `redisse publish --history-size`
/// or another application process); in memory, where the instance's broker is the only
/// publisher, the server itself keeps `size`.
async fn server_and_trimming_publisher(backend: &Backend, size: usize) -> (TestServer, Publisher) {
    match backend {
        Backend::Memory => {
            let mut config = backend.config();
            config.history_size = size;
            let server = TestServer::start(config).await;
            let publisher = server.redisse.publisher();
            (server, publisher)
        }
        Backend::Redis(redis) => {
            let server = TestServer::start(backend.config()).await;
            assert_eq!(server.redisse.config().history_size, 100);
            let publisher = Publisher::redis_with_history(&redis.url(), size).expect("publisher");
            (server, publisher)
        }
    }
}

async fn a_publisher_trimming_below_the_servers_size_gives_missedevents_exactly(backend: Backend) {
    let (server, publisher) = server_and_trimming_publisher(&backend, 3).await;
    let mut id = Vec::new();
    for i in 1..=6 {
        id.push(
            publisher
                .publish("a", Event::message(format!("e{i}")))
                .await
                .unwrap(),
        );
    }
    // e1..e3 were trimmed: from e1, e2 and e3 are lost.
    let mut s = resume(&server.url("/?a"), id[0]).await;
    assert_eq!(s.next().await.event, "missedevents", "resume from e1");
    assert_eq!(ids(&s.take(3).await), id[3..]);
    s.expect_silence(QUIET).await;
    // From e3, the newest trimmed: nothing lost.
    let mut s = resume(&server.url("/?a"), id[2]).await;
    let got = s.take(3).await;
    assert_eq!(got[0].event, "message", "no missedevents from e3: {got:?}");
    assert_eq!(ids(&got), id[3..]);
    s.expect_silence(QUIET).await;
}

/// History size 0 keeps nothing: every event is trimmed as it is published, so a client that
/// resumes from before an event is told, and one that resumes from it is not.
async fn a_history_size_of_zero_gives_missedevents_across_any_event(backend: Backend) {
    let (server, publisher) = server_and_trimming_publisher(&backend, 0).await;
    let before = publisher.publish("other", "o").await.unwrap();
    let lost = publisher.publish("a", "gone").await.unwrap();
    let mut s = resume(&server.url("/?a"), before).await;
    let got = s.take(2).await;
    assert_eq!(got[0].event, "missedevents", "across {lost}: {got:?}");
    assert_eq!(
        (got[1].event.as_str(), id_of(&got[1])),
        ("lastEventId", lost)
    );
    s.expect_silence(QUIET).await;
    let mut s = resume(&server.url("/?a"), lost).await;
    let e = s.next().await;
    assert_eq!((e.event.as_str(), id_of(&e)), ("lastEventId", lost));
    s.expect_silence(QUIET).await;
    // Live events still flow.
    let live = publisher.publish("a", "live").await.unwrap();
    assert_eq!(id_of(&s.next().await), live);
}

/// `redisse publish --history-size 3` against a Redis whose servers keep 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_publishing_with_a_smaller_history_size_is_detected() {
    let backend = Backend::redis();
    let url = backend.redis_server().url();
    let server = TestServer::start(backend.config()).await;
    let publish = |data: String| {
        let url = url.clone();
        async move {
            let out = tokio::task::spawn_blocking(move || {
                Command::new(env!("CARGO_BIN_EXE_redisse"))
                    .args([
                        "publish",
                        "a",
                        &data,
                        "--redis",
                        &url,
                        "--history-size",
                        "3",
                    ])
                    .env_remove("REDISSE_HISTORY_SIZE")
                    .output()
                    .expect("run redisse publish")
            })
            .await
            .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "redisse publish: {stderr}");
            String::from_utf8_lossy(&out.stdout)
                .trim_end()
                .parse::<u64>()
                .expect("the printed id")
        }
    };
    let mut id = Vec::new();
    for i in 1..=5 {
        id.push(publish(format!("e{i}")).await);
    }
    let mut s = resume(&server.url("/?a"), id[0]).await;
    assert_eq!(s.next().await.event, "missedevents");
    assert_eq!(ids(&s.take(3).await), id[2..]);
    let mut s = resume(&server.url("/?a"), id[1]).await;
    let got = s.take(3).await;
    assert_eq!(got[0].event, "message", "no missedevents from e2: {got:?}");
    assert_eq!(ids(&got), id[2..]);
    s.expect_silence(QUIET).await;
}

/// A new in-memory instance gives ids above the ones an earlier instance gave, and a client
/// that comes back with an id of the earlier one is told of the loss and gets every event the
/// new instance published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_memory_instance_tells_clients_of_the_old_one_and_replays_everything() {
    let backend = Backend::memory();
    let mut old_server = TestServer::start(backend.config()).await;
    let mut old = Vec::new();
    for i in 0..3 {
        old.push(old_server.publish("a", "m", &format!("old{i}")).await);
    }
    old_server.shutdown().await;
    drop(old_server);
    let server = TestServer::start(backend.config()).await;
    let mut new = Vec::new();
    for i in 0..4 {
        new.push(server.publish("a", "m", &format!("new{i}")).await);
    }
    let mut s = resume(&server.url("/?a"), old[2]).await;
    let first = s.next().await;
    assert_eq!(
        first.event, "missedevents",
        "resume from {old:?} after {new:?}"
    );
    assert_eq!(ids(&s.take(4).await), new);
    s.expect_silence(QUIET).await;
    assert!(
        new.iter().all(|n| old.iter().all(|o| n > o)),
        "new ids {new:?} above the old {old:?}"
    );
    // A client of the new instance resumes as usual.
    let mut s = resume(&server.url("/?a"), new[1]).await;
    let got = s.take(2).await;
    assert_eq!(ids(&got), new[2..], "{got:?}");
    s.expect_silence(QUIET).await;
}

/// POST /publish on the binary's internal listener; returns the id it answered.
async fn publish_to(r: &binary::Redisse, channel: &str, data: &str) -> u64 {
    let res = client()
        .post(r.internal_url(&format!("/publish/{channel}")))
        .body(data.to_owned())
        .send()
        .await
        .expect("publish");
    assert_eq!(res.status(), 200);
    let body = res.text().await.expect("the answer");
    let json: serde_json::Value = serde_json::from_str(&body).expect("a JSON answer");
    json["id"].as_u64().expect("an id")
}

/// The same with the binary restarted: a client of the old process is told, before and after
/// the new process published anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_binary_tells_clients_of_the_old_process() {
    let first = binary::Redisse::start(&[]);
    let mut old = Vec::new();
    for i in 0..3 {
        old.push(publish_to(&first, "a", &format!("old{i}")).await);
    }
    drop(first);
    let second = binary::Redisse::start(&[]);
    // Nothing published yet by the new process.
    let mut s = resume(&second.url("/?a"), old[1]).await;
    assert_eq!(s.next().await.event, "missedevents");
    s.expect_silence(QUIET).await;
    let mut new = Vec::new();
    for i in 0..4 {
        new.push(publish_to(&second, "a", &format!("new{i}")).await);
    }
    // The stream above is live: it gets them.
    assert_eq!(ids(&s.take(4).await), new);
    let mut s = resume(&second.url("/?a"), old[2]).await;
    assert_eq!(s.next().await.event, "missedevents", "{old:?} then {new:?}");
    assert_eq!(ids(&s.take(4).await), new);
    s.expect_silence(QUIET).await;
    assert!(new[0] > old[2], "new ids {new:?} above the old {old:?}");
}

/// The Redis subscriber's refill after a pub/sub outage applies the same rule: a publisher that
/// trimmed a channel below the server's size while the subscriber was away gives `missedevents`
/// to that channel's streams, and only to them.
///
/// The outage is made by disabling Redis's default user (the server's) and dropping the pub/sub
/// connections; the trimming publisher logs in as a user of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trim_during_a_pubsub_outage_gives_missedevents_to_that_channels_streams_only() {
    let backend = Backend::redis();
    let redis = backend.redis_server();
    let server = TestServer::start(backend.config()).await;
    let mut sa = server.live_stream("/?a").await;
    let mut sb = server.live_stream("/?b").await;
    let seen_a = server.publish("a", "m", "a0").await;
    let seen_b = server.publish("b", "m", "b0").await;
    assert_eq!(id_of(&sa.next().await), seen_a);
    assert_eq!(id_of(&sb.next().await), seen_b);

    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "trimmer", "on", ">pw", "~*", "&*", "+@all"])
        .query(&mut redis.con())
        .expect("ACL SETUSER");
    let port = redis
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let trimmer_url = format!("redis://trimmer:pw@127.0.0.1:{port}/");
    let mut admin = redis::Client::open(trimmer_url.as_str())
        .unwrap()
        .get_connection()
        .expect("connect as trimmer");
    let set_default = |admin: &mut redis::Connection, state: &str| {
        let _: () = redis::cmd("ACL")
            .arg(&["SETUSER", "default", state])
            .query(admin)
            .expect("ACL SETUSER default");
    };
    set_default(&mut admin, "off");
    // Turns the default user on again even when an assertion below fails.
    struct DefaultOn(String);
    impl Drop for DefaultOn {
        fn drop(&mut self) {
            if let Ok(mut con) =
                redis::Client::open(self.0.as_str()).and_then(|c| c.get_connection())
            {
                let _: redis::RedisResult<()> = redis::cmd("ACL")
                    .arg(&["SETUSER", "default", "on"])
                    .query(&mut con);
            }
        }
    }
    let guard = DefaultOn(trimmer_url.clone());
    let killed: u64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query(&mut admin)
        .expect("CLIENT KILL");
    assert!(killed >= 1);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server.redisse.is_broker_up() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broker stays up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let trimmer = Publisher::redis_with_history(&trimmer_url, 3).expect("publisher");
    let mut a = Vec::new();
    for i in 1..=5 {
        a.push(trimmer.publish("a", format!("a{i}")).await.unwrap());
    }
    let mut b = Vec::new();
    for i in 1..=2 {
        b.push(trimmer.publish("b", format!("b{i}")).await.unwrap());
    }
    set_default(&mut admin, "on");
    drop(guard);

    assert_eq!(
        sa.next().await.event,
        "missedevents",
        "a was trimmed past {seen_a}"
    );
    assert_eq!(ids(&sa.take(3).await), a[2..]);
    let got = sb.take(2).await;
    assert_eq!(got[0].event, "message", "b lost nothing: {got:?}");
    assert_eq!(ids(&got), b);
    sa.expect_silence(QUIET).await;
    sb.expect_silence(Duration::from_millis(10)).await;
}

/// What the gem's publisher writes: the counter, the text published and stored, the history
/// trimmed to `size`, and nothing recorded.
fn gem_publish(con: &mut redis::Connection, channel: &str, data: &str, size: i64) -> u64 {
    let id: u64 = redis::cmd("INCR")
        .arg("redisse:lastEventId")
        .query(con)
        .unwrap();
    let payload = format!("id: {id}\nevent: message\ndata: {data}\n\n");
    let _: () = redis::pipe()
        .cmd("PUBLISH")
        .arg(channel)
        .arg(&payload)
        .ignore()
        .cmd("ZADD")
        .arg(channel)
        .arg(id)
        .arg(&payload)
        .ignore()
        .cmd("ZREMRANGEBYRANK")
        .arg(channel)
        .arg(0)
        .arg(-(size + 1))
        .ignore()
        .query(con)
        .unwrap();
    id
}

/// The gem's publisher records no trim: at the servers' size, a full history with a gap still
/// tells; our publisher trimming the same channel afterwards adds its record to that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gems_unrecorded_trims_at_the_servers_size_are_still_detected() {
    let backend = Backend::redis();
    let redis = backend.redis_server();
    let mut config = backend.config();
    config.history_size = 3;
    let server = TestServer::start(config).await;
    let mut con = redis.con();
    let id: Vec<u64> = (1..=5)
        .map(|i| gem_publish(&mut con, "a", &format!("g{i}"), 3))
        .collect();
    let trimmed: Option<String> = redis::cmd("HGET")
        .arg("redisse:trimmed")
        .arg("a")
        .query(&mut con)
        .unwrap();
    assert_eq!(trimmed, None, "the gem records nothing");
    let mut s = resume(&server.url("/?a"), id[0]).await;
    assert_eq!(s.next().await.event, "missedevents");
    assert_eq!(ids(&s.take(3).await), id[2..]);
    let mut s = resume(&server.url("/?a"), id[1]).await;
    let got = s.take(3).await;
    assert_eq!(got[0].event, "message", "{got:?}");
    s.expect_silence(QUIET).await;
    let ours = server.publish("a", "m", "ours").await;
    let mut s = resume(&server.url("/?a"), id[1]).await;
    assert_eq!(s.next().await.event, "missedevents");
    assert_eq!(ids(&s.take(3).await), [id[3], id[4], ours]);
}
