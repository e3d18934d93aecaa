//! The axum-native way to open a stream: a handler that takes [`SseRequest`] beside its own
//! extractors (`State<Redisse>`, `Extension<User>` from the application's middleware) and
//! answers with [`Redisse::stream`], served through `redisse::server::serve`.
//!
//! The extractor refuses what the endpoint refuses before its channel function (406, a bad
//! query's 400); `Redisse::stream` refuses what the endpoint refuses after it (no channel: 404,
//! past a limit: 400) and counts it; `Last-Event-ID` resumes through the handler.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use http::StatusCode;
use redisse::metrics::Refusal;
use redisse::{LastEventId, QueryChannels, Redisse, SseRequest};

use crate::on_both_brokers;
use crate::support::sse::client;
use crate::support::{Backend, PATIENCE, SseEvent, SseStream, TestServer};

on_both_brokers!(
    the_handler_streams_the_channels_it_chose_for_its_user,
    last_event_id_resumes_through_the_handler,
);

/// Channels allowed per connection in these tests (so that `/many` passes it).
const MAX_CHANNELS: usize = 3;

/// What the application's middleware puts in the request.
#[derive(Clone, Debug)]
struct User {
    name: String,
}

/// The application's authentication: `x-user` names the user, none is a 401.
async fn authenticate(mut req: Request, next: Next) -> Response {
    let Some(name) = req
        .headers()
        .get("x-user")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return (StatusCode::UNAUTHORIZED, "who are you?\n").into_response();
    };
    req.extensions_mut().insert(User { name });
    next.run(req).await
}

/// The channels the handler chooses: `global` and the user's own.
async fn events(
    State(redisse): State<Redisse>,
    Extension(user): Extension<User>,
    request: SseRequest,
) -> Response {
    redisse
        .stream(
            request,
            ["global".to_owned(), format!("user.{}", user.name)],
        )
        .into_response()
}

/// No channel at all, or only names that are dropped (empty, repeated).
async fn nothing(State(redisse): State<Redisse>, request: SseRequest) -> Response {
    let channels = if request.query().channels.is_empty() {
        vec![]
    } else {
        vec![String::new(), String::new()]
    };
    redisse.stream(request, channels).into_response()
}

/// One channel more than allowed (repeated names count once: `a` twice is one).
async fn many(State(redisse): State<Redisse>, request: SseRequest) -> Response {
    redisse
        .stream(request, ["a", "a", "b", "c", "d"])
        .into_response()
}

/// Where the client says it is, as the extractor read it.
async fn position(request: SseRequest) -> String {
    let last = request.last_event_id();
    if let LastEventId::At(id) = last {
        format!("at {id}")
    } else if last == LastEventId::None {
        "none".to_owned()
    } else {
        assert_eq!(last, LastEventId::Unknown);
        "unknown".to_owned()
    }
}

fn app(redisse: &Redisse) -> Router {
    Router::new()
        .route("/events", get(events))
        .route("/nothing", get(nothing))
        .route("/many", get(many))
        .route("/position", get(position))
        // The endpoint, whose answers the extractor's must match.
        .route_service("/endpoint", redisse.endpoint(QueryChannels))
        .layer(middleware::from_fn(authenticate))
        .with_state(redisse.clone())
}

async fn start(backend: &Backend) -> TestServer {
    let mut config = backend.config();
    config.max_channels = MAX_CHANNELS;
    let redisse = Redisse::new(config).expect("instance");
    let router = app(&redisse);
    TestServer::start_router(redisse, router).await
}

/// A stream of `user` on `path`, live: its first event is `lastEventId`.
async fn live(server: &TestServer, path: &str, user: &str) -> SseStream {
    server.publish("t.warm", "warmup", "").await;
    let mut s = server.stream(path, &[("x-user", user)]).await;
    assert_eq!(s.status, 200, "{path} as {user}");
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    let first = s.next().await;
    assert_eq!(first.event, "lastEventId", "{first:?}");
    s
}

/// A GET as `user` with the given extra headers: status, content type, body. Fails the test
/// when the answer does not end in time (a stream where a refusal was expected).
async fn get_as(
    server: &TestServer,
    path: &str,
    user: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut req = client().get(server.url(path)).header("x-user", user);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let answer = async {
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        (status, content_type, res.text().await.expect("body"))
    };
    tokio::time::timeout(PATIENCE, answer)
        .await
        .unwrap_or_else(|_| panic!("GET {path} {headers:?}: no complete answer in time"))
}

const SSE: (&str, &str) = ("accept", "text/event-stream");

fn datas(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|e| e.data.as_str()).collect()
}

async fn the_handler_streams_the_channels_it_chose_for_its_user(backend: Backend) {
    let server = start(&backend).await;
    // The query names other channels: the handler does not look at them.
    let mut alice = live(&server, "/events?user.bob", "alice").await;
    let mut bob = live(&server, "/events", "bob").await;
    server.wait_connections(2).await;
    server.publish("user.bob", "private", "for bob").await;
    server.publish("user.alice", "private", "for alice").await;
    server.publish("user.carol", "private", "for carol").await;
    server.publish("global", "news", "for all").await;
    let got = alice.take(2).await;
    assert_eq!(datas(&got), ["for alice", "for all"]);
    assert_eq!(
        (got[0].event.as_str(), got[1].event.as_str()),
        ("private", "news")
    );
    assert_eq!(datas(&bob.take(2).await), ["for bob", "for all"]);
    for s in [&mut alice, &mut bob] {
        s.expect_silence(Duration::from_millis(150)).await;
    }
    // Both streams listen to their two channels: three channels subscribed in all.
    assert_eq!(server.redisse.subscribed_channels(), 3);
    // The middleware ran before the extractor.
    let res = client()
        .get(server.url("/events"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.text().await.unwrap(), "who are you?\n");
    assert_eq!(server.redisse.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extractor_refuses_what_the_endpoint_refuses_before_the_channels() {
    let server = start(&Backend::memory()).await;
    // No `Accept: text/event-stream`: 406, with the endpoint's body.
    for accept in [None, Some("text/html"), Some("application/xml")] {
        let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
        let from_handler = get_as(&server, "/events", "alice", &headers).await;
        let from_endpoint = get_as(&server, "/endpoint?global", "alice", &headers).await;
        assert_eq!(from_handler.0, 406, "Accept {accept:?}: {from_handler:?}");
        assert_eq!(from_handler, from_endpoint, "Accept {accept:?}");
        assert!(
            from_handler.2.starts_with("406 Not Acceptable\n")
                && from_handler.2.contains("text/event-stream"),
            "{from_handler:?}"
        );
    }
    // A malformed query: 400, saying what is wrong, as the endpoint does.
    let from_handler = get_as(&server, "/events?a%zz", "alice", &[SSE]).await;
    let from_endpoint = get_as(&server, "/endpoint?a%zz", "alice", &[SSE]).await;
    assert_eq!(from_handler.0, 400, "{from_handler:?}");
    assert_eq!(from_handler.1, "text/plain");
    assert_eq!(
        from_handler.2,
        "400 Bad Request\ninvalid percent-encoding in the query string\n"
    );
    assert_eq!(from_handler, from_endpoint);
    // Not UTF-8 once decoded: 400 too.
    let (status, _, body) = get_as(&server, "/events?%FF", "alice", &[SSE]).await;
    assert_eq!(status, 400);
    assert!(body.contains("UTF-8"), "{body}");
    assert_eq!(server.redisse.connections(), 0);
    // The extractor refuses outside the instance (it has none), so only the endpoint's
    // refusals are counted: one 406 per `Accept` above, one bad query.
    let metrics = server.redisse.metrics();
    assert_eq!(metrics.refusals(Refusal::NotAcceptable), 3);
    assert_eq!(metrics.refusals(Refusal::BadQuery), 1);
    // With a good request the same handler streams.
    let mut s = live(&server, "/events", "alice").await;
    server.publish("user.alice", "m", "hello").await;
    assert_eq!(s.next().await.data, "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redisse_stream_refuses_no_channel_and_too_many_and_counts_them() {
    let server = start(&Backend::memory()).await;
    let metrics = server.redisse.metrics();
    assert_eq!(metrics.refusals(Refusal::NotAcceptable), 0);
    // An empty channel list: 404.
    let (status, content_type, body) = get_as(&server, "/nothing", "alice", &[SSE]).await;
    assert_eq!(
        (status, content_type.as_str(), body.as_str()),
        (404, "text/plain", "404 Not Found\n")
    );
    assert_eq!(metrics.refusals(Refusal::NotAcceptable), 1);
    // Only names that are dropped (empty ones) is no channel either.
    let (status, _, body) = get_as(&server, "/nothing?x", "alice", &[SSE]).await;
    assert_eq!((status, body.as_str()), (404, "404 Not Found\n"));
    assert_eq!(metrics.refusals(Refusal::NotAcceptable), 2);
    // Four distinct channels where three are allowed: 400, saying so.
    let (status, content_type, body) = get_as(&server, "/many", "alice", &[SSE]).await;
    assert_eq!(
        (status, content_type.as_str()),
        (400, "text/plain"),
        "{body}"
    );
    assert_eq!(
        body,
        format!("400 Bad Request\nmore than {MAX_CHANNELS} channels on one connection\n")
    );
    assert_eq!(metrics.refusals(Refusal::MaxChannels), 1);
    // The endpoint counts the same refusal the same way.
    let (status, _, _) = get_as(&server, "/endpoint?a&b&c&d", "alice", &[SSE]).await;
    assert_eq!(status, 400);
    assert_eq!(metrics.refusals(Refusal::MaxChannels), 2);
    assert_eq!(metrics.refusals(Refusal::NotAcceptable), 2);
    assert_eq!(server.redisse.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extractor_reads_the_clients_position() {
    let server = start(&Backend::memory()).await;
    // The path, the `Last-Event-ID` header if any, and what the handler read.
    let cases = [
        ("/position", None, "none"),
        ("/position", Some("42"), "at 42"),
        ("/position?lastEventId=7", None, "at 7"),
        // The header wins over the query parameter.
        ("/position?lastEventId=7", Some("9"), "at 9"),
        ("/position", Some(" 5 "), "at 5"),
        ("/position", Some("0"), "none"),
        ("/position", Some("abc"), "unknown"),
    ];
    for (path, header, expected) in cases {
        let mut headers = vec![SSE];
        headers.extend(header.map(|h| ("last-event-id", h)));
        let (status, _, body) = get_as(&server, path, "alice", &headers).await;
        assert_eq!(
            (status, body.as_str()),
            (200, expected),
            "{path} with Last-Event-ID {header:?}"
        );
    }
}

async fn last_event_id_resumes_through_the_handler(backend: Backend) {
    let server = start(&backend).await;
    let mut first = live(&server, "/events", "alice").await;
    let mut ids = Vec::new();
    for (channel, data) in [
        ("global", "one"),
        ("user.alice", "two"),
        ("global", "three"),
    ] {
        ids.push(server.publish(channel, "m", data).await);
    }
    // Another user's event between them is not replayed to alice.
    server.publish("user.bob", "m", "not for alice").await;
    let got = first.take(3).await;
    assert_eq!(datas(&got), ["one", "two", "three"]);
    let seen = got[0].id.clone().expect("an id");
    assert_eq!(seen, ids[0].to_string());
    drop(first);
    server.wait_connections(0).await;

    let mut again = server
        .stream("/events", &[("x-user", "alice"), ("last-event-id", &seen)])
        .await;
    assert_eq!(again.status, 200);
    let replayed = again.take(2).await;
    assert_eq!(datas(&replayed), ["two", "three"]);
    let replayed_ids: Vec<Option<String>> = replayed.iter().map(|e| e.id.clone()).collect();
    assert_eq!(
        replayed_ids,
        [Some(ids[1].to_string()), Some(ids[2].to_string())]
    );
    // Nothing else (no `lastEventId`, no `missedevents`), then live events.
    again.expect_silence(Duration::from_millis(150)).await;
    server.publish("user.alice", "m", "four").await;
    assert_eq!(again.next().await.data, "four");
    // The query parameter does the same when there is no header.
    let mut by_query = server
        .stream(
            &format!("/events?lastEventId={}", ids[1]),
            &[("x-user", "alice")],
        )
        .await;
    assert_eq!(datas(&by_query.take(2).await), ["three", "four"]);
}
