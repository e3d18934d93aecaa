//! CORS in a real browser: a cross-origin `EventSource` in headless Chromium against the
//! `redisse` binary started with `--cors-origin`. The page comes from a page server in the test
//! at `http://localhost:PAGEPORT/`, redisse listens on `127.0.0.1`, so every request the page
//! makes to redisse is cross-origin and goes through the browser's CORS checks.
//!
//! Each case asserts what the page received, so each fails when the server's CORS answer is
//! missing or wrong. A test's pages run at once in one browser (a browser context each), each
//! test in a browser of its own. The browser is driven by `tests/browser/eventsource.mjs` (see
//! tests/browser/README.md); without Node, its `node_modules` or Chromium the tests fail and say
//! what to install.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::binary::Redisse;
use crate::support::browser::{BrowserRun, CLOSED, Job, Message, OPEN, Outcome, PageServer, Start};

/// How long a run that must not receive anything is watched.
const REFUSED_WATCH: Duration = Duration::from_secs(6);

/// Publishes one event through the binary's internal listener; its id, as the page sees it.
async fn publish(server: &Redisse, channel: &str, event_type: Option<&str>, data: &str) -> String {
    server
        .publish_event(channel, event_type, data)
        .await
        .to_string()
}

fn message(server: &Redisse, event_type: &str, data: &str, id: &str) -> Message {
    Message {
        event_type: event_type.into(),
        data: data.into(),
        last_event_id: id.into(),
        origin: format!("http://127.0.0.1:{}", server.port),
    }
}

/// Waits for job `job`'s `EventSource` to open, or fails with what the page saw.
async fn assert_opens(mut run: BrowserRun, job: usize, what: &str) -> BrowserRun {
    match run.started(job).await {
        Start::Opened => run,
        other => {
            let out = run.outcomes().await.swap_remove(job);
            panic!("{what}: the EventSource did not open ({other:?}); the page saw {out:#?}")
        }
    }
}

/// Waits for job `job` to fail before it opens.
async fn assert_fails_to_open(run: &mut BrowserRun, job: usize, what: &str) {
    let start = run.started(job).await;
    assert_ne!(start, Start::Opened, "{what}: the EventSource opened");
}

/// A run that must never receive an event: it ends CLOSED with an error, without opening.
fn assert_refused(out: &Outcome, what: &str) {
    assert!(
        !out.opened && out.messages.is_empty(),
        "{what}: the EventSource must not open nor receive events; the page saw {out:#?}"
    );
    assert_eq!(
        out.ready_state, CLOSED,
        "{what}: the EventSource must end CLOSED (a CORS failure does not reconnect): {out:#?}"
    );
    assert!(
        !out.timed_out,
        "{what}: the EventSource must fail, not sit waiting: {out:#?}"
    );
    assert!(
        !out.errors.is_empty() && !out.console_errors.is_empty(),
        "{what}: the page must see an error event and a console error: {out:#?}"
    );
}

/// The run's results as an array, one per job.
async fn outcomes<const N: usize>(run: BrowserRun) -> [Outcome; N] {
    let outs = run.outcomes().await;
    outs.try_into()
        .unwrap_or_else(|outs: Vec<Outcome>| panic!("{N} results expected: {outs:#?}"))
}

/// (a) A listed origin with `withCredentials: true`: the stream opens and the events published
/// after it opened arrive in order, with their ids and types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_origin_with_credentials_receives_events() {
    let pages = PageServer::start().await;
    let server = Redisse::start(&["--cors-origin", &pages.origin("localhost")]);
    let job = Job::new(pages.url("localhost"), server.url("/?news&alerts"))
        .with_credentials()
        .types(&["message", "alert"])
        .events(3);
    let run = assert_opens(BrowserRun::start(&[job]), 0, "listed origin").await;

    let first = publish(&server, "news", None, "one").await;
    let second = publish(&server, "alerts", Some("alert"), "two").await;
    let third = publish(&server, "news", None, "three").await;
    let [out] = outcomes(run).await;

    assert_eq!(
        out.messages,
        vec![
            message(&server, "message", "one", &first),
            message(&server, "alert", "two", &second),
            message(&server, "message", "three", &third),
        ],
        "the page saw {out:#?}"
    );
    assert_eq!(out.ready_state, OPEN, "{out:#?}");
    assert!(
        out.errors.is_empty() && out.console_errors.is_empty(),
        "no error expected: {out:#?}"
    );
}

/// (b) An origin that is not listed gets nothing, while the listed one, on the same server at
/// the same time, gets the events: the refusal is the origin's, not the server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_origin_receives_nothing() {
    let unlisted = PageServer::start().await;
    let listed = PageServer::start().await;
    let server = Redisse::start(&["--cors-origin", &listed.origin("localhost")]);

    let run = BrowserRun::start(&[
        Job::new(listed.url("localhost"), server.url("/?news"))
            .with_credentials()
            .events(2),
        // Without credentials: even a request a `*` would allow is refused to an unlisted
        // origin.
        Job::new(unlisted.url("localhost"), server.url("/?news")).timeout(REFUSED_WATCH),
    ]);
    let mut run = assert_opens(run, 0, "listed origin beside an unlisted one").await;
    assert_fails_to_open(&mut run, 1, "unlisted origin").await;

    let first = publish(&server, "news", None, "one").await;
    let second = publish(&server, "news", None, "two").await;
    let [allowed, refused] = outcomes(run).await;

    assert_eq!(
        allowed.messages,
        vec![
            message(&server, "message", "one", &first),
            message(&server, "message", "two", &second),
        ],
        "the listed origin saw {allowed:#?}"
    );
    assert_refused(&refused, "unlisted origin");
}

/// (c) `--cors-origin '*'`: every origin's plain `EventSource` gets the events; one with
/// `withCredentials: true` fails, since `*` is never reflected with credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_origin_serves_without_credentials_only() {
    let pages = PageServer::start().await;
    let server = Redisse::start(&["--cors-origin", "*"]);

    let run = BrowserRun::start(&[
        Job::new(pages.url("localhost"), server.url("/?news")).events(2),
        Job::new(pages.url("localhost"), server.url("/?news"))
            .with_credentials()
            .timeout(REFUSED_WATCH),
    ]);
    let mut run = assert_opens(run, 0, "'*' without credentials").await;
    assert_fails_to_open(&mut run, 1, "'*' with credentials").await;

    let first = publish(&server, "news", None, "one").await;
    let second = publish(&server, "news", None, "two").await;
    let [plain, credentialed] = outcomes(run).await;

    assert_eq!(
        plain.messages,
        vec![
            message(&server, "message", "one", &first),
            message(&server, "message", "two", &second),
        ],
        "'*' without credentials saw {plain:#?}"
    );
    assert_refused(&credentialed, "'*' with credentials");
    assert!(
        credentialed.blocked_by_cors(),
        "the credentialed request must be blocked by the browser's CORS check: {credentialed:#?}"
    );
}

/// (e) A preflight, from the browser: an `EventSource` never sends one, so the page `fetch()`es
/// the stream with `Last-Event-ID` and `Cache-Control` (headers that are not CORS-safelisted),
/// with credentials. From the listed origin the preflight passes and the stream resumes after
/// the given id (the history replayed); from an unlisted origin the preflight is refused and
/// nothing arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflighted_request_from_listed_origin_only() {
    let listed = PageServer::start().await;
    let unlisted = PageServer::start().await;
    let server = Redisse::start(&["--cors-origin", &listed.origin("localhost")]);
    let first = publish(&server, "news", None, "one").await;
    let second = publish(&server, "news", None, "two").await;
    let third = publish(&server, "news", Some("message"), "three").await;

    let headers = [
        ("Last-Event-ID", first.as_str()),
        ("Cache-Control", "no-cache"),
    ];
    let run = BrowserRun::start(&[
        Job::new(listed.url("localhost"), server.url("/?news"))
            .with_credentials()
            .fetch_with_headers(&headers)
            .events(2),
        Job::new(unlisted.url("localhost"), server.url("/?news"))
            .with_credentials()
            .fetch_with_headers(&headers)
            .timeout(REFUSED_WATCH),
    ]);
    let [allowed, refused] = outcomes(run).await;

    assert!(allowed.opened, "the preflighted fetch failed: {allowed:#?}");
    assert_eq!(
        allowed.messages,
        vec![
            message(&server, "message", "two", &second),
            message(&server, "message", "three", &third),
        ],
        "the preflighted fetch saw {allowed:#?}"
    );
    assert_refused(&refused, "preflight from an unlisted origin");
    assert!(
        refused.blocked_by_cors(),
        "the unlisted origin's request must be blocked by the browser's CORS check: {refused:#?}"
    );
}

const JWT_SECRET: &str = "browser-test-secret";

fn token(subscribe: &[&str]) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = serde_json::json!({ "redisse": { "subscribe": subscribe }, "exp": exp });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("sign a token")
}

/// (d) JWT mode with the token in the `redisseAuthorization` cookie, sent by a credentialed
/// cross-origin `EventSource`: the events of a channel the token allows arrive; without the
/// cookie the same stream is refused. The same token in `Authorization: Bearer`, which a page
/// can only send with `fetch()` (preflighted), works from the other site too.
///
/// The cookie's page is on `http://127.0.0.1:PAGEPORT`: another origin than redisse (another
/// port), but the same site. From `localhost`, another site, Chromium does not send a cookie of
/// `127.0.0.1` at all (third-party cookies are blocked in a default profile: the DevTools
/// protocol gives the reason `UserPreferences`, for `SameSite=None; Secure` too), whatever the
/// server answers; an application and its redisse under one site (app.example.com and
/// sse.example.com) is the layout cookies work in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_cookie_cross_origin_with_credentials() {
    let pages = PageServer::start().await;
    let server = Redisse::start(&[
        "--jwt-secret",
        JWT_SECRET,
        "--jwt-algorithm",
        "HS256",
        "--cors-origin",
        &pages.origin("127.0.0.1"),
        "--cors-origin",
        &pages.origin("localhost"),
    ]);
    let stream = server.url("/?user.42.feed");
    let token = token(&["user.42.*", "global"]);
    let bearer = format!("Bearer {token}");
    let run = BrowserRun::start(&[
        Job::new(pages.url("127.0.0.1"), stream.clone())
            .with_credentials()
            .cookie("redisseAuthorization", &token)
            .events(2),
        // The token in `Authorization` (a preflighted header), from `localhost`: another site,
        // where no cookie would go, and a header needs none.
        Job::new(pages.url("localhost"), stream.clone())
            .fetch_with_headers(&[("Authorization", &bearer)])
            .events(2),
        Job::new(pages.url("127.0.0.1"), stream)
            .with_credentials()
            .timeout(REFUSED_WATCH),
    ]);
    let run = assert_opens(run, 0, "JWT cookie").await;
    let mut run = assert_opens(run, 1, "JWT in Authorization").await;
    assert_fails_to_open(&mut run, 2, "JWT mode without a token").await;

    let first = publish(&server, "user.42.feed", None, "for 42").await;
    let second = publish(&server, "user.42.feed", Some("message"), "again").await;
    let [with_cookie, with_header, without_token] = outcomes(run).await;

    assert_eq!(
        with_cookie.messages,
        vec![
            message(&server, "message", "for 42", &first),
            message(&server, "message", "again", &second),
        ],
        "the page with the cookie saw {with_cookie:#?}"
    );
    assert_eq!(
        with_header.messages, with_cookie.messages,
        "the token in Authorization (preflighted) saw {with_header:#?}"
    );
    assert_refused(&without_token, "JWT mode without a token");
}
