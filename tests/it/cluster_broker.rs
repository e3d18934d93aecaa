//! The Redis Cluster broker (`--redis-cluster`), on a real six-node cluster
//! (support/cluster.rs): each channel's keys in one slot, on that slot's primary, ids per
//! channel, events sent by sharded pub/sub on the channel's shard channel, and a primary's
//! crash survived by publishes and by a stream.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::startup::fails_to_start;
use crate::support::binary::Redisse;
use crate::support::cluster::Cluster;
use crate::support::sse::SseStream;

/// The channel's hash tag, computed here on its own: FNV-1a 32 bits, the low 16 in hex.
fn tag(channel: &str) -> String {
    let mut h: u32 = 2_166_136_261;
    for b in channel.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(16_777_619);
    }
    format!("{:04x}", h & 0xffff)
}

fn history_key(channel: &str) -> String {
    format!("redisse:{{{}}}:c:{channel}", tag(channel))
}

async fn start_cluster() -> Cluster {
    tokio::task::spawn_blocking(Cluster::start)
        .await
        .expect("a cluster")
}

/// The stored frames of `channel`'s history, read on its slot's primary.
fn stored(cluster: &Cluster, channel: &str) -> Vec<String> {
    let key = history_key(channel);
    let port = cluster.primary_of(cluster.slot(&key));
    redis::cmd("ZRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1)
        .query(&mut cluster.node(port).con())
        .expect("ZRANGE")
}

/// A raw RESP2 connection to `port` that `SSUBSCRIBE`s `shard`; waits for the confirmation.
fn ssubscribe(port: u16, shard: &str) -> TcpStream {
    let mut con = TcpStream::connect(("127.0.0.1", port)).expect("connect to the node");
    con.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let cmd = format!("*2\r\n$10\r\nSSUBSCRIBE\r\n${}\r\n{shard}\r\n", shard.len());
    con.write_all(cmd.as_bytes()).unwrap();
    let seen = read_until(&mut con, "ssubscribe", Duration::from_secs(5));
    assert!(seen.contains(shard), "no confirmation: {seen:?}");
    con
}

/// What `con` received until `needle` appeared (or the wait ran out).
fn read_until(con: &mut TcpStream, needle: &str, wait: Duration) -> String {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !String::from_utf8_lossy(&got).contains(needle) {
        match con.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Each channel's history lands on its slot's primary, with ids 1, 2, 3 of its own, and each
/// event is `SPUBLISH`ed on the channel's shard channel, where a plain Redis client sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_channel_lands_on_its_slots_primary_with_ids_of_its_own() {
    let cluster = start_cluster().await;
    let channels = ["news", "chat", "orders", "alerts"];
    let primaries: std::collections::HashSet<u16> = channels
        .iter()
        .map(|c| cluster.primary_of(cluster.slot(&history_key(c))))
        .collect();
    assert!(
        primaries.len() > 1,
        "every channel on one primary: {primaries:?}"
    );
    // Every key of a channel is in one slot.
    for c in channels {
        let slot = cluster.slot(&history_key(c));
        for key in [
            format!("redisse:{{{}}}:id:{c}", tag(c)),
            format!("redisse:{{{}}}:lostBelow:{c}", tag(c)),
            format!("redisse:{{{}}}:trimmed", tag(c)),
        ] {
            assert_eq!(cluster.slot(&key), slot, "{key}");
        }
    }
    let seeds = cluster.seeds();
    let server = Redisse::start(&["--redis-cluster", &seeds]);
    server.readiness_becomes("ok").await;
    let news = history_key("news");
    let mut listener = {
        let port = cluster.primary_of(cluster.slot(&news));
        tokio::task::spawn_blocking(move || ssubscribe(port, &news))
            .await
            .unwrap()
    };
    for round in 1..=3u64 {
        for c in channels {
            let id = server
                .publish_event(c, Some("m"), &format!("{c}-{round}"))
                .await;
            assert_eq!(id, round, "{c}: ids are the channel's own sequence");
        }
    }
    for c in channels {
        let stored = stored(&cluster, c);
        let expected: Vec<String> = (1..=3)
            .map(|i| format!("id: {i}\nevent: m\ndata: {c}-{i}\n\n"))
            .collect();
        assert_eq!(stored, expected, "{c}");
        let key = format!("redisse:{{{}}}:id:{c}", tag(c));
        let port = cluster.primary_of(cluster.slot(&key));
        let seq: u64 = redis::cmd("GET")
            .arg(&key)
            .query(&mut cluster.node(port).con())
            .expect("GET the sequence");
        assert_eq!(seq, 3, "{c}");
    }
    let seen = tokio::task::spawn_blocking(move || {
        read_until(&mut listener, "data: news-3", Duration::from_secs(5))
    })
    .await
    .unwrap();
    assert!(seen.contains("smessage"), "{seen:?}");
    for i in 1..=3 {
        assert!(
            seen.contains(&format!("id: {i}\nevent: m\ndata: news-{i}\n\n")),
            "event {i} not seen on the shard channel: {seen:?}"
        );
    }
}

/// With `--redis-cluster`, a seed that is not a cluster node, and TLS and plain seeds mixed,
/// stop the start with the reason (without the password); `--redis` with `--redis-cluster` is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_that_is_not_a_cluster_node_stops_the_start() {
    let plain = crate::support::RedisServer::start();
    let err = fails_to_start(&["--redis-cluster", &plain.url()]).await;
    assert!(err.contains("not a Redis Cluster node"), "{err}");
    let mixed = "rediss://:secret@127.0.0.1:1/,redis://:secret@127.0.0.1:2/";
    let err = fails_to_start(&["--redis-cluster", mixed]).await;
    assert!(err.contains("all rediss://"), "{err}");
    assert!(!err.contains("secret"), "{err}");
    // Refused by the command line itself (clap's usage message).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_redisse"))
        .args(["--redis-cluster", &plain.url(), "--redis", &plain.url()])
        .env_remove("REDISSE_REDIS")
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

/// A stream on one channel, then the primary of the channel's slot killed (SIGKILL) and its
/// replica promoted: publishes retried meanwhile land once on the new primary, with the next
/// ids, and the stream, subscribed again there, gets them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_crash_is_survived_by_publishes_and_streams() {
    let mut cluster = start_cluster().await;
    let seeds = cluster.seeds();
    let server = Redisse::start(&["--redis-cluster", &seeds, "--redis-connect-timeout", "10"]);
    server.readiness_becomes("ok").await;
    let first = server.publish_event("news", Some("m"), "before").await;
    assert_eq!(first, 1);
    // A stream on one channel resumes from that channel's sequence, in a compound id.
    let position = format!("{:08x}-1", crate::support::cluster::fnv1a32(b"news\n"));
    let mut stream = SseStream::open(
        &server.url("/?news"),
        &[("last-event-id", position.as_str())],
    )
    .await;
    assert_eq!(stream.status, 200);
    let slot = cluster.slot(&history_key("news"));
    cluster.wait_synced(slot);
    let old = cluster.kill_primary(slot);
    // Publishes are refused while the cluster fails over, then land on the new primary.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut published = Vec::new();
    for data in ["during-1", "during-2"] {
        loop {
            let res = crate::support::sse::client()
                .post(server.internal_url("/publish/news?type=m"))
                .body(data.to_owned())
                .send()
                .await
                .expect("publish request");
            if res.status() == 200 {
                let v: serde_json::Value =
                    serde_json::from_str(&res.text().await.expect("body")).expect("JSON");
                published.push(v["id"].as_u64().expect("an id"));
                break;
            }
            assert!(Instant::now() < deadline, "publishes refused for 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(published, [2, 3], "the next ids of the channel, once each");
    let new = tokio::task::spawn_blocking(move || {
        let port = cluster.wait_failover(slot, old);
        (cluster, port)
    })
    .await
    .unwrap();
    let (cluster, new_port) = new;
    assert_ne!(new_port, old);
    assert_eq!(
        stored(&cluster, "news"),
        [
            "id: 1\nevent: m\ndata: before\n\n",
            "id: 2\nevent: m\ndata: during-1\n\n",
            "id: 3\nevent: m\ndata: during-2\n\n",
        ]
    );
    let after = server.publish_event("news", Some("m"), "after").await;
    assert_eq!(after, 4);
    // The events, after the hint of the position when the stream started before the first
    // of them (it may start after them, the failover delaying its history read: then they
    // are its replay, and there is no hint).
    let mut got = Vec::new();
    while got.len() < 3 {
        let e = stream.next().await;
        if e.event != "lastEventId" {
            got.push(e);
        }
    }
    let data: Vec<&str> = got.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data, ["during-1", "during-2", "after"], "{got:?}");
    let log = server.log();
    assert!(log.contains("redis cluster subscriber"), "{log}");
}

/// The value of `key` on the primary of its slot, read once a primary answers.
fn get_on_primary(cluster: &Cluster, key: &str) -> Option<String> {
    let port = cluster.primary_of_now(cluster.slot(key))?;
    redis::cmd("GET")
        .arg(key)
        .query(&mut cluster.node(port).try_con()?)
        .ok()?
}

/// A failover that loses writes the stream was sent (made while the replica was frozen and cut
/// off, then the primary killed): the subscriber sees the channel's sequence below the last
/// it dispatched, raises the sequence past it and the floor with it, so the next publish gets
/// an id above every id a client may hold; another process, frozen meanwhile, finds the floor
/// above what it dispatched and takes it for the same loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_lost_in_a_failover_raise_the_channels_sequence_and_floor() {
    let mut cluster = start_cluster().await;
    let seeds = cluster.seeds();
    let server = Redisse::start(&["--redis-cluster", &seeds]);
    // A second process with a stream on the channel, frozen while the first sees the loss.
    let other = Redisse::start(&["--redis-cluster", &seeds]);
    server.readiness_becomes("ok").await;
    other.readiness_becomes("ok").await;
    assert_eq!(server.publish_event("news", Some("m"), "one").await, 1);
    let mut stream = SseStream::open(&server.url("/?news"), &[]).await;
    assert_eq!(stream.next().await.event, "lastEventId");
    let mut other_stream = SseStream::open(&other.url("/?news"), &[]).await;
    assert_eq!(other_stream.next().await.event, "lastEventId");
    assert_eq!(server.publish_event("news", Some("m"), "two").await, 2);
    assert_eq!(stream.next().await.data, "two");
    assert_eq!(other_stream.next().await.data, "two");
    let slot = cluster.slot(&history_key("news"));
    cluster.wait_synced(slot);
    // The replica frozen, and its link closed by the primary: the next writes reach only the
    // primary (a frozen replica alone would still read them from its socket when it thaws).
    let replica = cluster.cut_replica(slot);
    assert_eq!(server.publish_event("news", Some("m"), "three").await, 3);
    assert_eq!(server.publish_event("news", Some("m"), "four").await, 4);
    assert_eq!(stream.next().await.data, "three");
    assert_eq!(stream.next().await.data, "four");
    assert_eq!(other_stream.next().await.data, "three");
    assert_eq!(other_stream.next().await.data, "four");
    other.signal("-STOP");
    let old = cluster.kill_primary(slot);
    cluster.node(replica).unfreeze();
    let (cluster, new_port) = tokio::task::spawn_blocking(move || {
        let port = cluster.wait_failover(slot, old);
        (cluster, port)
    })
    .await
    .unwrap();
    assert_eq!(new_port, replica, "the frozen replica was promoted");
    let floor_key = format!("redisse:{{{}}}:lostBelow:news", tag("news"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let floor = get_on_primary(&cluster, &floor_key);
        if floor.as_deref() == Some("5") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the floor is {floor:?}, not raised past 4; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The other process finds the sequence raised past what it dispatched, and the floor
    // above it: the same loss, already raised (the floor stays where the first raised it).
    other.signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !other.log().contains("sequence went back") {
        assert!(
            Instant::now() < deadline,
            "the other process did not see the loss; log:\n{}",
            other.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get_on_primary(&cluster, &floor_key).as_deref(), Some("5"));
    // The writes made while the replica was frozen are gone; new ids pass the lost ones.
    assert_eq!(
        stored(&cluster, "news"),
        [
            "id: 1\nevent: m\ndata: one\n\n",
            "id: 2\nevent: m\ndata: two\n\n",
        ]
    );
    assert_eq!(server.publish_event("news", Some("m"), "five").await, 6);
    let log = server.log();
    assert!(log.contains("sequence went back"), "{log}");
}

/// Streams that come and go on one channel make the subscriber end and make the channel's
/// subscription again, often in one batch: the node's confirmation of the ending must not be
/// taken for Redis ending a subscription still wanted (which would hold every stream and
/// reconnect). The last stream still gets the live events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_coming_and_going_cause_no_reconnection() {
    let cluster = start_cluster().await;
    let seeds = cluster.seeds();
    let server = Redisse::start(&["--redis-cluster", &seeds]);
    server.readiness_becomes("ok").await;
    assert_eq!(server.publish_event("news", Some("m"), "first").await, 1);
    for _ in 0..30 {
        let a = SseStream::open(&server.url("/?news"), &[]).await;
        drop(a);
        let b = SseStream::open(&server.url("/?news"), &[]).await;
        drop(b);
    }
    let mut last = SseStream::open(&server.url("/?news"), &[]).await;
    assert_eq!(last.next().await.event, "lastEventId");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.publish_event("news", Some("m"), "live").await, 2);
    assert_eq!(last.next().await.data, "live");
    assert_eq!(
        server.metric("redisse_broker_reconnects_total").await,
        0,
        "{}",
        server.log()
    );
}

/// `Publisher::redis_cluster` and `redisse publish --redis-cluster` write in the cluster layout
/// with the channel's next id; an idempotency key is per channel there (the same key on another
/// channel is another publish), and a retry on the same channel answers the first id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_without_a_server_write_the_cluster_layout() {
    use redisse::{Event, Publisher};
    let cluster = start_cluster().await;
    let seeds: Vec<String> = cluster.seeds().split(',').map(str::to_owned).collect();
    let publisher = Publisher::redis_cluster(&seeds, 100).expect("a cluster publisher");
    assert_eq!(
        publisher
            .publish("news", Event::new("m", "a"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        publisher
            .publish("news", Event::new("m", "b"))
            .await
            .unwrap(),
        2
    );
    let first = publisher
        .publish_idempotent("chat", Event::new("m", "k"), "key-1")
        .await
        .unwrap();
    assert_eq!((first.id, first.replayed), (1, false));
    let retry = publisher
        .publish_idempotent("chat", Event::new("m", "k"), "key-1")
        .await
        .unwrap();
    assert_eq!((retry.id, retry.replayed), (1, true));
    let elsewhere = publisher
        .publish_idempotent("news", Event::new("m", "k"), "key-1")
        .await
        .unwrap();
    assert_eq!((elsewhere.id, elsewhere.replayed), (3, false));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_redisse"))
        .args(["publish", "--redis-cluster", &cluster.seeds(), "news", "c"])
        .env_remove("REDISSE_REDIS")
        .env_remove("REDISSE_SERVER")
        .output()
        .expect("run redisse publish");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "4");
    assert_eq!(
        stored(&cluster, "news"),
        [
            "id: 1\nevent: m\ndata: a\n\n",
            "id: 2\nevent: m\ndata: b\n\n",
            "id: 3\nevent: m\ndata: k\n\n",
            "id: 4\nevent: message\ndata: c\n\n",
        ]
    );
    assert_eq!(stored(&cluster, "chat"), ["id: 1\nevent: m\ndata: k\n\n"]);
    let mixed = ["rediss://h:1".to_owned(), "redis://h:2".to_owned()];
    assert!(Publisher::redis_cluster(&mixed, 100).is_err());
    let ca = std::path::Path::new("/nonexistent/ca.pem");
    let plain = ["redis://h:1".to_owned()];
    assert!(Publisher::redis_cluster_with_tls_ca(&plain, 100, Some(ca)).is_err());
}

/// The subscriber's connection to a primary closed by the node (`CLIENT KILL TYPE pubsub`)
/// again and again while events are published: each time it holds, subscribes again and
/// refills from history, so a stream gets every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_refilled_from_history_without_gaps_or_duplicates() {
    use redisse::{Event, Publisher};
    let cluster = start_cluster().await;
    let seeds = cluster.seeds();
    let server = Redisse::start(&["--redis-cluster", &seeds]);
    server.readiness_becomes("ok").await;
    assert_eq!(server.publish_event("news", Some("m"), "warm").await, 1);
    let mut stream = SseStream::open(&server.url("/?news"), &[]).await;
    assert_eq!(stream.next().await.event, "lastEventId");
    let list: Vec<String> = seeds.split(',').map(str::to_owned).collect();
    let publisher = Publisher::redis_cluster(&list, 1000).expect("a publisher");
    let publishing = tokio::spawn(async move {
        for i in 0..600 {
            publisher
                .publish("news", Event::new("m", format!("e{i}")))
                .await
                .expect("publish");
        }
    });
    let primary = cluster.primary_of(cluster.slot(&history_key("news")));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let killed = cluster.kill_clients(primary, "pubsub");
        assert!(killed >= 1, "no pub/sub client on the primary");
    }
    publishing.await.unwrap();
    let got = stream.take(600).await;
    let data: Vec<String> = got.into_iter().map(|e| e.data).collect();
    let expected: Vec<String> = (0..600).map(|i| format!("e{i}")).collect();
    assert_eq!(data, expected);
    stream.expect_silence(Duration::from_millis(300)).await;
    assert!(server.metric("redisse_broker_reconnects_total").await >= 3);
}

/// A channel nobody has published on yet (its sequence is 0) has a stream; the subscriber's
/// connection to its primary is closed by the node, and the node refuses `SSUBSCRIBE` (by ACL)
/// until the channel's first event is published. The refill must read the channel's history
/// from 0, its sequence when it was subscribed: the stream gets that first event, then the
/// next. (It got only the second when a sequence of 0 was taken for "nothing known".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_event_published_while_the_connection_is_lost_is_refilled() {
    use redisse::{Event, Publisher};
    let cluster = start_cluster().await;
    let seeds = cluster.seeds();
    let server = Redisse::start(&["--redis-cluster", &seeds]);
    server.readiness_becomes("ok").await;
    let mut stream = SseStream::open(&server.url("/?fresh"), &[]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.metric("redisse_streams_starting").await > 0 {
        assert!(Instant::now() < deadline, "the stream did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The subscriber notes the new channel's sequence right after its subscription is active.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let primary = cluster.primary_of(cluster.slot(&history_key("fresh")));
    let acl = |rule: &str| cluster.set_default_acl(primary, rule);
    acl("-ssubscribe");
    let killed = cluster.kill_clients(primary, "pubsub");
    assert!(killed >= 1, "no pub/sub client on the primary");
    server.readiness_becomes("degraded").await;
    let list: Vec<String> = seeds.split(',').map(str::to_owned).collect();
    let publisher = Publisher::redis_cluster(&list, 100).expect("a publisher");
    let first = publisher
        .publish("fresh", Event::new("m", "one"))
        .await
        .expect("publish");
    assert_eq!(first, 1, "the channel's first event");
    // Still refused: the subscriber has not made the subscription again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.readiness().await, "degraded", "{}", server.log());
    acl("+ssubscribe");
    server.readiness_becomes("ok").await;
    let second = publisher
        .publish("fresh", Event::new("m", "two"))
        .await
        .expect("publish");
    assert_eq!(second, 2);
    let data: Vec<String> = stream.take(2).await.into_iter().map(|e| e.data).collect();
    assert_eq!(data, ["one", "two"]);
    stream.expect_silence(Duration::from_millis(300)).await;
}

/// A stream on three channels past `--max-subscriptions 2` is refused (a `retry:`): on a
/// cluster it is a connection per channel, and those registered before the refusal must not
/// count it as a stream that opened and ended. (It was counted in `redisse_streams_ended`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_refused_past_the_subscription_bound_is_not_counted_as_served() {
    let cluster = start_cluster().await;
    let seeds = cluster.seeds();
    let server = Redisse::start(&["--redis-cluster", &seeds, "--max-subscriptions", "2"]);
    server.readiness_becomes("ok").await;
    let mut refused = SseStream::open(&server.url("/?a&b&c"), &[]).await;
    assert_eq!(refused.status, 200);
    refused.until_closed(Duration::from_secs(5)).await;
    let raw = String::from_utf8_lossy(&refused.raw).into_owned();
    assert!(raw.starts_with("retry: "), "not a retry: {raw:?}");
    assert_eq!(server.metric("redisse_streams_ended_total").await, 0);
    assert_eq!(server.metric("redisse_streams_open").await, 0);
    assert_eq!(server.metric("redisse_stream_subscriptions").await, 0);
    // Within the bound, a stream on two channels opens and counts once.
    let _open = SseStream::open(&server.url("/?a&b"), &[]).await;
    assert_eq!(server.metric("redisse_streams_open").await, 1);
    assert_eq!(server.metric("redisse_stream_subscriptions").await, 2);
}

/// While the subscriber cannot subscribe (the node refuses `SSUBSCRIBE`, by ACL), a stream on
/// three channels waits for the broker: `redisse_streams_starting` counts it once, as
/// `redisse_streams_open` does, though it is a connection per channel. (It counted 3.) Once the
/// node accepts again the stream starts and the gauge is back to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_waiting_for_the_cluster_counts_once_as_starting() {
    let cluster = start_cluster().await;
    let seeds = cluster.seeds();
    let server = Redisse::start(&["--redis-cluster", &seeds]);
    server.readiness_becomes("ok").await;
    let mut primaries: Vec<u16> = ["a", "b", "c"]
        .iter()
        .map(|c| cluster.primary_of_channel(c))
        .collect();
    primaries.sort_unstable();
    primaries.dedup();
    let acl = |rule: &str| {
        for &port in &primaries {
            cluster.set_default_acl(port, rule);
        }
    };
    acl("-ssubscribe");
    let mut stream = SseStream::open(&server.url("/?a&b&c"), &[]).await;
    assert_eq!(stream.status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.metric("redisse_streams_open").await, 1);
    assert_eq!(server.metric("redisse_streams_starting").await, 1);
    acl("+ssubscribe");
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.metric("redisse_streams_starting").await > 0 {
        assert!(Instant::now() < deadline, "the stream did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.publish_event("b", Some("m"), "live").await, 1);
    assert_eq!(stream.next().await.data, "live");
}
