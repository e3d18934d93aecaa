//! The SSE endpoint as a `tower` service: content negotiation, the query, the application's
//! channel function, limits, then the stream.
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

use crate::extract::{SseRequest, open_stream};
use crate::headers::Accepts;
use crate::instance::{Redisse, Shared};
use crate::policy::ChannelPolicy;
use crate::refusal::Refused;
use crate::sse::SseBody;

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

impl<P> std::fmt::Debug for SseEndpoint<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SseEndpoint")
    }
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
        let accepts = Accepts::get(&parts.extensions, &parts.headers);
        if accepts.json {
            return stats(shared);
        }
        let request = match SseRequest::from_head(&parts, accepts) {
            Ok(request) => request,
            Err(refused) => return refused.respond(&shared.metrics).map(SseBody::full),
        };
        let (query, last, sink) = request.into_parts();
        let polling = query.polling;
        // For the channel function (`QueryChannels` reads it).
        parts.extensions.insert(query);
        let (names, expires) = match self.policy.grant(&parts).await {
            Ok(grant) => grant.into_parts(),
            Err(rejection) => {
                let refused = Refused::policy(rejection.status(), rejection.message());
                return refused.respond(&shared.metrics).map(SseBody::full);
            }
        };
        open_stream(shared, polling, last, sink, names, expires)
    }
}

/// The gem's JSON stats (the endpoint's and the internal router's).
pub(crate) fn stats(shared: &Shared) -> Response<SseBody> {
    let body = serde_json::to_string(&shared.metrics.stats()).unwrap_or_default();
    let mut res = Response::new(SseBody::full(body));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// A plain-text answer that is not a refusal to count (405, the redirect handler's).
pub(crate) fn text(status: StatusCode, body: &str) -> Response<SseBody> {
    let mut res = Response::new(SseBody::full(body.to_owned()));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    res
}
