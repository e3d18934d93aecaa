//! Subscriber authorization by the auth callback (docs/access-control.md), through the real binary,
//! with a small axum application in the test as the callback: what is forwarded, what each answer
//! becomes, the timeout, and the cache.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use crate::auth_support::{live, refused, wait_connected};
use crate::support::SseStream;
use crate::support::binary::Redisse;

/// What the application answers.
#[derive(Clone)]
enum Mode {
    /// 200 `{"channels": [...]}`.
    Allow(Vec<&'static str>),
    /// This status and body.
    Status(u16, &'static str),
    /// Sleeps, then allows `ch`.
    Sleep(Duration),
    /// 302 to its own `/allow`, which would allow every channel asked.
    Redirect,
}

/// One request the application received.
#[derive(Clone, Debug)]
struct Seen {
    headers: HeaderMap,
    body: Value,
}

#[derive(Clone)]
struct App {
    url: String,
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Requests to `/allow`, the redirect's target.
    redirected: Arc<Mutex<usize>>,
}

impl App {
    async fn start(mode: Mode) -> App {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = App {
            url: format!("http://{addr}/auth"),
            mode: Arc::new(Mutex::new(mode)),
            seen: Arc::default(),
            redirected: Arc::default(),
        };
        let router = Router::new()
            .route("/auth", post(auth))
            .route("/allow", post(allow))
            .with_state(app.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        app
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a callback request")
    }
}

async fn auth(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(format!("not JSON: {}", String::from_utf8_lossy(&body))));
    app.seen.lock().unwrap().push(Seen { headers, body });
    let mode = app.mode.lock().unwrap().clone();
    match mode {
        Mode::Allow(channels) => axum::Json(json!({ "channels": channels })).into_response(),
        Mode::Status(status, body) => {
            (StatusCode::from_u16(status).unwrap(), body.to_owned()).into_response()
        }
        Mode::Sleep(d) => {
            tokio::time::sleep(d).await;
            axum::Json(json!({"channels": ["ch"]})).into_response()
        }
        Mode::Redirect => (StatusCode::FOUND, [(header::LOCATION, "/allow")]).into_response(),
    }
}

async fn allow(State(app): State<App>, body: Bytes) -> Response {
    *app.redirected.lock().unwrap() += 1;
    let asked: Value = serde_json::from_slice(&body).unwrap_or_default();
    axum::Json(json!({ "channels": asked["channels"] })).into_response()
}

fn server(app: &App, extra: &[&str]) -> Redisse {
    let mut args = vec!["--auth-callback", app.url.as_str()];
    args.extend_from_slice(extra);
    Redisse::start(&args)
}

fn header<'a>(seen: &'a Seen, name: &str) -> Vec<&'a str> {
    seen.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_answer_gives_the_streams_channels() {
    let app = App::start(Mode::Allow(vec!["a", "c"])).await;
    let r = server(&app, &[]);
    let mut s = live(&r, "/?a&b", &[]).await;
    for channel in ["b", "a", "c", "d"] {
        r.publish(channel, channel.into()).await;
    }
    assert_eq!(s.next().await.data, "a");
    assert_eq!(s.next().await.data, "c");
    s.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callback_gets_the_requests_credentials_peer_and_channels() {
    let app = App::start(Mode::Allow(vec!["a"])).await;
    let r = server(&app, &[]);
    let s = SseStream::open(
        &r.url("/?a&b"),
        &[
            ("cookie", "sid=42; theme=dark"),
            ("authorization", "Bearer abc"),
            ("origin", "http://app.example"),
            ("user-agent", "callback-test/1.0"),
            ("x-forwarded-for", "1.2.3.4"),
            ("last-event-id", "7"),
        ],
    )
    .await;
    assert_eq!(s.status, 200);
    let seen = app.last();
    assert_eq!(header(&seen, "cookie"), ["sid=42; theme=dark"]);
    assert_eq!(header(&seen, "authorization"), ["Bearer abc"]);
    assert_eq!(header(&seen, "origin"), ["http://app.example"]);
    assert_eq!(header(&seen, "user-agent"), ["callback-test/1.0"]);
    assert_eq!(header(&seen, "x-forwarded-for"), ["1.2.3.4, 127.0.0.1"]);
    assert_eq!(
        seen.body,
        json!({"channels": ["a", "b"], "last_event_id": "7"})
    );
    drop(s);
    wait_connected(&r, 0).await;

    // Nothing requested, nothing to forward but the peer.
    let s = SseStream::open(&r.url("/"), &[]).await;
    assert_eq!(s.status, 200);
    let seen = app.last();
    assert_eq!(seen.body, json!({"channels": [], "last_event_id": null}));
    assert_eq!(header(&seen, "x-forwarded-for"), ["127.0.0.1"]);
    for name in ["cookie", "authorization", "origin"] {
        assert!(header(&seen, name).is_empty(), "{name} forwarded: {seen:?}");
    }
    drop(s);
    wait_connected(&r, 0).await;

    // The last event id of the query (an EventSource polyfill's) when there is no header.
    let s = SseStream::open(&r.url("/?a&lastEventId=9"), &[]).await;
    assert_eq!(s.status, 200);
    assert_eq!(
        app.last().body,
        json!({"channels": ["a"], "last_event_id": "9"})
    );
    assert_eq!(app.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_403_or_404_is_passed_to_the_client_with_its_body() {
    let app = App::start(Mode::Status(401, "please log in")).await;
    let r = server(&app, &[]);
    for (status, body) in [
        (401, "please log in"),
        (403, "not your channel"),
        (404, "no such user"),
    ] {
        app.set(Mode::Status(status, body));
        let got = refused(&r, "/?a", &[], status).await;
        assert_eq!(got.trim_end(), body, "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_within_the_timeout_is_504() {
    let app = App::start(Mode::Sleep(Duration::from_secs(2))).await;
    let r = server(&app, &["--auth-callback-timeout", "0.3"]);
    let start = Instant::now();
    refused(&r, "/?ch", &[], 504).await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "answered after {took:?}"
    );
    // A quick answer within the timeout is served.
    app.set(Mode::Sleep(Duration::from_millis(10)));
    let s = SseStream::open(&r.url("/?ch"), &[]).await;
    assert_eq!(s.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_other_answer_is_502() {
    let app = App::start(Mode::Status(500, "oops")).await;
    let r = server(&app, &[]);
    for (case, mode) in [
        ("500", Mode::Status(500, "oops")),
        ("503", Mode::Status(503, "later")),
        ("400", Mode::Status(400, "bad")),
        ("200 not JSON", Mode::Status(200, "yes, fine")),
        ("200 other JSON", Mode::Status(200, r#"{"chans": ["ch"]}"#)),
        (
            "200 channels not a list",
            Mode::Status(200, r#"{"channels": "ch"}"#),
        ),
    ] {
        app.set(mode);
        let body = refused(&r, "/?ch", &[], 502).await;
        // The application's own text is not passed on for a 502.
        assert!(
            !body.contains("oops") && !body.contains("later"),
            "{case}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed_and_is_502() {
    let app = App::start(Mode::Redirect).await;
    let r = server(&app, &[]);
    refused(&r, "/?ch", &[], 502).await;
    assert_eq!(app.calls(), 1);
    assert_eq!(
        *app.redirected.lock().unwrap(),
        0,
        "the redirect was followed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_502() {
    // A port nobody listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/auth");
    let r = Redisse::start(&["--auth-callback", &url]);
    refused(&r, "/?ch", &[], 502).await;
    refused(&r, "/", &[], 502).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_cached_for_identical_requests_only() {
    let app = App::start(Mode::Allow(vec!["ch"])).await;
    let r = server(&app, &["--auth-callback-cache", "5s"]);
    let open = |cookie: &'static str| {
        let url = r.url("/?ch");
        async move {
            let s = SseStream::open(&url, &[("cookie", cookie)]).await;
            assert_eq!(s.status, 200);
        }
    };
    open("sid=1").await;
    open("sid=1").await;
    assert_eq!(
        app.calls(),
        1,
        "the second identical request was not cached"
    );
    open("sid=2").await;
    assert_eq!(app.calls(), 2, "another cookie is another question");
    // The cached answer is the answer: a changed application is not asked again.
    app.set(Mode::Status(403, "changed"));
    open("sid=1").await;
    assert_eq!(app.calls(), 2);
    // Another requested channel is another question too. (The streams above were dropped:
    // wait until the server saw them go, since `refused` checks that none is open.)
    wait_connected(&r, 0).await;
    refused(&r, "/?other", &[("cookie", "sid=1")], 403).await;
    assert_eq!(app.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_cache_option_every_request_asks() {
    let app = App::start(Mode::Allow(vec!["ch"])).await;
    let r = server(&app, &[]);
    for n in 1..=3 {
        let s = SseStream::open(&r.url("/?ch"), &[("cookie", "sid=1")]).await;
        assert_eq!(s.status, 200);
        assert_eq!(app.calls(), n);
    }
}

#[tokio::test]
async fn a_callback_url_that_cannot_work_is_a_startup_error() {
    for (url, says) in [
        ("ftp://auth.example/check", "http://"),
        ("http://auth example/check", "not a URL"),
    ] {
        let err = crate::auth_support::fails_to_start(&["--auth-callback", url]).await;
        assert!(
            err.contains("auth callback") && err.contains(says),
            "{url}: {err}"
        );
    }
}
