//! Redis going away under open streams (README, "Redis outages"): restarts with and without data,
//! killed pub/sub connections while publishers keep publishing, requests during an outage, and
//! `/health`.
//!
//! Waits are deterministic: the broker's state (`is_broker_up`), or Redis's own view of the
//! subscriber (`PUBSUB NUMSUB`), polled with a deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::{Instant, sleep};

use crate::support::sse::{Next, client};
use crate::support::steps::{blocking, id_of, numsub, read_through, wait_until};
use crate::support::{Backend, PATIENCE, RedisServer, SseEvent, SseStream, TestServer};

async fn wait_broker(server: &TestServer, up: bool) {
    wait_until(&format!("the broker is up == {up}"), || {
        server.redisse.is_broker_up() == up
    })
    .await;
}

async fn health(server: &TestServer) -> u16 {
    client()
        .get(server.url("/health"))
        .send()
        .await
        .expect("GET /health")
        .status()
        .as_u16()
}

fn redis_mut(backend: &mut Backend) -> &mut RedisServer {
    match backend {
        Backend::Redis(r) => r,
        Backend::Memory => panic!("this test needs Redis"),
    }
}

/// `redisse_broker_reconnects_total` from `/metrics`.
fn reconnects(server: &TestServer) -> u64 {
    server.metric("redisse_broker_reconnects_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_twice_with_its_data_under_open_streams_loses_nothing() {
    let mut backend = Backend::redis();
    let server = TestServer::start(backend.config()).await;
    let mut both = server.live_stream("/?a&b").await;
    let mut only_b = server.live_stream("/?b").await;
    let mut published: Vec<(u64, &str)> = Vec::new();
    for round in 0..3 {
        for i in 0..20 {
            let ch = if i % 2 == 0 { "a" } else { "b" };
            let id = server.publish(ch, "m", &format!("{round}-{i}")).await;
            published.push((id, ch));
        }
        if round == 2 {
            break;
        }
        // Published just before the kill, not waited for: pub/sub may never carry it.
        let id = server.publish("b", "m", "right before the kill").await;
        published.push((id, "b"));
        let redis = redis_mut(&mut backend);
        blocking(|| redis.save_and_stop());
        wait_broker(&server, false).await;
        assert_eq!(health(&server).await, 503);
        blocking(|| redis.start_again());
        wait_broker(&server, true).await;
        assert_eq!(health(&server).await, 200);
    }
    let want = |chs: &[&str]| -> Vec<u64> {
        published
            .iter()
            .filter(|(_, c)| chs.contains(c))
            .map(|(id, _)| *id)
            .collect()
    };
    let last = published.last().unwrap().0;
    assert_eq!(read_through(&mut both, last).await, want(&["a", "b"]));
    assert_eq!(read_through(&mut only_b, last).await, want(&["b"]));
    both.expect_silence(Duration::from_millis(300)).await;
    only_b.expect_silence(Duration::from_millis(10)).await;
}

/// Publishes on `a` and `b` in turn until `stop`, through the instance and through a separate
/// Redis publisher; returns the acknowledged ids.
fn spawn_publisher(
    server: &TestServer,
    url: String,
    history: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<u64>> {
    let instance = server.redisse.publisher();
    tokio::spawn(async move {
        let other = redisse::Publisher::redis_with_history(&url, history).expect("publisher");
        let mut acked = Vec::new();
        let mut n = 0u64;
        while !stop.load(Relaxed) {
            let (p, ch) = if n.is_multiple_of(2) {
                (&instance, "a")
            } else {
                (&other, "b")
            };
            let id = p
                .publish(ch, redisse::Event::message(n.to_string()))
                .await
                .expect("publish while Redis is up");
            acked.push(id);
            n += 1;
        }
        acked
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pubsub_connections_lose_nothing_published_meanwhile() {
    let backend = Backend::redis();
    let redis = backend.redis_server();
    let mut config = backend.config();
    // The gap must stay in history for this test to expect no `missedevents`.
    config.history_size = 100_000;
    let server = TestServer::start(config).await;
    let mut s = server.live_stream("/?a&b").await;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = spawn_publisher(&server, redis.url(), 100_000, stop.clone());
    for _ in 0..3 {
        sleep(Duration::from_millis(150)).await;
        assert!(blocking(|| redis.kill_pubsub_clients()) >= 1);
        // Back when Redis sees the process subscribed again.
        wait_until("the subscriber is back", || {
            numsub(redis, "a") == 1 && numsub(redis, "b") == 1
        })
        .await;
    }
    sleep(Duration::from_millis(150)).await;
    stop.store(true, Relaxed);
    let acked = publisher.await.expect("publisher task");
    assert!(acked.len() > 100, "publishers kept publishing");
    let got = read_through(&mut s, *acked.last().unwrap()).await;
    assert_eq!(got, acked, "every event once, in order");
    s.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(reconnects(&server), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_during_an_outage_is_held_open_and_served_when_redis_returns() {
    let mut backend = Backend::redis();
    let mut config = backend.config();
    config.heartbeat = Duration::from_millis(100);
    let server = TestServer::start(config).await;
    wait_broker(&server, true).await;
    assert_eq!(health(&server).await, 200);
    let first = server.publish("a", "m", "first").await;
    let second = server.publish("a", "m", "second").await;
    let redis = redis_mut(&mut backend);
    blocking(|| redis.save_and_stop());
    wait_broker(&server, false).await;
    assert_eq!(health(&server).await, 503);

    let mut resumed = server
        .stream("/?a", &[("last-event-id", &first.to_string())])
        .await;
    let mut fresh = server.stream("/?a", &[]).await;
    assert_eq!((resumed.status.as_u16(), fresh.status.as_u16()), (200, 200));
    assert_eq!(
        resumed.next_within(Duration::from_millis(500)).await,
        Next::Timeout
    );
    assert!(
        resumed.comments.iter().filter(|c| *c == "hb").count() >= 2,
        "heartbeats while waiting: {:?}",
        resumed.comments
    );

    blocking(|| redis.start_again());
    wait_broker(&server, true).await;
    assert_eq!(health(&server).await, 200);
    let e = resumed.next().await;
    assert_eq!((id_of(&e), e.data.as_str()), (second, "second"));
    let e = fresh.next().await;
    assert_eq!((e.event.as_str(), id_of(&e)), ("lastEventId", second));
    let live = server.publish("a", "m", "live").await;
    assert_eq!(id_of(&resumed.next().await), live);
    assert_eq!(id_of(&fresh.next().await), live);
}

async fn restart_empty_and_wait_for_the_subscriber(server: &TestServer, redis: &mut RedisServer) {
    blocking(|| redis.restart());
    wait_until("the subscriber is back", || numsub(redis, "a") == 1).await;
    wait_broker(server, true).await;
}

/// Restarts Redis empty and returns the counter it had: every id given before.
async fn restart_empty_from(server: &TestServer, redis: &mut RedisServer) -> u64 {
    let before: u64 = redis::cmd("GET")
        .arg("redisse:lastEventId")
        .query(&mut redis.con())
        .expect("the counter before the restart");
    restart_empty_and_wait_for_the_subscriber(server, redis).await;
    before
}

/// docs/history.md, "After Redis lost its data": Redis loses its data; open streams get
/// `missedevents`, then the new ids flow, above the old ones (the subscriber raised the counter:
/// tests/it/counter_reset.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_gives_missedevents_then_the_new_ids() {
    let mut backend = Backend::redis();
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?a").await;
    for i in 0..3 {
        server.publish("a", "m", &format!("old{i}")).await;
    }
    assert_eq!(s.take(3).await.len(), 3);
    // Events on a channel nobody here listens to put the counter past anything dispatched.
    for _ in 0..5 {
        server.publish("elsewhere", "m", "x").await;
    }
    let mut late = server.live_stream("/?a").await;
    let redis = redis_mut(&mut backend);
    for round in 0..2 {
        let before = restart_empty_from(&server, redis).await;
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(server.publish("a", "m", &format!("new{round}-{i}")).await);
        }
        assert!(ids[0] > before, "above the old ids ({before}): {ids:?}");
        assert_eq!(ids, [ids[0], ids[0] + 1, ids[0] + 2], "one counter");
        for stream in [&mut s, &mut late] {
            assert_eq!(stream.next().await.event, "missedevents");
            let got: Vec<u64> = stream.take(3).await.iter().map(id_of).collect();
            assert_eq!(got, ids);
            stream.expect_silence(Duration::from_millis(100)).await;
        }
    }
}

/// The same when this process never dispatched a single event before the restart: the streams'
/// positions (from the `lastEventId` event) are all the server knows of the old ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_before_any_event_was_delivered() {
    let mut backend = Backend::redis();
    let server = TestServer::start(backend.config()).await;
    for _ in 0..5 {
        server.publish("elsewhere", "m", "x").await;
    }
    let mut s = server.live_stream("/?a").await;
    let redis = redis_mut(&mut backend);
    let before = restart_empty_from(&server, redis).await;
    let id = server.publish("a", "m", "new").await;
    assert!(id > before, "above the old ids ({before}): {id}");
    assert_eq!(s.next().await.event, "missedevents");
    let e = s.next().await;
    assert_eq!((id_of(&e), e.data.as_str()), (id, "new"));
}

/// Streams that wait through an outage after which Redis comes back empty: one `missedevents`
/// (whatever told them, the plan or the reset), then the new ids, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_waiting_through_an_outage_that_loses_the_data_get_one_missedevents() {
    let mut backend = Backend::redis();
    let mut config = backend.config();
    config.heartbeat = Duration::from_millis(100);
    let server = TestServer::start(config).await;
    let mut live = server.live_stream("/?a").await;
    let mut old = Vec::new();
    for i in 0..5 {
        old.push(server.publish("a", "m", &format!("old{i}")).await);
    }
    assert_eq!(
        live.take(5).await.iter().map(id_of).collect::<Vec<_>>(),
        old
    );
    let redis = redis_mut(&mut backend);
    blocking(|| redis.stop());
    wait_broker(&server, false).await;
    let mut resumed = server
        .stream("/?a", &[("last-event-id", &old[1].to_string())])
        .await;
    let mut fresh = server.stream("/?a", &[]).await;
    // Both wait (heartbeats) until Redis is back.
    for s in [&mut resumed, &mut fresh] {
        assert_eq!(
            s.next_within(Duration::from_millis(300)).await,
            Next::Timeout
        );
    }
    blocking(|| redis.start_again());
    wait_until("the subscriber is back", || numsub(redis, "a") == 1).await;
    wait_broker(&server, true).await;
    let new = server.publish("a", "m", "new").await;
    assert!(new > old[4], "above the old ids: {new} after {old:?}");
    // The counter hint of a stream planned before `new` was published (the raised counter, with
    // no event of its own) is no event; it may come or not, and must be below `new`.
    async fn next_event(s: &mut SseStream, new: u64) -> SseEvent {
        let e = s.next().await;
        if e.event != "lastEventId" {
            return e;
        }
        assert!(id_of(&e) < new, "the hint before the new event: {e:?}");
        s.next().await
    }
    for (name, s) in [("live", &mut live), ("resumed", &mut resumed)] {
        let got = vec![s.next().await, next_event(s, new).await];
        assert_eq!(
            got.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
            ["missedevents", "m"],
            "{name}: {got:?}"
        );
        assert_eq!(id_of(&got[1]), new);
        s.expect_silence(Duration::from_millis(200)).await;
    }
    // A fresh stream had no position in the old ids: it may be told of the loss or not, but it
    // gets the new event once.
    let mut e = next_event(&mut fresh, new).await;
    if e.event == "missedevents" {
        e = next_event(&mut fresh, new).await;
    }
    assert_eq!((e.event.as_str(), id_of(&e)), ("m", new));
    fresh.expect_silence(Duration::from_millis(200)).await;
}

/// A Redis that stops answering without closing its sockets (half-open): the subscriber's PING
/// times out, the broker is reported down, and once Redis answers again the streams go on with
/// nothing lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_is_detected_by_ping_and_streams_go_on_after_it() {
    let backend = Backend::redis();
    let redis = backend.redis_server();
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?a").await;
    let before = server.publish("a", "m", "before").await;
    assert_eq!(id_of(&s.next().await), before);
    redis.freeze();
    // Unfreezes even when an assertion below fails, so the server can be killed and dropped.
    struct Unfreeze<'a>(&'a RedisServer);
    impl Drop for Unfreeze<'_> {
        fn drop(&mut self) {
            self.0.unfreeze();
        }
    }
    let frozen = Unfreeze(redis);
    wait_broker(&server, false).await;
    assert_eq!(health(&server).await, 503);
    s.expect_silence(Duration::from_millis(100)).await;
    drop(frozen);
    wait_broker(&server, true).await;
    assert_eq!(health(&server).await, 200);
    let after = server.publish("a", "m", "after").await;
    let e = s.next().await;
    assert_eq!((id_of(&e), e.data.as_str()), (after, "after"));
    s.expect_silence(Duration::from_millis(200)).await;
}

/// Redis's user for the server under test, which a test can shut out (`ACL SETUSER ... off`
/// and `CLIENT KILL USER`) while its own publisher, the default user, keeps publishing: an
/// outage seen by the server alone, during which history grows.
const SHUT_OUT_USER: &str = "redisse-under-test";

fn add_shut_out_user(redis: &RedisServer) {
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(SHUT_OUT_USER)
        .arg("on")
        .arg(">pw")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query(&mut redis.con())
        .expect("ACL SETUSER");
}

/// Turns the user on or off; off also drops its connections (Redis 7 keeps them otherwise).
fn shut_out(redis: &RedisServer, off: bool) {
    let mut con = redis.con();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(SHUT_OUT_USER)
        .arg(if off { "off" } else { "on" })
        .query(&mut con)
        .expect("ACL SETUSER");
    if off {
        let _: u64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("USER")
            .arg(SHUT_OUT_USER)
            .query(&mut con)
            .expect("CLIENT KILL USER");
    }
}

/// 100 streams with a 32 KiB queue held through an outage during which 120 events of 1 KB
/// (about 4 times the queue) were published: 50 streams live before it, and 50 opened during
/// it with the last id before it (as browsers that reconnect meanwhile). Once the server is
/// back, the refill is larger than every queue, yet no stream is cut as slow: every stream
/// gets every event once, in order, then the live events after it. (Before: the refill was
/// pushed into the queues whole, and streams were closed as slow before they sent anything.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_streams_with_a_small_queue_take_a_refill_larger_than_it() {
    let backend = Backend::redis();
    let redis = backend.redis_server();
    add_shut_out_user(redis);
    let mut config = backend.config();
    config.redis_url = Some(
        redis
            .url()
            .replace("redis://", &format!("redis://{SHUT_OUT_USER}:pw@")),
    );
    config.max_queue_bytes = 32 * 1024;
    config.history_size = 10_000;
    config.heartbeat = Duration::from_millis(200);
    let server = TestServer::start(config).await;
    let mut live = Vec::new();
    for _ in 0..50 {
        live.push(server.live_stream("/?a&b").await);
    }
    let before = server.publish("a", "m", "before").await;
    for s in &mut live {
        assert_eq!(id_of(&s.next().await), before);
    }
    blocking(|| shut_out(redis, true));
    wait_broker(&server, false).await;
    let other = redisse::Publisher::redis_with_history(&redis.url(), 10_000).expect("publisher");
    let data = "x".repeat(1000);
    let mut want = Vec::new();
    let url = server.url("/?a&b");
    let position = before.to_string();
    let headers = [("last-event-id", position.as_str())];
    let mut held = Vec::new();
    for i in 0..120 {
        let ch = if i % 2 == 0 { "a" } else { "b" };
        let id = other
            .publish(ch, redisse::Event::message(data.clone()))
            .await
            .expect("publish as another user");
        want.push(id);
        if i % 2 == 1 && held.len() < 50 {
            held.push(SseStream::open(&url, &headers).await);
        }
    }
    assert_eq!(held.len(), 50);
    server.wait_connections(100).await;
    blocking(|| shut_out(redis, false));
    wait_broker(&server, true).await;
    for i in 0..4 {
        let ch = if i % 2 == 0 { "a" } else { "b" };
        want.push(server.publish(ch, "m", "after").await);
    }
    let last = *want.last().unwrap();
    for (name, streams) in [("live", &mut live), ("held", &mut held)] {
        for (n, s) in streams.iter_mut().enumerate() {
            let got = read_through(s, last).await;
            assert_eq!(got, want, "{name} stream {n}: every event once, in order");
        }
    }
    assert_eq!(
        server.redisse.metrics().slow_disconnects(),
        0,
        "no stream was cut as slow"
    );
    assert_eq!(server.redisse.connections(), 100);
}

/// Milliseconds from `since` to now.
fn ms_since(since: Instant) -> u128 {
    since.elapsed().as_millis()
}

/// Redis restarted with its data under an open stream, three times, after an outage of a
/// second each: from the moment Redis answers a PING again, `/health` is 200 and an event
/// published then reaches the stream well within a second. (Before: 2.3-4.1 s from the second
/// restart on, as the subscriber's refill failed on the history connection's dead socket and
/// then waited out its backoff, which the outage had grown.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_serves_streams_again_within_a_fraction_of_a_second() {
    let mut backend = Backend::redis();
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?a").await;
    let first = server.publish("a", "m", "before").await;
    assert_eq!(id_of(&s.next().await), first);
    let redis = redis_mut(&mut backend);
    let url = redis.url();
    let mut figures = Vec::new();
    for round in 0..3 {
        blocking(|| redis.save_and_stop());
        wait_broker(&server, false).await;
        // A restart takes a while: the subscriber's retries meanwhile back off.
        sleep(Duration::from_secs(1)).await;
        blocking(|| redis.start_again());
        let back = blocking(|| {
            let deadline = std::time::Instant::now() + PATIENCE;
            loop {
                let pong = redis::Client::open(url.as_str())
                    .and_then(|c| c.get_connection())
                    .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con));
                if pong.is_ok() {
                    return Instant::now();
                }
                assert!(std::time::Instant::now() < deadline, "Redis never answered");
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        // An event published as soon as Redis answers, on a connection of the test's own.
        let publisher = redisse::Publisher::redis(&url).expect("publisher");
        let live = publisher
            .publish("a", redisse::Event::message(format!("back {round}")))
            .await
            .expect("publish once Redis answers");
        let health_task = {
            let url = server.url("/health");
            tokio::spawn(async move {
                let deadline = Instant::now() + PATIENCE;
                loop {
                    let res = client().get(&url).send().await.expect("GET /health");
                    if res.status() == 200 {
                        return ms_since(back);
                    }
                    assert!(Instant::now() < deadline, "/health never turned 200");
                    sleep(Duration::from_millis(5)).await;
                }
            })
        };
        let e = s.next().await;
        let to_event = ms_since(back);
        assert_eq!((id_of(&e), e.data), (live, format!("back {round}")));
        let to_health = health_task.await.expect("health task");
        println!(
            "restart {round}: Redis back -> /health 200: {to_health} ms; -> first live event: {to_event} ms"
        );
        figures.push((to_health, to_event));
    }
    for (round, (to_health, to_event)) in figures.into_iter().enumerate() {
        assert!(
            to_health < 700,
            "restart {round}: /health was 503 for {to_health} ms after Redis was back"
        );
        assert!(
            to_event < 700,
            "restart {round}: the first live event came {to_event} ms after Redis was back"
        );
    }
    s.expect_silence(Duration::from_millis(200)).await;
}
