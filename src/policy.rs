//! The application's channel function: which channels a request may see (the gem's
//! `channels(env)`).
//!
//! It receives the request head after the application's own `tower` layers, so it can read what
//! an authentication layer put in the request extensions, and returns the channel names or a
//! [`Rejection`] (401, 403 or 404). The endpoint has already parsed the query string and put the
//! [`StreamQuery`] in the extensions, so a policy can intersect what the client asks for with what
//! the user may see.

use std::future::Future;
use std::time::SystemTime;

use http::StatusCode;
use http::request::Parts;

use crate::query::StreamQuery;

/// Decides the channels of a stream request.
///
/// Any `Fn(&Parts) -> impl Future<Output = Result<Vec<String>, Rejection>>` is a policy:
///
/// ```
/// use redisse::{ChannelPolicy, Rejection};
/// #[derive(Clone)]
/// struct User(String);
///
/// let policy = |parts: &http::request::Parts| {
///     let user = parts.extensions.get::<User>().cloned();
///     async move {
///         match user {
///             Some(User(name)) => Ok(vec!["global".to_string(), format!("user.{name}")]),
///             None => Err(Rejection::unauthorized("log in first")),
///         }
///     }
/// };
/// fn is_policy(_: &impl ChannelPolicy) {}
/// is_policy(&policy);
/// ```
pub trait ChannelPolicy: Send + Sync + 'static {
    /// The channels `request` may listen to; an empty list is answered with 404.
    fn channels(
        &self,
        request: &Parts,
    ) -> impl Future<Output = Result<Vec<String>, Rejection>> + Send;

    /// The channels and how long the grant lasts: the endpoint calls this one. By default the
    /// channels of [`ChannelPolicy::channels`], for as long as the stream stays open; a policy
    /// whose grant expires (a token's `exp`) says when, and the stream is then ended with a
    /// `retry:` so that the client comes back with a fresh credential.
    fn grant(&self, request: &Parts) -> impl Future<Output = Result<Grant, Rejection>> + Send {
        let channels = self.channels(request);
        async move { channels.await.map(Grant::new) }
    }
}

/// What a policy grants a stream: its channels, and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    channels: Vec<String>,
    expires: Option<SystemTime>,
}

impl Grant {
    /// These channels, for as long as the stream stays open.
    pub fn new(channels: Vec<String>) -> Self {
        Grant {
            channels,
            expires: None,
        }
    }

    /// The same channels until `expires`: the stream is ended at the first heartbeat after it.
    pub fn until(self, expires: SystemTime) -> Self {
        Grant {
            expires: Some(expires),
            ..self
        }
    }

    /// The channels.
    pub fn channels(&self) -> &[String] {
        &self.channels
    }

    /// When the grant ends, if it does.
    pub fn expires(&self) -> Option<SystemTime> {
        self.expires
    }

    pub(crate) fn into_parts(self) -> (Vec<String>, Option<SystemTime>) {
        (self.channels, self.expires)
    }
}

impl<F, Fut> ChannelPolicy for F
where
    F: Fn(&Parts) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<String>, Rejection>> + Send + 'static,
{
    fn channels(
        &self,
        request: &Parts,
    ) -> impl Future<Output = Result<Vec<String>, Rejection>> + Send {
        self(request)
    }
}

/// The standalone server's policy: the channels named in the query string.
#[derive(Clone, Copy, Debug, Default)]
pub struct QueryChannels;

impl ChannelPolicy for QueryChannels {
    fn channels(
        &self,
        request: &Parts,
    ) -> impl Future<Output = Result<Vec<String>, Rejection>> + Send {
        let channels = request
            .extensions
            .get::<StreamQuery>()
            .map(|q| q.channels.iter().map(|c| c.to_string()).collect())
            .unwrap_or_default();
        std::future::ready(Ok(channels))
    }
}

/// A refusal from the channel function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    status: StatusCode,
    message: String,
}

impl Rejection {
    /// 401: the request is not authenticated.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Rejection::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 403: the user may not listen here.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Rejection::new(StatusCode::FORBIDDEN, message)
    }

    /// 404: nothing to listen to.
    pub fn not_found(message: impl Into<String>) -> Self {
        Rejection::new(StatusCode::NOT_FOUND, message)
    }

    /// Any other status a policy must pass on (an auth callback's 502 or 504, say).
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Rejection {
            status,
            message: message.into(),
        }
    }

    /// The status the response gets.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body's text.
    pub fn message(&self) -> &str {
        &self.message
    }
}
