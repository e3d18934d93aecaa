//! The nginx X-Accel-Redirect handler, for applications that keep SSE requests behind
//! their own routes and middleware and let nginx hand the connection to the SSE server.
//!
//! It runs the channel function in the application, then answers 200 with an empty body and
//! `X-Accel-Redirect: /redisse/?polling&lastEventId=42&ch1&ch2`: `polling` and `lastEventId`
//! from the incoming query come first, then the channels, form-encoded. nginx forwards the
//! original headers, `Last-Event-ID` included, on the internal redirect. The names `polling` and
//! `lastEventId`, and names starting with `polling=` or `lastEventId=`, cannot be channels there
//! (the SSE server reads them as options); the handler refuses them with a 500 whose body says so.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, StatusCode};

use crate::endpoint::text;
use crate::logtext::escaped;
use crate::policy::ChannelPolicy;
use crate::query::{StreamQuery, form_encode};
use crate::sse::SseBody;

/// The redirect handler: a `tower::Service` to mount where the application serves events.
///
/// ```
/// use redisse::{QueryChannels, RedirectEndpoint};
/// let redirect = RedirectEndpoint::new("/redisse", QueryChannels);
/// let app: axum::Router = axum::Router::new().route_service("/events", redirect);
/// # let _ = app;
/// ```
pub struct RedirectEndpoint<P> {
    base: Arc<str>,
    policy: Arc<P>,
}

impl<P> std::fmt::Debug for RedirectEndpoint<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedirectEndpoint")
            .field("internal_url", &self.base)
            .finish()
    }
}

impl<P> Clone for RedirectEndpoint<P> {
    fn clone(&self) -> Self {
        RedirectEndpoint {
            base: self.base.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<P: ChannelPolicy> RedirectEndpoint<P> {
    /// Redirects to `internal_url` (nginx's internal location; a `/` is appended if missing).
    pub fn new(internal_url: &str, policy: P) -> Self {
        let mut base = internal_url.to_owned();
        if !base.ends_with('/') {
            base.push('/');
        }
        RedirectEndpoint {
            base: base.into(),
            policy: Arc::new(policy),
        }
    }

    async fn respond(&self, mut parts: http::request::Parts) -> Response<SseBody> {
        let query = match StreamQuery::parse(parts.uri.query().unwrap_or("")) {
            Ok(q) => q,
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("400 Bad Request\n{e}\n")),
        };
        let mut items: Vec<String> = Vec::new();
        if query.polling {
            items.push("polling".into());
        }
        if let Some(id) = &query.last_event_id {
            items.push(format!("lastEventId={}", form_encode(id)));
        }
        parts.extensions.insert(query);
        let channels = match self.policy.channels(&parts).await {
            Ok(c) => c,
            Err(r) => return text(r.status(), &format!("{}\n", r.message())),
        };
        for name in &channels {
            if is_reserved(name) {
                let msg = format!(
                    "500 Internal Server Error\nReserved channel {name:?}: it cannot be passed to the SSE server\n"
                );
                tracing::error!(channel = %escaped(name), "the channel function returned a reserved name");
                return text(StatusCode::INTERNAL_SERVER_ERROR, &msg);
            }
            items.push(form_encode(name));
        }
        let url = format!("{}?{}", self.base, items.join("&"));
        let mut res = Response::new(SseBody::full(""));
        match HeaderValue::from_str(&url) {
            Ok(v) => {
                res.headers_mut().insert("x-accel-redirect", v);
                res
            }
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "500 Internal Server Error\ninvalid redirect URL\n",
            ),
        }
    }
}

/// Names the SSE server reads as options rather than channels: `polling`,
/// `polling=<anything>`, `lastEventId` and `lastEventId=<v>`.
fn is_reserved(name: &str) -> bool {
    ["polling", "lastEventId"].iter().any(|reserved| {
        name.strip_prefix(reserved)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
    })
}

impl<P: ChannelPolicy, B: Send + 'static> tower::Service<Request<B>> for RedirectEndpoint<P> {
    type Response = Response<SseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<SseBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        let (parts, _) = req.into_parts();
        Box::pin(async move { Ok(this.respond(parts).await) })
    }
}
