//! A refused request, counted, logged and answered in one place.
//!
//! Every refusal (4xx, and the "come back later" answer past the connection limit) is counted
//! under its reason (`redisse_refused_total{reason}`), logged at
//! `info` with what was refused and why (never a secret, never what the client may not see),
//! and answered with a plain-text body that says why. Refusals that hyper answers itself
//! (malformed or oversized heads) are only counted and logged.

use std::fmt::Display;

use http::{HeaderValue, Response, StatusCode, header};

use crate::headers::stream_headers;
use crate::logtext::escaped;
use crate::metrics::{Metrics, Refusal};

/// One refused request.
#[derive(Debug)]
pub(crate) struct Refused {
    /// `None` for a refusal that is not counted (a stream refused while shutting down).
    reason: Option<Refusal>,
    /// Logged as a warning (the operator should act) rather than at `info`.
    warn: bool,
    status: StatusCode,
    body: String,
    /// The log line ("refused a stream request") and the detail; `None` for the refusals that
    /// are part of ordinary negotiation (406, 404), which are only counted.
    log: Option<(&'static str, String)>,
    /// Whether the client gets an answer from us (connection refusals are answered by hyper,
    /// or not at all): only then is the status logged.
    answered: bool,
    content_type: &'static str,
    /// Extra headers of the answer.
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Refused {
    /// A refused stream request: `{code} {reason phrase}\n{message}\n`.
    pub fn stream(reason: Refusal, status: StatusCode, message: impl Display) -> Self {
        let message = message.to_string();
        Refused {
            reason: Some(reason),
            warn: false,
            status,
            body: format!(
                "{} {}\n{message}\n",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            ),
            log: Some(("refused a stream request", message)),
            answered: true,
            content_type: "text/plain",
            headers: Vec::new(),
        }
    }

    /// A refused publish request: `{message}\n`.
    pub fn publish(reason: Refusal, status: StatusCode, message: impl Display) -> Self {
        let message = message.to_string();
        Refused {
            reason: Some(reason),
            warn: false,
            status,
            body: format!("{message}\n"),
            log: Some(("refused a publish request", message)),
            answered: true,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
        }
    }

    /// A refusal that negotiation explains by itself (406, 404): counted, not logged.
    pub fn quiet(reason: Refusal, status: StatusCode, body: &'static str) -> Self {
        Refused {
            reason: Some(reason),
            warn: false,
            status,
            body: body.to_owned(),
            log: None,
            answered: true,
            content_type: "text/plain",
            headers: Vec::new(),
        }
    }

    /// A connection refused before any request reached a service (hyper answered it, or the
    /// head never came): counted and logged, with `message` saying why.
    pub fn connection(reason: Refusal, message: impl Display) -> Self {
        Refused {
            reason: Some(reason),
            warn: false,
            status: StatusCode::BAD_REQUEST,
            body: String::new(),
            log: Some(("refused a connection", message.to_string())),
            answered: false,
            content_type: "text/plain",
            headers: Vec::new(),
        }
    }

    /// The channel function's own answer: its status and message.
    pub fn policy(status: StatusCode, message: &str) -> Self {
        Refused {
            reason: Some(Refusal::Policy),
            warn: false,
            status,
            body: format!("{message}\n"),
            // The status is the detail: the message is the application's, for its client.
            log: Some(("channel function rejected a request", String::new())),
            answered: true,
            content_type: "text/plain",
            headers: Vec::new(),
        }
    }

    /// "Come back later" to a stream request: 200 with `retry_frame` (any other status makes
    /// `EventSource` give up for good) and `Connection: close`, so that a server short of
    /// connections gets the socket back. With `limit`, a limit was reached (counted under its
    /// reason, and logged as a warning with the detail); without, the server is shutting down.
    pub fn come_back_later(retry_frame: String, limit: Option<(Refusal, String)>) -> Self {
        let (reason, log) = match limit {
            Some((reason, detail)) => (Some(reason), Some(("refused a stream request", detail))),
            None => (None, None),
        };
        Refused {
            reason,
            warn: true,
            status: StatusCode::OK,
            body: retry_frame,
            log,
            answered: true,
            content_type: "text/event-stream",
            headers: stream_headers()
                .into_iter()
                .chain([(header::CONNECTION, HeaderValue::from_static("close"))])
                .collect(),
        }
    }

    /// Adds a header to the answer.
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Counts and logs the refusal.
    pub fn record(&self, metrics: &Metrics) {
        if let Some(reason) = self.reason {
            metrics.refused(reason);
        }
        self.log();
    }

    fn log(&self) {
        let Some((line, detail)) = &self.log else {
            return;
        };
        // The detail may quote what the client sent (a channel name, an origin).
        let reason = escaped(detail);
        match (self.warn, self.answered) {
            (true, _) => tracing::warn!(status = %self.status, %reason, "{line}"),
            (false, true) if detail.is_empty() => tracing::info!(status = %self.status, "{line}"),
            (false, true) => tracing::info!(status = %self.status, %reason, "{line}"),
            (false, false) => tracing::info!(%reason, "{line}"),
        }
    }

    /// Counts, logs, and answers.
    pub fn respond(self, metrics: &Metrics) -> Response<String> {
        self.record(metrics);
        self.answer()
    }

    /// Logs and answers, without counting: for a refusal outside any instance (the
    /// extractor's, in an application's own route).
    pub fn respond_uncounted(self) -> Response<String> {
        self.log();
        self.answer()
    }

    fn answer(self) -> Response<String> {
        let mut res = Response::new(self.body);
        *res.status_mut() = self.status;
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        for (name, value) in self.headers {
            h.insert(name, value);
        }
        res
    }
}
