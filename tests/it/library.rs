//! The library API: an axum app with its own tower layers and channel function (README, "Embedding
//! in an axum application").

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;
use redisse::{Redisse, Rejection, StreamQuery};

use crate::on_both_brokers;
use crate::support::{Backend, SseStream, TestServer, sse::client};

on_both_brokers!(
    events_flow_to_the_channels_the_user_may_see_only,
    the_policy_can_narrow_to_what_the_query_asks_for,
);

/// What the application's authentication layer puts in the request.
#[derive(Clone, Debug)]
struct User {
    name: String,
    admin: bool,
}

/// The application's authentication: no `x-user` header, 401; else a `User` in the extensions.
async fn authenticate(mut req: Request, next: Next) -> Response {
    let Some(name) = req
        .headers()
        .get("x-user")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return (StatusCode::UNAUTHORIZED, "who are you?\n").into_response();
    };
    let admin = name == "admin";
    req.extensions_mut().insert(User { name, admin });
    next.run(req).await
}

/// The channels of a user: `global`, their own, and `admins` for admins.
fn user_channels(parts: &Parts) -> Result<Vec<String>, Rejection> {
    let user = parts
        .extensions
        .get::<User>()
        .ok_or_else(|| Rejection::unauthorized("the layer did not run"))?;
    let mut channels = vec!["global".to_owned(), format!("user.{}", user.name)];
    if user.admin {
        channels.push("admins".to_owned());
    }
    Ok(channels)
}

fn app(redisse: &Redisse) -> Router {
    let events = redisse.endpoint(|parts: &Parts| std::future::ready(user_channels(parts)));
    // An async policy that intersects what the query asks for with what the user may see.
    let narrowed = redisse.endpoint(|parts: &Parts| {
        let allowed = user_channels(parts);
        let asked: Vec<String> = parts
            .extensions
            .get::<StreamQuery>()
            .map(|q| q.channels.iter().map(|c| c.to_string()).collect())
            .unwrap_or_default();
        async move {
            tokio::task::yield_now().await;
            let allowed = allowed?;
            Ok(asked.into_iter().filter(|c| allowed.contains(c)).collect())
        }
    });
    let forbidden = redisse.endpoint(|parts: &Parts| {
        let admin = parts.extensions.get::<User>().is_some_and(|u| u.admin);
        std::future::ready(if admin {
            Ok(vec!["admins".to_owned()])
        } else {
            Err(Rejection::forbidden("admins only"))
        })
    });
    let nothing = redisse.endpoint(|_: &Parts| std::future::ready(Ok(Vec::new())));
    let not_found =
        redisse.endpoint(|_: &Parts| std::future::ready(Err(Rejection::not_found("no such room"))));
    Router::new()
        .route_service("/events", events)
        .route_service("/narrowed", narrowed)
        .route_service("/admin/events", forbidden)
        .route_service("/nothing", nothing)
        .route_service("/room", not_found)
        .route("/hello", axum::routing::get(|| async { "app route\n" }))
        .layer(middleware::from_fn(authenticate))
}

async fn start(backend: &Backend) -> TestServer {
    let redisse = Redisse::new(backend.config()).expect("instance");
    let router = app(&redisse);
    TestServer::start_router(redisse, router).await
}

/// `TestServer::live_stream` with headers: waits for the `lastEventId` event.
async fn live(server: &TestServer, path: &str, user: &str) -> SseStream {
    server.publish("test.warmup", "warmup", "").await;
    let mut s = server.stream(path, &[("x-user", user)]).await;
    assert_eq!(s.status, 200, "{path} as {user}");
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert_eq!(s.next().await.event, "lastEventId");
    s
}

async fn get(server: &TestServer, path: &str, user: Option<&str>) -> (u16, String) {
    let mut req = client()
        .get(server.url(path))
        .header("accept", "text/event-stream");
    if let Some(u) = user {
        req = req.header("x-user", u);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.text().await.unwrap())
}

async fn events_flow_to_the_channels_the_user_may_see_only(backend: Backend) {
    let server = start(&backend).await;
    // The query does not choose channels here: the policy does.
    let mut alice = live(&server, "/events?user.bob&admins", "alice").await;
    let mut bob = live(&server, "/events", "bob").await;
    let mut admin = live(&server, "/events", "admin").await;
    server.publish("user.bob", "private", "for bob").await;
    server.publish("user.alice", "private", "for alice").await;
    server.publish("admins", "ops", "for admins").await;
    server.publish("global", "news", "for all").await;
    let data = |events: Vec<crate::support::SseEvent>| -> Vec<String> {
        events.into_iter().map(|e| e.data).collect()
    };
    assert_eq!(data(alice.take(2).await), ["for alice", "for all"]);
    assert_eq!(data(bob.take(2).await), ["for bob", "for all"]);
    assert_eq!(data(admin.take(2).await), ["for admins", "for all"]);
    for s in [&mut alice, &mut bob, &mut admin] {
        s.expect_silence(Duration::from_millis(100)).await;
    }
}

async fn the_policy_can_narrow_to_what_the_query_asks_for(backend: Backend) {
    let server = start(&backend).await;
    let mut s = live(&server, "/narrowed?user.bob&user.carol&global", "carol").await;
    server.publish("user.bob", "x", "not for carol").await;
    server.publish("user.carol", "x", "mine").await;
    server.publish("global", "x", "everyone").await;
    let got: Vec<String> = s.take(2).await.into_iter().map(|e| e.data).collect();
    assert_eq!(got, ["mine", "everyone"]);
    // Asking only for what is not allowed leaves nothing: 404.
    let (status, body) = get(&server, "/narrowed?user.bob", Some("carol")).await;
    assert_eq!((status, body.as_str()), (404, "404 Not Found\n"));
}

#[tokio::test]
async fn the_applications_layer_runs_before_the_endpoint() {
    let server = start(&Backend::memory()).await;
    for path in ["/events", "/admin/events", "/nothing", "/hello"] {
        let (status, body) = get(&server, path, None).await;
        assert_eq!((status, body.as_str()), (401, "who are you?\n"), "{path}");
    }
    assert_eq!(server.redisse.stats().connected, 0);
    let (status, body) = get(&server, "/hello", Some("alice")).await;
    assert_eq!((status, body.as_str()), (200, "app route\n"));
}

#[tokio::test]
async fn rejections_become_403_and_404_and_an_empty_list_404() {
    let server = start(&Backend::memory()).await;
    let res = client()
        .get(server.url("/admin/events"))
        .header("accept", "text/event-stream")
        .header("x-user", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(res.headers()["content-type"], "text/plain");
    assert_eq!(res.text().await.unwrap(), "admins only\n");
    let mut s = live(&server, "/admin/events", "admin").await;
    server.publish("admins", "ops", "ok").await;
    assert_eq!(s.next().await.data, "ok");

    let (status, body) = get(&server, "/nothing?global", Some("alice")).await;
    assert_eq!((status, body.as_str()), (404, "404 Not Found\n"));
    let (status, body) = get(&server, "/room", Some("alice")).await;
    assert_eq!((status, body.as_str()), (404, "no such room\n"));
    // The endpoint's own rules still apply behind the layer: 406, 405, stats.
    let res = client()
        .get(server.url("/events"))
        .header("x-user", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 406);
    let res = client()
        .post(server.url("/events"))
        .header("accept", "text/event-stream")
        .header("x-user", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    let res = client()
        .get(server.url("/events"))
        .header("accept", "application/json")
        .header("x-user", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let stats: serde_json::Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    assert_eq!(stats["connected"], 1, "{stats}");
}

#[tokio::test]
async fn the_endpoint_is_a_tower_service_with_any_body() {
    let redisse = Redisse::new(Backend::memory().config()).unwrap();
    let endpoint = redisse.endpoint(|_: &Parts| std::future::ready(Ok(vec!["global".to_owned()])));
    let req = http::Request::get("/whatever")
        .header("accept", "text/event-stream")
        .body(Body::empty())
        .unwrap();
    let res = tower::ServiceExt::oneshot(endpoint.clone(), req)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert_eq!(redisse.connections(), 1);
    drop(res);
    assert_eq!(
        redisse.connections(),
        0,
        "dropping the response ends the stream"
    );
    let req = http::Request::get("/")
        .body(String::from("a body"))
        .unwrap();
    let res = tower::ServiceExt::oneshot(endpoint, req).await.unwrap();
    assert_eq!(res.status(), 406);
}

#[tokio::test]
async fn the_standalone_router_can_take_the_applications_policy() {
    let mut config = Backend::memory().config();
    config.publish_token = Some("s3cret".into());
    let redisse = Redisse::new(config).unwrap();
    let router = redisse
        .router_with(|parts: &Parts| std::future::ready(user_channels(parts)))
        .layer(middleware::from_fn(authenticate));
    let server = TestServer::start_router(redisse, router).await;
    // Every path serves the endpoint; the query does not choose the channels, the policy does.
    let mut s = live(&server, "/any/path?user.erin", "dana").await;
    for channel in ["user.erin", "user.dana"] {
        let res = client()
            .post(server.url(&format!("/publish/{channel}?type=t")))
            .header("x-user", "dana")
            .bearer_auth("s3cret")
            .body(format!("to {channel}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    assert_eq!(s.next().await.data, "to user.dana");
    s.expect_silence(Duration::from_millis(100)).await;
    // The application's layer guards publishing too, even with the publish token.
    let res = client()
        .post(server.url("/publish/global"))
        .bearer_auth("s3cret")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.text().await.unwrap(), "who are you?\n");
    // And past the application's layer, the router still wants the publish credential.
    let res = client()
        .post(server.url("/publish/user.dana"))
        .header("x-user", "dana")
        .body("no token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    s.expect_silence(Duration::from_millis(100)).await;
}

/// Settings that cannot work are refused by `Redisse::new` with a message naming them, instead
/// of a background task panicking (a zero heartbeat period) while `/health` says 200.
#[tokio::test]
async fn an_instance_refuses_settings_that_cannot_work() {
    let mut config = redisse::Config::default();
    config.heartbeat = std::time::Duration::ZERO;
    let err = Redisse::new(config).expect_err("a zero heartbeat");
    assert!(matches!(err, redisse::Error::InvalidConfig(_)), "{err}");
    assert!(err.to_string().contains("heartbeat"), "{err}");
    let mut config = redisse::Config::default();
    config.max_queue_bytes = 0;
    let err = Redisse::new(config).expect_err("a zero queue");
    assert!(err.to_string().contains("max_queue_bytes"), "{err}");
    assert!(Redisse::new(redisse::Config::default()).is_ok());
}
