//! The application's channel function: which channels a request may see (the gem's
//! `channels(env)`).
//!
//! It receives the request head after the application's own `tower` layers, so it can read what
//! an authentication layer put in the request extensions, and returns the channel names or a
//! [`Rejection`] (401, 403 or 404). The endpoint has already parsed the query string and put the
//! [`StreamQuery`] in the extensions, so a policy can intersect what the client asks for with what
//! the user may see.

use std::future::Future;

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

    fn new(status: StatusCode, message: impl Into<String>) -> Self {
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
