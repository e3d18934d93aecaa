//! The SSE endpoint as a `tower` service (SPEC 4): content negotiation, the query, the
//! application's channel function, limits, then the stream.
//!
//! A GET is answered in this order: `Accept` with `application/json` gets the stats; `Accept`
//! without `text/event-stream` gets 406; a malformed query gets 400; the channel function may
//! reject (401/403/404); no channel is 404; past a limit, 400; otherwise the stream opens (200).
//! Other methods get 405.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};

use crate::event::LastEventId;
use crate::instance::{Redisse, Shared};
use crate::metrics::Refusal;
use crate::policy::ChannelPolicy;
use crate::query::StreamQuery;
use crate::server::ConnectionCloser;
use crate::sse::{SseBody, StreamSlot};
use crate::stream::{StreamSpec, open};

/// The SSE endpoint: a `tower::Service` that mounts in an `axum` router.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use redisse::{Config, QueryChannels, Redisse};
/// let redisse = Redisse::new(Config::default())?;
/// let app: axum::Router = axum::Router::new()
///     .route_service("/events", redisse.endpoint(QueryChannels));
/// # let _ = app; Ok(()) }
/// ```
pub struct SseEndpoint<P> {
    shared: Arc<Shared>,
    policy: Arc<P>,
}

impl<P> Clone for SseEndpoint<P> {
    fn clone(&self) -> Self {
        SseEndpoint {
            shared: self.shared.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl Redisse {
    /// The SSE endpoint with the given channel function.
    pub fn endpoint<P: ChannelPolicy>(&self, policy: P) -> SseEndpoint<P> {
        SseEndpoint {
            shared: self.shared.clone(),
            policy: Arc::new(policy),
        }
    }
}

impl<P: ChannelPolicy, B: Send + 'static> tower::Service<Request<B>> for SseEndpoint<P> {
    type Response = Response<SseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<SseBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        let (parts, _body) = req.into_parts();
        Box::pin(async move { Ok(this.respond(parts).await) })
    }
}

impl<P: ChannelPolicy> SseEndpoint<P> {
    async fn respond(&self, mut parts: http::request::Parts) -> Response<SseBody> {
        let shared = &self.shared;
        if parts.method != Method::GET {
            let mut res = text(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n");
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            return res;
        }
        if accepts(&parts.headers, "application/json") {
            return stats(shared);
        }
        if !accepts(&parts.headers, "text/event-stream") {
            shared.metrics.refused(Refusal::NotAcceptable);
            return text(
                StatusCode::NOT_ACCEPTABLE,
                "406 Not Acceptable\nThis resource can only be represented as text/event-stream.\n",
            );
        }
        let query = match StreamQuery::parse(parts.uri.query().unwrap_or("")) {
            Ok(q) => q,
            Err(e) => {
                return refuse(
                    shared,
                    Refusal::BadQuery,
                    StatusCode::BAD_REQUEST,
                    &e.to_string(),
                );
            }
        };
        let polling = query.polling;
        let last = last_event_id(&parts.headers, query.last_event_id.as_deref());
        parts.extensions.insert(query);
        let names = match self.policy.channels(&parts).await {
            Ok(names) => names,
            Err(rejection) => {
                shared.metrics.refused(Refusal::Policy);
                tracing::info!(status = %rejection.status(), "channel function rejected a request");
                return text(rejection.status(), &format!("{}\n", rejection.message()));
            }
        };
        let channels = match validate(shared, names) {
            Ok(c) => c,
            Err(res) => return res,
        };
        if channels.is_empty() {
            shared.metrics.refused(Refusal::NotAcceptable);
            return text(StatusCode::NOT_FOUND, "404 Not Found\n");
        }
        open(
            shared,
            StreamSpec {
                channels,
                polling,
                last,
                closer: parts
                    .extensions
                    .get::<ConnectionCloser>()
                    .map(|c| c.0.clone()),
                slot: parts.extensions.remove::<StreamSlot>(),
            },
        )
    }
}

/// Drops empty and repeated names and applies the channel limits.
#[allow(clippy::result_large_err)] // the error is the response itself, built once
fn validate(shared: &Shared, names: Vec<String>) -> Result<Vec<Arc<str>>, Response<SseBody>> {
    let config = &shared.config;
    let mut channels: Vec<Arc<str>> = Vec::with_capacity(names.len());
    for name in names {
        if name.is_empty() || channels.iter().any(|c| **c == *name) {
            continue;
        }
        if name.len() > config.max_channel_name_bytes {
            let msg = format!(
                "a channel name is longer than {} bytes",
                config.max_channel_name_bytes
            );
            return Err(refuse(
                shared,
                Refusal::ChannelNameTooLong,
                StatusCode::BAD_REQUEST,
                &msg,
            ));
        }
        channels.push(Arc::from(name));
        if channels.len() > config.max_channels {
            let msg = format!(
                "more than {} channels on one connection",
                config.max_channels
            );
            return Err(refuse(
                shared,
                Refusal::MaxChannels,
                StatusCode::BAD_REQUEST,
                &msg,
            ));
        }
    }
    Ok(channels)
}

/// The position from `Last-Event-ID`, else the `lastEventId` query parameter (SPEC 4).
fn last_event_id(headers: &http::HeaderMap, query: Option<&str>) -> LastEventId {
    match headers.get("last-event-id") {
        Some(value) => match value.to_str() {
            Ok(v) => LastEventId::parse(v.trim()),
            Err(_) => LastEventId::Unknown,
        },
        None => query.map_or(LastEventId::None, LastEventId::parse),
    }
}

/// Whether an `Accept` header lists `media` (parameters and case ignored; `q=0` excludes).
pub(crate) fn accepts(headers: &http::HeaderMap, media: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut params = range.split(';');
            let kind = params.next().unwrap_or("").trim();
            kind.eq_ignore_ascii_case(media)
                && !params.any(|p| {
                    let p = p.trim();
                    p.len() > 2
                        && p[..2].eq_ignore_ascii_case("q=")
                        && p[2..].trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
                })
        })
}

fn stats(shared: &Shared) -> Response<SseBody> {
    let body = serde_json::to_string(&shared.metrics.stats()).unwrap_or_default();
    let mut res = Response::new(SseBody::full(body));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn refuse(
    shared: &Shared,
    reason: Refusal,
    status: StatusCode,
    message: &str,
) -> Response<SseBody> {
    shared.metrics.refused(reason);
    tracing::info!(%status, reason = message, "refused a stream request");
    text(
        status,
        &format!(
            "{} {}\n{message}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        ),
    )
}

pub(crate) fn text(status: StatusCode, body: &str) -> Response<SseBody> {
    let mut res = Response::new(SseBody::full(body.to_owned()));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str, media: &str) -> bool {
        let mut h = http::HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        accepts(&h, media)
    }

    #[test]
    fn accept_matching() {
        assert!(accept("text/event-stream", "text/event-stream"));
        assert!(accept(
            "Text/Event-Stream; charset=utf-8",
            "text/event-stream"
        ));
        assert!(accept(
            "text/html, text/event-stream;q=0.5",
            "text/event-stream"
        ));
        assert!(!accept("text/event-stream;q=0", "text/event-stream"));
        assert!(!accept("*/*", "text/event-stream"));
        assert!(!accept("text/event-streams", "text/event-stream"));
    }
}
