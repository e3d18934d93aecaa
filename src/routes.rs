//! The standalone server's two routers.
//!
//! The *public* router serves the SSE endpoint on every path, `GET /health` (readiness) and
//! `GET /livez` (liveness) beside it, CORS preflights when origins are configured, and
//! `POST /publish/<channel>` only with a publish credential (a static token, or a JWT whose
//! `redisse.publish` claim covers the channel). The *internal* router, for a listener only the
//! application can reach, serves `POST /publish/<channel>` without a credential, `/metrics`,
//! the status page (`/status`, see `status`), `/health`, `/livez` and the gem's JSON stats, and
//! no event streams of channels. Nothing is decided by
//! the peer's address: behind a reverse proxy every peer is the proxy, on loopback.
//!
//! On the public router, `/health` and `/livez` answer only requests that do not ask for
//! `text/event-stream`; a stream request on those paths is a stream request like any other, as
//! in the gem, where every path serves the endpoint.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use tower::ServiceExt;

use crate::auth::cors::{self, Gate, Origins};
use crate::auth::{JwtPolicy, PublishDenied};
use crate::channel::ChannelName;
use crate::endpoint::SseEndpoint;
use crate::event::Event;
use crate::headers::Accepts;
use crate::instance::{Redisse, Shared};
use crate::metrics::Refusal;
use crate::policy::{ChannelPolicy, Grant, QueryChannels, Rejection};
use crate::publish::{Publication, PublishError};
use crate::query::{QueryError, form_decode};
use crate::refusal::Refused;

/// Who may publish through a router.
#[derive(Clone, Copy)]
enum PublishGate {
    /// The internal router: whoever reaches it.
    Open,
    /// The public router: a credential is required.
    Credential,
}

/// The subscriber authorization mode the configuration names.
enum Configured {
    Open(QueryChannels),
    Jwt(JwtPolicy),
    Callback(crate::auth::AuthCallback),
}

impl ChannelPolicy for Configured {
    fn channels(
        &self,
        request: &http::request::Parts,
    ) -> impl Future<Output = Result<Vec<String>, Rejection>> + Send {
        let grant = self.grant(request);
        async move { grant.await.map(|g| g.into_parts().0) }
    }

    // The trait's signature is `-> impl Future`; an `async fn` here would not say `Send`.
    #[allow(clippy::manual_async_fn)]
    fn grant(
        &self,
        request: &http::request::Parts,
    ) -> impl Future<Output = Result<Grant, Rejection>> + Send {
        async move {
            match self {
                Configured::Open(p) => p.grant(request).await,
                Configured::Jwt(p) => p.grant(request).await,
                Configured::Callback(p) => p.grant(request).await,
            }
        }
    }
}

impl Redisse {
    /// The public router, with the subscriber authorization mode of the configuration: open
    /// (channels from the query string), JWT ([`Config::jwt`](crate::Config::jwt)) or the auth
    /// callback ([`Config::auth_callback`](crate::Config::auth_callback)).
    pub fn router(&self) -> Router {
        let shared = &self.shared;
        let mode = match (&shared.jwt, &shared.auth_callback) {
            (Some(jwt), _) => Configured::Jwt(JwtPolicy::from_verifier(jwt.clone())),
            (None, Some(callback)) => Configured::Callback(callback.clone()),
            (None, None) => Configured::Open(QueryChannels),
        };
        self.router_with(mode)
    }

    /// The public router with another channel function (publish credentials and CORS still
    /// from the configuration).
    pub fn router_with<P: ChannelPolicy>(&self, policy: P) -> Router {
        let endpoint = self.endpoint(policy);
        let shared = self.shared.clone();
        let health = unless_stream(&shared, &endpoint, health);
        let livez = unless_stream(&shared, &endpoint, livez);
        let publish = publisher(&shared, PublishGate::Credential);
        let router = Router::new()
            .route("/health", get(health).fallback_service(endpoint.clone()))
            .route("/livez", get(livez).fallback_service(endpoint.clone()))
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
            }));
        with_cors(router, &shared)
    }

    /// The internal router: `POST /publish/<channel>` without a credential, `GET /metrics`
    /// (Prometheus text, whatever the `Accept` header), `GET /status` (a live page) and
    /// `GET /status/events` (its stream of snapshots, one a second), `/health`, `/livez`, and the
    /// gem's JSON stats (`Accept: application/json` on any other path). No event streams of
    /// channels: serve it only
    /// where the application alone can reach it (loopback, a unix socket, a private network).
    pub fn internal_router(&self) -> Router {
        let shared = self.shared.clone();
        let page = |page: fn(&Shared) -> Response| {
            let shared = shared.clone();
            move || {
                let shared = shared.clone();
                async move { page(&shared) }
            }
        };
        let publish = publisher(&shared, PublishGate::Open);
        let fallback = {
            let shared = shared.clone();
            move |req: Request<Body>| {
                let shared = shared.clone();
                async move { internal_other(&shared, req) }
            }
        };
        let status_events = {
            let shared = shared.clone();
            move || {
                let shared = shared.clone();
                async move { crate::status::events(&shared) }
            }
        };
        Router::new()
            .route("/metrics", get(page(prometheus)))
            .route("/status", get(|| async { crate::status::page() }))
            .route("/status/events", get(status_events))
            .route("/health", get(page(health)))
            .route("/livez", get(page(livez)))
            .route("/publish/", post(publish.clone()))
            .route("/publish/{*channel}", post(publish))
            .fallback(fallback)
    }
}

/// The publish handler for one gate.
fn publisher(
    shared: &Arc<Shared>,
    gate: PublishGate,
) -> impl Fn(Request<Body>) -> std::pin::Pin<Box<dyn Future<Output = Response> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    let shared = shared.clone();
    move |req: Request<Body>| {
        let shared = shared.clone();
        Box::pin(async move { publish(&shared, gate, req).await })
    }
}

/// CORS on the public router, when origins are configured.
fn with_cors(router: Router, shared: &Arc<Shared>) -> Router {
    if shared.config.cors_origins.is_empty() {
        return router;
    }
    // Checked by `Config::validate` when the instance started.
    let Ok(origins) = Origins::new(&shared.config.cors_origins) else {
        return router;
    };
    let gate = Gate {
        origins: origins.clone(),
        metrics: shared.metrics.clone(),
    };
    router
        .layer(origins.layer())
        .layer(axum::middleware::from_fn_with_state(gate, cors::gate))
}

/// The internal router's other requests: the stats for JSON, else 404 (it has no streams).
fn internal_other(shared: &Shared, req: Request<Body>) -> Response {
    let accepts = Accepts::get(req.extensions(), req.headers());
    if req.method() == Method::GET && accepts.json {
        return crate::endpoint::stats(shared).map(Body::new);
    }
    (
        StatusCode::NOT_FOUND,
        "404 Not Found\nThe internal listener serves POST /publish/<channel>, /metrics, \
         /status, /health, /livez and the JSON stats; event streams are on the public listener.\n",
    )
        .into_response()
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
        HeaderValue::from_static(crate::metrics::PROMETHEUS_CONTENT_TYPE),
    );
    res
}

/// Liveness: the process serves, whatever the broker does (a probe must not restart a healthy
/// server because Redis is away), unless a background task stopped: it never comes back, and
/// without it no event (dispatcher, subscriber) or no heartbeat goes out, so a restart is due.
fn livez(shared: &Shared) -> Response {
    match stopped_task(shared) {
        Some(dead) => dead,
        None => (StatusCode::OK, "ok\n").into_response(),
    }
}

/// Readiness: every background task runs and the broker is reachable. On a Redis Cluster one
/// shard's failover leaves the process ready (200, saying `degraded`): every process that
/// follows that shard is in the same state, and a load balancer that took them all out would
/// turn one shard's outage into everyone's.
fn health(shared: &Shared) -> Response {
    if let Some(dead) = stopped_task(shared) {
        dead
    } else if shared.broker.is_up() {
        match shared.metrics.shards_recovering() {
            0 => (StatusCode::OK, "ok\n").into_response(),
            _ => (
                StatusCode::OK,
                "degraded: a Redis Cluster shard is recovering\n",
            )
                .into_response(),
        }
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "broker unreachable\n").into_response()
    }
}

/// The 503 for a background task that no longer runs, naming it.
fn stopped_task(shared: &Shared) -> Option<Response> {
    let why = shared.tasks.stopped()?;
    Some(
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{why}: restart the process\n"),
        )
            .into_response(),
    )
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

/// `POST /publish/<channel>?type=T` with the data as body: answers `{"id": N}`. With an
/// `Idempotency-Key` used within the window for the same event, the same answer with the first
/// id and `Idempotent-Replayed: true`, publishing nothing; for another event, 422.
async fn publish(shared: &Arc<Shared>, gate: PublishGate, req: Request<Body>) -> Response {
    let denied = |denied: PublishDenied| match denied {
        PublishDenied::Unauthorized(why) => {
            Refused::publish(Refusal::PublishUnauthorized, StatusCode::UNAUTHORIZED, why)
                .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
                .respond(&shared.metrics)
                .into_response()
        }
        PublishDenied::Forbidden => refuse(
            shared,
            Refusal::PublishUnauthorized,
            StatusCode::FORBIDDEN,
            "the token does not allow publishing to this channel",
        ),
    };
    // The credential first: a client without one learns nothing about its input.
    let publisher = match gate {
        PublishGate::Open => None,
        PublishGate::Credential => match shared.publish_credentials.authenticate(req.headers()) {
            Ok(publisher) => Some(publisher),
            Err(e) => return denied(e),
        },
    };
    let (channel, event_type) = match target(req.uri()) {
        Ok(t) => t,
        Err(msg) => return refuse(shared, Refusal::BadPublish, StatusCode::BAD_REQUEST, &msg),
    };
    // Checked before the body is read, as the type is.
    let key = match idempotency_key(req.headers()) {
        Ok(key) => key,
        Err(msg) => return refuse(shared, Refusal::BadPublish, StatusCode::BAD_REQUEST, &msg),
    };
    if let Some(Err(e)) = publisher.map(|p| p.may_publish(&channel)) {
        return denied(e);
    }
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
    let event = Event::new(event_type, data);
    let published = match &key {
        Some(key) => publisher.publish_idempotent(&channel, event, key).await,
        None => publisher
            .publish(&channel, event)
            .await
            .map(|id| Publication {
                id,
                replayed: false,
            }),
    };
    match published {
        Ok(Publication { id, replayed }) => {
            let mut res = format!("{{\"id\":{id}}}").into_response();
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if replayed {
                res.headers_mut()
                    .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            }
            res
        }
        Err(e @ PublishError::IdempotencyKeyReused { .. }) => refuse(
            shared,
            Refusal::IdempotencyConflict,
            StatusCode::UNPROCESSABLE_ENTITY,
            e,
        ),
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

/// The request header that makes a publish safe to retry (see `idempotency`).
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The answer's header when a publish was a retry: the id is the earlier event's.
const IDEMPOTENT_REPLAYED: header::HeaderName =
    header::HeaderName::from_static("idempotent-replayed");

/// The request's `Idempotency-Key`, if it has one: at most one, a valid key.
fn idempotency_key(headers: &http::HeaderMap) -> Result<Option<String>, String> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("more than one Idempotency-Key header".into());
    }
    let key = value.to_str().map_err(|_| {
        "the Idempotency-Key must be visible ASCII characters (! to ~, no space)".to_owned()
    })?;
    crate::idempotency::check_key(key)?;
    Ok(Some(key.to_owned()))
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
