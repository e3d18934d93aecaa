//! JWT verification: the token of a subscriber (channels from its `redisse.subscribe` claim)
//! and of a publisher (`redisse.publish`).
//!
//! Verification is the `jsonwebtoken` crate's, with the one algorithm the configuration names:
//! the token's header never chooses it, so `alg: none` and the switch from RS256 to HS256 with
//! the public key as secret are refused as a wrong algorithm. `exp` and `nbf` are checked when
//! present, with a few seconds of leeway for clocks; `aud` and `iss` are required and checked
//! when configured. A subscriber's token comes from `Authorization: Bearer`, else the
//! configured cookie, else the `authorization` query parameter (an `EventSource` cannot set
//! headers); a publisher's from `Authorization: Bearer` only.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::pattern::ChannelPatterns;
use crate::config::{JwtKey, JwtSettings};
use crate::policy::{ChannelPolicy, Grant, Rejection};
use crate::query::{StreamQuery, form_decode};

/// Seconds of clock difference allowed on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 5;

/// A configured verifier (cheap to clone).
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    key: DecodingKey,
    validation: Validation,
    cookie: String,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.inner.validation.algorithms)
            .finish()
    }
}

/// What a valid token grants.
#[derive(Clone, Debug)]
pub struct TokenGrant {
    /// Channels it may listen to.
    pub subscribe: ChannelPatterns,
    /// Channels it may publish to.
    pub publish: ChannelPatterns,
    /// Its `exp`, when it has one.
    pub expires: Option<SystemTime>,
}

/// Why a token was refused; the message tells the client what to fix and nothing more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// No token in any of the places read.
    Missing,
    /// `exp` is past.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// Wrong `aud` (or none when one is required).
    Audience,
    /// Wrong `iss` (or none when one is required).
    Issuer,
    /// Malformed, wrong signature, or another algorithm than the configured one.
    Invalid,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenError::Missing => {
                "a token is required (Authorization: Bearer, a cookie, or \
                                    the authorization query parameter)"
            }
            TokenError::Expired => "the token has expired",
            TokenError::NotYetValid => "the token is not valid yet",
            TokenError::Audience => "the token is not for this audience",
            TokenError::Issuer => "the token is not from the expected issuer",
            TokenError::Invalid => "the token is not valid (format, signature or algorithm)",
        })
    }
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    redisse: RedisseClaim,
    #[serde(default)]
    exp: Option<u64>,
}

#[derive(Default, Deserialize)]
struct RedisseClaim {
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

impl JwtVerifier {
    /// Parses the key for the configured algorithm.
    pub fn new(settings: &JwtSettings) -> Result<Self, String> {
        let algorithm: Algorithm = settings
            .algorithm
            .parse()
            .map_err(|_| format!("unknown JWT algorithm {:?}", settings.algorithm))?;
        let key = match (&settings.key, algorithm) {
            (JwtKey::Secret(s), Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => {
                DecodingKey::from_secret(s)
            }
            (
                JwtKey::PublicKeyPem(pem),
                Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512,
            ) => DecodingKey::from_rsa_pem(pem)
                .map_err(|e| format!("the JWT public key is not an RSA key in PEM: {e}"))?,
            (JwtKey::PublicKeyPem(pem), Algorithm::ES256 | Algorithm::ES384) => {
                DecodingKey::from_ec_pem(pem)
                    .map_err(|e| format!("the JWT public key is not an EC key in PEM: {e}"))?
            }
            (JwtKey::PublicKeyPem(pem), Algorithm::EdDSA) => DecodingKey::from_ed_pem(pem)
                .map_err(|e| format!("the JWT public key is not an Ed25519 key in PEM: {e}"))?,
            (JwtKey::Secret(_), _) => {
                return Err(format!(
                    "the JWT algorithm {algorithm:?} needs a public key"
                ));
            }
            (JwtKey::PublicKeyPem(_), _) => {
                return Err(format!("the JWT algorithm {algorithm:?} needs a secret"));
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = Vec::new();
        match &settings.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &settings.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        // A token without `exp` is accepted (docs/access-control.md): only what the configuration
        // asks for is required.
        validation.set_required_spec_claims(&required);
        Ok(JwtVerifier {
            inner: Arc::new(Inner {
                key,
                validation,
                cookie: settings.cookie.clone(),
            }),
        })
    }

    /// Verifies `token` and reads what it grants.
    pub fn verify(&self, token: &str) -> Result<TokenGrant, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.inner.key, &self.inner.validation)
            .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidAudience => TokenError::Audience,
            ErrorKind::InvalidIssuer => TokenError::Issuer,
            ErrorKind::MissingRequiredClaim(c) if c == "aud" => TokenError::Audience,
            ErrorKind::MissingRequiredClaim(c) if c == "iss" => TokenError::Issuer,
            _ => TokenError::Invalid,
        })?;
        let claims = data.claims;
        Ok(TokenGrant {
            subscribe: ChannelPatterns::new(&claims.redisse.subscribe),
            publish: ChannelPatterns::new(&claims.redisse.publish),
            expires: claims
                .exp
                .and_then(|exp| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(exp))),
        })
    }

    /// The subscriber's token: `Authorization: Bearer`, else the cookie, else the
    /// `authorization` query parameter.
    pub fn subscriber_token(&self, parts: &Parts) -> Option<String> {
        if let Some(token) = bearer(&parts.headers) {
            return Some(token.to_owned());
        }
        if let Some(token) = cookie(&parts.headers, &self.inner.cookie) {
            return Some(token.to_owned());
        }
        query_token(parts.uri.query().unwrap_or(""))
    }
}

/// The token of `Authorization: Bearer <token>`.
pub(crate) fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// The `authorization` query parameter, form-decoded.
fn query_token(query: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|item| form_decode(item).ok())
        .find_map(|item| {
            let token = item.strip_prefix(StreamQuery::AUTHORIZATION_PREFIX)?;
            (!token.is_empty()).then(|| token.to_owned())
        })
}

/// Subscriber authorization by JWT: every requested channel must be covered by the token's
/// `redisse.subscribe` claim (else 403); a request naming no channel gets the claim's exact
/// names; no token or an invalid one is 401. The stream ends at the token's `exp`.
#[derive(Clone, Debug)]
pub struct JwtPolicy {
    verifier: JwtVerifier,
}

impl JwtPolicy {
    /// Verifies tokens with `settings`.
    pub fn new(settings: &JwtSettings) -> Result<Self, String> {
        Ok(JwtPolicy {
            verifier: JwtVerifier::new(settings)?,
        })
    }

    /// The policy of an existing verifier.
    pub fn from_verifier(verifier: JwtVerifier) -> Self {
        JwtPolicy { verifier }
    }

    fn decide(&self, parts: &Parts) -> Result<Grant, Rejection> {
        let token = self
            .verifier
            .subscriber_token(parts)
            .ok_or_else(|| Rejection::unauthorized(TokenError::Missing.to_string()))?;
        let grant = self
            .verifier
            .verify(&token)
            .map_err(|e| Rejection::unauthorized(e.to_string()))?;
        let requested = parts
            .extensions
            .get::<StreamQuery>()
            .map(|q| q.channels.as_slice())
            .unwrap_or_default();
        let channels: Vec<String> = if requested.is_empty() {
            grant.subscribe.names().to_vec()
        } else if requested.iter().all(|c| grant.subscribe.covers(c)) {
            requested.iter().map(|c| c.to_string()).collect()
        } else {
            return Err(Rejection::new(
                StatusCode::FORBIDDEN,
                "the token does not cover every requested channel",
            ));
        };
        let mut out = Grant::new(channels);
        if let Some(exp) = grant.expires {
            out = out.until(exp);
        }
        Ok(out)
    }
}

impl ChannelPolicy for JwtPolicy {
    fn channels(
        &self,
        request: &Parts,
    ) -> impl Future<Output = Result<Vec<String>, Rejection>> + Send {
        std::future::ready(self.decide(request).map(|g| g.into_parts().0))
    }

    fn grant(&self, request: &Parts) -> impl Future<Output = Result<Grant, Rejection>> + Send {
        std::future::ready(self.decide(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_in_header_then_cookie_then_query() {
        let verifier = JwtVerifier::new(&JwtSettings::hmac(b"k".to_vec(), "HS256")).unwrap();
        let parts = |headers: &[(&str, &str)], uri: &str| {
            let mut req = http::Request::get(uri);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req.body(()).unwrap().into_parts().0
        };
        let p = parts(
            &[
                ("authorization", "Bearer h"),
                ("cookie", "redisseAuthorization=c"),
            ],
            "/?authorization=q",
        );
        assert_eq!(verifier.subscriber_token(&p).as_deref(), Some("h"));
        let p = parts(
            &[("cookie", "a=1; redisseAuthorization=c")],
            "/?authorization=q",
        );
        assert_eq!(verifier.subscriber_token(&p).as_deref(), Some("c"));
        let p = parts(&[("authorization", "Basic x")], "/?a&authorization=q%2B");
        assert_eq!(verifier.subscriber_token(&p).as_deref(), Some("q+"));
        let p = parts(&[], "/?a");
        assert_eq!(verifier.subscriber_token(&p), None);
    }
}
