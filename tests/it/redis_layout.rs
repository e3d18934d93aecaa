//! The bytes our publisher leaves in Redis are exactly the gem's layout (docs/redis-layout.md).

use std::sync::mpsc;
use std::time::Duration;

use redisse::{Event, Publisher};

use crate::support::{Backend, RedisServer, TestServer};

fn get_counter(redis: &RedisServer) -> Option<String> {
    redis::cmd("GET")
        .arg("redisse:lastEventId")
        .query(&mut redis.con())
        .unwrap()
}

fn history(redis: &RedisServer, channel: &str) -> Vec<(Vec<u8>, f64)> {
    redis::cmd("ZRANGE")
        .arg(channel)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(&mut redis.con())
        .unwrap()
}

fn gem_payload(id: u64, event_type: &str, data: &str) -> String {
    format!(
        "id: {id}\nevent: {event_type}\ndata: {}\n\n",
        data.replace('\n', "\ndata: ")
    )
}

fn key_type(redis: &RedisServer, key: &str) -> String {
    redis::cmd("TYPE").arg(key).query(&mut redis.con()).unwrap()
}

#[tokio::test]
async fn the_counter_and_history_hold_the_gems_bytes() {
    let backend = Backend::redis();
    let redis = backend.redis_server();
    let redisse = redisse::Redisse::new(backend.config()).unwrap();
    let publisher = redisse.publisher();
    assert_eq!(get_counter(redis), None, "nothing before the first event");
    let a = publisher
        .publish("global", Event::new("foo", "bar"))
        .await
        .unwrap();
    let b = publisher.publish("global", "Hello").await.unwrap();
    let c = publisher
        .publish("channel_1", Event::new("baz", "hello\nworld\n!"))
        .await
        .unwrap();
    let d = publisher
        .publish("global", Event::new("t", ""))
        .await
        .unwrap();
    assert_eq!((a, b, c, d), (1, 2, 3, 4));
    assert_eq!(get_counter(redis).as_deref(), Some("4"));
    assert_eq!(key_type(redis, "redisse:lastEventId"), "string");
    assert_eq!(
        key_type(redis, "global"),
        "zset",
        "the key is the channel name, no prefix"
    );
    assert_eq!(key_type(redis, "channel_1"), "zset");

    let global = history(redis, "global");
    let expected: Vec<(Vec<u8>, f64)> = vec![
        (b"id: 1\nevent: foo\ndata: bar\n\n".to_vec(), 1.0),
        (b"id: 2\nevent: message\ndata: Hello\n\n".to_vec(), 2.0),
        (b"id: 4\nevent: t\ndata: \n\n".to_vec(), 4.0),
    ];
    assert_eq!(global, expected);
    assert_eq!(
        history(redis, "channel_1"),
        vec![(
            b"id: 3\nevent: baz\ndata: hello\ndata: world\ndata: !\n\n".to_vec(),
            3.0
        )]
    );
    // Only those keys exist, and the data-loss floor that the instance's subscriber created
    // (at 0: no loss seen) when it connected, which the gem ignores. The subscriber connects
    // beside the publishes: waited for (the broker is up once it made the floor).
    let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
    while !redisse.is_broker_up() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broker never came up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut redis.con()).unwrap();
    keys.sort();
    assert_eq!(
        keys,
        [
            "channel_1",
            "global",
            "redisse:lastEventId",
            "redisse:lostBelow"
        ]
    );
    assert_eq!(key_type(redis, "redisse:lostBelow"), "string");
    let floor: String = redis::cmd("GET")
        .arg("redisse:lostBelow")
        .query(&mut redis.con())
        .unwrap();
    assert_eq!(floor, "0");
    // No TTL anywhere, as in the gem.
    for key in &keys {
        let ttl: i64 = redis::cmd("TTL").arg(key).query(&mut redis.con()).unwrap();
        assert_eq!(ttl, -1, "{key}");
    }
}

#[tokio::test]
async fn the_counter_is_shared_with_other_publishers() {
    let backend = Backend::redis();
    let redis = backend.redis_server();
    let _: () = redis::cmd("SET")
        .arg("redisse:lastEventId")
        .arg(41)
        .query(&mut redis.con())
        .unwrap();
    let publisher = Publisher::redis(&redis.url()).unwrap();
    assert_eq!(
        publisher
            .publish("global", Event::new("foo", "bar"))
            .await
            .unwrap(),
        42
    );
    assert_eq!(
        history(redis, "global"),
        vec![(gem_payload(42, "foo", "bar").into_bytes(), 42.0)]
    );
    let redisse = redisse::Redisse::new(backend.config()).unwrap();
    assert_eq!(
        redisse.publisher().publish("global", "x").await.unwrap(),
        43
    );
    assert_eq!(get_counter(redis).as_deref(), Some("43"));
}

#[tokio::test]
async fn carriage_returns_are_stored_as_separate_data_lines() {
    let backend = Backend::redis();
    let redis = backend.redis_server();
    let publisher = Publisher::redis(&redis.url()).unwrap();
    let data = "a\rb\r\nc — é🌍";
    let id = publisher.publish("ch", data).await.unwrap();
    assert_eq!(
        history(redis, "ch"),
        vec![(
            format!("id: {id}\nevent: message\ndata: a\ndata: b\ndata: c — é🌍\n\n").into_bytes(),
            id as f64
        )]
    );
}

#[tokio::test]
async fn history_is_trimmed_to_the_newest_100() {
    let backend = Backend::redis();
    let redis = backend.redis_server();
    let redisse = redisse::Redisse::new(backend.config()).unwrap();
    let publisher = redisse.publisher();
    for i in 1..=105u64 {
        publisher
            .publish("global", Event::new("n", i.to_string()))
            .await
            .unwrap();
    }
    publisher.publish("other", "x").await.unwrap();
    let global = history(redis, "global");
    assert_eq!(global.len(), 100);
    for (k, (member, score)) in global.iter().enumerate() {
        let id = k as u64 + 6;
        assert_eq!(*score, id as f64);
        assert_eq!(member, gem_payload(id, "n", &id.to_string()).as_bytes());
    }
    assert_eq!(history(redis, "other").len(), 1);
    assert_eq!(get_counter(redis).as_deref(), Some("106"));
}

#[tokio::test]
async fn history_is_trimmed_to_the_configured_size() {
    let backend = Backend::redis();
    let redis = backend.redis_server();
    let mut config = backend.config();
    config.history_size = 5;
    let redisse = redisse::Redisse::new(config).unwrap();
    for i in 1..=8u64 {
        redisse
            .publisher()
            .publish("five", Event::new("n", i.to_string()))
            .await
            .unwrap();
    }
    let scores: Vec<f64> = history(redis, "five").into_iter().map(|(_, s)| s).collect();
    assert_eq!(scores, [4.0, 5.0, 6.0, 7.0, 8.0]);

    let standalone = Publisher::redis_with_history(&redis.url(), 3).unwrap();
    for i in 1..=4u64 {
        standalone
            .publish("three", Event::new("n", i.to_string()))
            .await
            .unwrap();
    }
    let scores: Vec<f64> = history(redis, "three")
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(scores, [10.0, 11.0, 12.0]);
    assert_eq!(get_counter(redis).as_deref(), Some("12"));
    // Beside the gem's keys, one hash records the newest id each trim removed, per channel.
    assert_eq!(key_type(redis, "redisse:trimmed"), "hash");
    let trimmed: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg("redisse:trimmed")
        .query(&mut redis.con())
        .unwrap();
    let mut trimmed = trimmed;
    trimmed.sort();
    assert_eq!(
        trimmed,
        [("five".into(), "3".into()), ("three".into(), "9".into())]
    );
}

/// Something else under our hash's name: publishing refuses with a clear error and changes
/// nothing; reading history still works (as from a history with nothing recorded).
#[tokio::test]
async fn a_trimmed_key_of_another_type_refuses_publishing_and_keeps_reads_working() {
    let backend = Backend::redis();
    let redis = backend.redis_server();
    let server = TestServer::start(backend.config()).await;
    let before = server.publish("a", "m", "before").await;
    let first = server.publish("a", "m", "kept").await;
    let _: () = redis::cmd("SET")
        .arg("redisse:trimmed")
        .arg("not a hash")
        .query(&mut redis.con())
        .unwrap();
    let err = server
        .redisse
        .publisher()
        .publish("a", "refused")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("redisse:trimmed"), "{err}");
    assert_eq!(get_counter(redis), Some(first.to_string()));
    assert_eq!(history(redis, "a").len(), 2);
    let mut s = server
        .stream("/?a", &[("last-event-id", &before.to_string())])
        .await;
    let e = s.next().await;
    assert_eq!((e.data.as_str(), e.id), ("kept", Some(first.to_string())));
    s.expect_silence(Duration::from_millis(200)).await;
}

/// A channel whose key holds another type (a string someone else set) refuses the publish
/// before anything is written: no id taken, nothing delivered live to its listeners (who would
/// get an event that history never holds).
#[tokio::test]
async fn a_channel_key_of_another_type_refuses_publishing_before_anything_is_written() {
    let backend = Backend::redis();
    let redis = backend.redis_server();
    let server = TestServer::start(backend.config()).await;
    let _: () = redis::cmd("SET")
        .arg("s")
        .arg("a string")
        .query(&mut redis.con())
        .unwrap();
    let mut s = server.live_stream("/?s").await;
    let counter = get_counter(redis);
    let err = server
        .redisse
        .publisher()
        .publish("s", "refused")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is a string"), "{err}");
    assert_eq!(get_counter(redis), counter, "no id taken");
    s.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(key_type(redis, "s"), "string");
}

#[tokio::test]
async fn the_published_payload_is_the_stored_member() {
    let backend = Backend::redis();
    let redis = backend.redis_server();
    let url = redis.url();
    let (ready_tx, ready_rx) = mpsc::channel();
    let subscriber = std::thread::spawn(move || {
        let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
        let mut pubsub = con.as_pubsub();
        pubsub.subscribe("global").unwrap();
        pubsub
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut got = Vec::new();
        for _ in 0..2 {
            let msg = pubsub.get_message().expect("a message within 10s");
            got.push((
                msg.get_channel_name().to_owned(),
                msg.get_payload_bytes().to_vec(),
            ));
        }
        got
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("subscribed");
    let server = TestServer::start(backend.config()).await;
    server.publish("global", "foo", "line one\nline two").await;
    Publisher::redis(&redis.url())
        .unwrap()
        .publish("global", Event::new("bar", "é"))
        .await
        .unwrap();
    let got = tokio::task::spawn_blocking(move || subscriber.join().unwrap())
        .await
        .unwrap();
    let stored: Vec<Vec<u8>> = history(redis, "global")
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    assert_eq!(got.len(), 2);
    for (channel, _) in &got {
        assert_eq!(
            channel, "global",
            "the pub/sub channel is the channel name, no prefix"
        );
    }
    let published: Vec<Vec<u8>> = got.into_iter().map(|(_, p)| p).collect();
    assert_eq!(published, stored);
    assert_eq!(
        published,
        [
            b"id: 1\nevent: foo\ndata: line one\ndata: line two\n\n".to_vec(),
            "id: 2\nevent: bar\ndata: é\n\n".as_bytes().to_vec(),
        ]
    );
}
