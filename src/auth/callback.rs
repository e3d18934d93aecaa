//! The auth callback: for each stream request, the server asks the application which channels
//! it may see, as the gem's `channels(env)` did, but over HTTP so the application may be
//! written in any language.
//!
//! The server sends `POST <url>` with the request's `Cookie`, `Authorization`, `Origin` and
//! `User-Agent`, the peer's address appended to `X-Forwarded-For`, and the JSON body
//! `{"channels": [...requested...], "last_event_id": "..." | null}`. A 200 answer
//! `{"channels": [...]}` gives the stream's channels; 401, 403 and 404 are passed to the client
//! with their body; no answer within the timeout is 504; anything else (refused connection,
//! another status, a redirect, which is not followed, a body that is not that JSON) is 502. A
//! stream never opens without an answer. Answers may be cached for a short time, keyed by a
//! SHA-256 of everything forwarded, in a cache of bounded size.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::CallbackSettings;
use crate::logtext::escaped;
use crate::outbound::{self, HttpClient};
use crate::policy::{ChannelPolicy, Rejection};
use crate::query::StreamQuery;

/// Largest answer body read: a 200's channel list, or the text of a refusal passed on.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Answers kept at most in the cache; past it, new answers are not cached until old ones
/// expire (every request can bring a new key, so the cache must not grow with them).
const MAX_CACHE_ENTRIES: usize = 10_000;

/// Subscriber authorization by an HTTP callback to the application (cheap to clone).
#[derive(Clone)]
pub struct AuthCallback {
    inner: Arc<Inner>,
}

struct Inner {
    url: Uri,
    timeout: Duration,
    cache: Option<(Duration, Mutex<Answers>)>,
    client: HttpClient,
}

/// Cached answers by the SHA-256 of what was forwarded.
type Answers = HashMap<[u8; 32], Cached>;

#[derive(Clone)]
struct Cached {
    until: Instant,
    answer: Result<Vec<String>, Rejection>,
}

impl std::fmt::Debug for AuthCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthCallback")
            .field("url", &self.inner.url)
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

#[derive(Serialize)]
struct Question<'a> {
    channels: Vec<&'a str>,
    last_event_id: Option<&'a str>,
}

#[derive(Deserialize)]
struct Answer {
    channels: Vec<String>,
}

/// What is forwarded, owned, so that the request to the application outlives the borrow of
/// the stream request's head.
struct Forwarded {
    headers: Vec<(header::HeaderName, HeaderValue)>,
    body: Bytes,
}

impl AuthCallback {
    /// The callback `settings` describe.
    pub fn new(settings: &CallbackSettings) -> Result<Self, String> {
        let url: Uri = settings
            .url
            .parse()
            .map_err(|e| format!("the auth callback URL is not a URL: {e}"))?;
        if !outbound::supports(&settings.url) {
            return Err(if settings.url.starts_with("https://") {
                "the auth callback is https:// but this build has no TLS (feature `tls`)".into()
            } else {
                "the auth callback URL must start with http:// or https://".into()
            });
        }
        Ok(AuthCallback {
            inner: Arc::new(Inner {
                url,
                timeout: settings.timeout,
                cache: settings
                    .cache
                    .filter(|d| !d.is_zero())
                    .map(|d| (d, Mutex::new(HashMap::new()))),
                client: outbound::client()?,
            }),
        })
    }

    fn forwarded(parts: &Parts) -> Forwarded {
        let mut headers = Vec::new();
        for name in [
            header::COOKIE,
            header::AUTHORIZATION,
            header::ORIGIN,
            header::USER_AGENT,
        ] {
            for value in parts.headers.get_all(&name) {
                headers.push((name.clone(), value.clone()));
            }
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string());
        let earlier = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let xff = match (earlier, peer) {
            (Some(e), Some(p)) => Some(format!("{e}, {p}")),
            (None, Some(p)) => Some(p),
            (Some(e), None) => Some(e.to_owned()),
            (None, None) => None,
        };
        if let Some(v) = xff.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.push((header::HeaderName::from_static("x-forwarded-for"), v));
        }
        let query = parts.extensions.get::<StreamQuery>();
        let last_event_id = parts
            .headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .or_else(|| query.and_then(|q| q.last_event_id.as_deref()));
        let question = Question {
            channels: query
                .map(|q| q.channels.iter().map(|c| &**c).collect())
                .unwrap_or_default(),
            last_event_id,
        };
        let body = serde_json::to_vec(&question).unwrap_or_default().into();
        Forwarded { headers, body }
    }

    fn cache_key(forwarded: &Forwarded) -> [u8; 32] {
        let mut hash = Sha256::new();
        for (name, value) in &forwarded.headers {
            // Length-prefixed, so that no two different requests hash the same bytes.
            for part in [name.as_str().as_bytes(), value.as_bytes()] {
                hash.update((part.len() as u64).to_le_bytes());
                hash.update(part);
            }
        }
        hash.update((forwarded.body.len() as u64).to_le_bytes());
        hash.update(&forwarded.body);
        hash.finalize().into()
    }

    async fn ask(&self, forwarded: Forwarded) -> Result<Vec<String>, Rejection> {
        let inner = &self.inner;
        let key = inner.cache.as_ref().map(|_| Self::cache_key(&forwarded));
        if let (Some((_, cache)), Some(key)) = (&inner.cache, &key) {
            let cache = cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(hit) = cache.get(key).filter(|c| c.until > Instant::now()) {
                return hit.answer.clone();
            }
        }
        let answer = match tokio::time::timeout(inner.timeout, self.call(forwarded)).await {
            Ok(answer) => answer,
            Err(_) => {
                tracing::warn!(timeout = ?inner.timeout, "the auth callback did not answer in time");
                return Err(Rejection::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the authorization service did not answer in time",
                ));
            }
        };
        let definitive = match &answer {
            Ok(_) => true,
            Err(r) => r.status() != StatusCode::BAD_GATEWAY,
        };
        if let (Some((ttl, cache)), Some(key), true) = (&inner.cache, key, definitive) {
            let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if cache.len() >= MAX_CACHE_ENTRIES {
                cache.retain(|_, c| c.until > now);
            }
            if cache.len() < MAX_CACHE_ENTRIES {
                cache.insert(
                    key,
                    Cached {
                        until: now + *ttl,
                        answer: answer.clone(),
                    },
                );
            }
        }
        answer
    }

    async fn call(&self, forwarded: Forwarded) -> Result<Vec<String>, Rejection> {
        let bad_gateway = |why: &str| {
            tracing::warn!("auth callback failed: {}", escaped(why));
            Rejection::new(
                StatusCode::BAD_GATEWAY,
                "the authorization service failed to answer",
            )
        };
        let mut req = Request::post(self.inner.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json");
        for (name, value) in forwarded.headers {
            req = req.header(name, value);
        }
        let req = req
            .body(Full::new(forwarded.body))
            .map_err(|e| bad_gateway(&format!("cannot build the request: {e}")))?;
        let res = self
            .inner
            .client
            .request(req)
            .await
            .map_err(|e| bad_gateway(&format!("{e}")))?;
        let status = res.status();
        if !matches!(
            status,
            StatusCode::OK
                | StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
                | StatusCode::NOT_FOUND
        ) {
            return Err(bad_gateway(&format!("it answered {status}")));
        }
        let body = Limited::new(res.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| bad_gateway(&format!("cannot read its answer: {e}")))?
            .to_bytes();
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&body);
            return Err(Rejection::new(status, text.trim_end()));
        }
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| {
            bad_gateway(&format!(
                "its 200 answer is not {{\"channels\": [...]}}: {e}"
            ))
        })?;
        Ok(answer.channels)
    }
}

impl ChannelPolicy for AuthCallback {
    fn channels(
        &self,
        request: &Parts,
    ) -> impl Future<Output = Result<Vec<String>, Rejection>> + Send {
        let forwarded = Self::forwarded(request);
        let this = self.clone();
        async move { this.ask(forwarded).await }
    }
}
