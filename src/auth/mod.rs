//! Access control: who may subscribe to which channels, who may publish, and which pages of
//! other origins may do either.
//!
//! Subscriber authorization modes are [`crate::ChannelPolicy`] values, so an embedding
//! application mounts them like its own channel function: [`JwtPolicy`] (channels from a
//! token's claim) and [`AuthCallback`] (the application answers an HTTP request). Channel
//! grants are [`ChannelPatterns`]. The publish credential of the public router (a static token
//! or a JWT's `redisse.publish` claim) is checked by `PublishCredentials`; CORS is `tower-http`'s
//! `CorsLayer` with the two things it does not do itself (`cors`): a 403 for an unlisted origin
//! and 204 for a preflight.

pub mod callback;
pub(crate) mod cors;
pub mod jwt;
pub mod pattern;

pub use callback::AuthCallback;
pub use jwt::{JwtPolicy, JwtVerifier, TokenError, TokenGrant};
pub use pattern::ChannelPatterns;

use std::sync::Arc;

/// Why a publish request was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PublishDenied {
    /// No credential, or one that is not valid: 401.
    Unauthorized(String),
    /// A valid token that does not cover the channel: 403.
    Forbidden,
}

/// What lets a publish request through the public router: the static token, a JWT whose
/// `redisse.publish` claim covers the channel, or both (either one then suffices).
#[derive(Clone, Debug, Default)]
pub(crate) struct PublishCredentials {
    token: Option<Arc<str>>,
    jwt: Option<JwtVerifier>,
}

impl PublishCredentials {
    pub fn new(token: Option<&str>, jwt: Option<JwtVerifier>) -> Self {
        PublishCredentials {
            token: token.filter(|t| !t.is_empty()).map(Arc::from),
            jwt,
        }
    }

    /// Checks the request's `Authorization: Bearer` credential, before anything else of the
    /// request is read (so that a client without one learns nothing about its input).
    pub fn authenticate(&self, headers: &http::HeaderMap) -> Result<Publisher, PublishDenied> {
        if self.token.is_none() && self.jwt.is_none() {
            return Err(PublishDenied::Unauthorized(
                "this listener publishes only with a credential, and none is configured; \
                 publish through the internal listener"
                    .into(),
            ));
        }
        let Some(given) = jwt::bearer(headers) else {
            return Err(PublishDenied::Unauthorized(
                "publishing requires Authorization: Bearer <token>".into(),
            ));
        };
        if let Some(token) = &self.token
            && constant_time_eq(given.as_bytes(), token.as_bytes())
        {
            return Ok(Publisher::Token);
        }
        match &self.jwt {
            Some(jwt) => match jwt.verify(given) {
                Ok(grant) => Ok(Publisher::Jwt(grant.publish)),
                Err(e) => Err(PublishDenied::Unauthorized(e.to_string())),
            },
            None => Err(PublishDenied::Unauthorized(
                "the publish token is not valid".into(),
            )),
        }
    }

    /// [`PublishCredentials::authenticate`], then whether the credential covers `channel`.
    #[cfg(test)]
    pub fn check(&self, headers: &http::HeaderMap, channel: &str) -> Result<(), PublishDenied> {
        self.authenticate(headers)?.may_publish(channel)
    }
}

/// An authenticated publisher.
#[derive(Debug)]
pub(crate) enum Publisher {
    /// The static token: every channel.
    Token,
    /// A JWT: the channels of its `redisse.publish` claim.
    Jwt(ChannelPatterns),
}

impl Publisher {
    /// 403 unless the credential covers `channel`.
    pub fn may_publish(&self, channel: &str) -> Result<(), PublishDenied> {
        match self {
            Publisher::Token => Ok(()),
            Publisher::Jwt(patterns) if patterns.covers(channel) => Ok(()),
            Publisher::Jwt(_) => Err(PublishDenied::Forbidden),
        }
    }
}

/// Compares in time that depends on the lengths only, not on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn the_static_token_and_nothing_else() {
        let creds = PublishCredentials::new(Some("s3cret"), None);
        assert_eq!(creds.check(&headers("Bearer s3cret"), "a"), Ok(()));
        assert!(matches!(
            creds.check(&headers("Bearer s3cre"), "a"),
            Err(PublishDenied::Unauthorized(_))
        ));
        assert!(matches!(
            creds.check(&http::HeaderMap::new(), "a"),
            Err(PublishDenied::Unauthorized(_))
        ));
        let none = PublishCredentials::new(None, None);
        assert!(matches!(
            none.check(&headers("Bearer s3cret"), "a"),
            Err(PublishDenied::Unauthorized(_))
        ));
    }
}
