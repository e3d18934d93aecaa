//! The standalone server's two listeners (access control).
//!
//! The *public* router serves streams, `/health`, `/livez` and the JSON stats, and publishes
//! only with a credential: no peer address is trusted (behind a reverse proxy every peer is the
//! proxy, on loopback), so without a configured token a publish from 127.0.0.1 is a 401 like any
//! other. It has no `/metrics`: that path is one more path of the SSE endpoint. The *internal*
//! router publishes without a credential and serves `/metrics` (whatever the `Accept`),
//! `/health`, `/livez` and the JSON stats, and no streams. The binary serves it on
//! `--internal-address` (HOST:PORT, `unix:PATH` or `none`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use redisse::metrics::Refusal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::on_both_brokers;
use crate::support::binary::Redisse;
use crate::support::sse::client;
use crate::support::{Backend, PATIENCE, SseStream, TestServer};

on_both_brokers!(
    the_internal_router_publishes_without_a_credential_and_serves_no_streams,
    the_public_router_publishes_nothing_without_a_configured_credential,
    the_authorization_query_item_is_never_a_channel,
);

const PROMETHEUS: &str = "text/plain; version=0.0.4";

/// `GET url` with this `Accept` (none when `None`): (status, content type, body).
async fn get(url: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut req = client().get(url);
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let res = tokio::time::timeout(PATIENCE, req.send())
        .await
        .expect("an answer in time")
        .unwrap();
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, res.text().await.unwrap())
}

/// `POST url` with `data` and this `Authorization` header: (status, `WWW-Authenticate`, body).
async fn post(url: &str, data: &str, auth: Option<&str>) -> (u16, Option<String>, String) {
    let mut req = client().post(url).body(data.to_owned());
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let res = tokio::time::timeout(PATIENCE, req.send())
        .await
        .expect("an answer in time")
        .unwrap();
    let status = res.status().as_u16();
    let challenge = res
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, challenge, res.text().await.unwrap())
}

async fn the_internal_router_publishes_without_a_credential_and_serves_no_streams(
    backend: Backend,
) {
    // A token is configured: the internal router does not ask for it.
    let mut config = backend.config();
    config.publish_token = Some("public-token".into());
    let server = TestServer::start(config).await;
    let mut s = server.live_stream("/?a").await;
    for auth in [None, Some("Bearer wrong")] {
        let (status, _, body) =
            post(&server.internal_url("/publish/a?type=t"), "internal", auth).await;
        assert_eq!(status, 200, "{auth:?}: {body}");
        let e = s.next().await;
        assert_eq!(
            (e.event.as_str(), e.data.as_str()),
            ("t", "internal"),
            "{auth:?}"
        );
        assert_eq!(body, format!("{{\"id\":{}}}", e.id.unwrap()));
    }
    assert_eq!(
        server
            .redisse
            .metrics()
            .refusals(Refusal::PublishUnauthorized),
        0
    );
    // /metrics is Prometheus text whatever the Accept, a stream's included.
    for accept in [
        None,
        Some("text/event-stream"),
        Some("application/json"),
        Some("*/*"),
    ] {
        for path in ["/metrics", "/metrics?a"] {
            let (status, ct, body) = get(&server.internal_url(path), accept).await;
            assert_eq!(status, 200, "{path} {accept:?}");
            assert!(ct.starts_with(PROMETHEUS), "{path} {accept:?}: {ct}");
            assert!(
                body.contains("# TYPE redisse_published_total counter\n"),
                "{path} {accept:?}: {body}"
            );
        }
    }
    // /health and /livez, even when a stream is asked for.
    for path in ["/health", "/livez"] {
        for accept in [None, Some("text/event-stream")] {
            let (status, _, body) = get(&server.internal_url(path), accept).await;
            assert_eq!((status, body.as_str()), (200, "ok\n"), "{path} {accept:?}");
        }
    }
    // The JSON stats on any other path: one stream open (the public one).
    for path in ["/", "/stats", "/any/path?a"] {
        let (status, ct, body) = get(&server.internal_url(path), Some("application/json")).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(ct, "application/json", "{path}");
        let stats: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {body:?}: {e}"));
        assert_eq!(stats["connected"], 1, "{path}: {body}");
        for field in ["events", "served", "missing"] {
            assert!(stats[field].is_u64(), "{path}: {field} in {body}");
        }
    }
    // No streams: a stream request is a 404, and nothing is registered.
    let served = server.redisse.stats().served;
    for path in ["/?a", "/events?a&b", "/livez/x?a"] {
        let (status, ct, body) = get(&server.internal_url(path), Some("text/event-stream")).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_ne!(ct, "text/event-stream", "{path}");
        assert!(body.contains("public listener"), "{path}: {body}");
    }
    // A GET on the publish path is no stream either.
    let (status, ct, _) = get(
        &server.internal_url("/publish/a?a"),
        Some("text/event-stream"),
    )
    .await;
    assert!(status >= 400, "{status}");
    assert_ne!(ct, "text/event-stream");
    let (status, _, _) = get(&server.internal_url("/?a"), None).await;
    assert_eq!(status, 404);
    assert_eq!(server.redisse.connections(), 1);
    assert_eq!(server.redisse.stats().served, served);
    // The public stream is still there and got nothing else.
    s.expect_silence(Duration::from_millis(100)).await;
}

async fn the_public_router_publishes_nothing_without_a_configured_credential(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let warm = server.publish("warm", "m", "").await;
    let mut s = server.stream("/?a", &[]).await;
    let first = s.next().await;
    assert_eq!(
        (first.event.as_str(), first.id),
        ("lastEventId", Some(warm.to_string()))
    );
    // The requests come from 127.0.0.1, which is trusted for nothing.
    assert!(server.addr.ip().is_loopback());
    for auth in [None, Some("Bearer anything"), Some("Basic eDp5")] {
        let (status, challenge, body) = post(&server.url("/publish/a"), "public", auth).await;
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert_eq!(challenge.as_deref(), Some("Bearer"), "{auth:?}");
        assert!(body.contains("internal listener"), "{auth:?}: {body}");
    }
    assert_eq!(
        server
            .redisse
            .metrics()
            .refusals(Refusal::PublishUnauthorized),
        3
    );
    s.expect_silence(Duration::from_millis(100)).await;
    // Nothing took an id: the next one follows the warm-up's.
    let (status, _, body) = post(&server.internal_url("/publish/a"), "internal", None).await;
    assert_eq!((status, body), (200, format!(r#"{{"id":{}}}"#, warm + 1)));
    let e = s.next().await;
    assert_eq!(
        (e.id, e.data.as_str()),
        (Some((warm + 1).to_string()), "internal")
    );
}

async fn the_authorization_query_item_is_never_a_channel(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    server.publish("warm", "m", "").await;
    // Alone, it names no channel.
    for query in ["/?authorization=x", "/?authorization=x&authorization=y"] {
        let s = server.stream(query, &[]).await;
        assert_eq!(s.status, 404, "{query}");
    }
    assert_eq!(server.redisse.connections(), 0);
    // Beside a channel, the stream is on that channel only.
    for query in [
        "/?a&authorization=x",
        "/?authorization=x&a",
        "/?a&authorization%3Dx",
    ] {
        let mut s = server.stream(query, &[]).await;
        assert_eq!(s.status, 200, "{query}");
        assert_eq!(s.next().await.event, "lastEventId", "{query}");
        for channel in ["authorization=x", "authorization", "x"] {
            server.publish(channel, "m", "not for a").await;
        }
        let id = server.publish("a", "m", "for a").await;
        let e = s.next().await;
        assert_eq!(
            (e.id, e.data.as_str()),
            (Some(id.to_string()), "for a"),
            "{query}"
        );
        s.expect_silence(Duration::from_millis(100)).await;
        drop(s);
        server.wait_connections(0).await;
    }
}

/// The public router has no `/metrics`: without `Accept: text/event-stream` it is the
/// endpoint's 406, with JSON the stats, with a stream a stream; never Prometheus text.
#[tokio::test]
async fn the_public_router_has_no_metrics() {
    let server = TestServer::start(Backend::memory().config()).await;
    server.publish("warm", "m", "").await;
    for accept in [None, Some("text/plain"), Some("*/*")] {
        for path in ["/metrics", "/metrics?a"] {
            let (status, ct, body) = get(&server.url(path), accept).await;
            assert_eq!(status, 406, "{path} {accept:?}: {body}");
            assert!(!ct.starts_with(PROMETHEUS), "{path} {accept:?}: {ct}");
            assert!(!body.contains("redisse_"), "{path} {accept:?}: {body}");
            assert!(!body.contains("# TYPE"), "{path} {accept:?}: {body}");
        }
    }
    assert_eq!(server.redisse.metrics().refusals(Refusal::NotAcceptable), 6);
    let (status, ct, body) = get(&server.url("/metrics"), Some("application/json")).await;
    assert_eq!((status, ct.as_str()), (200, "application/json"), "{body}");
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["connected"], 0, "{body}");
    assert!(!body.contains("redisse_"), "{body}");
    let mut s = server.stream("/metrics?a", &[]).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert_eq!(s.next().await.event, "lastEventId");
    // And the internal router does serve it.
    let (status, ct, _) = get(&server.internal_url("/metrics"), None).await;
    assert_eq!(status, 200);
    assert!(ct.starts_with(PROMETHEUS), "{ct}");
}

/// `/livez` says the process serves, whatever Redis does; `/health` says whether the broker is
/// reachable: with Redis stopped, 200 and 503, on both routers; and back to 200 once it is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livez_stays_200_while_redis_is_down_and_health_is_503() {
    let mut backend = Backend::redis();
    let server = TestServer::start(backend.config()).await;
    let urls = |path: &str| [server.url(path), server.internal_url(path)];
    let health_is = async |want: u16| {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut all = true;
            for url in urls("/health") {
                let (status, _, _) = get(&url, None).await;
                all &= status == want;
            }
            if all {
                return;
            }
            assert!(Instant::now() < deadline, "/health never {want}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    health_is(200).await;
    for url in urls("/livez") {
        assert_eq!(get(&url, None).await.0, 200, "{url}");
    }
    let Backend::Redis(redis) = &mut backend else {
        unreachable!()
    };
    redis.stop();
    health_is(503).await;
    for url in urls("/health") {
        let (status, _, body) = get(&url, None).await;
        assert_eq!(status, 503, "{url}");
        assert!(body.contains("broker"), "{url}: {body}");
    }
    // A while later, still down, still alive.
    for _ in 0..3 {
        for url in urls("/livez") {
            let (status, _, body) = get(&url, None).await;
            assert_eq!((status, body.as_str()), (200, "ok\n"), "{url}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (_, _, metrics) = get(&server.internal_url("/metrics"), None).await;
    assert!(metrics.contains("\nredisse_broker_up 0\n"), "{metrics}");
    redis.start_again();
    health_is(200).await;
    for url in urls("/livez") {
        assert_eq!(get(&url, None).await.0, 200, "{url}");
    }
}

// ---- The binary ----

/// `redisse` with no `REDISSE_*` variable from the test's environment.
fn redisse_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_redisse"));
    for (k, _) in std::env::vars() {
        if k.starts_with("REDISSE_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `redisse publish` with the arguments and environment: (success, stdout, stderr).
async fn cli_publish(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = redisse_command();
    cmd.arg("publish").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("run redisse publish");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `server`'s log until it has a line with `words`; returns the whole log.
async fn log_with(server: &Redisse, words: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let log = server.log();
        if log.contains(words) {
            return log;
        }
        assert!(Instant::now() < deadline, "no {words:?} in the log:\n{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The TCP sockets process `pid` listens on (state LISTEN in `/proc/PID/net/tcp{,6}`, among
/// the process's own file descriptors).
fn listening_sockets(pid: u32) -> usize {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the process's descriptors")
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        })
        .filter(|cols| cols.len() > 9 && cols[3] == "0A" && inodes.contains(&cols[9]))
        .count()
}

/// Startup logs, in order: the public listener, the internal one (and what it allows), the
/// subscriber authorization mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_logs_both_listeners_then_the_subscriber_mode() {
    let server = Redisse::start(&[]);
    let internal = server.internal_port.expect("an internal port");
    assert_ne!(internal, server.port);
    let log = log_with(&server, "subscriber authorization").await;
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines[0].contains(&format!(
            "redisse 0.1.0 listening on http://127.0.0.1:{} with the in-memory broker",
            server.port
        )),
        "{log}"
    );
    assert!(
        lines[1].contains(&format!(
            "internal listener on http://127.0.0.1:{internal}: publish without credentials, \
             /metrics, /status; whoever reaches it may publish"
        )),
        "{log}"
    );
    assert!(lines[2].contains("subscriber authorization: open"), "{log}");
    // Two TCP listeners, and the internal one answers as such.
    assert_eq!(listening_sockets(server.pid()), 2);
    let (status, ct, _) = get(&server.internal_url("/metrics"), None).await;
    assert_eq!(status, 200);
    assert!(ct.starts_with(PROMETHEUS), "{ct}");
    let (status, _, _) = get(&server.url("/metrics"), None).await;
    assert_eq!(status, 406);
    for url in [server.url("/livez"), server.internal_url("/livez")] {
        assert_eq!(get(&url, None).await.0, 200, "{url}");
    }
}

/// Over real TCP from 127.0.0.1, the binary's public listener publishes only with the right
/// bearer, and counts the refusals; its internal listener publishes without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_publishes_on_the_public_listener_only_with_the_token() {
    let server = Redisse::start(&["--publish-token", "tok-3a9f"]);
    server.publish("warm", String::new()).await;
    let mut s = SseStream::open(&server.url("/?a"), &[]).await;
    let first = s.next().await;
    assert_eq!(first.event, "lastEventId");
    let warm: u64 = first.id.as_deref().unwrap().parse().unwrap();
    let id = |n: u64| format!(r#"{{"id":{}}}"#, warm + n);
    let url = server.url("/publish/a");
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer tok-3a9"),
        Some("tok-3a9f"),
    ] {
        let (status, challenge, body) = post(&url, "refused", auth).await;
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert_eq!(challenge.as_deref(), Some("Bearer"), "{auth:?}");
    }
    let (status, _, body) = post(&url, "with the token", Some("Bearer tok-3a9f")).await;
    assert_eq!((status, body), (200, id(1)));
    let e = s.next().await;
    assert_eq!(
        (e.id, e.data.as_str()),
        (Some((warm + 1).to_string()), "with the token")
    );
    let (status, _, body) = post(&server.internal_url("/publish/a"), "internal", None).await;
    assert_eq!((status, body), (200, id(2)));
    assert_eq!(s.next().await.data, "internal");
    let (_, _, metrics) = get(&server.internal_url("/metrics"), None).await;
    assert!(
        metrics.contains("redisse_refused_total{reason=\"publish_unauthorized\"} 4\n"),
        "{metrics}"
    );
}

/// `redisse publish --server <public URL>` sends `--token` (or `REDISSE_PUBLISH_TOKEN`) as the
/// bearer: it works with the server's `--publish-token`, and fails with a clear 401 otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_publishes_through_the_public_listener_with_the_token() {
    let server = Redisse::start(&["--publish-token", "tok-77"]);
    server.publish("warm", String::new()).await;
    let mut s = SseStream::open(&server.url("/?news"), &[]).await;
    let first = s.next().await;
    assert_eq!(first.event, "lastEventId");
    let warm: u64 = first.id.as_deref().unwrap().parse().unwrap();
    let base = server.url("");
    let (ok, stdout, stderr) = cli_publish(
        &["news", "by token", "--server", &base, "--token", "tok-77"],
        &[],
    )
    .await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout, format!("{}\n", warm + 1));
    assert_eq!(s.next().await.data, "by token");
    let (ok, stdout, stderr) = cli_publish(
        &["news", "by env token", "--server", &base],
        &[("REDISSE_PUBLISH_TOKEN", "tok-77")],
    )
    .await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout, format!("{}\n", warm + 2));
    assert_eq!(s.next().await.data, "by env token");
    // Without the token, or a wrong one: 401, said plainly, nothing printed nor published.
    for extra in [&[][..], &["--token", "nope"][..]] {
        let mut args = vec!["news", "refused", "--server", &base];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = cli_publish(&args, &[]).await;
        assert!(!ok, "{extra:?}");
        assert_eq!(stdout, "", "{extra:?}");
        assert!(stderr.contains("401 Unauthorized"), "{extra:?}: {stderr}");
    }
    s.expect_silence(Duration::from_millis(200)).await;
    // A server without --publish-token refuses any token, and the message says where to go.
    let open = Redisse::start(&[]);
    let (ok, stdout, stderr) = cli_publish(
        &["news", "x", "--server", &open.url(""), "--token", "tok-77"],
        &[],
    )
    .await;
    assert!(!ok);
    assert_eq!(stdout, "");
    assert!(stderr.contains("401 Unauthorized"), "{stderr}");
    assert!(stderr.contains("internal listener"), "{stderr}");
}

/// `--internal-address none`: one listener only, and the log says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_address_none_serves_no_internal_listener() {
    let server = Redisse::start(&["--internal-address", "none"]);
    assert_eq!(server.internal_port, None);
    let log = log_with(&server, "subscriber authorization").await;
    assert!(
        log.contains("no internal listener (--internal-address none)"),
        "{log}"
    );
    assert!(!log.contains("internal listener on"), "{log}");
    assert_eq!(listening_sockets(server.pid()), 1);
    // The public listener serves, and still publishes nothing without a credential.
    assert_eq!(get(&server.url("/livez"), None).await.0, 200);
    let (status, _, _) = post(&server.url("/publish/a"), "x", None).await;
    assert_eq!(status, 401);
    // And `redisse publish` aimed at `none` is an error, not a guess.
    let (ok, stdout, stderr) =
        cli_publish(&["a", "x"], &[("REDISSE_INTERNAL_ADDRESS", "none")]).await;
    assert!(!ok);
    assert_eq!(stdout, "");
    assert!(stderr.contains("--server"), "{stderr}");
}

/// `--internal-address unix:PATH`: `redisse publish` with `REDISSE_INTERNAL_ADDRESS=unix:PATH`
/// publishes through it, and the event reaches a stream on the public listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_address_unix_path_publishes_with_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("internal.sock");
    let address = format!("unix:{}", path.display());
    let server = Redisse::start(&["--internal-address", &address]);
    assert_eq!(server.internal_port, None);
    let log = log_with(&server, "subscriber authorization").await;
    assert!(
        log.contains(&format!("internal listener on {address}: ")),
        "{log}"
    );
    assert_eq!(listening_sockets(server.pid()), 1, "the public one only");
    let env = [("REDISSE_INTERNAL_ADDRESS", address.as_str())];
    let (ok, stdout, stderr) = cli_publish(&["warm", ""], &env).await;
    assert!(ok, "{stderr}");
    let warm: u64 = stdout.trim_end().parse().expect("an id");
    let mut s = SseStream::open(&server.url("/?over.unix"), &[]).await;
    assert_eq!(s.next().await.event, "lastEventId");
    let (ok, stdout, stderr) =
        cli_publish(&["over.unix", "through the socket", "-t", "sock"], &env).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout, format!("{}\n", warm + 1));
    let e = s.next().await;
    assert_eq!(
        (e.id, e.event.as_str(), e.data.as_str()),
        (Some((warm + 1).to_string()), "sock", "through the socket")
    );
    // The socket is the internal router: /metrics, and no streams.
    let mut con = tokio::net::UnixStream::connect(&path).await.unwrap();
    con.write_all(
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(PATIENCE, con.read_to_string(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("redisse_published_total 2\n"), "{answer}");
}

/// A busy internal address stops the start, before anything is logged as listening.
#[tokio::test]
async fn a_busy_internal_address_stops_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let mut cmd = redisse_command();
    cmd.args(["-a", "127.0.0.1", "-p", "0", "--internal-address", &busy]);
    let out = tokio::time::timeout(PATIENCE, tokio::task::spawn_blocking(move || cmd.output()))
        .await
        .expect("redisse exits")
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("--internal-address: cannot listen on {busy}")),
        "{stderr}"
    );
    assert!(!stderr.contains(" listening on "), "{stderr}");
    drop(taken);
}

/// The binary's startup log: read until the process serves (its internal `/livez` answers,
/// so every startup line is written), then the process is killed.
fn startup_log(args: &[&str]) -> String {
    let mut cmd = redisse_command();
    cmd.args(["-p", "0", "--internal-address", "127.0.0.1:0"])
        .args(args);
    let mut child = cmd.spawn().expect("spawn redisse");
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(rest) = line.split("internal listener on http://127.0.0.1:").nth(1) {
                let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                let _ = tx.send(port.parse::<u16>().unwrap());
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    let port = rx.recv_timeout(PATIENCE).ok();
    let mut serving = false;
    if let Some(port) = port {
        let deadline = std::time::Instant::now() + PATIENCE;
        while !serving && std::time::Instant::now() < deadline {
            // A bare HTTP/1.0 request: the answer's status line is enough.
            use std::io::{Read, Write};
            if let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let _ = tcp.write_all(b"GET /livez HTTP/1.0\r\n\r\n");
                let mut answer = String::new();
                let _ = tcp.read_to_string(&mut answer);
                serving = answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200");
            }
            if !serving {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = reader.join().unwrap();
    assert!(serving, "the server never served:\n{log}");
    assert!(log.contains("subscriber authorization"), "{log}");
    log
}

/// Open subscriber authorization on an address other than loopback is warned about; on
/// loopback, or with JWT, it is not.
#[tokio::test]
async fn open_mode_on_a_public_address_is_warned_about() {
    let log = startup_log(&["-a", "0.0.0.0"]);
    let warning = log
        .lines()
        .find(|l| l.contains("anyone who reaches it may subscribe"))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("http://0.0.0.0:"), "{warning}");
    assert!(log.contains("subscriber authorization: open"), "{log}");
    for args in [
        &["-a", "127.0.0.1"][..],
        &[
            "-a",
            "0.0.0.0",
            "--jwt-secret",
            "a-long-enough-secret-for-hs256-tokens",
            "--jwt-algorithm",
            "HS256",
        ][..],
    ] {
        let log = startup_log(args);
        assert!(!log.contains("anyone who reaches it"), "{args:?}:\n{log}");
        assert!(!log.contains("WARN"), "{args:?}:\n{log}");
    }
}
