//! CORS on the public listener (docs/access-control.md), through the real binary: preflights, the
//! headers of a listed origin's stream and publish, 403 for an unlisted origin, `*` without
//! credentials, the environment variable, startup errors, and no CORS at all when none is
//! configured.

use reqwest::Method;
use reqwest::header::HeaderMap;

use crate::auth_support::{WithEnv, connected, connected_on, fails_to_start, live, refused};
use crate::support::binary::Redisse;
use crate::support::sse::client;

const A: &str = "http://a.example";
const B: &str = "https://b.example:8443";

fn listed() -> Redisse {
    Redisse::start(&[
        "--cors-origin",
        A,
        "--cors-origin",
        B,
        "--publish-token",
        "tok",
    ])
}

/// Every value of `name`, comma-split, trimmed and lowercased.
fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .collect()
}

fn one(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.to_str().unwrap().to_owned())
}

async fn preflight(url: &str, origin: &str) -> reqwest::Response {
    client()
        .request(Method::OPTIONS, url)
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header(
            "access-control-request-headers",
            "last-event-id, authorization",
        )
        .send()
        .await
        .expect("preflight")
}

async fn publish(url: &str, origin: Option<&str>) -> reqwest::Response {
    let mut req = client()
        .post(url)
        .header("authorization", "Bearer tok")
        .body("data");
    if let Some(origin) = origin {
        req = req.header("origin", origin);
    }
    req.send().await.expect("publish")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_origins_preflight_is_204_with_what_it_may_do() {
    let r = listed();
    for origin in [A, B] {
        for path in ["/?ch", "/publish/ch"] {
            let res = preflight(&r.url(path), origin).await;
            assert_eq!(res.status(), 204, "{origin} {path}");
            let h = res.headers();
            assert_eq!(
                one(h, "access-control-allow-origin").as_deref(),
                Some(origin)
            );
            assert_eq!(
                one(h, "access-control-allow-credentials").as_deref(),
                Some("true")
            );
            let methods = values(h, "access-control-allow-methods");
            for m in ["get", "post"] {
                assert!(methods.contains(&m.into()), "{m} in {methods:?}");
            }
            let allowed = values(h, "access-control-allow-headers");
            for name in [
                "last-event-id",
                "authorization",
                "cache-control",
                "content-type",
            ] {
                assert!(allowed.contains(&name.into()), "{name} in {allowed:?}");
            }
            assert!(values(h, "vary").contains(&"origin".into()), "{h:?}");
        }
    }
    assert_eq!(connected(&r).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_origins_stream_and_publish_carry_the_cors_headers() {
    let r = listed();
    let s = live(&r, "/?ch", &[("origin", A)]).await;
    let h = &s.headers;
    assert_eq!(one(h, "access-control-allow-origin").as_deref(), Some(A));
    assert_eq!(
        one(h, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert!(values(h, "vary").contains(&"origin".into()), "{h:?}");
    let mut s = s;
    let res = publish(&r.url("/publish/ch"), Some(B)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        one(res.headers(), "access-control-allow-origin").as_deref(),
        Some(B)
    );
    assert_eq!(s.next().await.data, "data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_origin_is_refused_with_403() {
    let r = listed();
    let origins = [
        "http://evil.example",
        "http://a.example:8080",
        "https://a.example",
        "http://a.example.evil",
        "null",
    ];
    for origin in origins {
        refused(&r, "/?ch", &[("origin", origin)], 403).await;
    }
    let mut s = live(&r, "/?ch", &[]).await;
    for origin in origins {
        let res = publish(&r.url("/publish/ch"), Some(origin)).await;
        assert_eq!(res.status(), 403, "publish from {origin}");
        assert!(
            one(res.headers(), "access-control-allow-origin").is_none(),
            "{origin}"
        );
        let res = preflight(&r.url("/?ch"), origin).await;
        assert_eq!(res.status(), 403, "preflight from {origin}");
        assert!(
            one(res.headers(), "access-control-allow-origin").is_none(),
            "{origin}"
        );
    }
    // Nothing refused was published.
    s.expect_silence(std::time::Duration::from_millis(300))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_origin_is_served_without_cors_headers() {
    let r = listed();
    let mut s = live(&r, "/?ch", &[]).await;
    assert_eq!(s.status, 200);
    assert!(one(&s.headers, "access-control-allow-origin").is_none());
    let res = publish(&r.url("/publish/ch"), None).await;
    assert_eq!(res.status(), 200);
    assert!(one(res.headers(), "access-control-allow-origin").is_none());
    assert_eq!(s.next().await.data, "data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_allows_every_origin_without_credentials() {
    let r = Redisse::start(&["--cors-origin", "*"]);
    for origin in ["http://x.example", "https://y.example:1234"] {
        let s = live(&r, "/?ch", &[("origin", origin)]).await;
        assert_eq!(
            one(&s.headers, "access-control-allow-origin").as_deref(),
            Some("*"),
            "{origin}"
        );
        assert!(
            one(&s.headers, "access-control-allow-credentials").is_none(),
            "{:?}",
            s.headers
        );
        drop(s);
        let res = preflight(&r.url("/?ch"), origin).await;
        assert_eq!(res.status(), 204);
        let h = res.headers();
        assert_eq!(one(h, "access-control-allow-origin").as_deref(), Some("*"));
        assert!(
            one(h, "access-control-allow-credentials").is_none(),
            "{h:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redisse_cors_origins_is_a_comma_separated_list() {
    let r = WithEnv::start(
        &[],
        &[("REDISSE_CORS_ORIGINS", "http://a.example, http://b.example")],
    )
    .await;
    for origin in ["http://a.example", "http://b.example"] {
        let res = preflight(&format!("{}/?ch", r.base), origin).await;
        assert_eq!(res.status(), 204, "{origin}");
        assert_eq!(
            one(res.headers(), "access-control-allow-origin").as_deref(),
            Some(origin)
        );
    }
    let res = client()
        .get(format!("{}/?ch", r.base))
        .header("accept", "text/event-stream")
        .header("origin", "http://c.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(connected_on(&format!("{}/", r.internal)).await, 0);
}

#[tokio::test]
async fn star_with_listed_origins_or_an_origin_with_a_path_is_a_startup_error() {
    let err = fails_to_start(&["--cors-origin", "*", "--cors-origin", "http://a.example"]).await;
    assert!(err.contains('*'), "{err}");
    for bad in ["http://a.example/app", "http://a.example/", "a.example"] {
        let err = fails_to_start(&["--cors-origin", bad]).await;
        assert!(err.contains(bad) && err.contains("origin"), "{bad}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cors_options_is_405_and_no_cors_header_is_sent() {
    let r = Redisse::start(&[]);
    let res = preflight(&r.url("/?ch"), A).await;
    assert_eq!(res.status(), 405);
    assert!(one(res.headers(), "access-control-allow-origin").is_none());
    let s = live(&r, "/?ch", &[("origin", A)]).await;
    assert!(one(&s.headers, "access-control-allow-origin").is_none());
}
