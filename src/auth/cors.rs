//! CORS for the public router: `tower-http`'s `CorsLayer`, configured from the origin list,
//! and a gate in front of it for what that layer leaves to the application.
//!
//! The layer answers preflights and adds `Access-Control-Allow-Origin` (the listed origin,
//! with `Access-Control-Allow-Credentials: true`, or `*` without credentials) and `Vary`. The
//! gate refuses a request whose `Origin` is not listed with 403 (the layer would serve it
//! without CORS headers, so the response reaches the server's logs and work is done for a page
//! that cannot read it) and turns the layer's 200 preflight answer into 204.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::metrics::{Metrics, Refusal};
use crate::refusal::Refused;

/// The configured origins.
#[derive(Clone, Debug)]
pub(crate) struct Origins {
    any: bool,
    listed: Arc<[HeaderValue]>,
}

impl Origins {
    /// `*` alone, or a list of origins (already checked by `Config::validate`).
    pub fn new(origins: &[String]) -> Result<Self, String> {
        let any = origins.iter().any(|o| o == "*");
        let listed = origins
            .iter()
            .filter(|o| *o != "*")
            .map(|o| HeaderValue::from_str(o).map_err(|_| format!("{o:?} is not an origin")))
            .collect::<Result<Arc<[_]>, _>>()?;
        Ok(Origins { any, listed })
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        self.any || self.listed.contains(origin)
    }

    /// `tower-http`'s layer for these origins.
    pub fn layer(&self) -> CorsLayer {
        let layer = CorsLayer::new()
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                HeaderName::from_static("last-event-id"),
                header::AUTHORIZATION,
                header::CACHE_CONTROL,
                header::CONTENT_TYPE,
            ]);
        if self.any {
            // Never reflected with credentials (the Fetch standard refuses `*` with them).
            layer.allow_origin(AllowOrigin::any())
        } else {
            layer
                .allow_origin(AllowOrigin::list(self.listed.iter().cloned()))
                .allow_credentials(true)
        }
    }
}

/// The gate's state.
#[derive(Clone)]
pub(crate) struct Gate {
    pub origins: Origins,
    pub metrics: Arc<Metrics>,
}

/// 403 for an unlisted `Origin`; 204 instead of 200 for a preflight.
pub(crate) async fn gate(State(gate): State<Gate>, req: Request<Body>, next: Next) -> Response {
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if let Some(origin) = req.headers().get(header::ORIGIN)
        && !gate.origins.allows(origin)
    {
        return Refused::stream(
            Refusal::CorsOrigin,
            StatusCode::FORBIDDEN,
            "this origin is not allowed (CORS)",
        )
        .respond(&gate.metrics)
        .into_response();
    }
    let mut res = next.run(req).await;
    if preflight && res.status() == StatusCode::OK {
        *res.status_mut() = StatusCode::NO_CONTENT;
    }
    res
}
