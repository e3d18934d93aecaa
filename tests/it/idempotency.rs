//! Safe publish retries: a publish with an `Idempotency-Key` that was already used within the
//! window answers the first event's id and publishes nothing, on both brokers, over HTTP, from
//! Rust and from the command line; a key used for another event is refused; bad keys are 400.
//! On Redis, the scenario: a publish whose reply the publisher never got, retried.

use std::time::Duration;

use redisse::{Event, PublishError, Publisher};

use crate::on_both_brokers;
use crate::support::{Backend, PATIENCE, SseStream, TestServer, sse::client};

on_both_brokers!(
    a_retry_with_the_same_key_is_delivered_once,
    a_key_is_forgotten_after_the_window,
    a_key_reused_for_another_event_is_refused_with_422,
    bad_keys_are_refused_with_400_and_publish_nothing,
    the_rust_publisher_takes_a_key,
    the_cli_sends_its_key,
);

/// `POST` to the internal router with an optional key: (status, replayed header, body).
async fn post(
    server: &TestServer,
    path: &str,
    key: Option<&str>,
    data: &str,
) -> (u16, Option<String>, String) {
    let mut req = client()
        .post(server.internal_url(path))
        .body(data.to_owned());
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let res = req.send().await.expect("POST /publish");
    let status = res.status().as_u16();
    let replayed = res
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, replayed, res.text().await.unwrap())
}

fn id_of(body: &str) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
    v["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no id in {body:?}"))
}

/// Publishes a marker without a key and checks it is the stream's next event: whatever was
/// published before it and not yet received would have come first.
async fn next_is_marker(server: &TestServer, s: &mut SseStream) {
    let marker = server.publish("news", "marker", "end").await;
    let e = s.next().await;
    assert_eq!(
        (e.id, e.event.as_str()),
        (Some(marker.to_string()), "marker"),
        "an event arrived before the marker"
    );
}

async fn a_retry_with_the_same_key_is_delivered_once(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?news").await;
    let (status, replayed, body) =
        post(&server, "/publish/news?type=t", Some("order-1"), "a").await;
    assert_eq!((status, replayed), (200, None), "{body}");
    let first = id_of(&body);
    let e = s.next().await;
    assert_eq!((e.id, e.data.as_str()), (Some(first.to_string()), "a"));

    let (status, replayed, body) =
        post(&server, "/publish/news?type=t", Some("order-1"), "a").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(id_of(&body), first, "the retry answers the first id");
    assert_eq!(replayed.as_deref(), Some("true"));
    next_is_marker(&server, &mut s).await;

    // Another key is another event.
    let (status, replayed, body) =
        post(&server, "/publish/news?type=t", Some("order-2"), "a").await;
    assert_eq!((status, replayed), (200, None), "{body}");
    let second = id_of(&body);
    assert!(second > first);
    let e = s.next().await;
    assert_eq!(e.id, Some(second.to_string()));
    assert_eq!(server.metric("redisse_publish_replays_total"), 1);
}

async fn a_key_is_forgotten_after_the_window(backend: Backend) {
    let mut config = backend.config();
    config.idempotency_window = Duration::from_millis(300);
    let server = TestServer::start(config).await;
    let mut s = server.live_stream("/?news").await;
    let (_, _, body) = post(&server, "/publish/news", Some("k"), "x").await;
    let first = id_of(&body);
    assert_eq!(s.next().await.id, Some(first.to_string()));
    let (_, replayed, body) = post(&server, "/publish/news", Some("k"), "x").await;
    assert_eq!((id_of(&body), replayed.as_deref()), (first, Some("true")));
    if let Backend::Redis(redis) = &backend {
        // The record beside the events: the id and the fingerprint, expiring with the window.
        let mut con = redis.con();
        let record: String = redis::cmd("GET")
            .arg("redisse:idempotency:k")
            .query(&mut con)
            .unwrap();
        assert!(record.starts_with(&format!("{first} ")), "{record:?}");
        let ttl: i64 = redis::cmd("PTTL")
            .arg("redisse:idempotency:k")
            .query(&mut con)
            .unwrap();
        assert!((1..=300).contains(&ttl), "PTTL {ttl}");
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, replayed, body) = post(&server, "/publish/news", Some("k"), "x").await;
    assert_eq!((status, replayed), (200, None), "{body}");
    let again = id_of(&body);
    assert!(
        again > first,
        "a new event after the window: {again} vs {first}"
    );
    assert_eq!(s.next().await.id, Some(again.to_string()));
}

async fn a_key_reused_for_another_event_is_refused_with_422(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?news&other").await;
    let (_, _, body) = post(&server, "/publish/news?type=t", Some("k1"), "data").await;
    let first = id_of(&body);
    assert_eq!(s.next().await.id, Some(first.to_string()));
    for (path, data) in [
        ("/publish/news?type=t", "other data"),
        ("/publish/news?type=u", "data"),
        ("/publish/other?type=t", "data"),
    ] {
        let (status, replayed, body) = post(&server, path, Some("k1"), data).await;
        assert_eq!((status, replayed), (422, None), "{path} {data}: {body}");
        assert!(
            body.contains("Idempotency-Key") && body.contains(&first.to_string()),
            "the refusal names the key's first event: {body}"
        );
    }
    let conflicts = server
        .redisse
        .metrics()
        .refusals(redisse::metrics::Refusal::IdempotencyConflict);
    assert_eq!(conflicts, 3);
    next_is_marker(&server, &mut s).await;
}

async fn bad_keys_are_refused_with_400_and_publish_nothing(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?news").await;
    let long = "k".repeat(257);
    for key in ["", "has space", "tab\there", &long, "caf\u{e9}"] {
        let mut req = client()
            .post(server.internal_url("/publish/news"))
            .body("x");
        req = req.header(
            "idempotency-key",
            reqwest::header::HeaderValue::from_bytes(key.as_bytes()).unwrap(),
        );
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let body = res.text().await.unwrap();
        assert_eq!(status, 400, "key {key:?}: {body}");
        assert!(body.contains("Idempotency-Key"), "key {key:?}: {body}");
    }
    // Two keys in one request.
    let res = client()
        .post(server.internal_url("/publish/news"))
        .header("idempotency-key", "a")
        .header("idempotency-key", "b")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // The longest key is fine.
    let longest = "k".repeat(256);
    let (status, _, body) = post(&server, "/publish/news?type=ok", Some(&longest), "x").await;
    assert_eq!(status, 200, "{body}");
    let e = s.next().await;
    assert_eq!(
        (e.id, e.event.as_str()),
        (Some(id_of(&body).to_string()), "ok")
    );
}

async fn the_rust_publisher_takes_a_key(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?news").await;
    let publisher = server.redisse.publisher();
    let first = publisher
        .publish_idempotent("news", Event::new("t", "x"), "rust-1")
        .await
        .unwrap();
    assert!(!first.replayed);
    assert_eq!(s.next().await.id, Some(first.id.to_string()));
    let again = publisher
        .publish_idempotent("news", Event::new("t", "x"), "rust-1")
        .await
        .unwrap();
    assert_eq!((again.id, again.replayed), (first.id, true));
    // The same key through HTTP is the same key.
    let (_, replayed, body) = post(&server, "/publish/news?type=t", Some("rust-1"), "x").await;
    assert_eq!(
        (id_of(&body), replayed.as_deref()),
        (first.id, Some("true"))
    );
    let err = publisher
        .publish_idempotent("news", Event::new("t", "y"), "rust-1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, PublishError::IdempotencyKeyReused { id } if id == first.id),
        "{err}"
    );
    let err = publisher
        .publish_idempotent("news", "x", "bad key")
        .await
        .unwrap_err();
    assert!(
        matches!(err, PublishError::InvalidIdempotencyKey(_)),
        "{err}"
    );
    next_is_marker(&server, &mut s).await;

    // A standalone Redis publisher shares the keys with the servers.
    if let Backend::Redis(redis) = &backend {
        let standalone = Publisher::redis(&redis.url()).unwrap();
        let again = standalone
            .publish_idempotent("news", Event::new("t", "x"), "rust-1")
            .await
            .unwrap();
        assert_eq!((again.id, again.replayed), (first.id, true));
        next_is_marker(&server, &mut s).await;
    }
}

async fn the_cli_sends_its_key(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?news").await;
    let internal = server
        .internal_addr
        .expect("an internal router")
        .to_string();
    let mut targets: Vec<Vec<String>> = vec![vec![]];
    if let Backend::Redis(redis) = &backend {
        targets.push(vec!["--redis".into(), redis.url()]);
    }
    for (n, target) in targets.into_iter().enumerate() {
        let key = format!("cli-{n}");
        let mut ids = Vec::new();
        for _ in 0..2 {
            let out = tokio::time::timeout(
                PATIENCE,
                tokio::process::Command::new(env!("CARGO_BIN_EXE_redisse"))
                    .env("REDISSE_INTERNAL_ADDRESS", &internal)
                    .env_remove("REDISSE_REDIS")
                    .env_remove("REDISSE_SERVER")
                    .args([
                        "publish",
                        "news",
                        "from the shell",
                        "--idempotency-key",
                        &key,
                    ])
                    .args(&target)
                    .output(),
            )
            .await
            .expect("redisse publish finished in time")
            .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{target:?}: {stderr}");
            let stdout = String::from_utf8(out.stdout).unwrap();
            ids.push(stdout.trim_end().parse::<u64>().unwrap());
        }
        assert_eq!(ids[0], ids[1], "{target:?}: the retry prints the first id");
        assert_eq!(s.next().await.id, Some(ids[0].to_string()));
        next_is_marker(&server, &mut s).await;
    }
}

/// The scenario: Redis stalls while it holds the publish, the publisher gives up
/// without a reply, Redis then runs it; the publisher retries with the same key and gets the
/// id of the event that went out, which subscribers received once. Then Redis restarts with
/// its saved data and the key still answers.
#[tokio::test]
async fn a_publish_whose_reply_was_lost_is_retried_without_a_duplicate() {
    let mut backend = Backend::redis();
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?news").await;
    let url = server.internal_url("/publish/news?type=order");
    let retry = || {
        client()
            .post(&url)
            .header("idempotency-key", "lost-reply")
            .body("paid")
    };
    backend.redis_server().freeze();
    let lost = tokio::time::timeout(Duration::from_millis(1000), retry().send()).await;
    assert!(
        lost.is_err(),
        "the publish answered while Redis was frozen: {lost:?}"
    );
    backend.redis_server().unfreeze();
    // Redis ran the script it had received: the event went out without its reply.
    let e = s.next().await;
    assert_eq!(
        (e.event.as_str(), e.data.as_str()),
        ("order", "paid"),
        "the stalled publish never ran"
    );
    let published: u64 = e.id.as_deref().unwrap().parse().unwrap();
    let res = retry().send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    assert_eq!(id_of(&res.text().await.unwrap()), published);
    next_is_marker(&server, &mut s).await;

    // The key is stored beside the events: it survives a restart of a Redis that saves them.
    if let Backend::Redis(redis) = &mut backend {
        redis.save_and_stop();
        redis.start_again();
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let res = loop {
        match retry().send().await {
            Ok(res) if res.status() != 503 => break res,
            other => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "Redis did not come back: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    assert_eq!(id_of(&res.text().await.unwrap()), published);
}
