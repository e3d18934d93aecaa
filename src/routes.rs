//! The standalone server's routes: the SSE endpoint on every path, and
//! `GET /metrics`, `GET /health` and `POST /publish/<channel>` beside it.
//!
//! `/metrics` and `/health` answer only requests that do not ask for `text/event-stream`; a
//! stream request on those paths is a stream request like any other, as in the gem, where every
//! path serves the endpoint.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use tower::ServiceExt;

use crate::channel::ChannelName;
use crate::endpoint::SseEndpoint;
use crate::event::Event;
use crate::headers::Accepts;
use crate::instance::{Redisse, Shared};
use crate::metrics::Refusal;
use crate::policy::{ChannelPolicy, QueryChannels};
use crate::publish::PublishError;
use crate::query::{QueryError, form_decode};
use crate::refusal::Refused;

impl Redisse {
    /// The standalone server's router, with channels from the query string.
    pub fn router(&self) -> Router {
        self.router_with(QueryChannels)
    }

    /// The standalone server's router with another channel function.
    pub fn router_with<P: ChannelPolicy>(&self, policy: P) -> Router {
        let endpoint = self.endpoint(policy);
        let shared = self.shared.clone();
        let metrics = unless_stream(&shared, &endpoint, prometheus);
        let health = unless_stream(&shared, &endpoint, health);
        let publish = move |req: Request<Body>| {
            let shared = shared.clone();
            async move { publish(&shared, req).await }
        };
        Router::new()
            .route("/metrics", get(metrics).fallback_service(endpoint.clone()))
            .route("/health", get(health).fallback_service(endpoint.clone()))
            .route(
                "/publish/",
                post(publish.clone()).fallback_service(endpoint.clone()),
            )
            .route(
                "/publish/{*channel}",
                post(publish).fallback_service(endpoint.clone()),
            )
            .fallback_service(any(move |req: Request<Body>| {
                let endpoint = endpoint.clone();
                async move { endpoint.oneshot(req).await.into_response() }
            }))
    }
}

/// A GET handler that answers with `page`, unless the request asks for `text/event-stream`: then
/// it is a stream request like any other (every path serves the endpoint).
fn unless_stream<P: ChannelPolicy>(
    shared: &Arc<Shared>,
    endpoint: &SseEndpoint<P>,
    page: fn(&Shared) -> Response,
) -> impl Fn(Request<Body>) -> std::pin::Pin<Box<dyn Future<Output = Response> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    let (shared, endpoint) = (shared.clone(), endpoint.clone());
    move |mut req: Request<Body>| {
        let (shared, endpoint) = (shared.clone(), endpoint.clone());
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let mut parts = parts;
            let accepts = Accepts::keep(&mut parts.extensions, &parts.headers);
            req = Request::from_parts(parts, body);
            if accepts.event_stream {
                return endpoint.oneshot(req).await.into_response();
            }
            page(&shared)
        })
    }
}

fn prometheus(shared: &Shared) -> Response {
    let mut res = shared.metrics.render_prometheus().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}

fn health(shared: &Shared) -> Response {
    if shared.broker.is_up() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "broker unreachable\n").into_response()
    }
}

fn refuse(
    shared: &Shared,
    reason: Refusal,
    status: StatusCode,
    msg: impl std::fmt::Display,
) -> Response {
    Refused::publish(reason, status, msg)
        .respond(&shared.metrics)
        .into_response()
}

/// `POST /publish/<channel>?type=T` with the data as body: answers `{"id": N}`.
async fn publish(shared: &Arc<Shared>, req: Request<Body>) -> Response {
    if let Err(res) = authorize(shared, &req) {
        return res;
    }
    let (channel, event_type) = match target(req.uri()) {
        Ok(t) => t,
        Err(msg) => return refuse(shared, Refusal::BadPublish, StatusCode::BAD_REQUEST, &msg),
    };
    match ChannelName::check(&channel, shared.config.max_channel_name_bytes) {
        Ok(()) => {}
        Err(e @ crate::channel::InvalidChannel::TooLong { .. }) => {
            return refuse(
                shared,
                Refusal::ChannelNameTooLong,
                StatusCode::BAD_REQUEST,
                e,
            );
        }
        Err(e) => return refuse(shared, Refusal::BadPublish, StatusCode::BAD_REQUEST, e),
    };
    let limit = shared.config.max_publish_bytes;
    let too_large = || {
        let msg = format!("the body is larger than {limit} bytes");
        refuse(
            shared,
            Refusal::PublishTooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            &msg,
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let data = match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Err(e) => {
            let msg = format!("could not read the body: {e}");
            return refuse(shared, Refusal::BadPublish, StatusCode::BAD_REQUEST, &msg);
        }
    };
    let Ok(data) = String::from_utf8(data.into()) else {
        return refuse(
            shared,
            Refusal::BadPublish,
            StatusCode::BAD_REQUEST,
            "the body is not UTF-8",
        );
    };
    let publisher = Redisse {
        shared: shared.clone(),
    }
    .publisher();
    match publisher
        .publish(&channel, Event::new(event_type, data))
        .await
    {
        Ok(id) => {
            let mut res = format!("{{\"id\":{id}}}").into_response();
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            res
        }
        Err(PublishError::Broker(e)) => {
            tracing::warn!(error = %e, "publish failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the broker failed: {e}\n"),
            )
                .into_response()
        }
        Err(e @ PublishError::EventTooLarge { .. }) => refuse(
            shared,
            Refusal::PublishTooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            e,
        ),
        Err(e) => refuse(shared, Refusal::BadPublish, StatusCode::BAD_REQUEST, e),
    }
}

/// With a token: `Authorization: Bearer <token>` (else 401). Without: loopback peers only
/// (else 403), as Redis does in protected mode.
#[allow(clippy::result_large_err)]
fn authorize(shared: &Shared, req: &Request<Body>) -> Result<(), Response> {
    if let Some(token) = &shared.config.publish_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            return Ok(());
        }
        let refused = Refused::publish(
            Refusal::PublishUnauthorized,
            StatusCode::UNAUTHORIZED,
            "publishing requires Authorization: Bearer <token>",
        )
        .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Err(refused.respond(&shared.metrics).into_response());
    }
    let ext = req.extensions();
    let local = unix_peer(ext)
        || ext
            .get::<ConnectInfo<SocketAddr>>()
            .is_some_and(|ConnectInfo(addr)| addr.ip().is_loopback());
    if local {
        Ok(())
    } else {
        Err(refuse(
            shared,
            Refusal::PublishUnauthorized,
            StatusCode::FORBIDDEN,
            "without a publish token, only loopback clients may publish",
        ))
    }
}

/// Whether the request came through a unix socket (the server puts the peer's address in the
/// extensions, as `axum::serve` does).
#[cfg(unix)]
fn unix_peer(ext: &http::Extensions) -> bool {
    ext.get::<ConnectInfo<tokio::net::unix::SocketAddr>>()
        .is_some()
}

#[cfg(not(unix))]
fn unix_peer(_: &http::Extensions) -> bool {
    false
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The channel from the path (percent-decoded) and the type from the query.
fn target(uri: &http::Uri) -> Result<(String, String), String> {
    let raw = uri.path().strip_prefix("/publish/").unwrap_or("");
    let channel = percent_decode_path(raw)?;
    let mut event_type = String::new();
    for item in uri.query().unwrap_or("").split('&') {
        if let Some(v) = item.strip_prefix("type=") {
            event_type = form_decode(v).map_err(|e| e.to_string())?;
        }
    }
    // Before the body is read: a bad type is refused without reading the data.
    crate::event::check_type(&event_type).map_err(|e| e.to_string())?;
    Ok((channel, event_type))
}

/// Percent-decodes a path segment strictly (`+` stays a plus in a path).
fn percent_decode_path(raw: &str) -> Result<String, String> {
    form_decode(&raw.replace('+', "%2B")).map_err(|e: QueryError| e.to_string())
}
