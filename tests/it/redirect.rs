//! The nginx X-Accel-Redirect handler (README, "Behind nginx").

use axum::body::Body;
use http::request::Parts;
use http_body_util::BodyExt;
use redisse::{RedirectEndpoint, Rejection, StreamQuery};
use tower::ServiceExt;

use crate::support::{Backend, TestServer};

/// A channel function that always returns `names`.
fn fixed(
    names: &[&str],
) -> impl Fn(&Parts) -> std::future::Ready<Result<Vec<String>, Rejection>> + Send + Sync + 'static {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    move |_: &Parts| std::future::ready(Ok(names.clone()))
}

struct Answer {
    status: u16,
    redirect: Option<String>,
    body: String,
}

async fn call(base: &str, names: &[&str], path: &str) -> Answer {
    call_with(RedirectEndpoint::new(base, fixed(names)), path, &[]).await
}

async fn call_with<P: redisse::ChannelPolicy>(
    endpoint: RedirectEndpoint<P>,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = http::Request::get(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = endpoint
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status().as_u16();
    let redirect = res
        .headers()
        .get("x-accel-redirect")
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(res.headers().get_all("x-accel-redirect").iter().count() <= 1);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        redirect,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

#[tokio::test]
async fn answers_200_with_an_empty_body_and_the_redirect() {
    let a = call("/internal", &["global"], "/").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "");
    assert_eq!(a.redirect.as_deref(), Some("/internal/?global"));
}

#[tokio::test]
async fn the_base_gets_a_trailing_slash() {
    let a = call("/foo/", &["global"], "/").await;
    assert_eq!(a.redirect.as_deref(), Some("/foo/?global"));
    let a = call("/foo", &["global"], "/").await;
    assert_eq!(a.redirect.as_deref(), Some("/foo/?global"));
    let a = call("/a/b", &["global"], "/").await;
    assert_eq!(a.redirect.as_deref(), Some("/a/b/?global"));
}

#[tokio::test]
async fn channels_are_form_encoded_in_order() {
    let a = call("/redisse", &["foo", "bar"], "/").await;
    assert_eq!(a.redirect.as_deref(), Some("/redisse/?foo&bar"));
    let a = call(
        "/redisse",
        &["channel 1", "a&b", "c=d", "café", "x/y", "*-._", "100%"],
        "/",
    )
    .await;
    assert_eq!(
        a.redirect.as_deref(),
        Some("/redisse/?channel+1&a%26b&c%3Dd&caf%C3%A9&x%2Fy&*-._&100%25")
    );
    // What the SSE server reads back is exactly the channels, in order.
    let query = a.redirect.unwrap().split_once('?').unwrap().1.to_owned();
    let parsed = StreamQuery::parse(&query).unwrap();
    let names: Vec<&str> = parsed.channels.iter().map(|c| &**c).collect();
    assert_eq!(
        names,
        ["channel 1", "a&b", "c=d", "café", "x/y", "*-._", "100%"]
    );
    assert!(!parsed.polling);
    assert_eq!(parsed.last_event_id, None);
}

#[tokio::test]
async fn polling_comes_first_then_the_last_event_id_then_the_channels() {
    let names = &["global", "channel_1"];
    let a = call("/redisse", names, "/?polling").await;
    assert_eq!(
        a.redirect.as_deref(),
        Some("/redisse/?polling&global&channel_1")
    );
    let a = call("/redisse", names, "/?lastEventId=42").await;
    assert_eq!(
        a.redirect.as_deref(),
        Some("/redisse/?lastEventId=42&global&channel_1")
    );
    let a = call("/redisse", names, "/?lastEventId=42&polling").await;
    assert_eq!(
        a.redirect.as_deref(),
        Some("/redisse/?polling&lastEventId=42&global&channel_1")
    );
    let a = call("/redisse", names, "/?polling=1&lastEventId=42").await;
    assert_eq!(
        a.redirect.as_deref(),
        Some("/redisse/?polling&lastEventId=42&global&channel_1")
    );
}

#[tokio::test]
async fn other_query_items_are_not_passed_on() {
    let a = call("/redisse", &["global"], "/?foo").await;
    assert_eq!(a.redirect.as_deref(), Some("/redisse/?global"));
    let a = call("/redisse", &["global"], "/?foo=bar&polling&baz").await;
    assert_eq!(a.redirect.as_deref(), Some("/redisse/?polling&global"));
}

#[tokio::test]
async fn no_channel_still_redirects_with_an_empty_query() {
    let a = call("/redisse", &[], "/?foo").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.redirect.as_deref(), Some("/redisse/?"));
}

#[tokio::test]
async fn reserved_channel_names_are_refused() {
    for name in ["polling", "lastEventId"] {
        let a = call("/redisse", &["global", name], "/").await;
        assert_eq!(a.status, 500, "{name}");
        assert_eq!(a.redirect, None, "{name}");
        assert!(a.body.contains("Reserved"), "{name}: {}", a.body);
        assert!(a.body.contains(name), "{name}: {}", a.body);
    }
}

#[tokio::test]
async fn names_the_sse_server_would_read_as_options_are_refused() {
    // `polling=x` turns on long polling and `lastEventId=5` gives a position on the SSE server
    // (docs/protocol.md, "The request"), so such a channel could never be listened to through the
    // redirect.
    for name in ["polling=1", "polling=", "lastEventId=5", "lastEventId="] {
        let a = call("/redisse", &["global", name], "/").await;
        assert_eq!(a.status, 500, "{name}: redirected to {:?}", a.redirect);
        assert!(a.body.contains("Reserved"), "{name}: {}", a.body);
    }
    // Names that merely start like them are fine.
    let a = call("/redisse", &["pollingx", "lastEventIdx"], "/").await;
    assert_eq!(
        a.redirect.as_deref(),
        Some("/redisse/?pollingx&lastEventIdx")
    );
}

#[tokio::test]
async fn the_policy_sees_the_request_and_its_rejection_is_the_answer() {
    let policy = |parts: &Parts| {
        let user = parts
            .headers
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let asked = parts
            .extensions
            .get::<StreamQuery>()
            .map(|q| q.channels.len());
        std::future::ready(match user {
            Some(u) => Ok(vec![
                format!("user.{u}"),
                format!("asked.{}", asked.unwrap_or(99)),
            ]),
            None => Err(Rejection::unauthorized("log in")),
        })
    };
    let endpoint = RedirectEndpoint::new("/redisse", policy);
    let a = call_with(endpoint.clone(), "/?polling&a&b", &[("x-user", "ann")]).await;
    assert_eq!(
        a.redirect.as_deref(),
        Some("/redisse/?polling&user.ann&asked.2")
    );
    let a = call_with(endpoint, "/", &[]).await;
    assert_eq!(
        (a.status, a.body.as_str(), a.redirect),
        (401, "log in\n", None)
    );
}

#[tokio::test]
async fn the_redirect_target_is_served_by_the_sse_server() {
    let server = TestServer::start(Backend::memory().config()).await;
    let a = call("/redisse", &["global", "room 1"], "/events?lastEventId=0").await;
    let target = a.redirect.unwrap();
    assert_eq!(target, "/redisse/?lastEventId=0&global&room+1");
    let mut s = server.live_stream(&target).await;
    server.publish("room 1", "t", "in room 1").await;
    server.publish("global", "t", "everyone").await;
    let got: Vec<String> = s.take(2).await.into_iter().map(|e| e.data).collect();
    assert_eq!(got, ["in room 1", "everyone"]);
}
