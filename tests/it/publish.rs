//! Publishing by Rust, the command line, HTTP (the internal router without a credential, the public
//! one only with a token: never for a peer's address) and a raw Redis client (docs/publishing.md,
//! docs/redis-layout.md).

use std::net::SocketAddr;
use std::process::Stdio;

use axum::body::Body;
use axum::extract::ConnectInfo;
use http_body_util::BodyExt;
use redisse::{Event, PublishError, Publisher};
use tokio::io::AsyncWriteExt;
use tower::ServiceExt;

use crate::on_both_brokers;
use crate::support::{Backend, PATIENCE, TestServer, sse::client};

on_both_brokers!(
    the_instance_publisher_gives_increasing_ids_and_delivers,
    the_cli_publishes_through_a_server,
    the_cli_reads_data_from_stdin_without_one_trailing_newline,
    http_publish_answers_the_id_and_delivers,
    http_publish_refuses_bad_requests_with_400,
    http_publish_refuses_bodies_over_the_limit_with_413,
    http_publish_with_a_token_requires_the_bearer,
);

// ---- Rust ----

async fn the_instance_publisher_gives_increasing_ids_and_delivers(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?news").await;
    let publisher = server.redisse.publisher();
    let a = publisher
        .publish("news", Event::new("foo", "one"))
        .await
        .unwrap();
    let b = publisher.publish("news", "two").await.unwrap();
    let c = publisher
        .publish("elsewhere", Event::message("x"))
        .await
        .unwrap();
    let d = publisher
        .publish("news", Event::new("", "four"))
        .await
        .unwrap();
    assert!(a < b && b < c && c < d, "ids {a} {b} {c} {d}");
    assert_eq!(
        (b, c, d),
        (a + 1, a + 2, a + 3),
        "one counter for every channel"
    );
    let got: Vec<(Option<String>, String, String)> = s
        .take(3)
        .await
        .into_iter()
        .map(|e| (e.id, e.event, e.data))
        .collect();
    assert_eq!(
        got,
        [
            (Some(a.to_string()), "foo".into(), "one".into()),
            (Some(b.to_string()), "message".into(), "two".into()),
            (Some(d.to_string()), "message".into(), "four".into()),
        ]
    );
}

#[tokio::test]
async fn the_publisher_refuses_invalid_events() {
    let server = TestServer::start(Backend::memory().config()).await;
    let publisher = server.redisse.publisher();
    let before = publisher.publish("other", "before").await.unwrap();
    for t in ["a\nb", "a\rb", "\r\n"] {
        let err = publisher
            .publish("ch", Event::new(t, "x"))
            .await
            .unwrap_err();
        assert!(matches!(err, PublishError::InvalidEvent(_)), "{t:?}: {err}");
    }
    let err = publisher.publish("", "x").await.unwrap_err();
    assert!(matches!(err, PublishError::EmptyChannel), "{err}");
    // Nothing took an id.
    assert_eq!(publisher.publish("ch", "ok").await.unwrap(), before + 1);
}

#[tokio::test]
async fn a_standalone_redis_publisher_reaches_the_server_and_shares_the_counter() {
    let backend = Backend::redis();
    let redis = backend.redis_server();
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?global").await;
    let publisher = Publisher::redis(&redis.url()).unwrap();
    let id = publisher
        .publish("global", Event::new("foo", "from afar"))
        .await
        .unwrap();
    let e = s.next().await;
    assert_eq!(e.id, Some(id.to_string()));
    assert_eq!((e.event.as_str(), e.data.as_str()), ("foo", "from afar"));
    let counter: u64 = redis::cmd("GET")
        .arg("redisse:lastEventId")
        .query(&mut redis.con())
        .unwrap();
    assert_eq!(counter, id);
    // The instance's publisher continues from the same counter.
    assert_eq!(server.publish("global", "t", "next").await, id + 1);
}

#[tokio::test]
async fn the_test_publisher_records_filters_and_clears() {
    let (publisher, recorder) = Publisher::test();
    assert!(recorder.published().is_empty());
    let first = publisher
        .publish("global", Event::new("foo", "bar"))
        .await
        .unwrap();
    assert_eq!(recorder.published().len(), 1);
    let second = publisher
        .publish("global", r#"{"bar":"baz"}"#)
        .await
        .unwrap();
    assert!(second > first);
    let events = recorder.published();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].channel, "global");
    assert_eq!(events[0].event_type, "foo");
    assert_eq!(events[0].data, "bar");
    assert_eq!(events[1].event_type, "message");
    let json: serde_json::Value = serde_json::from_str(&events[1].data).unwrap();
    assert_eq!(json["bar"], "baz");

    // test_filter = :foo (and it clears, like the gem's test_filter=)
    recorder.set_filter(|t| t == "foo");
    assert!(recorder.published().is_empty());
    publisher
        .publish("global", Event::new("foo", "1"))
        .await
        .unwrap();
    publisher
        .publish("global", Event::new("bar", "2"))
        .await
        .unwrap();
    let events = recorder.published();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "foo");

    // test_filter = ->type { %i(foo bar).include? type }
    recorder.set_filter(|t| ["foo", "bar"].contains(&t));
    for t in ["foo", "bar", "baz"] {
        publisher
            .publish("global", Event::new(t, ""))
            .await
            .unwrap();
    }
    let types: Vec<String> = recorder
        .published()
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(types, ["foo", "bar"]);

    // test_mode! again
    recorder.clear();
    assert!(recorder.published().is_empty());
    // A clone of the publisher records into the same recorder; invalid events are still refused.
    publisher
        .clone()
        .publish("other", Event::new("foo", "x"))
        .await
        .unwrap();
    assert!(
        publisher
            .publish("c", Event::new("a\nb", ""))
            .await
            .is_err()
    );
    assert_eq!(recorder.published().len(), 1);
    assert_eq!(recorder.published()[0].channel, "other");
}

#[tokio::test]
async fn the_test_publisher_sends_nothing_anywhere() {
    let server = TestServer::start(Backend::memory().config()).await;
    let mut s = server.live_stream("/?global").await;
    let (publisher, recorder) = Publisher::test();
    publisher.publish("global", "recorded only").await.unwrap();
    assert_eq!(recorder.published().len(), 1);
    server.publish("global", "real", "").await;
    assert_eq!(s.next().await.event, "real");
}

// ---- Command line ----

fn cli() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_redisse"));
    for (k, _) in std::env::vars() {
        if k.starts_with("REDISSE_") {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// `redisse publish` aimed at `server`'s internal router, the default target without
/// `--server` (named by `REDISSE_INTERNAL_ADDRESS`).
fn cli_to_internal(server: &TestServer) -> tokio::process::Command {
    let mut cmd = cli();
    let internal = server.internal_addr.expect("an internal router");
    cmd.env("REDISSE_INTERNAL_ADDRESS", internal.to_string());
    cmd
}

async fn run_cli(mut cmd: tokio::process::Command, stdin: Option<&[u8]>) -> (bool, String, String) {
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("spawn redisse");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).await.unwrap();
        drop(pipe);
    }
    let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("redisse publish finished in time")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Through the internal listener by default, through the public one with `--server` and the
/// token.
async fn the_cli_publishes_through_a_server(backend: Backend) {
    let mut config = backend.config();
    config.publish_token = Some("cli-token".into());
    let server = TestServer::start(config).await;
    let mut s = server.live_stream("/?global").await;
    let mut cmd = cli_to_internal(&server);
    cmd.args([
        "publish",
        "global",
        "hello from the shell",
        "--type",
        "greeting",
    ]);
    let (ok, stdout, stderr) = run_cli(cmd, None).await;
    assert!(ok, "stderr: {stderr}");
    let id: u64 = stdout
        .strip_suffix('\n')
        .unwrap_or(&stdout)
        .parse()
        .unwrap_or_else(|_| {
            panic!("stdout is not the id alone: {stdout:?}");
        });
    assert_eq!(stdout, format!("{id}\n"));
    let e = s.next().await;
    assert_eq!(e.id, Some(id.to_string()));
    assert_eq!(
        (e.event.as_str(), e.data.as_str()),
        ("greeting", "hello from the shell")
    );

    // A channel that needs escaping, and the default type.
    let mut s = server.live_stream("/?caf%C3%A9+%26+th%C3%A9%2F1").await;
    let mut cmd = cli();
    cmd.args(["publish", "café & thé/1", "x", "--token", "cli-token"])
        .args(["--server", &format!("http://{}/", server.addr)]);
    let (ok, stdout, stderr) = run_cli(cmd, None).await;
    assert!(ok, "stderr: {stderr}");
    let e = s.next().await;
    assert_eq!(e.id.as_deref(), Some(stdout.trim_end()));
    assert_eq!((e.event.as_str(), e.data.as_str()), ("message", "x"));
}

async fn the_cli_reads_data_from_stdin_without_one_trailing_newline(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?global").await;
    for (input, expected) in [
        ("line one\nline two\n", "line one\nline two"),
        ("two newlines\n\n", "two newlines\n"),
        ("no newline", "no newline"),
        ("", ""),
    ] {
        let mut cmd = cli_to_internal(&server);
        cmd.args(["publish", "global"]);
        let (ok, stdout, stderr) = run_cli(cmd, Some(input.as_bytes())).await;
        assert!(ok, "stderr: {stderr}");
        let e = s.next().await;
        assert_eq!(e.id.as_deref(), Some(stdout.trim_end()));
        assert_eq!(e.data, expected, "stdin {input:?}");
    }
}

#[tokio::test]
async fn the_cli_publishes_straight_to_redis() {
    let backend = Backend::redis();
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?global").await;
    let mut cmd = cli();
    cmd.args(["publish", "global", "via redis", "--type", "T"])
        .args(["--redis", &backend.redis_server().url()]);
    let (ok, stdout, stderr) = run_cli(cmd, None).await;
    assert!(ok, "stderr: {stderr}");
    let id: u64 = stdout.trim_end().parse().unwrap();
    assert_eq!(stdout, format!("{id}\n"));
    let e = s.next().await;
    assert_eq!(e.id, Some(id.to_string()));
    assert_eq!((e.event.as_str(), e.data.as_str()), ("T", "via redis"));
}

#[tokio::test]
async fn the_cli_fails_clearly_when_publishing_is_impossible() {
    let server = TestServer::start(Backend::memory().config()).await;
    // A type with a line break.
    let mut cmd = cli();
    cmd.args(["publish", "global", "x", "--type", "a\nb"])
        .args(["--server", &format!("http://{}", server.addr)]);
    let (ok, stdout, stderr) = run_cli(cmd, None).await;
    assert!(!ok);
    assert_eq!(stdout, "");
    assert!(stderr.contains("CR or LF"), "{stderr}");
    // Nobody listening there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = cli();
    cmd.args([
        "publish",
        "global",
        "x",
        "--server",
        &format!("http://127.0.0.1:{port}"),
    ]);
    let (ok, stdout, stderr) = run_cli(cmd, None).await;
    assert!(!ok);
    assert_eq!(stdout, "");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(stderr.to_lowercase().contains("connect"), "{stderr}");
    // A public listener with no credential configured refuses, and says where to publish.
    let mut cmd = cli();
    cmd.args(["publish", "global", "x", "--token", "anything"])
        .args(["--server", &format!("http://{}", server.addr)]);
    let (ok, stdout, stderr) = run_cli(cmd, None).await;
    assert!(!ok);
    assert_eq!(stdout, "");
    assert!(stderr.contains("401"), "{stderr}");
    assert!(stderr.contains("internal listener"), "{stderr}");
    // The server refuses: the status is reported.
    let mut config = Backend::memory().config();
    config.publish_token = Some("secret".into());
    let guarded = TestServer::start(config).await;
    let before = guarded.publish("other", "m", "before").await;
    let mut cmd = cli();
    cmd.args([
        "publish",
        "global",
        "x",
        "--server",
        &format!("http://{}", guarded.addr),
    ]);
    let (ok, _, stderr) = run_cli(cmd, None).await;
    assert!(!ok);
    assert!(stderr.contains("401"), "{stderr}");
    let mut cmd = cli();
    cmd.args(["publish", "global", "x", "--token", "wrong"])
        .args(["--server", &format!("http://{}", guarded.addr)]);
    let (ok, _, stderr) = run_cli(cmd, None).await;
    assert!(!ok);
    assert!(stderr.contains("401"), "{stderr}");
    // The token from the environment, as the server reads its own; the refusals took no id.
    let mut cmd = cli();
    cmd.env("REDISSE_PUBLISH_TOKEN", "secret")
        .args(["publish", "global", "x"])
        .args(["--server", &format!("http://{}", guarded.addr)]);
    let (ok, stdout, stderr) = run_cli(cmd, None).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout, format!("{}\n", before + 1));
}

// ---- HTTP ----

/// `POST` on the internal router (no credential needed).
async fn post_internal(
    server: &TestServer,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, String) {
    send(client().post(server.internal_url(path)).body(body)).await
}

async fn send(req: reqwest::RequestBuilder) -> (u16, String) {
    let res = tokio::time::timeout(PATIENCE, req.send())
        .await
        .expect("answer in time")
        .unwrap();
    let status = res.status().as_u16();
    (status, res.text().await.unwrap())
}

/// `POST` on the public router, with this `Authorization` header.
async fn post(
    server: &TestServer,
    path: &str,
    body: impl Into<reqwest::Body>,
    auth: Option<&str>,
) -> (u16, String) {
    let mut req = client().post(server.url(path)).body(body);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    send(req).await
}

fn id_of(body: &str) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{body}");
    v["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no id in {body}"))
}

async fn http_publish_answers_the_id_and_delivers(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?global&a%20b&caf%C3%A9").await;
    let res = client()
        .post(server.internal_url("/publish/global?type=foo"))
        .body("bar")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let body = res.text().await.unwrap();
    let id = id_of(&body);
    assert_eq!(body, format!("{{\"id\":{id}}}"));
    let e = s.next().await;
    assert_eq!(e.id, Some(id.to_string()));
    assert_eq!((e.event.as_str(), e.data.as_str()), ("foo", "bar"));

    // No type, an empty type: message. Percent-decoded channel; a form-encoded type.
    for (path, event, channel_data) in [
        ("/publish/global", "message", "no type"),
        ("/publish/global?type=", "message", "empty type"),
        ("/publish/a%20b?type=x+y", "x y", "space"),
        ("/publish/caf%C3%A9?type=%C3%A9t%C3%A9", "été", "unicode"),
    ] {
        let (status, body) = post_internal(&server, path, channel_data).await;
        assert_eq!(status, 200, "{path}: {body}");
        let id = id_of(&body);
        let e = s.next().await;
        assert_eq!(e.id, Some(id.to_string()), "{path}");
        assert_eq!(
            (e.event.as_str(), e.data.as_str()),
            (event, channel_data),
            "{path}"
        );
    }
    // Multi-line data survives.
    let (status, _) = post_internal(&server, "/publish/global", "l1\r\nl2\nl3").await;
    assert_eq!(status, 200);
    assert_eq!(s.next().await.data, "l1\nl2\nl3");
}

async fn http_publish_refuses_bad_requests_with_400(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?global").await;
    for (path, body) in [
        ("/publish/global?type=a%0Ab", b"x".to_vec()),
        ("/publish/global?type=a%0Db", b"x".to_vec()),
        ("/publish/global?type=%0D%0A", b"x".to_vec()),
        ("/publish/global", vec![b'o', b'k', 0xff, 0xfe]),
        ("/publish/global", vec![0xc3]),
        ("/publish/", b"x".to_vec()),
    ] {
        let (status, text) = post_internal(&server, path, body.clone()).await;
        assert_eq!(status, 400, "{path} {body:?}: {text}");
        assert!(!text.is_empty(), "a 400 says why");
    }
    // None of them was published: the next event is the one below, with the next id.
    server.publish("global", "after", "").await;
    let e = s.next().await;
    assert_eq!(e.event, "after");
}

async fn http_publish_refuses_bodies_over_the_limit_with_413(backend: Backend) {
    let mut config = backend.config();
    config.max_publish_bytes = 100;
    let server = TestServer::start(config).await;
    let mut s = server.live_stream("/?global").await;
    let (status, body) = post_internal(&server, "/publish/global", "x".repeat(100)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.next().await.data.len(), 100);
    let (status, _) = post_internal(&server, "/publish/global", "x".repeat(101)).await;
    assert_eq!(status, 413);
    // Without a Content-Length (chunked), the limit still holds.
    let chunks: Vec<Result<&'static [u8], std::io::Error>> = vec![Ok(&[b'y'; 60]), Ok(&[b'y'; 60])];
    let streamed = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let (status, _) = post_internal(&server, "/publish/global", streamed).await;
    assert_eq!(status, 413);
    server.publish("global", "after", "").await;
    assert_eq!(s.next().await.event, "after");
}

async fn http_publish_with_a_token_requires_the_bearer(backend: Backend) {
    let mut config = backend.config();
    config.publish_token = Some("s3cret-token".into());
    let server = TestServer::start(config).await;
    let warm = server.publish("warm", "m", "").await;
    let mut s = server.stream("/?global", &[]).await;
    let first = s.next().await;
    assert_eq!(
        (first.event.as_str(), first.id),
        ("lastEventId", Some(warm.to_string()))
    );
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cret-toke"),
        Some("Bearer s3cret-token2"),
        Some("s3cret-token"),
        Some("Basic s3cret-token"),
        Some("Bearer "),
    ] {
        let res = client()
            .post(server.url("/publish/global"))
            .body("x")
            .headers(
                auth.map(|a| {
                    let mut h = reqwest::header::HeaderMap::new();
                    h.insert("authorization", a.parse().unwrap());
                    h
                })
                .unwrap_or_default(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{auth:?}");
        assert_eq!(
            res.headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some("Bearer")
        );
    }
    let refused = server
        .redisse
        .metrics()
        .refusals(redisse::metrics::Refusal::PublishUnauthorized);
    assert_eq!(refused, 7);
    let (status, body) = post(
        &server,
        "/publish/global?type=ok",
        "in",
        Some("Bearer s3cret-token"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The first event since the warm-up: none of the refused requests was published.
    let e = s.next().await;
    assert_eq!(e.id, Some(id_of(&body).to_string()));
    assert_eq!(e.event, "ok");
    assert_eq!(id_of(&body), warm + 1, "the warm-up, then this one");
}

fn publish_request(connect_info: Option<SocketAddr>, auth: Option<&str>) -> http::Request<Body> {
    let mut req = http::Request::post("/publish/global?type=t");
    if let Some(addr) = connect_info {
        req = req.extension(ConnectInfo(addr));
    }
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    req.body(Body::from("data")).unwrap()
}

async fn call(router: axum::Router, req: http::Request<Body>) -> (u16, String) {
    let res = router.oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// No peer address is trusted: behind a reverse proxy every peer is the proxy, on loopback.
/// Without a configured credential the public router publishes for nobody (401, counted);
/// the internal router publishes for anyone who reaches it.
#[tokio::test]
async fn without_a_credential_the_public_router_publishes_for_no_peer_not_even_loopback() {
    let redisse = redisse::Redisse::new(Backend::memory().config()).unwrap();
    let before = redisse
        .publisher()
        .publish("other", "before")
        .await
        .unwrap();
    let id = |n: u64| format!(r#"{{"id":{}}}"#, before + n);
    let router = redisse.router();
    let peers = [
        Some("192.0.2.7:5000"),
        Some("10.0.0.1:80"),
        Some("[2001:db8::1]:443"),
        Some("127.0.0.1:5000"),
        Some("127.9.9.9:1"),
        Some("[::1]:5000"),
        None,
    ];
    for peer in peers {
        for auth in [None, Some("Bearer anything")] {
            let req = publish_request(peer.map(|p| p.parse().unwrap()), auth);
            let res = router.clone().oneshot(req).await.unwrap();
            assert_eq!(res.status(), 401, "{peer:?} {auth:?}");
            assert_eq!(
                res.headers()
                    .get("www-authenticate")
                    .map(|v| v.to_str().unwrap()),
                Some("Bearer"),
                "{peer:?}"
            );
            let body = res.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8_lossy(&body);
            assert!(body.contains("internal listener"), "{peer:?}: {body}");
        }
    }
    let refused = redisse
        .metrics()
        .refusals(redisse::metrics::Refusal::PublishUnauthorized);
    assert_eq!(refused, 2 * peers.len() as u64);
    // The internal router publishes, whatever the peer (or none known), without a credential.
    let internal = redisse.internal_router();
    let remote: SocketAddr = "192.0.2.7:5000".parse().unwrap();
    let (status, body) = call(internal.clone(), publish_request(Some(remote), None)).await;
    assert_eq!((status, body), (200, id(1)));
    let (status, body) = call(internal, publish_request(None, None)).await;
    assert_eq!((status, body), (200, id(2)));
    // Only those two took ids.
    assert_eq!(
        redisse.publisher().publish("global", "x").await.unwrap(),
        before + 3
    );
}

#[tokio::test]
async fn with_a_token_any_peer_may_publish_with_it() {
    let mut config = Backend::memory().config();
    config.publish_token = Some("tok".into());
    let redisse = redisse::Redisse::new(config).unwrap();
    let before = redisse
        .publisher()
        .publish("other", "before")
        .await
        .unwrap();
    let router = redisse.router();
    let remote: SocketAddr = "192.0.2.7:5000".parse().unwrap();
    let (status, _) = call(router.clone(), publish_request(Some(remote), None)).await;
    assert_eq!(status, 401);
    let (status, _) = call(
        router.clone(),
        publish_request(Some("127.0.0.1:1".parse().unwrap()), None),
    )
    .await;
    assert_eq!(status, 401, "with a token, loopback needs it too");
    let (status, body) = call(
        router.clone(),
        publish_request(Some(remote), Some("Bearer tok")),
    )
    .await;
    // The refusals took no id.
    assert_eq!((status, body), (200, format!(r#"{{"id":{}}}"#, before + 1)));
    let (status, _) = call(router, publish_request(None, Some("Bearer tok"))).await;
    assert_eq!(status, 200);
}

// ---- A raw Redis client, as the gem publishes ----

#[tokio::test]
async fn events_published_by_the_gems_four_commands_are_delivered() {
    let backend = Backend::redis();
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?global&other").await;
    let mut con = backend.redis_server().con();
    let mut gem_publish = |channel: &str, event_type: &str, data: &str| -> (u64, String) {
        let id: u64 = redis::cmd("INCR")
            .arg("redisse:lastEventId")
            .query(&mut con)
            .unwrap();
        let payload = format!(
            "id: {id}\nevent: {event_type}\ndata: {}\n\n",
            data.replace('\n', "\ndata: ")
        );
        let _: i64 = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(&payload)
            .query(&mut con)
            .unwrap();
        let _: i64 = redis::cmd("ZADD")
            .arg(channel)
            .arg(id)
            .arg(&payload)
            .query(&mut con)
            .unwrap();
        let _: i64 = redis::cmd("ZREMRANGEBYRANK")
            .arg(channel)
            .arg(0)
            .arg(-101)
            .query(&mut con)
            .unwrap();
        (id, payload)
    };
    let before = s.raw.len();
    let (id1, p1) = gem_publish("global", "foo", "from ruby");
    let (id2, p2) = gem_publish("other", "bar", "two\nlines");
    let got = s.take(2).await;
    assert_eq!(got[0].id, Some(id1.to_string()));
    assert_eq!(
        (got[0].event.as_str(), got[0].data.as_str()),
        ("foo", "from ruby")
    );
    assert_eq!(got[1].id, Some(id2.to_string()));
    assert_eq!(
        (got[1].event.as_str(), got[1].data.as_str()),
        ("bar", "two\nlines")
    );
    assert_eq!(
        String::from_utf8_lossy(&s.raw[before..]),
        format!("{p1}{p2}"),
        "forwarded verbatim"
    );
    // Our publisher continues the gem's counter.
    assert_eq!(server.publish("global", "t", "").await, id2 + 1);
    // And a stream resuming before them gets them from history.
    let mut resumed = server
        .stream(
            "/?global&other",
            &[("last-event-id", &(id1 - 1).to_string())],
        )
        .await;
    let ids: Vec<Option<String>> = resumed.take(3).await.into_iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        [
            Some(id1.to_string()),
            Some(id2.to_string()),
            Some((id2 + 1).to_string())
        ]
    );
}

#[tokio::test]
async fn a_cli_option_wins_over_the_other_targets_environment_variable() {
    let backend = Backend::redis();
    let url = backend.redis_server().url();
    let mut config = backend.config();
    config.publish_token = Some("tok".into());
    let server = TestServer::start(config).await;
    let mut s = server.live_stream("/?global").await;
    let dead = "redis://127.0.0.1:1/";
    // A shell that exports REDISSE_REDIS (for the server) can still publish with --server.
    let mut cmd = cli();
    cmd.env("REDISSE_REDIS", dead)
        .args(["publish", "global", "via http", "--token", "tok"])
        .args(["--server", &format!("http://{}", server.addr)]);
    let (ok, stdout, stderr) = run_cli(cmd, None).await;
    assert!(ok, "{stderr}");
    let e = s.next().await;
    assert_eq!(e.id.as_deref(), Some(stdout.trim_end()));
    assert_eq!(e.data, "via http");
    // And REDISSE_SERVER does not stop --redis.
    let mut cmd = cli();
    cmd.env("REDISSE_SERVER", "http://127.0.0.1:1").args([
        "publish",
        "global",
        "via redis",
        "--redis",
        &url,
    ]);
    let (ok, stdout, stderr) = run_cli(cmd, None).await;
    assert!(ok, "{stderr}");
    let e = s.next().await;
    assert_eq!(e.id.as_deref(), Some(stdout.trim_end()));
    assert_eq!(e.data, "via redis");
    // REDISSE_REDIS alone publishes to Redis.
    let mut cmd = cli();
    cmd.env("REDISSE_REDIS", &url)
        .args(["publish", "global", "env redis"]);
    let (ok, _, stderr) = run_cli(cmd, None).await;
    assert!(ok, "{stderr}");
    assert_eq!(s.next().await.data, "env redis");
    // Both on the command line: refused, nothing published.
    let mut cmd = cli();
    cmd.args(["publish", "global", "both", "--redis", &url])
        .args(["--server", &format!("http://{}", server.addr)]);
    let (ok, stdout, stderr) = run_cli(cmd, None).await;
    assert!(!ok);
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("--redis") && stderr.contains("--server"),
        "{stderr}"
    );
    server.publish("global", "after", "").await;
    assert_eq!(s.next().await.event, "after");
}

#[tokio::test]
async fn a_redis_publisher_reports_an_unreachable_or_invalid_redis() {
    let Err(invalid) = Publisher::redis("not a url") else {
        panic!("a URL that is not one was accepted");
    };
    assert!(
        matches!(invalid, PublishError::InvalidConfig(_)),
        "{invalid:?}"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let publisher = Publisher::redis(&format!("redis://127.0.0.1:{port}/")).unwrap();
    let result = tokio::time::timeout(PATIENCE, publisher.publish("global", "x")).await;
    let err = result.expect("the publisher gives up in time").unwrap_err();
    assert!(matches!(err, PublishError::Broker(_)), "{err}");
}

#[tokio::test]
async fn the_cli_publishes_to_a_server_mounted_under_a_path() {
    let mut config = Backend::memory().config();
    config.publish_token = Some("tok".into());
    let redisse = redisse::Redisse::new(config).unwrap();
    let app = axum::Router::new().nest("/sse", redisse.router());
    let server = TestServer::start_router(redisse, app).await;
    let mut s = server.live_stream("/sse/events?global").await;
    for base in [
        format!("http://{}/sse", server.addr),
        format!("http://{}/sse/", server.addr),
    ] {
        let mut cmd = cli();
        cmd.args(["publish", "global", "under a prefix", "--server", &base])
            .args(["--token", "tok"]);
        let (ok, stdout, stderr) = run_cli(cmd, None).await;
        assert!(ok, "--server {base}: {stderr}");
        let e = s.next().await;
        assert_eq!(e.id.as_deref(), Some(stdout.trim_end()));
        assert_eq!(e.data, "under a prefix");
    }
}
