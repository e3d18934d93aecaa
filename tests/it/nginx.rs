//! A real nginx in front of the `redisse` binary and a small application, configured by
//! `examples/nginx.conf` (and the `redisse_stream.conf` it includes) with only the addresses
//! replaced: what README.md's "Behind nginx" shows is what runs here. Every request goes to
//! nginx's port, as an outside client's would.
//!
//! The application authenticates with a `session=<user>` cookie (alice or bob) and answers
//! `GET /app-events` with redisse's `RedirectEndpoint`: `X-Accel-Redirect: /redisse/?user.<user>&global`.
//! The binary's public listener is on a free loopback port (the example's `127.0.0.1:8082`), its
//! internal listener on another; only the test, as the application would, publishes there.
//!
//! One test lists three processes on one Redis in the example's upstream (with `least_conn`)
//! and kills one of them (docs/operations.md, "Scaling connections: many processes").
//!
//! nginx runs as one foreground process (`daemon off; master_process off;`) with its prefix,
//! logs, pid file and temp directories in a temporary directory. These tests fail, with the
//! command to run, when `/usr/sbin/nginx` is not installed (`.ci/run` installs it).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use futures_util::StreamExt;
use http::StatusCode;
use http::request::Parts;
use redisse::{RedirectEndpoint, Rejection};
use reqwest::Method;
use reqwest::header::HeaderMap;

use crate::support::binary::Redisse;
use crate::support::sse::{Next, client};
use crate::support::steps::id_of;
use crate::support::{PATIENCE, RedisServer, SseEvent, SseStream};

const NGINX: &str = "/usr/sbin/nginx";
/// The application's 404 body, to tell its answers from redisse's.
const APP_NOT_FOUND: &str = "app: no such page";

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The configuration without its comments.
fn live(conf: &str) -> String {
    conf.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` with `from`, which must appear exactly once, replaced by `to`.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    let n = text.matches(from).count();
    assert_eq!(
        n, 1,
        "examples/nginx.conf should contain {from:?} once (found {n}); the test fills in its \
         addresses there"
    );
    text.replacen(from, to, 1)
}

/// The example's commented JWT variant (`# location /events/ { ... # }`), uncommented.
fn with_jwt_variant(conf: &str) -> String {
    let mut out = Vec::new();
    let mut inside = false;
    let mut found = false;
    for line in conf.lines() {
        let trimmed = line.trim_start();
        if trimmed == "# location /events/ {" {
            inside = true;
            found = true;
        }
        if inside {
            let indent = &line[..line.len() - trimmed.len()];
            let body = trimmed.strip_prefix('#').unwrap_or(trimmed);
            out.push(format!(
                "{indent}{}",
                body.strip_prefix(' ').unwrap_or(body)
            ));
            if trimmed == "# }" {
                inside = false;
            }
        } else {
            out.push(line.to_owned());
        }
    }
    assert!(
        found,
        "examples/nginx.conf has no commented `location /events/` (JWT) variant"
    );
    out.join("\n")
}

/// A free loopback port (bound, then released for nginx).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

struct Nginx {
    port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl Nginx {
    /// Starts nginx with `conf` (an `http` configuration like examples/nginx.conf) and
    /// examples/redisse_stream.conf beside it.
    fn start(conf: &str, app: SocketAddr, redisse_port: u16) -> Self {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} not found: install nginx (apt-get install nginx-light or nginx)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path();
        for sub in ["logs", "body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(p.join(sub)).unwrap();
        }
        let port = free_port();
        let mut conf = replace_once(conf, "listen 8080;", &format!("listen 127.0.0.1:{port};"));
        conf = replace_once(&conf, "server 127.0.0.1:3000;", &format!("server {app};"));
        conf = replace_once(
            &conf,
            "server 127.0.0.1:8082;",
            &format!("server 127.0.0.1:{redisse_port};"),
        );
        // Paths nginx would otherwise take from its build (/var/lib/nginx, /var/log/nginx).
        let d = p.display();
        let local = format!(
            "http {{\n    access_log {d}/logs/access.log;\n    client_body_temp_path {d}/body;\n    \
             proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    \
             uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n"
        );
        conf = replace_once(&conf, "http {\n", &local);
        std::fs::write(p.join("nginx.conf"), &conf).unwrap();
        std::fs::write(
            p.join("redisse_stream.conf"),
            example("redisse_stream.conf"),
        )
        .unwrap();
        let globals = format!(
            "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/logs/error.log info;"
        );
        let error_log = p.join("logs/error.log");
        let mut child = Command::new(NGINX)
            .arg("-p")
            .arg(p)
            .arg("-e")
            .arg(&error_log)
            .arg("-c")
            .arg(p.join("nginx.conf"))
            .args(["-g", &globals])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {NGINX}: {e}"));
        let deadline = Instant::now() + PATIENCE;
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut stderr);
                }
                panic!(
                    "nginx exited ({status}): {stderr}\n{}\nconfiguration:\n{conf}",
                    std::fs::read_to_string(&error_log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "nginx did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { port, dir, child }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs/error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The user a `session=<name>` cookie names, if it is one the application knows.
fn session(parts: &Parts) -> Option<&'static str> {
    let cookies = parts.headers.get_all(http::header::COOKIE);
    for value in cookies.iter().filter_map(|v| v.to_str().ok()) {
        for pair in value.split(';') {
            match pair.trim() {
                "session=alice" => return Some("alice"),
                "session=bob" => return Some("bob"),
                _ => {}
            }
        }
    }
    None
}

/// The application: `GET /app-events` answers with X-Accel-Redirect to the user's channels; every
/// other path is 404. Returns its address.
async fn start_app() -> SocketAddr {
    let policy = |parts: &Parts| {
        std::future::ready(match session(parts) {
            Some(user) => Ok(vec![format!("user.{user}"), "global".to_owned()]),
            None => Err(Rejection::unauthorized("401 Unauthorized\nlog in first")),
        })
    };
    let app = Router::new()
        .route_service("/app-events", RedirectEndpoint::new("/redisse", policy))
        .fallback(|| async { (StatusCode::NOT_FOUND, format!("{APP_NOT_FOUND}\n")) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the application");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.expect("application") });
    addr
}

/// nginx (from examples/nginx.conf), the application and redisse, running.
struct Deployment {
    redisse: Redisse,
    nginx: Nginx,
}

impl Deployment {
    async fn start() -> Self {
        Self::with(&example("nginx.conf"), &[]).await
    }

    async fn with(conf: &str, redisse_args: &[&str]) -> Self {
        let redisse = Redisse::start(redisse_args);
        let app = start_app().await;
        let nginx = Nginx::start(conf, app, redisse.port);
        Deployment { redisse, nginx }
    }

    /// Publishes through redisse's internal listener, as the application does; the event's id.
    async fn publish(&self, channel: &str, data: &str) -> u64 {
        let res = client()
            .post(self.redisse.internal_url(&format!("/publish/{channel}")))
            .body(data.to_owned())
            .send()
            .await
            .expect("publish");
        assert_eq!(res.status(), 200);
        let body = res.text().await.expect("publish answer");
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        body["id"].as_u64().expect("an id")
    }

    /// A stream through nginx.
    async fn stream(&self, path: &str, headers: &[(&str, &str)]) -> SseStream {
        let mut all = vec![("accept", "text/event-stream")];
        all.extend_from_slice(headers);
        SseStream::open(&self.nginx.url(path), &all).await
    }

    /// One request through nginx: its status, headers, and what its body gave within half a
    /// second (a stream never ends).
    async fn probe(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Probe {
        let mut req = client().request(method.clone(), self.nginx.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if !body.is_empty() {
            req = req.body(body.to_owned());
        }
        let res = tokio::time::timeout(PATIENCE, req.send())
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer in time"))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = res.status();
        let res_headers = res.headers().clone();
        let mut chunks = res.bytes_stream();
        let mut bytes = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, chunks.next()).await {
            bytes.extend_from_slice(&chunk);
        }
        Probe {
            what: format!("{method} {path} with {headers:?}"),
            status,
            headers: res_headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }
}

struct Probe {
    what: String,
    status: reqwest::StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Probe {
    fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn is_stream(&self) -> bool {
        self.status == 200 && self.content_type().starts_with("text/event-stream")
    }

    /// nginx's own 404 (what `internal;` answers), not the application's or redisse's.
    fn assert_nginx_404(&self) {
        let server = self.headers.get("server").and_then(|v| v.to_str().ok());
        assert!(
            self.status == 404
                && server.is_some_and(|s| s.starts_with("nginx"))
                && self.body.contains("<center>nginx"),
            "{}: expected nginx's 404, got {} {:?} {:?}",
            self.what,
            self.status,
            self.headers,
            self.body
        );
    }

    /// Neither Prometheus text, nor the JSON stats, nor redisse's health pages; a 200 is only
    /// ever an event stream (the application's redirect).
    fn assert_not_a_redisse_page(&self) {
        let ct = self.content_type();
        assert!(
            !self.body.contains("# TYPE")
                && !self.body.contains("redisse_")
                && !ct.starts_with("application/json")
                && !self.body.trim_start().starts_with('{')
                && (self.status != 200 || self.is_stream()),
            "{}: answered {} {ct:?} {:?}",
            self.what,
            self.status,
            self.body
        );
    }
}

/// The next event that is not the `lastEventId` position hint.
async fn next_message(s: &mut SseStream) -> SseEvent {
    loop {
        let e = s.next().await;
        if e.event != "lastEventId" {
            return e;
        }
    }
}

const ALICE: (&str, &str) = ("cookie", "session=alice");
const BOB: (&str, &str) = ("cookie", "session=bob");

/// Alice, with her session cookie, gets her events and the global ones (not bob's) through the
/// application's redirect, and resumes through nginx with `Last-Event-ID` or `?lastEventId=`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_streams_her_channels_through_the_application_and_resumes() {
    let d = Deployment::start().await;
    let mut s = d.stream("/app-events", &[ALICE]).await;
    assert_eq!(s.status, 200, "{}", d.nginx.error_log());
    assert!(
        s.header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    d.publish("user.bob", "for bob").await;
    let a1 = d.publish("user.alice", "a1").await;
    let g1 = d.publish("global", "g1").await;
    let e = next_message(&mut s).await;
    assert_eq!((e.id, e.data), (Some(a1.to_string()), "a1".to_owned()));
    let e = next_message(&mut s).await;
    assert_eq!((e.id, e.data), (Some(g1.to_string()), "g1".to_owned()));
    drop(s);

    // Missed while away.
    d.publish("user.bob", "b2").await;
    let a2 = d.publish("user.alice", "a2").await;
    let g1s = g1.to_string();
    let mut s = d
        .stream("/app-events", &[ALICE, ("last-event-id", &g1s)])
        .await;
    let e = next_message(&mut s).await;
    assert_eq!((e.id, e.data), (Some(a2.to_string()), "a2".to_owned()));
    drop(s);
    let mut s = d
        .stream(&format!("/app-events?lastEventId={g1}"), &[ALICE])
        .await;
    let e = next_message(&mut s).await;
    assert_eq!((e.id, e.data), (Some(a2.to_string()), "a2".to_owned()));
    // And live again.
    let a3 = d.publish("user.alice", "a3").await;
    let e = next_message(&mut s).await;
    assert_eq!((e.id, e.data), (Some(a3.to_string()), "a3".to_owned()));
}

/// Paths an outside client might try for a stream of its own choosing.
const STREAM_PATHS: &[&str] = &[
    "/app-events?user.alice&lastEventId=0",
    "/events?user.alice",
    "/events/?user.alice",
    "/events/?user.alice&lastEventId=0",
    "/events/?user.alice&lastEventId=9223372036854775807",
    "/events/user.alice?user.alice",
    "/?user.alice&lastEventId=0",
    "/user.alice?user.alice",
    "/redisse/?user.alice&lastEventId=0",
    "/%72edisse/?user.alice&lastEventId=0",
    "//redisse/?user.alice",
];

/// Without a session nothing streams, whatever the path and query: the application answers
/// 401 on its stream URL, and no other URL reaches redisse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_session_nothing_streams() {
    let d = Deployment::start().await;
    d.publish("user.alice", "alice secret").await;
    for cookie in [None, Some(("cookie", "session=mallory"))] {
        let mut headers = vec![("accept", "text/event-stream"), ("last-event-id", "0")];
        headers.extend(cookie);
        let p = d.probe(Method::GET, "/app-events", &headers, "").await;
        assert_eq!(p.status, 401, "{}: {:?}", p.what, p.body);
        assert!(!p.is_stream());
        for path in STREAM_PATHS {
            let p = d.probe(Method::GET, path, &headers, "").await;
            assert!(
                !p.is_stream() && !p.body.contains("alice secret"),
                "{}: answered {} {:?} {:?}",
                p.what,
                p.status,
                p.content_type(),
                p.body
            );
        }
    }
}

/// Bob, logged in, gets his own channels whatever he puts in the URL: never alice's history,
/// never her live events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_chooses_the_channels_not_the_query() {
    let d = Deployment::start().await;
    d.publish("user.alice", "alice secret").await;
    let headers = [("accept", "text/event-stream"), ("last-event-id", "0"), BOB];
    for path in STREAM_PATHS {
        let p = d.probe(Method::GET, path, &headers, "").await;
        assert!(
            !p.body.contains("alice secret"),
            "{}: answered {} {:?}",
            p.what,
            p.status,
            p.body
        );
        // The application's URL is a stream (bob's); no other URL is one.
        if !path.starts_with("/app-events?") {
            assert!(!p.is_stream(), "{}: a stream", p.what);
        }
    }
    let mut s = d
        .stream(
            "/app-events?user.alice&lastEventId=0",
            &[BOB, ("last-event-id", "0")],
        )
        .await;
    assert_eq!(s.status, 200);
    d.publish("user.alice", "alice live").await;
    let mine = d.publish("user.bob", "bob's").await;
    let e = next_message(&mut s).await;
    assert_eq!((e.id, e.data), (Some(mine.to_string()), "bob's".to_owned()));
}

/// Nothing publishes through nginx: not the public POST /publish, not under /events/, not the
/// internal location, with or without a session or a bearer token. The next event from the
/// internal listener takes the very next id, and it is the first a subscriber sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_publishes_through_nginx() {
    let d = Deployment::start().await;
    let warm = d.publish("warm", "").await;
    let mut s = d.stream("/app-events", &[ALICE]).await;
    assert_eq!(s.status, 200);
    let paths = [
        "/publish/user.alice",
        "/publish/",
        "/events/publish/user.alice",
        "/events/publish/",
        "/events/publish/global",
        "/redisse/publish/user.alice",
        "/%72edisse/publish/user.alice",
        "//publish/user.alice",
        "/%70ublish/user.alice",
        "/app-events?user.alice",
        "/events?user.alice",
        "/events/publish/user.alice?user.alice",
    ];
    let credentials: [&[(&str, &str)]; 3] =
        [&[], &[ALICE], &[("authorization", "Bearer anything")]];
    for method in [Method::POST, Method::PUT] {
        for path in paths {
            for creds in credentials {
                let p = d.probe(method.clone(), path, creds, "forged").await;
                // POST /app-events with a session is redirected as a GET: alice's stream, not a
                // publish.
                assert!(
                    (p.status != 200 || p.is_stream()) && !p.body.contains("\"id\""),
                    "{}: answered {} {:?}",
                    p.what,
                    p.status,
                    p.body
                );
            }
        }
    }
    let real = d.publish("user.alice", "real").await;
    assert_eq!(real, warm + 1, "something was published through nginx");
    let e = next_message(&mut s).await;
    assert_eq!((e.id, e.data), (Some(real.to_string()), "real".to_owned()));
}

/// /metrics, /health, /livez and the JSON stats are the internal listener's: through nginx
/// no path gives them, with any Accept, with or without a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_stats_stay_on_the_internal_listener() {
    let d = Deployment::start().await;
    d.publish("global", "so the counters are not empty").await;
    let paths = [
        "/metrics",
        "/events/metrics",
        "/redisse/metrics",
        "/health",
        "/events/health",
        "/livez",
        "/events/livez",
        "/",
        "/events/",
        "/events",
        "/app-events",
        "/app-events?global",
    ];
    let accepts = [
        "text/plain",
        "application/json",
        "*/*",
        "application/openmetrics-text",
    ];
    for path in paths {
        for accept in accepts {
            for cookie in [None, Some(ALICE)] {
                let mut headers = vec![("accept", accept)];
                headers.extend(cookie);
                let p = d.probe(Method::GET, path, &headers, "").await;
                p.assert_not_a_redisse_page();
            }
        }
    }
    // And the internal listener does serve them (the test is not vacuous).
    let metrics = client()
        .get(d.redisse.internal_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("# TYPE"), "{metrics}");
}

/// The internal location answers only X-Accel-Redirect: a client asking for it gets nginx's
/// 404, however it spells the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_location_is_not_reachable_by_url() {
    let d = Deployment::start().await;
    for path in [
        "/redisse/?user.alice",
        "/redisse/",
        "/redisse/health",
        "/%72edisse/?global",
        "//redisse/?global",
        "/redisse/publish/user.alice",
    ] {
        for method in [Method::GET, Method::POST] {
            for headers in [
                &[("accept", "text/event-stream")][..],
                &[("accept", "text/event-stream"), ALICE][..],
            ] {
                d.probe(method.clone(), path, headers, "")
                    .await
                    .assert_nginx_404();
            }
        }
    }
}

/// The example never sends anything to the internal listener's default address
/// (127.0.0.1:8081), and every location that proxies to redisse is internal.
#[test]
fn the_example_never_proxies_to_the_internal_listener() {
    for name in ["nginx.conf", "redisse_stream.conf"] {
        let conf = live(&example(name));
        assert!(
            !conf.contains(":8081") && !conf.contains("internal.sock"),
            "examples/{name} names redisse's internal listener outside a comment:\n{conf}"
        );
    }
    let conf = live(&example("nginx.conf"));
    let mut location = String::new();
    let mut internal = false;
    for line in conf.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("location ") {
            location = rest.to_owned();
            internal = false;
        }
        if line == "internal;" {
            internal = true;
        }
        if line.starts_with("proxy_pass http://redisse") {
            assert!(
                internal,
                "location {location} proxies to redisse and is not internal"
            );
        }
    }
}

/// A JWT for the redisse secret used below.
fn jwt(secret: &str, subscribe: &[&str], publish: &[&str]) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = serde_json::json!({
        "redisse": { "subscribe": subscribe, "publish": publish },
        "exp": exp,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign a JWT")
}

/// The example's commented JWT variant, uncommented, in front of redisse with --jwt-secret:
/// a token's channels stream through /events/, a query alone does not, a publishing token
/// cannot publish there, and the internal pages stay inside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwt_variant_streams_with_a_token_and_refuses_the_rest() {
    const SECRET: &str = "a test secret that is long enough";
    let conf = with_jwt_variant(&example("nginx.conf"));
    let d = Deployment::with(&conf, &["--jwt-secret", SECRET, "--jwt-algorithm", "HS256"]).await;
    let warm = d.publish("warm", "").await;
    let alice = format!(
        "Bearer {}",
        jwt(SECRET, &["user.alice", "global"], &["user.alice"])
    );
    let auth = ("authorization", alice.as_str());
    let mut s = d.stream("/events/?user.alice", &[auth]).await;
    assert_eq!(s.status, 200, "{}", d.nginx.error_log());

    let stream = [("accept", "text/event-stream")];
    for path in ["/events/?user.alice", "/events/?user.alice&lastEventId=0"] {
        let p = d.probe(Method::GET, path, &stream, "").await;
        assert!(!p.is_stream(), "{}: a stream without a token", p.what);
    }
    let p = d
        .probe(Method::GET, "/events/?user.bob", &[stream[0], auth], "")
        .await;
    assert!(
        !p.is_stream(),
        "{}: bob's channel with alice's token",
        p.what
    );
    for path in ["/events/publish/user.alice", "/events/publish/"] {
        for method in [Method::POST, Method::PUT] {
            let p = d.probe(method, path, &[auth], "forged").await;
            assert_eq!(p.status, 403, "{}: {:?}", p.what, p.body);
        }
    }
    for path in [
        "/events/metrics",
        "/events/health",
        "/events/livez",
        "/events/",
    ] {
        for accept in ["text/plain", "application/json", "*/*"] {
            for headers in [&[("accept", accept)][..], &[("accept", accept), auth][..]] {
                d.probe(Method::GET, path, headers, "")
                    .await
                    .assert_not_a_redisse_page();
            }
        }
    }
    let real = d.publish("user.alice", "real").await;
    assert_eq!(real, warm + 1, "something was published through nginx");
    let e = next_message(&mut s).await;
    assert_eq!((e.id, e.data), (Some(real.to_string()), "real".to_owned()));
}

/// docs/operations.md, "nginx in front of them": the example's upstream listing three redisse
/// processes on one Redis, with `least_conn`. Six streams through nginx are spread two to a
/// process; one process is killed (SIGKILL) while events are published, and its two clients
/// come back through nginx with `Last-Event-ID`: nginx tries the dead one, is refused, and
/// sends them to the others (never a 502), and every stream gets every event once, in order,
/// without `missedevents`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_through_nginx_spread_over_three_processes_and_survive_one_killed() {
    let redis = RedisServer::start();
    let url = redis.url();
    let processes: Vec<Redisse> = (0..3).map(|_| Redisse::start(&["--redis", &url])).collect();
    let upstream = format!(
        "upstream redisse {{ least_conn; server 127.0.0.1:8082; server 127.0.0.1:{}; \
         server 127.0.0.1:{}; keepalive 16; }}",
        processes[1].port, processes[2].port
    );
    let conf = replace_once(
        &example("nginx.conf"),
        "upstream redisse { server 127.0.0.1:8082; keepalive 16; }",
        &upstream,
    );
    let app = start_app().await;
    let nginx = Nginx::start(&conf, app, processes[0].port);
    processes[0].publish("t.warm", "warmup".into()).await;
    let open = |position: Option<String>| {
        let url = nginx.url("/app-events");
        async move {
            let mut headers = vec![("accept", "text/event-stream"), ALICE];
            let position = position.unwrap_or_default();
            if !position.is_empty() {
                headers.push(("last-event-id", &position));
            }
            let s = SseStream::open(&url, &headers).await;
            assert_eq!(s.status, 200, "a stream through nginx");
            s
        }
    };
    let mut streams = Vec::new();
    for _ in 0..6 {
        let mut s = open(None).await;
        assert_eq!(s.next().await.event, "lastEventId");
        streams.push(s);
    }
    for (n, p) in processes.iter().enumerate() {
        assert_eq!(p.metric("redisse_streams_open").await, 2, "process {n}");
    }
    // Each stream's event ids, across its connections.
    let mut got: Vec<Vec<u64>> = vec![Vec::new(); 6];
    let mut want = Vec::new();
    for i in 0..3 {
        want.push(
            processes[1]
                .publish_event("global", None, &format!("before {i}"))
                .await,
        );
    }
    for (s, got) in streams.iter_mut().zip(&mut got) {
        for _ in 0..3 {
            got.push(id_of(&next_message(s).await));
        }
    }
    processes[0].signal("-KILL");
    for i in 0..3 {
        want.push(
            processes[2]
                .publish_event("global", None, &format!("while {i}"))
                .await,
        );
    }
    let mut moved = 0;
    for (s, got) in streams.iter_mut().zip(&mut got) {
        // A stream of the killed process ends; the others get the new events.
        while got.len() < 6 {
            match s.next_within(PATIENCE).await {
                Next::Event(e) if e.event == "lastEventId" => {}
                Next::Event(e) => {
                    assert_ne!(e.event, "missedevents", "nothing was lost");
                    got.push(id_of(&e));
                }
                Next::Closed => {
                    moved += 1;
                    let position = got.last().map(u64::to_string);
                    *s = open(position).await;
                }
                Next::Timeout => {
                    panic!("no event and no end: {:?}", String::from_utf8_lossy(&s.raw))
                }
            }
        }
    }
    assert_eq!(
        moved, 2,
        "the killed process's streams came back through nginx"
    );
    // least_conn sent the first of them to the dead process (no connection left), which
    // refused it: nginx took the next server and left the dead one out.
    let log = nginx.error_log();
    assert!(
        log.contains("Connection refused") && log.contains("upstream server temporarily disabled"),
        "nginx's log:\n{log}"
    );
    let left: u64 = processes[1].metric("redisse_streams_open").await
        + processes[2].metric("redisse_streams_open").await;
    assert_eq!(left, 6, "every stream is on the two processes left");
    for i in 0..3 {
        want.push(
            processes[1]
                .publish_event("global", None, &format!("after {i}"))
                .await,
        );
    }
    for (n, (s, got)) in streams.iter_mut().zip(&mut got).enumerate() {
        while got.len() < want.len() {
            let e = next_message(s).await;
            assert_ne!(e.event, "missedevents", "stream {n}: nothing was lost");
            got.push(id_of(&e));
        }
        assert_eq!(*got, want, "stream {n}: every event once, in order");
        s.expect_silence(Duration::from_millis(200)).await;
    }
}
