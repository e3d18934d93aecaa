//! Ids never go backwards across a Redis data loss (docs/history.md, "After Redis lost its
//! data"): the first server that sees the loss raises the counter past every id it knew and
//! records the floor below which events may be lost, so that a client away across the loss
//! gets `missedevents` and every event published since, from any server, including one started
//! after the loss; a server still connected notices a `FLUSHALL` by its watchdog.

use std::time::Duration;

use redisse::{Event, Publisher};
use tokio::time::{Instant, sleep};

use crate::support::binary::Redisse;
use crate::support::sse::client;
use crate::support::{Backend, PATIENCE, RedisServer, SseEvent, SseStream, TestServer};

const QUIET: Duration = Duration::from_millis(300);

fn id_of(e: &SseEvent) -> u64 {
    e.id.as_deref().expect("id").parse().expect("numeric id")
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn redis_mut(backend: &mut Backend) -> &mut RedisServer {
    match backend {
        Backend::Redis(r) => r,
        Backend::Memory => panic!("this test needs Redis"),
    }
}

fn get(redis: &RedisServer, key: &str) -> Option<u64> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut redis.con())
        .expect("GET")
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

/// Kills Redis (nothing saved) and starts it again empty, waiting until every server noticed
/// and is back (its subscriber reconnected, which is when it checks for a loss).
async fn restart_empty(redis: &mut RedisServer, servers: &[&TestServer]) {
    blocking(|| redis.stop());
    for s in servers {
        wait_until("the broker is down", || !s.redisse.is_broker_up()).await;
    }
    blocking(|| redis.restart());
    for s in servers {
        wait_until("the broker is up", || s.redisse.is_broker_up()).await;
    }
}

/// Publishes `n` events on `a` and reads them on a live stream of `server`, which then knows
/// the last id; returns the ids.
async fn seen_by_a_client(server: &TestServer, n: usize) -> Vec<u64> {
    let mut s = server.live_stream("/?a").await;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(server.publish("a", "m", &format!("old{i}")).await);
    }
    let got: Vec<u64> = s.take(n).await.iter().map(id_of).collect();
    assert_eq!(got, ids);
    ids
}

async fn resume(url: &str, id: u64) -> SseStream {
    let s = SseStream::open(url, &[("last-event-id", &id.to_string())]).await;
    assert_eq!(s.status, 200);
    s
}

/// `missedevents`, then exactly `want` (ids and data), then nothing.
async fn expect_missed_then(s: &mut SseStream, want: &[(u64, String)]) {
    let first = s.next().await;
    assert_eq!(first.event, "missedevents", "first event: {first:?}");
    let got: Vec<(u64, String)> = s
        .take(want.len())
        .await
        .iter()
        .map(|e| (id_of(e), e.data.clone()))
        .collect();
    assert_eq!(got, want);
    s.expect_silence(QUIET).await;
}

/// Redis restarted empty while the client was away: the server that knew its id raises the
/// counter when its subscriber comes back, so the events published afterwards have higher ids,
/// and the client is told of the loss and gets them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_restarted_empty_new_ids_pass_the_old_ones_and_the_old_client_is_told() {
    let mut backend = Backend::redis();
    let server = TestServer::start(backend.config()).await;
    let old = seen_by_a_client(&server, 5).await;
    let n = *old.last().unwrap();
    let counter_before = get(backend.redis_server(), "redisse:lastEventId").unwrap();
    restart_empty(redis_mut(&mut backend), &[&server]).await;
    let mut new = Vec::new();
    for i in 0..3 {
        let data = format!("new{i}");
        new.push((server.publish("a", "m", &data).await, data));
    }
    assert!(
        new[0].0 > counter_before,
        "ids never go backwards: {new:?} after the counter was {counter_before}"
    );
    let mut s = resume(&server.url("/?a"), n).await;
    expect_missed_then(&mut s, &new).await;
}

/// The counter passed the client's id before any server noticed the loss (the server is
/// stopped meanwhile, a publisher keeps publishing): the new ids look like positions after the
/// client's, but the client still gets `missedevents` and every event published since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_id_the_new_counter_passed_before_anyone_noticed_is_told() {
    let mut backend = Backend::redis();
    let url = backend.redis_server().url();
    let server = Redisse::start(&["--redis", &url]);
    server.health_becomes(200).await;
    let publisher = Publisher::redis(&url).expect("publisher");
    // The counter exists, so a fresh stream starts with its hint once it is live.
    publisher.publish("t.warm", "warmup").await.unwrap();
    let mut s = SseStream::open(&server.url("/?a"), &[]).await;
    assert_eq!(s.next().await.event, "lastEventId");
    let mut old = Vec::new();
    for i in 0..5 {
        old.push(publisher.publish("a", format!("old{i}")).await.unwrap());
    }
    assert_eq!(s.take(5).await.iter().map(id_of).collect::<Vec<_>>(), old);
    drop(s);
    let n = *old.last().unwrap();
    server.signal("-STOP");
    let redis = redis_mut(&mut backend);
    blocking(|| redis.restart());
    // A new connection: the old one died with the old Redis.
    let publisher = Publisher::redis(&url).expect("publisher");
    let mut new = Vec::new();
    for i in 0..(n + 3) {
        let data = format!("new{i}");
        new.push((publisher.publish("a", data.clone()).await.unwrap(), data));
    }
    assert!(new.last().unwrap().0 > n, "the new counter passed {n}");
    server.signal("-CONT");
    // Back when its subscriber reconnected, which is when it checks for a loss.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = client()
            .get(server.internal_url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        let reconnects = text
            .lines()
            .find_map(|l| l.strip_prefix("redisse_broker_reconnects_total "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        if reconnects.is_some_and(|r| r >= 1) {
            break;
        }
        assert!(Instant::now() < deadline, "no reconnection: {text}");
        sleep(Duration::from_millis(20)).await;
    }
    let mut s = resume(&server.url("/?a"), n).await;
    expect_missed_then(&mut s, &new).await;
}

/// Two servers that both knew the old ids reconnect after the loss and race to raise the
/// counter: it ends one above the highest id either knew, each server's stream is told once,
/// and the ids either server gives afterwards follow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_racing_the_raise_end_with_one_counter() {
    let mut backend = Backend::redis();
    let first = TestServer::start(backend.config()).await;
    let second = TestServer::start(backend.config()).await;
    let mut on_first = first.live_stream("/?a").await;
    let mut on_second = second.live_stream("/?a").await;
    let mut old = Vec::new();
    for i in 0..4 {
        old.push(first.publish("a", "m", &format!("old{i}")).await);
    }
    for s in [&mut on_first, &mut on_second] {
        assert_eq!(s.take(4).await.iter().map(id_of).collect::<Vec<_>>(), old);
    }
    let n = *old.last().unwrap();
    assert_eq!(get(backend.redis_server(), "redisse:lastEventId"), Some(n));
    restart_empty(redis_mut(&mut backend), &[&first, &second]).await;
    let redis = backend.redis_server();
    assert_eq!(get(redis, "redisse:lastEventId"), Some(n + 1), "one raise");
    assert_eq!(get(redis, "redisse:lostBelow"), Some(n + 1));
    let a = first.publish("a", "m", "via first").await;
    let b = second.publish("a", "m", "via second").await;
    assert_eq!((a, b), (n + 2, n + 3));
    let want = [(a, "via first".to_owned()), (b, "via second".to_owned())];
    expect_missed_then(&mut on_first, &want).await;
    expect_missed_then(&mut on_second, &want).await;
}

/// A server started after the loss never saw the old ids: the floor the first server recorded
/// tells it that the client's position is in the lost range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_after_the_loss_tells_the_old_client_too() {
    let mut backend = Backend::redis();
    let server = TestServer::start(backend.config()).await;
    let old = seen_by_a_client(&server, 3).await;
    let n = *old.last().unwrap();
    restart_empty(redis_mut(&mut backend), &[&server]).await;
    // More events than the old id: without the raise their ids would pass it.
    let publisher = Publisher::redis(&backend.redis_server().url()).expect("publisher");
    let mut new = Vec::new();
    for i in 0..(n + 2) {
        let data = format!("new{i}");
        new.push((publisher.publish("a", data.clone()).await.unwrap(), data));
    }
    let later = TestServer::start(backend.config()).await;
    let mut s = resume(&later.url("/?a"), n).await;
    expect_missed_then(&mut s, &new).await;
    // A client whose position is a new id is not told.
    let mut s = resume(&later.url("/?a"), new[0].0).await;
    let got: Vec<u64> = s.take(new.len() - 1).await.iter().map(id_of).collect();
    let want: Vec<u64> = new[1..].iter().map(|(id, _)| *id).collect();
    assert_eq!(got, want);
    s.expect_silence(QUIET).await;
}

/// `FLUSHALL` under a connected server: no reconnection tells it, its watchdog's reading does
/// (the marks it knew are gone); its stream gets `missedevents` and the events published since,
/// whatever ids they got before the raise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_under_a_connected_server_is_noticed_by_its_watchdog() {
    let backend = Backend::redis();
    let redis = backend.redis_server();
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?a").await;
    let old = server.publish("a", "m", "old").await;
    assert_eq!(id_of(&s.next().await), old);
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut redis.con())
        .expect("FLUSHALL");
    let publisher = Publisher::redis(&redis.url()).expect("publisher");
    let x1 = publisher.publish("a", Event::message("x1")).await.unwrap();
    let first = s.next().await;
    assert_eq!(first.event, "missedevents", "first event: {first:?}");
    let x2 = publisher.publish("a", Event::message("x2")).await.unwrap();
    let got: Vec<String> = s.take(2).await.iter().map(|e| e.data.clone()).collect();
    assert_eq!(got, ["x1", "x2"], "ids {x1} and {x2}");
    s.expect_silence(QUIET).await;
    let after = server.publish("a", "m", "after").await;
    assert!(after > old, "ids never go backwards: {after} after {old}");
    assert_eq!(id_of(&s.next().await), after);
}

/// An event this server published, acknowledged by Redis and then lost with it (Redis restarted
/// from a save made just before the write), is an id the server knows: the next id passes it
/// instead of reusing it. (Before: the next event got the lost event's id again, the soak's
/// "acknowledged, never delivered, no `missedevents`" case.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_publish_that_redis_lost_is_not_reused() {
    let mut backend = Backend::redis();
    let server = TestServer::start(backend.config()).await;
    let _warm = server.publish("saved", "m", "in the save").await;
    let redis = redis_mut(&mut backend);
    blocking(|| {
        let _: () = redis::cmd("SAVE").query(&mut redis.con()).expect("SAVE");
    });
    let lost = server.publish("unsaved", "m", "after the save").await;
    blocking(|| {
        redis.stop();
        redis.start_again();
    });
    wait_until("the broker down and up again", || {
        server.metric("redisse_broker_reconnects_total") > 0 && server.redisse.is_broker_up()
    })
    .await;
    // The subscriber checks for a loss (and raises the counter) before it reports Redis up.
    let next = server.publish("unsaved", "m", "next").await;
    assert!(
        next > lost,
        "id {next} after the lost {lost}: ids went backwards"
    );
}

/// Publishing fast through the server while its watchdog reads the counter is no sign of data
/// loss: the watchdog compares with what the server knew before it asked. (Before: a publish
/// answered between the reading and its check made the counter look behind, and the subscriber
/// reconnected and refilled for nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_during_the_watchdog_reading_is_no_loss() {
    let backend = Backend::redis();
    let mut config = backend.config();
    config.redis_ping_interval = Duration::from_millis(20);
    let server = TestServer::start(config).await;
    wait_until("the broker is up", || server.redisse.is_broker_up()).await;
    let publisher = server.redisse.publisher();
    let until = Instant::now() + Duration::from_secs(3);
    let mut published = 0;
    while Instant::now() < until {
        let batch = (0..16).map(|_| publisher.publish("fast", Event::message("x")));
        for id in futures_util::future::join_all(batch).await {
            id.expect("publish");
            published += 1;
        }
    }
    let reconnects = server.metric("redisse_broker_reconnects_total");
    println!("{published} publishes, {reconnects} reconnections");
    assert_eq!(
        reconnects, 0,
        "the watchdog took {reconnects} readings for a data loss"
    );
}

/// A stream on `path` received an event on `a` that Redis acknowledged after its last save;
/// Redis is killed and comes back from the save, and before this server's subscriber is back
/// another publisher publishes `reused` on `reused_channel` (the first takes the lost id), then
/// this server publishes `here`, if any. The stream must get `missedevents`, then what Redis
/// retains (the saved event again, as after any loss), ending with the events published since.
async fn after_a_rollback(path: &str, reused_channel: &str, reused: &[&str], here: Option<&str>) {
    let mut backend = Backend::redis();
    let url = backend.redis_server().url();
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream(path).await;
    server.publish("a", "m", "in the save").await;
    assert_eq!(s.next().await.data, "in the save");
    let redis = redis_mut(&mut backend);
    blocking(|| {
        let _: () = redis::cmd("SAVE").query(&mut redis.con()).expect("SAVE");
    });
    let lost = server.publish("a", "m", "after the save").await;
    assert_eq!(s.next().await.data, "after the save");
    let other = Publisher::redis(&url).expect("publisher");
    let ids = blocking(|| {
        redis.stop();
        redis.start_again();
        tokio::runtime::Handle::current().block_on(async {
            let mut ids = Vec::new();
            for data in reused {
                let event = Event::new("m", *data);
                ids.push(other.publish(reused_channel, event).await.expect("publish"));
            }
            ids
        })
    });
    assert_eq!(
        ids[0], lost,
        "the test's premise: the other publisher reused the lost id"
    );
    let mut since: Vec<String> = reused.iter().map(|d| d.to_string()).collect();
    if let Some(data) = here {
        server.publish(reused_channel, "m", data).await;
        since.push(data.to_owned());
    }
    let first = s.next().await;
    assert_eq!(
        first.event, "missedevents",
        "the event delivered as id {lost} is gone and its id taken: got {first:?}"
    );
    let mut rest = Vec::new();
    while !rest.ends_with(&since[since.len() - 1..]) {
        rest.push(s.next().await.data);
        assert!(
            rest.len() <= since.len() + 1,
            "after missedevents: {rest:?}"
        );
    }
    assert!(
        rest.ends_with(&since),
        "after missedevents, the events published since: {rest:?}"
    );
}

/// Redis came back from its last save (an acknowledged write after the save is lost) and
/// another process published before this server's subscriber was back, reusing the lost ids:
/// the counter is not below what the server knew, yet the event it delivered under that id is
/// gone. The stream that had it must get `missedevents` and the event that took its id, not
/// have that event dropped as one it already had. Found by the soak (an HTTP and a Rust publish
/// lost for all the clients of their channels after a Redis restart with its data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_reused_after_redis_came_back_from_its_last_save_are_not_taken_for_known() {
    after_a_rollback("/?a", "a", &["reused", "next"], None).await;
}

/// The same, with the lost ids given to events of another channel: the event delivered under
/// the newest id is simply gone from its channel's history (nothing trimmed it, older events
/// are still there), and the stream that had it must be told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_reused_on_another_channel_after_redis_came_back_from_its_last_save_are_noticed() {
    after_a_rollback("/?a&b", "b", &["reused on b", "next on b"], None).await;
}

/// The same, with this server publishing too as soon as Redis is back, before its subscriber
/// is: the newest event it published then is in Redis, and must not hide that the newest one
/// it had delivered is gone. (Found by the soak: publishes queued during a partition went out
/// when it ended, just before the subscriber's check.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_here_right_after_redis_came_back_from_its_last_save_hides_nothing() {
    after_a_rollback("/?a&b", "b", &["reused on b"], Some("published here")).await;
}

/// An ordinary reconnection (the pub/sub connection killed; Redis the same server, not
/// restarted) while a gem publisher's `ZADD` is still on its way is no data loss: the event
/// delivered live is missing from history only for a moment, and nobody gets `missedevents`.
/// (Found by review: the rollback check took it for one, and every stream got `missedevents`
/// and every retained event again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gem_zadd_still_on_its_way_at_a_reconnection_is_no_loss() {
    let backend = Backend::redis();
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?a").await;
    let redis = backend.redis_server();
    let id = redis.next_id();
    let payload = format!("id: {id}\nevent: m\ndata: live only\n\n");
    redis.publish_raw("a", &payload);
    assert_eq!(s.next().await.data, "live only");
    let reconnects = server.metric("redisse_broker_reconnects_total");
    assert!(blocking(|| redis.kill_pubsub_clients()) > 0);
    wait_until("the subscriber reconnected", || {
        server.metric("redisse_broker_reconnects_total") > reconnects
            && server.redisse.is_broker_up()
    })
    .await;
    // The gem's ZADD lands after the subscriber's check.
    redis.store_raw("a", id, &payload);
    server.publish("a", "m", "next").await;
    let next = s.next().await;
    assert_eq!(
        (next.event.as_str(), next.data.as_str()),
        ("m", "next"),
        "a reconnection to the same Redis is no data loss"
    );
}
