//! What a stream holds before it goes live is bounded: a request that comes and goes during a
//! Redis outage frees its setup at once, and a replay after `Last-Event-ID` never holds more
//! than the stream's queue (`max_queue_bytes`) however large the history and however slowly
//! the client reads. Memory bounds are stated here and measured as the resident memory of a
//! process that runs the test alone (see [`raw::in_child_process`]).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep};

use crate::support::raw::{self, rss_kib, stream_request};
use crate::support::{Backend, PATIENCE, SseStream, TestServer};

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

/// Reads a raw response until the end of its head.
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1024];
    let deadline = Instant::now() + PATIENCE;
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut byte))
            .await
            .expect("the response head in time")
            .expect("read the response head");
        assert!(n > 0, "closed before the response head");
        head.extend_from_slice(&byte[..n]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The bound on resident memory growth after 800 requests of 1000 channels each came and went
/// during an outage (before the fix: 76-95 MiB, held until Redis came back).
const OUTAGE_RSS_BOUND_KIB: u64 = 16 * 1024;

/// 800 requests on 1000 channels each (distinct names), each closed once its response head
/// arrived, while Redis is down: every setup ends as its client leaves, memory does not grow
/// by more than [`OUTAGE_RSS_BOUND_KIB`], and once Redis is back a new stream works.
#[test]
fn requests_that_leave_during_an_outage_free_their_setup() {
    if raw::in_child_process("held_streams::requests_that_leave_during_an_outage_free_their_setup")
    {
        return;
    }
    runtime().block_on(async {
        let mut backend = Backend::redis();
        let server = TestServer::start(backend.config()).await;
        let Backend::Redis(redis) = &mut backend else {
            unreachable!()
        };
        redis.stop();
        wait_for("the broker to be down", || !server.redisse.is_broker_up()).await;
        let request = |round: usize| {
            let names: Vec<String> = (0..1000).map(|i| format!("o{round}.{i}")).collect();
            stream_request(&format!("/?{}", names.join("&")), &[])
        };
        // A first pass warms the allocator up; the measured pass follows.
        for pass in 0..2 {
            let before = rss_kib();
            for round in 0..800 {
                let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
                tcp.write_all(&request(pass * 800 + round))
                    .await
                    .expect("send the request");
                let head = read_head(&mut tcp).await;
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                drop(tcp);
            }
            wait_for("every stream to end", || server.redisse.connections() == 0).await;
            wait_for("every setup to end", || server.metric("redisse_streams_starting") == 0).await;
            let after = rss_kib();
            let growth = after.saturating_sub(before);
            println!(
                "outage pass {pass}: RSS {before} KiB -> {after} KiB (growth {growth} KiB, bound {OUTAGE_RSS_BOUND_KIB} KiB)"
            );
            if pass == 1 {
                assert!(
                    growth < OUTAGE_RSS_BOUND_KIB,
                    "800 requests that left during the outage kept {growth} KiB"
                );
            }
        }
        redis.start_again();
        wait_for("the broker to be up", || server.redisse.is_broker_up()).await;
        let mut stream = server.live_stream("/?after").await;
        let id = server.publish("after", "message", "back").await;
        let event = stream.next().await;
        assert_eq!(event.id.as_deref(), Some(id.to_string().as_str()));
    });
}

/// Publishes `per_channel` events of `size` bytes on each of `channels`, interleaved; returns
/// their ids in order.
async fn fill_history(
    server: &TestServer,
    channels: &[&str],
    per_channel: usize,
    size: usize,
) -> Vec<u64> {
    let data = "x".repeat(size);
    let mut ids = Vec::new();
    for _ in 0..per_channel {
        for ch in channels {
            ids.push(server.publish(ch, "m", &data).await);
        }
    }
    ids
}

crate::on_both_brokers!(a_backlog_many_times_the_queue_is_replayed_exactly_once);

/// A resume whose backlog (4 channels x 100 events of 20 KB: 8 MB) is 32 times the stream's
/// queue, with live events published while it is replayed, delivers every event once, in id
/// order, without `missedevents` and without making the client slow. (Before: the whole
/// replay was queued at once, past the bound, so the first live event made the stream slow.)
async fn a_backlog_many_times_the_queue_is_replayed_exactly_once(backend: Backend) {
    let mut config = backend.config();
    config.max_queue_bytes = 256 * 1024;
    // Live events must not trim the backlog under the replay: this test is about paging.
    config.history_size = 1000;
    let server = TestServer::start(config).await;
    let channels = ["r1", "r2", "r3", "r4"];
    let first = server.publish("r1", "m", "position").await;
    let mut want = fill_history(&server, &channels, 100, 20_000).await;
    let mut stream = server
        .stream("/?r1&r2&r3&r4", &[("Last-Event-ID", &first.to_string())])
        .await;
    let mut got = Vec::new();
    let mut live = 0;
    while got.len() < want.len() + 20 {
        if live < 20 && got.len() % 20 == 0 {
            // A live event while the replay is under way.
            want.push(server.publish(channels[live % 4], "m", "live").await);
            live += 1;
        }
        let e = stream.next().await;
        assert_ne!(e.event, "missedevents", "nothing was lost");
        let id: u64 = e.id.as_deref().expect("an id").parse().expect("numeric");
        got.push(id);
        if live == 20 && got.len() == want.len() {
            break;
        }
    }
    assert_eq!(got, want, "every event once, in id order");
    assert_eq!(server.redisse.metrics().slow_disconnects(), 0);
}

/// The bound on resident memory growth while 10 clients that never read resume on 4 channels
/// holding 100 events of 50 KB each (20 MB): each stream holds at most its queue (1 MiB by
/// default) and a page being read. Before: +205 MiB, every stream's whole replay.
const REPLAY_RSS_BOUND_KIB: u64 = 40 * 1024;

#[test]
fn clients_that_never_read_hold_at_most_their_queue_of_replay() {
    if raw::in_child_process(
        "held_streams::clients_that_never_read_hold_at_most_their_queue_of_replay",
    ) {
        return;
    }
    runtime().block_on(async {
        let backend = Backend::redis();
        let server = TestServer::start(backend.config()).await;
        let channels = ["h1", "h2", "h3", "h4"];
        let first = server.publish("h1", "m", "position").await;
        fill_history(&server, &channels, 100, 50_000).await;
        // A first resume read to the end warms the allocator up.
        let mut warm = server
            .stream("/?h1&h2&h3&h4", &[("Last-Event-ID", &first.to_string())])
            .await;
        warm.take(400).await;
        drop(warm);
        let before = rss_kib();
        let mut clients = Vec::new();
        for _ in 0..10 {
            let mut tcp = raw::connect_small(server.addr).await;
            let request = stream_request(
                "/?h1&h2&h3&h4",
                &[&format!("Last-Event-ID: {first}")],
            );
            tcp.write_all(&request).await.expect("send the request");
            clients.push(tcp);
        }
        wait_for("10 streams", || server.redisse.connections() == 10).await;
        // Let every stream read and queue what it will.
        sleep(Duration::from_secs(2)).await;
        let after = rss_kib();
        let growth = after.saturating_sub(before);
        println!(
            "replay to 10 clients that never read: RSS {before} KiB -> {after} KiB (growth {growth} KiB, bound {REPLAY_RSS_BOUND_KIB} KiB)"
        );
        assert!(
            growth < REPLAY_RSS_BOUND_KIB,
            "10 streams that never read hold {growth} KiB of replay"
        );
        assert_eq!(server.redisse.connections(), 10, "none was disconnected");
        drop(clients);
    });
}

/// Calls of the history script Redis has run (`EVALSHA` in `INFO commandstats`).
fn history_script_calls(redis: &crate::support::RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.con())
        .expect("INFO commandstats");
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect("a count"))
}

/// 200 streams come back at once with the same channels and `Last-Event-ID`, as after a
/// deploy: Redis runs far fewer history reads than there are streams (the identical reads made
/// at the same time are shared), and every stream still gets every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_burst_shares_its_history_reads() {
    let backend = Backend::redis();
    let server = TestServer::start(backend.config()).await;
    let redis = backend.redis_server();
    let first = server.publish("s1", "m", "position").await;
    let want = fill_history(&server, &["s1", "s2"], 5, 100).await;
    let before = tokio::task::block_in_place(|| history_script_calls(redis));
    let position = first.to_string();
    let headers = [("Last-Event-ID", position.as_str())];
    let url = server.url("/?s1&s2");
    let mut streams =
        futures_util::future::join_all((0..200).map(|_| SseStream::open(&url, &headers))).await;
    for stream in &mut streams {
        let got: Vec<u64> = stream
            .take(want.len())
            .await
            .iter()
            .map(|e| e.id.as_deref().expect("an id").parse().expect("numeric"))
            .collect();
        assert_eq!(got, want);
    }
    let reads = tokio::task::block_in_place(|| history_script_calls(redis)) - before;
    let shared = server.metric("redisse_shared_history_reads_total");
    println!("200 resuming streams: {reads} history reads in Redis, {shared} shared");
    assert!(shared > 0, "no read was shared");
    assert!(
        reads < 100,
        "{reads} history reads for 200 identical resumes"
    );
}

/// A page whose only entry is refused (not an SSE event, and larger than the page) still
/// moves the replay on: the events after it are replayed, none skipped. (Before: the page
/// looked complete and empty, the stream started at the counter and the events after the
/// refused entry were lost without `missedevents`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_refused_entries_does_not_end_the_replay() {
    let backend = Backend::redis();
    let mut config = backend.config();
    config.max_queue_bytes = 64 * 1024;
    let server = TestServer::start(config).await;
    let redis = backend.redis_server();
    let position = server.publish("g", "m", "position").await;
    tokio::task::block_in_place(|| {
        let mut con = redis.con();
        let id: u64 = redis::cmd("INCR")
            .arg("redisse:lastEventId")
            .query(&mut con)
            .expect("INCR");
        let garbage = format!("not an event {}", "x".repeat(40_000));
        let _: i64 = redis::cmd("ZADD")
            .arg("g")
            .arg(id)
            .arg(garbage)
            .query(&mut con)
            .expect("ZADD");
    });
    let after = [
        server.publish("g", "m", "after 1").await,
        server.publish("g", "m", "after 2").await,
    ];
    let mut stream = server
        .stream("/?g", &[("Last-Event-ID", &position.to_string())])
        .await;
    for want in after {
        let e = stream.next().await;
        assert_eq!(e.id, Some(want.to_string()), "{e:?}");
    }
    assert!(server.metric("redisse_malformed_payloads_total") >= 1);
}
